"""Scattered digits of unknown count (``data=multi_digit_scattered``): a task where the next glimpse depends on
the last.

On Sønderby et al.'s sequences the digits stand in one row, always as many, so where to look next follows from
the whole image alone. Here 1..N digits lie anywhere on the canvas, their 28x28 boxes never overlapping, with
Sønderby et al.'s clutter; a model reads them left to right and must say how many there are: the target is
the digit sequence, then the end class (10), then ``PAD`` (ignored by the loss and the metrics). The test
images may hold another number of digits than the training ones (``test_num_digits``): more than trained is
the case for a model that feeds back what it has read (Eslami et al. 2016's AIR against DAIR).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from stnbench.data.clutter import paste, random_int
from stnbench.data.distortions import DIGIT_SIZE, PAD, ConfigError, Distortion, Rendered, as_float
from stnbench.data.mnist import DigitSplit
from stnbench.data.sequences import SonderbyClutter, int_range

END_CLASS = 10  # the class after the last digit: 0-9 are digits
MAX_DIGITS = 9  # per image; the layout draws grow with the square of the count
# Layouts are drawn whole and redrawn where two boxes overlap (every non-overlapping layout equally likely):
# up to ROUNDS rounds of CANDIDATES layouts per image. A canvas is accepted only if at least MIN_ACCEPTANCE of
# random layouts fit, so an image misses with probability below (1 - 0.01) ** 8192 < 1e-35.
CANDIDATES, ROUNDS, MIN_ACCEPTANCE = 128, 64, 0.01
ESTIMATE_LAYOUTS, ESTIMATE_SEED = 8192, 0  # the acceptance check: this many layouts, drawn from a fixed seed


def digit_range(name: str, value: int | Sequence[int]) -> tuple[int, int]:
    """``n`` or ``[low, high]`` digits per image (both ends included), at least one."""
    low, high = (int(value), int(value)) if isinstance(value, int) else int_range(f"data.distortion.{name}", value)
    if low < 1:
        raise ConfigError(f"data.distortion.{name}={value}: every image holds at least one digit; use [1, n] or more")
    if high > MAX_DIGITS:
        raise ConfigError(f"data.distortion.{name}={value}: at most {MAX_DIGITS} digits per image")
    return low, high


def overlaps(left: torch.Tensor, top: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Whether any two active 28x28 boxes of a layout overlap: ``left``, ``top``, ``active`` [..., N] -> [...]."""
    apart = ((left[..., :, None] - left[..., None, :]).abs() >= DIGIT_SIZE) | (
        (top[..., :, None] - top[..., None, :]).abs() >= DIGIT_SIZE)
    pair = active[..., :, None] & active[..., None, :]
    pair = pair & ~torch.eye(left.shape[-1], dtype=torch.bool, device=left.device)
    return (pair & ~apart).flatten(-2).any(-1)


def acceptance(canvas_size: int, count: int, layouts: int = ESTIMATE_LAYOUTS) -> float:
    """The share of uniformly random layouts of ``count`` boxes that do not overlap (a fixed-seed estimate)."""
    generator = torch.Generator().manual_seed(ESTIMATE_SEED)
    spots = random_int(0, canvas_size - DIGIT_SIZE, (layouts, count, 2), generator, torch.device("cpu"))
    active = torch.ones(layouts, count, dtype=torch.bool)
    return 1.0 - overlaps(spots[..., 0], spots[..., 1], active).float().mean().item()


def check_room(canvas_size: int, count: int, name: str) -> None:
    """One line when ``count`` non-overlapping digits cannot be placed at random on the canvas often enough."""
    if canvas_size < DIGIT_SIZE:
        raise ConfigError(f"canvas_size={canvas_size} is smaller than a {DIGIT_SIZE}x{DIGIT_SIZE} MNIST digit; "
                          f"use a canvas of at least {DIGIT_SIZE} pixels")
    if acceptance(canvas_size, count) >= MIN_ACCEPTANCE:
        return
    small, large = canvas_size, 2 * canvas_size
    while acceptance(large, count) < MIN_ACCEPTANCE:
        small, large = large, 2 * large
    while large - small > 1:  # the smallest canvas that is roomy enough (room grows with the canvas)
        middle = (small + large) // 2
        small, large = (small, middle) if acceptance(middle, count) >= MIN_ACCEPTANCE else (middle, large)
    enough = large
    raise ConfigError(f"canvas_size={canvas_size} has too little room for {count} non-overlapping {DIGIT_SIZE}x"
                      f"{DIGIT_SIZE} digits at random positions (data.distortion.{name} up to {count}); raise "
                      f"data.distortion.canvas_size to at least {enough} or place fewer digits")


class ScatteredDigits(SonderbyClutter, Distortion):
    """``num_digits`` = [low, high] digits per image (the count uniform in that range), each drawn with
    replacement from the image's split, at uniformly random integer positions anywhere on the canvas such that
    no two 28x28 boxes overlap (every such layout equally likely), added (boxes never overlap, so it is
    the same as pasting), then Sønderby et al.'s clutter layer added and the sum clipped to [0, 1].

    Reading order: left to right by the digit's centre (boxes are all 28x28, so by their left edge), top to
    bottom where two centres share a column. Target [B, high + 1]: the digits, ``END_CLASS``, then ``PAD``.
    ``test_num_digits`` (default: ``num_digits``) is the range of the test images; validation keeps the
    training range (``for_split``), so model selection never sees the test count.
    """

    name = "multi_digit_scattered"
    num_classes = END_CLASS + 1
    end_class = END_CLASS

    def __init__(self, num_digits: int | Sequence[int] = (1, 4), test_num_digits: int | Sequence[int] | None = None,
                 canvas_size: int = 100, num_distractors: int = 8, crop_size: int = 9,
                 distractor_source: str = "bank", bank_size: int = 100_000, bank_seed: int = 1234,
                 root: str = "data") -> None:
        self.num_digits = digit_range("num_digits", num_digits)
        self.test_num_digits = digit_range("test_num_digits", test_num_digits if test_num_digits is not None
                                           else self.num_digits)
        check_room(canvas_size, self.num_digits[1], "num_digits")
        check_room(canvas_size, self.test_num_digits[1], "test_num_digits")
        self.set_clutter(canvas_size, num_distractors, crop_size, distractor_source, bank_size, bank_seed, root)

    @property
    def sequence_length(self) -> int:  # type: ignore[override]
        """Prediction steps of a target: the most digits an image of this range holds, plus the end class."""
        return self.num_digits[1] + 1

    def for_split(self, split: str) -> ScatteredDigits:
        """The test split's generator draws ``test_num_digits``; train and validation draw ``num_digits``."""
        if split != "test" or self.test_num_digits == self.num_digits:
            return self
        tester = copy.copy(self)
        tester.num_digits = self.test_num_digits
        return tester

    def sample_layout(self, batch: int, generator: torch.Generator,
                      device: torch.device) -> dict[str, torch.Tensor]:
        """Per image a count [B] and the top-left corners [B, N] of its digits in reading order (-1 past it)."""
        low, high = self.num_digits
        count = random_int(low, high, (batch,), generator, device)
        active = torch.arange(high, device=device) < count[:, None]  # [B, N]: slots that hold a digit
        left = torch.zeros(batch, high, dtype=torch.long, device=device)
        top = torch.zeros_like(left)
        pending = torch.arange(batch, device=device)
        for _ in range(ROUNDS):  # whole layouts, redrawn for the images whose layouts all overlapped
            spots = random_int(0, self.image_size - DIGIT_SIZE, (len(pending), CANDIDATES, high, 2), generator, device)
            fits = ~overlaps(spots[..., 0], spots[..., 1], active[pending, None, :])  # [P, CANDIDATES]
            first = fits.int().argmax(1)  # the first layout that fits (any, where none does: not kept)
            chosen = spots[torch.arange(len(pending), device=device), first]  # [P, N, 2]
            placed = fits.any(1)
            left[pending[placed]], top[pending[placed]] = chosen[placed, :, 0], chosen[placed, :, 1]
            pending = pending[~placed]
            if not len(pending):
                break
        else:
            raise RuntimeError(f"{len(pending)} image(s) found no non-overlapping layout in {ROUNDS * CANDIDATES} "
                               "tries; the canvas check should have refused this canvas size (a bug)")
        # Reading order: by centre x, then centre y; unused slots last.
        key = torch.where(active, left * self.image_size + top, torch.full_like(left, self.image_size ** 2))
        order = key.argsort(dim=1, stable=True)
        left, top = left.gather(1, order), top.gather(1, order)
        return {"count": count, "left": left.masked_fill(~active, -1), "top": top.masked_fill(~active, -1)}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        batch, device = len(index), index.device
        high = self.num_digits[1]
        params = self.sample_layout(batch, generator, device)
        active = params["left"] >= 0
        digits = random_int(0, len(pool) - 1, (batch, high), generator, device).masked_fill(~active, -1)
        canvas = torch.zeros(batch, self.image_size, self.image_size, device=device)
        for t in range(high):  # a small constant: one batched paste per slot (an empty slot adds zeros at 0, 0)
            ink = as_float(pool, digits[:, t].clamp(min=0)) * active[:, t, None, None]
            paste(canvas, ink, params["top"][:, t].clamp(min=0), params["left"][:, t].clamp(min=0))
        layer, clutter = self.distractors(pool, batch, generator, device)
        params.update(clutter, digit_index=digits)
        return Rendered(canvas.add_(layer).clamp_(0.0, 1.0).unsqueeze(1), self.targets(pool, digits, params["count"]),
                        params)

    def targets(self, pool: DigitSplit, digits: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """[B, N + 1]: the digits' labels in reading order, ``END_CLASS`` after the last, ``PAD`` after that."""
        batch, high = digits.shape
        labels = torch.full((batch, high + 1), PAD, dtype=torch.long, device=digits.device)
        labels[:, :high] = torch.where(digits >= 0, pool.labels[digits.clamp(min=0)], PAD)
        labels[torch.arange(batch, device=digits.device), count] = END_CLASS
        return labels
