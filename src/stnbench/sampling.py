"""The one place that turns sampling grids into images, shared by data generation and every STN.

Two classic STN bugs are designed away here:
* ``affine_grid`` and ``grid_sample`` must agree on ``align_corners``: both read ``ALIGN_CORNERS``.
* The out-of-frame fill must equal the image background. Images in stnbench stay in [0, 1] with a
  background of exactly 0 until *after* sampling (classifiers normalise their own input), so zero padding
  fills with background. Normalising before sampling would fill with a bright value and teach the STN
  to shrink the digit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALIGN_CORNERS = False
BACKGROUND = 0.0


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid [B, H, W, 2] for affine matrices ``theta`` [B, 2, 3] (output -> input coords)."""
    size = (theta.shape[0], 1, height, width)
    return F.affine_grid(theta, list(size), align_corners=ALIGN_CORNERS)


def sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of ``images`` [B, C, H, W] at ``grid`` [B, h, w, 2]; outside reads background."""
    if BACKGROUND != 0.0:  # pragma: no cover - guarded by a test; zero padding is only right for 0
        raise AssertionError("zero padding assumes a background of 0")
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)


def pixel_grid(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised coordinates [H, W, 2] of pixel centres, matching ``ALIGN_CORNERS``."""
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device)
    return affine_grid(theta, height, width)[0]
