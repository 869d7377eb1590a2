"""Batched distortion generators: clean MNIST digits in, benchmark images and targets out.

A generator draws per-sample parameters from an explicit ``torch.Generator`` and renders a whole batch
with one ``grid_sample`` call, on whatever device the digits live on (the training GPU when there is one).
Parameters are returned alongside the images so tests can check them against their configured ranges.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from stnbench.data.mnist import DigitSplit
from stnbench.errors import ConfigError  # noqa: F401 (re-exported: plug-ins import it from here)
from stnbench.sampling import affine_grid, control_grid, homography_grid, sample, tps_grid

DIGIT_SIZE = 28
PAD = -100  # a sequence target's steps after its end class: F.cross_entropy's default ignore_index, never scored


@dataclass
class Rendered:
    """One generated batch: ``images`` float [B, C, H, W] in [0, 1] (background 0), ``targets`` int64
    [B] (or [B, T] for sequences), and the per-sample ``params`` that produced them. A distortion with
    ``source_warp`` also returns ``source_homography`` [B, 3, 3]: image pixel x reads digit ``index[i]`` at H x."""

    images: torch.Tensor
    targets: torch.Tensor
    params: dict[str, torch.Tensor]
    source_homography: torch.Tensor | None = None


def uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def as_float(pool: DigitSplit, index: torch.Tensor) -> torch.Tensor:
    """uint8 digits [..., 28, 28] -> float in [0, 1]."""
    return pool.images[index].float().div_(255.0)


def digits_as_float(pool: DigitSplit, index: torch.Tensor) -> torch.Tensor:
    """uint8 digits [B, 28, 28] -> float [B, 1, 28, 28] in [0, 1], ready for ``grid_sample``."""
    return as_float(pool, index).unsqueeze(1)


def placement_theta(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, canvas: int) -> torch.Tensor:
    """Affine matrices [B, 2, 3] that map canvas coordinates to coordinates of the 28x28 digit.

    The digit is rotated by ``angle`` (radians, counter-clockwise on screen), scaled by ``scale`` and its
    centre moved ``shift`` [B, 2] pixels (x, y) from the canvas centre. Normalised coordinates span the
    canvas (output) and the digit (input), hence the ``canvas / 28`` factor.
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Inverse rotation R(-a): maps a canvas offset back into the digit's own frame.
    inverse = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    inverse = inverse / scale[:, None, None]
    linear = inverse * (canvas / DIGIT_SIZE)
    offset = -(inverse @ shift.unsqueeze(-1)).squeeze(-1) * (2.0 / DIGIT_SIZE)
    return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)


class Distortion:
    """Base class: subclasses set ``image_size`` and implement ``render``."""

    name = "distortion"
    # Part of the fixed eval sets' cache key: bump it whenever the images for the same config and seed change.
    version: int = 1
    image_size: int = DIGIT_SIZE
    channels: int = 1
    num_classes: int = 10
    sequence_length: int | None = None  # prediction steps of a sequence target: digits (+ the end class); None: a label
    end_class: int | None = None  # the class that ends a sequence of variable length (after it: PAD), or None
    # Each image is digit index[i] sampled through a homography that render returns (Rendered.source_homography):
    # the data can hand models the clean digit and that warp (stnbench.source.Source; IC-STN starts there).
    source_warp: bool = False

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        raise NotImplementedError

    def for_split(self, split: str) -> Distortion:
        """The generator that renders ``split`` ("train", "val", "test"): this one, unless its test images are
        drawn differently (``ScatteredDigits``' test digit count); its ``sequence_length`` is that split's."""
        return self


class Plain(Distortion):
    """Undistorted MNIST, 28x28: the sanity baseline."""

    name = "mnist"

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        return Rendered(digits_as_float(pool, index), pool.labels[index], {})


class AffinePlacement(Distortion):
    """Rotate, scale and move each digit on a square canvas with one batched ``grid_sample``."""

    def __init__(
        self,
        max_angle: float = 0.0,
        min_scale: float = 1.0,
        max_scale: float = 1.0,
        canvas_size: int = DIGIT_SIZE,
        translate: bool = False,
    ) -> None:
        if not 0 <= max_angle <= 180:
            raise ConfigError(f"max_angle must be in [0, 180] degrees, got {max_angle}")
        if not 0 < min_scale <= max_scale:
            raise ConfigError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if canvas_size < DIGIT_SIZE:
            raise ConfigError(
                f"canvas_size={canvas_size} is smaller than a {DIGIT_SIZE}x{DIGIT_SIZE} MNIST digit; "
                f"use a canvas of at least {DIGIT_SIZE} pixels"
            )
        if translate and canvas_size < DIGIT_SIZE * max_scale:
            raise ConfigError(
                f"canvas_size={canvas_size} cannot hold a digit scaled by max_scale={max_scale} "
                f"({DIGIT_SIZE * max_scale:.1f} px); raise canvas_size or lower max_scale"
            )
        self.max_angle = max_angle
        self.min_scale, self.max_scale = min_scale, max_scale
        self.image_size = canvas_size
        self.translate = translate

    def sample_params(self, n: int, generator: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        angle = uniform(n, -self.max_angle, self.max_angle, generator, device)
        scale = uniform(n, self.min_scale, self.max_scale, generator, device)
        shift = torch.zeros(n, 2, device=device)
        if self.translate:
            # Keep the (scaled, unrotated) 28x28 box of the digit inside the canvas.
            room = (self.image_size - DIGIT_SIZE * scale) / 2
            shift = (2 * torch.rand(n, 2, generator=generator, device=device) - 1) * room[:, None]
        return {"angle": angle, "scale": scale, "shift": shift}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        params = self.sample_params(len(index), generator, index.device)
        theta = placement_theta(params["angle"] * (math.pi / 180), params["scale"], params["shift"], self.image_size)
        grid = affine_grid(theta, self.image_size, self.image_size)
        images = sample(digits_as_float(pool, index), grid).clamp_(0.0, 1.0)
        return Rendered(images, pool.labels[index], params)


class Rotated(AffinePlacement):
    """R: rotation uniform in +-90 degrees, 28x28 (Jaderberg et al. 2015)."""

    name = "rotated"

    def __init__(self, max_angle: float = 90.0, canvas_size: int = DIGIT_SIZE) -> None:
        super().__init__(max_angle=max_angle, canvas_size=canvas_size)


class RTS(AffinePlacement):
    """RTS: rotation +-45 degrees, scale 0.7-1.2, random position on a 42x42 canvas."""

    name = "rts"

    def __init__(
        self, max_angle: float = 45.0, min_scale: float = 0.7, max_scale: float = 1.2, canvas_size: int = 42
    ) -> None:
        super().__init__(max_angle, min_scale, max_scale, canvas_size, translate=True)


def check_sigma(name: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{name} is a standard deviation in pixels and must be >= 0, got {value}; "
                          "use 0 for no noise")


def check_scale_range(min_scale: float, max_scale: float) -> None:
    if not 0 < min_scale <= max_scale:
        raise ConfigError(f"need 0 < min_scale <= max_scale, got min_scale={min_scale}, "
                          f"max_scale={max_scale}")


def homography_from_points(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """3x3 matrices [B, 3, 3] with H @ (source, 1) ~ (target, 1) for 4 point pairs [B, 4, 2] each.

    The usual 8x8 direct linear transform with h33 = 1, solved in float64 (the system is badly scaled
    in float32). For a sampling grid pass *output* points as ``source`` and *input* points as ``target``.
    """
    x, y = source.double().unbind(-1)
    u, v = target.double().unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    system = torch.cat([rows_u, rows_v], 1)  # [B, 8, 8]
    rhs = torch.cat([u, v], 1).unsqueeze(-1)  # [B, 8, 1]
    h = torch.linalg.solve(system, rhs).squeeze(-1)
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3).to(source.dtype)


# Corners of the 28x28 digit in normalised coordinates, clockwise on screen from top-left.
_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))


def is_convex(quads: torch.Tensor) -> torch.Tensor:
    """[B, 4, 2] corners in the order of ``_CORNERS`` -> bool [B]: convex with the original orientation.

    A folded or self-intersecting quad is not the image of a square under an invertible homography that
    keeps the digit in front of the camera; those draws are rejected.
    """
    edges = quads.roll(-1, dims=1) - quads
    nxt = edges.roll(-1, dims=1)
    cross = edges[..., 0] * nxt[..., 1] - edges[..., 1] * nxt[..., 0]
    return (cross > 1e-3).all(1)


class Projective(Distortion):
    """P: scale uniformly, then move each of the four corners by Gaussian noise (Jaderberg et al. 2015).

    The noisy corners define a homography; draws whose quad folds over (non-convex) are redrawn a fixed
    number of times (no data-dependent loop, no device sync) and, if still folded, fall back to the
    plain scaled square. The per-corner offsets actually used are returned in ``params``.
    """

    name = "projective"
    REDRAWS = 8

    def __init__(self, min_scale: float = 0.75, max_scale: float = 1.0, sigma: float = 5.0,
                 canvas_size: int = DIGIT_SIZE) -> None:
        check_scale_range(min_scale, max_scale)
        check_sigma("sigma", sigma)
        if canvas_size < DIGIT_SIZE:
            raise ConfigError(f"canvas_size={canvas_size} is smaller than a {DIGIT_SIZE}x{DIGIT_SIZE} digit; "
                              f"use at least {DIGIT_SIZE}")
        self.min_scale, self.max_scale, self.sigma = min_scale, max_scale, sigma
        self.image_size = canvas_size

    def sample_params(self, n: int, generator: torch.Generator,
                      device: torch.device) -> dict[str, torch.Tensor]:
        scale = uniform(n, self.min_scale, self.max_scale, generator, device)
        corners = torch.tensor(_CORNERS, device=device) * (DIGIT_SIZE / 2)  # pixels from the centre
        square = corners * scale[:, None, None]
        noise = torch.randn(n, 4, 2, generator=generator, device=device) * self.sigma
        for _ in range(self.REDRAWS):
            redraw = torch.randn(n, 4, 2, generator=generator, device=device) * self.sigma
            folded = ~is_convex(square + noise)
            noise = torch.where(folded[:, None, None], redraw, noise)
        noise = torch.where(is_convex(square + noise)[:, None, None], noise, torch.zeros_like(noise))
        return {"scale": scale, "corner_noise": noise}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        params = self.sample_params(len(index), generator, index.device)
        corners = torch.tensor(_CORNERS, device=index.device).expand(len(index), 4, 2)
        placed = corners * params["scale"][:, None, None] * (DIGIT_SIZE / 2) + params["corner_noise"]
        # Output (canvas, normalised by its half-size) -> input (digit, normalised) homography.
        matrix = homography_from_points(placed / (self.image_size / 2), corners)
        grid = homography_grid(matrix, self.image_size, self.image_size)
        images = sample(digits_as_float(pool, index), grid).clamp_(0.0, 1.0)
        return Rendered(images, pool.labels[index], params)


@functools.lru_cache(maxsize=16)
def tps_weights(grid_size: int, size: int, device: str) -> torch.Tensor:
    """The thin-plate spline of ``sampling.tps_grid`` as one linear map [size*size, K] from control-point
    targets to grid points (it is linear in the targets, and the control points never change).

    Read off column by column from ``tps_grid`` itself, once; a batch then needs one matmul instead of a
    batched linear solve (which stalls badly on oversubscribed CPU threads).
    """
    control = control_grid(grid_size, torch.device(device))
    unit = torch.eye(len(control), device=control.device)[..., None].expand(-1, -1, 2)
    columns = tps_grid(control, unit.contiguous(), size, size)[..., 0]  # [K, H, W]
    return columns.reshape(len(control), -1).T.contiguous()


class Elastic(Distortion):
    """E: thin-plate-spline warp; a grid of control points each displaced by Gaussian noise (in pixels).

    ``min_scale``/``max_scale``: the digit is first scaled about its centre by U(min_scale, max_scale).
    The default (1, 1) leaves it unscaled; the reading of Jaderberg et al.'s appendix in which E also
    scales by U(0.75, 1.0) is ``min_scale=0.75`` (see docs/datasets.md).
    """

    name = "elastic"

    def __init__(self, grid_size: int = 4, sigma: float = 1.5, min_scale: float = 1.0,
                 max_scale: float = 1.0) -> None:
        if grid_size < 2:
            raise ConfigError(f"grid_size must be >= 2 (a grid_size x grid_size lattice of TPS control "
                              f"points), got {grid_size}")
        check_sigma("sigma", sigma)
        check_scale_range(min_scale, max_scale)
        self.grid_size, self.sigma = grid_size, sigma
        self.min_scale, self.max_scale = min_scale, max_scale
        self.image_size = DIGIT_SIZE

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        device = index.device
        control = control_grid(self.grid_size, device)
        shape = (len(index), len(control), 2)
        displacement = torch.randn(shape, generator=generator, device=device) * self.sigma
        params = {"displacement": displacement}
        targets = control + displacement * (2.0 / self.image_size)
        if (self.min_scale, self.max_scale) != (1.0, 1.0):  # no extra draw: unscaled E keeps its images
            scale = uniform(len(index), self.min_scale, self.max_scale, generator, device)
            targets = targets / scale[:, None, None]  # output point p reads digit point p / s: a zoom by s
            params["scale"] = scale
        weights = tps_weights(self.grid_size, self.image_size, str(device))  # [H*W, K]
        size = self.image_size
        grid = torch.einsum("pk,bkc->bpc", weights, targets).view(len(index), size, size, 2)
        images = sample(digits_as_float(pool, index), grid).clamp_(0.0, 1.0)
        return Rendered(images, pool.labels[index], params)
