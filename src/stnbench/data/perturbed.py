"""Perturbed MNIST (Lin & Lucey 2017, *Inverse Compositional Spatial Transformer Networks*): each digit
warped by a random homography, the benchmark of IC-STN.

As the authors' generator (``genPerturbations`` in chenhsuanlin/inverse-compositional-STN, both the paper's
TensorFlow code and ``MNIST-pytorch/data.py``): the four corners of the canonical square [-1, 1]^2 each move
by their own N(0, ``corner_sigma``) noise plus one translation N(0, ``translation_sigma``) shared by the four
corners of an image (drawn per coordinate), and the homography that takes the square to the moved corners
maps each output pixel to where it reads the digit, by bilinear sampling with zero fill. The image shows
the *inside of the moved quad* stretched to the frame: a quad larger than the square zooms out, ink pushed
past the frame is gone.

Coordinates are the reference's: its [-1, 1] runs through the centres of the corner pixels (its grid is
``linspace(-1, 1, 28)``), stnbench's sampler through their outer edges (``ALIGN_CORNERS = False``). The
generator converts with the factor 27/28, so a displacement of 0.25 moves a corner 0.25 x 13.5 px, as in
the reference, and the warp is the reference's pixel for pixel.
"""

from __future__ import annotations

import math

import torch

from stnbench.data.distortions import DIGIT_SIZE, Distortion, Rendered, digits_as_float, homography_from_points
from stnbench.data.mnist import DigitSplit
from stnbench.errors import ConfigError
from stnbench.sampling import homography_grid, sample

# The canonical square's corners (x, y), clockwise on screen from top-left, in the reference's units.
CANONICAL = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def check_normalised_sigma(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"data.distortion.{name} is a standard deviation in normalised coordinates (the "
                          f"image spans [-1, 1]) and must be a finite number >= 0, got {value}; use 0 for none")


def corners_homography(corners: torch.Tensor, size: int) -> torch.Tensor:
    """Sampling homographies [B, 3, 3] (stnbench's output -> input coordinates) that take the canonical
    square to ``corners`` [B, 4, 2] (the reference's units: [-1, 1] through the corner pixels' centres)."""
    to_ours = (size - 1) / size  # the reference's unit in stnbench's normalised coordinates
    square = torch.tensor(CANONICAL, device=corners.device, dtype=corners.dtype).expand_as(corners)
    return homography_from_points(square * to_ours, corners * to_ours)


def warp_to_corners(digits: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """``digits`` [B, C, H, H] as seen through the quads ``corners`` [B, 4, 2]: output corner k reads the
    digit at ``corners[:, k]``; outside the digit reads background (0)."""
    return warp_with(digits, corners_homography(corners, digits.shape[-1]))


def warp_with(digits: torch.Tensor, homography: torch.Tensor) -> torch.Tensor:
    """``digits`` [B, C, H, W] sampled through the sampling homographies [B, 3, 3], at their own size."""
    return sample(digits, homography_grid(homography, *digits.shape[-2:])).clamp_(0.0, 1.0)


class Perturbed(Distortion):
    """Perturbed MNIST, 28x28: a random homography per image (corner noise + a shared translation)."""

    name = "perturbed"
    version = 2  # 2: the fixed sets also hold each image's homography (the images are version 1's)
    image_size = DIGIT_SIZE
    source_warp = True  # the clean digit and its homography reach models that read them (the paper's IC-STN)

    def __init__(self, corner_sigma: float = 0.25, translation_sigma: float = 0.25) -> None:
        check_normalised_sigma("corner_sigma", corner_sigma)
        check_normalised_sigma("translation_sigma", translation_sigma)
        self.corner_sigma, self.translation_sigma = float(corner_sigma), float(translation_sigma)

    def sample_params(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        """``corners`` [B, 4, 2]: where each canonical corner reads the digit (the reference's units);
        ``translation`` [B, 2]: the part of the displacement the four corners share."""
        own = torch.randn(n, 4, 2, generator=generator, device=device) * self.corner_sigma
        translation = torch.randn(n, 2, generator=generator, device=device) * self.translation_sigma
        square = torch.tensor(CANONICAL, device=device)
        return {"corners": square + own + translation[:, None, :], "translation": translation}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        params = self.sample_params(len(index), generator, index.device)
        digits = digits_as_float(pool, index)
        homography = corners_homography(params["corners"], digits.shape[-1])
        images = warp_with(digits, homography)
        return Rendered(images, pool.labels[index], params, source_homography=homography)
