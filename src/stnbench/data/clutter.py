"""Digits and clutter pasted at integer positions on a larger canvas: T, TC and the building blocks of
the multi-digit benchmark.

Pasting is pure indexing (no resampling), so a translated digit keeps its exact pixels. Every paste
adds (or writes) one patch per image into the canvas; within one call no two writes hit the same pixel,
so the result is deterministic on every device (no atomic float adds). Overlaps of separate additive
pastes add up and the canvas is clipped to [0, 1] at the end.
"""

from __future__ import annotations

import torch

from stnbench.data.distortions import DIGIT_SIZE, ConfigError, Distortion, Rendered, as_float
from stnbench.data.mnist import DigitSplit

# MNIST centres each digit's ink in a 20x20 box inside the 28x28 image. DeepMind's mnist-cluttered (the
# reference generator) cuts crops anywhere in the 28x28 digit ("digit"); "ink_box" keeps them inside the
# central box, so that distractors are rarely empty (stnbench's first choice, kept as an option).
INK_BOX = 20
CROP_REGIONS = ("digit", "ink_box")


def random_int(low: int | torch.Tensor, high: int | torch.Tensor, shape: tuple[int, ...],
               generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform integers in [low, high] (inclusive), with per-sample bounds allowed."""
    span = torch.as_tensor(high, device=device) - torch.as_tensor(low, device=device) + 1
    draw = torch.rand(shape, generator=generator, device=device)
    return (torch.as_tensor(low, device=device) + (draw * span).floor().long().clamp(max=span - 1)).long()


def paste(canvas: torch.Tensor, patches: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
          overwrite: bool = False) -> None:
    """Add ``patches`` [B, h, w] into ``canvas`` [B, H, W] with top-left corners (``top``, ``left``) [B];
    ``overwrite`` writes them over what is there instead (Sønderby et al.'s generator pastes)."""
    batch, height, width = patches.shape
    rows = (top[:, None] + torch.arange(height, device=canvas.device))[:, :, None]
    cols = (left[:, None] + torch.arange(width, device=canvas.device))[:, None, :]
    images = torch.arange(batch, device=canvas.device)[:, None, None]
    if overwrite:
        canvas[images, rows, cols] = patches
    else:
        canvas[images, rows, cols] += patches


def crop(digits: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``size`` crops [B, size, size] of ``digits`` [B, 28, 28] at (``top``, ``left``) [B]."""
    ticks = torch.arange(size, device=digits.device)
    rows = (top[:, None] + ticks)[:, :, None]
    cols = (left[:, None] + ticks)[:, None, :]
    return digits[torch.arange(len(digits), device=digits.device)[:, None, None], rows, cols]


def other_digits(pool: DigitSplit, index: torch.Tensor, count: int,
                 generator: torch.Generator) -> torch.Tensor:
    """``count`` random pool indices per image [B, count], never the image's own main digit."""
    if len(pool) < 2:
        raise ValueError("clutter needs a pool of at least 2 digits")
    step = random_int(1, len(pool) - 1, (len(index), count), generator, index.device)
    return (index[:, None] + step) % len(pool)


def check_crop_region(crop_region: str) -> None:
    if crop_region not in CROP_REGIONS:
        raise ConfigError(f"crop_region must be one of {CROP_REGIONS}, got '{crop_region}'; "
                          "use digit (anywhere in the 28x28 digit, as the reference generator)")


def crop_margin(crop_region: str, size: int) -> int:
    """Pixels of the digit's border that crops keep out of: 0 for "digit", else up to the ink box."""
    if crop_region == "digit":
        return 0
    return max(0, min((DIGIT_SIZE - INK_BOX) // 2, (DIGIT_SIZE - size) // 2))


def check_clutter(canvas_size: int, num_distractors: int, crop_size: int) -> None:
    if num_distractors < 0:
        raise ConfigError(f"num_distractors must be >= 0 (0 for no clutter), got {num_distractors}")
    if not 1 <= crop_size <= DIGIT_SIZE:
        raise ConfigError(f"crop_size must be between 1 and {DIGIT_SIZE} (a crop of a 28x28 digit), "
                          f"got {crop_size}")
    if crop_size > canvas_size:
        raise ConfigError(f"crop_size={crop_size} does not fit on canvas_size={canvas_size}; "
                          "lower crop_size or raise canvas_size")


def add_clutter(canvas: torch.Tensor, pool: DigitSplit, index: torch.Tensor, count: int, size: int,
                generator: torch.Generator, crop_region: str = "ink_box") -> dict[str, torch.Tensor]:
    """Add ``count`` random ``size`` crops of other digits of ``pool`` anywhere on ``canvas`` [B, H, W];
    crops are cut from ``crop_region`` of the source digit."""
    batch, device = len(index), index.device
    sources = other_digits(pool, index, count, generator)
    margin = crop_margin(crop_region, size)
    crop_top = random_int(margin, DIGIT_SIZE - margin - size, (batch, count), generator, device)
    crop_left = random_int(margin, DIGIT_SIZE - margin - size, (batch, count), generator, device)
    top = random_int(0, canvas.shape[1] - size, (batch, count), generator, device)
    left = random_int(0, canvas.shape[2] - size, (batch, count), generator, device)
    for k in range(count):  # a small constant: one batched paste per distractor
        patches = crop(as_float(pool, sources[:, k]), crop_top[:, k], crop_left[:, k], size)
        paste(canvas, patches, top[:, k], left[:, k])
    return {"distractor_index": sources, "crop_top": crop_top, "crop_left": crop_left,
            "distractor_top": top, "distractor_left": left}


class Translated(Distortion):
    """T: the 28x28 digit at a uniformly random integer position on a larger canvas (Jaderberg et al.)."""

    name = "translated"

    def __init__(self, canvas_size: int = 60) -> None:
        if canvas_size < DIGIT_SIZE:
            raise ConfigError(f"canvas_size={canvas_size} cannot hold a {DIGIT_SIZE}x{DIGIT_SIZE} digit; "
                              f"use at least {DIGIT_SIZE}")
        self.image_size = canvas_size

    def place_digit(self, pool: DigitSplit, index: torch.Tensor,
                    generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch, device = len(index), index.device
        canvas = torch.zeros(batch, self.image_size, self.image_size, device=device)
        top = random_int(0, self.image_size - DIGIT_SIZE, (batch,), generator, device)
        left = random_int(0, self.image_size - DIGIT_SIZE, (batch,), generator, device)
        paste(canvas, as_float(pool, index), top, left)
        return canvas, {"top": top, "left": left}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        canvas, params = self.place_digit(pool, index, generator)
        return Rendered(canvas.unsqueeze(1), pool.labels[index], params)


class Cluttered(Translated):
    """TC: translated, plus ``num_distractors`` random ``crop_size`` crops of other digits of the same split,
    cut anywhere inside the 28x28 digit (``crop_region="digit"``, as DeepMind's mnist-cluttered) and added.

    The 60x60 / 6 x 6x6 default is Jaderberg et al.'s cluttered MNIST; ``data=cluttered_ram``
    (``canvas_size=100 num_distractors=8 crop_size=8``) is the 100x100 setting of Mnih et al. 2014.
    Version 2: crops from the whole digit (version 1 cut them from the central 20x20 box, now
    ``crop_region=ink_box``).
    """

    name = "cluttered"
    version = 2

    def __init__(self, canvas_size: int = 60, num_distractors: int = 6, crop_size: int = 6,
                 crop_region: str = "digit") -> None:
        super().__init__(canvas_size)
        check_clutter(canvas_size, num_distractors, crop_size)
        check_crop_region(crop_region)
        self.num_distractors, self.crop_size, self.crop_region = num_distractors, crop_size, crop_region

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        canvas, params = self.place_digit(pool, index, generator)
        params.update(add_clutter(canvas, pool, index, self.num_distractors, self.crop_size, generator,
                                  self.crop_region))
        return Rendered(canvas.clamp_(0.0, 1.0).unsqueeze(1), pool.labels[index], params)
