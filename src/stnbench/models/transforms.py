"""Transform families for spatial transformers.

A transform knows how many parameters it has, which parameters mean "leave the image alone", and how to
turn parameters into a sampling grid (output pixel -> normalised input coordinates). A new family is one
class here plus one file in ``configs/model/transform/``. Every grid goes through ``stnbench.sampling`` so
data generation and models share one coordinate convention (``ALIGN_CORNERS``).
"""

from __future__ import annotations

import torch

from stnbench.errors import ConfigError
from stnbench.sampling import affine_grid, control_grid, homography_grid, tps_grid


class Transform:
    name = "transform"
    num_params: int

    def identity(self) -> torch.Tensor:
        """Parameters [P] of the identity transform: the regression layer's initial bias."""
        raise NotImplementedError

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Sampling grid [B, height, width, 2] (normalised input coordinates) for ``params`` [B, P]."""
        raise NotImplementedError

    def compose(self, outer: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """Parameters of "apply ``update`` in the frame of the glimpse ``outer`` selects" (outer o update).

        Only families closed under composition with a cheap product implement it; the recurrent STN's
        ``theta_mode: composed`` needs it."""
        raise ConfigError(f"transform '{self.name}' does not support theta_mode=composed; "
                          "use theta_mode=absolute or model/transform=affine|projective")

    @property
    def composable(self) -> bool:
        return type(self).compose is not Transform.compose


class Affine(Transform):
    """Full 2x3 affine matrix: rotation, scale, shear and translation (6 parameters)."""

    name = "affine"
    num_params = 6

    def identity(self) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return affine_grid(params.reshape(-1, 2, 3), height, width)

    @staticmethod
    def homogeneous(params: torch.Tensor) -> torch.Tensor:
        """[B, 6] -> [B, 3, 3] with last row (0, 0, 1)."""
        last = params.new_tensor([0.0, 0.0, 1.0]).expand(len(params), 1, 3)
        return torch.cat([params.reshape(-1, 2, 3), last], 1)

    def compose(self, outer: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        # Grids map output -> input, so sampling with A_outer @ A_update reads the point A_update p of
        # the current glimpse: the update is expressed in the glimpse's own coordinates.
        product = self.homogeneous(outer) @ self.homogeneous(update)
        return product[:, :2].reshape(-1, 6)


class Projective(Transform):
    """Homography with its bottom-right entry fixed to 1 (8 parameters, row-major)."""

    name = "projective"
    num_params = 8

    def identity(self) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])

    @staticmethod
    def matrix(params: torch.Tensor) -> torch.Tensor:
        """[B, 8] -> [B, 3, 3] with bottom-right entry 1."""
        return torch.cat([params, torch.ones_like(params[:, :1])], 1).reshape(-1, 3, 3)

    @staticmethod
    def params_of(matrix: torch.Tensor) -> torch.Tensor:
        """[B, 3, 3] homographies -> [B, 8] parameters (scaled so the bottom-right entry is 1)."""
        return (matrix / matrix[:, 2:, 2:]).reshape(-1, 9)[:, :8]

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return homography_grid(self.matrix(params), height, width)

    def compose(self, outer: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        # As Affine.compose: H_outer @ H_update, the update in the outer glimpse's coordinates; rescaled so
        # the bottom-right entry is 1 again (kept away from 0 without flipping its sign).
        product = self.matrix(outer) @ self.matrix(update)
        last = product[:, 2, 2:]
        last = torch.where(last.abs() < 1e-6, torch.where(last < 0, -1e-6, 1e-6).to(last), last)
        return product.reshape(-1, 9)[:, :8] / last


class ThinPlateSpline(Transform):
    """Thin-plate spline through ``grid_size``^2 control points on a regular grid of the output image;
    the parameters are the 2D input positions each control point reads from (2 * grid_size^2 numbers)."""

    name = "tps"

    def __init__(self, grid_size: int = 4, span: float = 1.0) -> None:
        if grid_size < 2:
            raise ConfigError(f"tps grid_size must be >= 2 (a grid of control points), got {grid_size}")
        if not 0 < span <= 1:
            raise ConfigError(f"tps span must be in (0, 1] (control points inside the image), got {span}")
        self.grid_size, self.span = grid_size, span
        self.control = control_grid(grid_size) * span  # [K, 2] (x, y) normalised
        self.num_params = 2 * grid_size * grid_size

    def identity(self) -> torch.Tensor:
        return self.control.flatten().clone()

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return tps_grid(self.control, params.reshape(len(params), -1, 2), height, width)


class Attention(Transform):
    """Isotropic scale and translation (s, tx, ty): the axis-aligned square crops of attention models."""

    name = "attention"
    num_params = 3

    def identity(self) -> torch.Tensor:
        return torch.tensor([1.0, 0.0, 0.0])

    def grid(self, params: torch.Tensor, height: int, width: int) -> torch.Tensor:
        scale, tx, ty = params.unbind(-1)
        zero = torch.zeros_like(scale)
        theta = torch.stack([scale, zero, tx, zero, scale, ty], -1).reshape(-1, 2, 3)
        return affine_grid(theta, height, width)
