"""Transform families for spatial transformers.

A transform knows how many parameters it has, which parameters mean "leave the image alone", and how to
turn parameters into a sampling grid. A new family is one class here plus one file in
``configs/model/transform/``.
"""

from __future__ import annotations

import torch

from stnbench.sampling import affine_grid


class Transform:
    name = "transform"
    num_params: int

    def identity(self) -> torch.Tensor:
        """Parameters [P] of the identity transform: the regression layer's initial bias."""
        raise NotImplementedError

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Sampling grid [B, height, width, 2] (normalised input coordinates) for ``params`` [B, P]."""
        raise NotImplementedError


class Affine(Transform):
    """Full 2x3 affine matrix: rotation, scale, shear and translation (6 parameters)."""

    name = "affine"
    num_params = 6

    def identity(self) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return affine_grid(params.view(-1, 2, 3), height, width)
