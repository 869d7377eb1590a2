"""Where a batch's images came from, for the models that start from it (the paper's c-STN and IC-STN).

Lin & Lucey's IC-STN does not read the perturbed image alone: it gets the clean digit and the warp that
produced the image, starts its warp there and resamples the *clean digit* with every composed warp, so what
the perturbation pushed out of the frame can be brought back. The data that can say so (``data=perturbed``)
hands a :class:`Source` beside each batch; a model that reads it sets ``reads_source`` (the model contract,
``stnbench.models.contract``). Shared by the data and the models, so it lives in neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Source:
    """``images`` [B, C, h, w]: the clean digits in [0, 1]; ``homography`` [B, 3, 3]: per image the sampling
    homography that made the batch's image from its digit (image pixel x reads the digit at H x, stnbench's
    normalised coordinates, bottom-right entry 1)."""

    images: torch.Tensor
    homography: torch.Tensor

    def __post_init__(self) -> None:
        if self.homography.shape != (self.images.shape[0], 3, 3):
            raise ValueError(f"a Source needs one 3x3 homography per image: {self.images.shape[0]} images, "
                             f"homographies of shape {list(self.homography.shape)}")

    def __getitem__(self, index) -> Source:
        return Source(self.images[index], self.homography[index])

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> Source:
        return Source(self.images.to(device), self.homography.to(device))
