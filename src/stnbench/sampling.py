"""The one place that turns sampling grids into images, shared by data generation and every STN.

Two classic STN bugs are designed away here:
* ``affine_grid`` and ``grid_sample`` must agree on ``align_corners``: both read ``ALIGN_CORNERS``.
* Grids and sampling run in fp32 even under mixed precision (``bf16-mixed``): ``grid_sample`` and the
  grids are inaccurate in half precision (a bf16 coordinate is off by up to half a pixel on 100 px).
* The out-of-frame fill must equal the image background. Images in stnbench stay in [0, 1] with a
  background of exactly 0 until *after* sampling (classifiers normalise their own input), so zero padding
  fills with background. Normalising before sampling would fill with a bright value and teach the STN
  to shrink the digit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

ALIGN_CORNERS = False
BACKGROUND = 0.0


def fp32(function: Callable) -> Callable:
    """Run ``function`` with autocast off and its tensor arguments in float32 (a no-op in fp32 training)."""

    def as_float(value):
        return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device):
            return function(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return function(*map(as_float, args), **{key: as_float(value) for key, value in kwargs.items()})

    return wrapper


@fp32
def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid [B, H, W, 2] for affine matrices ``theta`` [B, 2, 3] (output -> input coords)."""
    size = (theta.shape[0], 1, height, width)
    return F.affine_grid(theta, list(size), align_corners=ALIGN_CORNERS)


@fp32
def sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling of ``images`` [B, C, H, W] at ``grid`` [B, h, w, 2]; outside reads background."""
    if BACKGROUND != 0.0:  # pragma: no cover - guarded by a test; zero padding is only right for 0
        raise AssertionError("zero padding assumes a background of 0")
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=ALIGN_CORNERS)


def pixel_grid(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised coordinates [H, W, 2] of pixel centres, matching ``ALIGN_CORNERS``."""
    theta = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=device)
    return affine_grid(theta, height, width)[0]


def control_grid(size: int, device: torch.device | None = None) -> torch.Tensor:
    """A ``size`` x ``size`` grid of points [size*size, 2] (x, y) spanning the image in normalised
    coordinates: the control points of thin-plate splines, in data (elastic) and models (TPS) alike."""
    ticks = torch.linspace(-1.0, 1.0, size, device=device)
    y, x = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([x, y], -1).reshape(-1, 2)


@fp32
def homography_grid(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid [B, H, W, 2] for 3x3 homographies ``matrix`` [B, 3, 3] (output -> input coords)."""
    points = pixel_grid(height, width, matrix.device).reshape(1, -1, 2)
    ones = torch.ones_like(points[..., :1])
    mapped = torch.cat([points, ones], -1).expand(len(matrix), -1, -1) @ matrix.transpose(1, 2)
    denominator = mapped[..., 2:]
    # Keep the homogeneous divisor away from 0 without flipping its sign.
    denominator = torch.where(denominator.abs() < 1e-6, torch.full_like(denominator, 1e-6), denominator)
    return (mapped[..., :2] / denominator).reshape(len(matrix), height, width, 2)


def _tps_kernel(distance_sq: torch.Tensor) -> torch.Tensor:
    """Thin-plate radial basis U(r) = r^2 log r^2 (0 at r = 0)."""
    return distance_sq * torch.log(distance_sq.clamp_min(1e-12))


@fp32
def tps_grid(control: torch.Tensor, targets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sampling grid [B, H, W, 2] of the thin-plate spline f with f(control_k) = targets[b, k].

    ``control`` [K, 2] are points of the output image and ``targets`` [B, K, 2] where they read from
    the input (both normalised). ``targets == control`` gives the identity.
    """
    count = len(control)
    control = control.to(targets)
    system = torch.zeros(count + 3, count + 3, dtype=targets.dtype, device=targets.device)
    system[:count, :count] = _tps_kernel(torch.cdist(control, control).square())
    affine_part = torch.cat([torch.ones(count, 1, dtype=targets.dtype, device=targets.device), control], 1)
    system[:count, count:] = affine_part
    system[count:, :count] = affine_part.T
    rhs = torch.cat([targets, targets.new_zeros(len(targets), 3, 2)], 1)  # [B, K + 3, 2]
    coefficients = torch.linalg.solve(system, rhs)
    points = pixel_grid(height, width, targets.device).reshape(-1, 2).to(targets)
    basis = torch.cat([_tps_kernel(torch.cdist(points, control).square()),
                       torch.ones(len(points), 1, dtype=targets.dtype, device=targets.device), points], 1)
    return (basis @ coefficients).reshape(len(targets), height, width, 2)
