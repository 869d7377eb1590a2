"""Multi-digit sequences in clutter (Sønderby et al. 2015, "Recurrent Spatial Transformer Networks").

``SonderbySequence`` (``data=multi_digit``) is the authors' generator
(skaae/recurrent-spatial-transformer-code, ``MNIST_SEQUENCE/create_mnist_sequence.py``), every number a
config value. ``MultiDigit`` (``data=multi_digit_jittered``) is stnbench's first generator: a tilted row
with per-digit jitter and same-split clutter. Both return the digit sequence [B, T] read left to right,
so a recurrent model can attend to one digit per step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from stnbench.data.clutter import add_clutter, check_clutter, crop, other_digits, paste, random_int
from stnbench.data.distortions import DIGIT_SIZE, ConfigError, Distortion, Rendered, as_float, uniform
from stnbench.data.mnist import DigitSplit, load_mnist
from stnbench.resolvers import centred_row

MAX_DIGITS = 5
MIN_SPACING = 14  # below this neighbouring digits overlap so much that they can no longer be read


class MultiDigit(Distortion):
    """Digits ``spacing`` pixels apart (left edges), rows tilted by ``slope`` in [-max_slope, max_slope]
    and each digit shifted vertically by up to ``max_offset`` pixels; plus clutter."""

    name = "multi_digit"

    def __init__(self, num_digits: int = 3, canvas_size: int = 100, spacing: int = 28, max_slope: float = 0.3,
                 max_offset: float = 6.0, num_distractors: int = 8, crop_size: int = 9) -> None:
        if not 1 <= num_digits <= MAX_DIGITS:
            raise ConfigError(f"num_digits must be between 1 and {MAX_DIGITS}, got {num_digits}")
        if not MIN_SPACING <= spacing:
            raise ConfigError(f"spacing={spacing} px between neighbouring digits' left edges makes them "
                              "overlap "
                              f"unreadably; use at least {MIN_SPACING} ({DIGIT_SIZE} = side by side)")
        if max_slope < 0 or max_offset < 0:
            raise ConfigError(f"max_slope and max_offset must be >= 0, got {max_slope}, {max_offset}")
        width = (num_digits - 1) * spacing + DIGIT_SIZE
        if canvas_size < width:
            raise ConfigError(f"canvas_size={canvas_size} cannot hold {num_digits} digits {spacing} px apart "
                              f"({width} px wide); raise canvas_size or lower spacing/num_digits")
        rise = max_slope * (num_digits - 1) * spacing + 2 * max_offset
        if canvas_size < DIGIT_SIZE + rise:
            raise ConfigError(f"canvas_size={canvas_size} cannot hold a row of digits that rises up to "
                              f"{rise:.1f} px (max_slope={max_slope}, max_offset={max_offset}); lower them "
                              "or raise canvas_size "
                              f"to at least {DIGIT_SIZE + rise:.0f}")
        check_clutter(canvas_size, num_distractors, crop_size)
        self.num_digits, self.image_size, self.spacing = num_digits, canvas_size, spacing
        self.max_slope, self.max_offset = max_slope, max_offset
        self.num_distractors, self.crop_size = num_distractors, crop_size

    @property
    def sequence_length(self) -> int:  # type: ignore[override]
        return self.num_digits

    def sample_layout(self, batch: int, generator: torch.Generator,
                      device: torch.device) -> dict[str, torch.Tensor]:
        """Top-left corners [B, T] of the digits: left to right, inside the canvas."""
        count, free = self.num_digits, self.image_size - DIGIT_SIZE
        last_start = self.image_size - (count - 1) * self.spacing - DIGIT_SIZE
        start = random_int(0, last_start, (batch,), generator, device)
        left = start[:, None] + self.spacing * torch.arange(count, device=device)
        slope = uniform(batch, -self.max_slope, self.max_slope, generator, device)
        offset = (2 * torch.rand(batch, count, generator=generator, device=device) - 1) * self.max_offset
        steps = (torch.arange(count, device=device) - (count - 1) / 2) * self.spacing
        rise = slope[:, None] * steps + offset  # vertical position relative to the row's centre line
        low, high = -rise.min(1).values, free - rise.max(1).values  # the centre line keeps every digit inside
        base = low + (high - low) * torch.rand(batch, generator=generator, device=device)
        top = (base[:, None] + rise).round().long().clamp(0, free)
        return {"left": left, "top": top, "slope": slope, "offset": offset}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        batch, device = len(index), index.device
        # The main digit comes first; the others are different digits of the same split.
        digits = torch.cat([index[:, None], other_digits(pool, index, self.num_digits - 1, generator)], 1)
        params = {"digit_index": digits, **self.sample_layout(batch, generator, device)}
        canvas = torch.zeros(batch, self.image_size, self.image_size, device=device)
        for t in range(self.num_digits):  # a small constant: one batched paste per digit
            paste(canvas, as_float(pool, digits[:, t]), params["top"][:, t], params["left"][:, t])
        params.update(add_clutter(canvas, pool, index, self.num_distractors, self.crop_size, generator))
        return Rendered(canvas.clamp_(0.0, 1.0).unsqueeze(1), pool.labels[digits], params)


DISTRACTOR_SOURCES = ("bank", "same_split")


def int_range(name: str, value: Sequence[int]) -> tuple[int, int]:
    """A config pair [low, high] of integers, both ends included."""
    pair = tuple(value)
    if len(pair) != 2 or any(int(v) != v for v in pair) or pair[0] > pair[1]:
        raise ConfigError(f"{name} must be [low, high] with integers low <= high (both included), got {value}")
    return int(pair[0]), int(pair[1])


@functools.lru_cache(maxsize=4)
def distractor_bank(root: str, crop_size: int, size: int, seed: int) -> torch.Tensor:
    """``size`` uint8 crops [N, s, s] of the 60k MNIST training digits (our train + validation split),
    each of one random digit at a random position inside it, drawn once from ``seed``.

    The reference builds such a fixed bank (100k crops of 9x9) and uses it for every split, test included.
    Positions are numpy's ``randint(28 - s)``: 0 .. 27 - s, as in the reference.
    """
    digits = load_mnist(root, train=True, download=False).images
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(len(digits), (size,), generator=generator)
    top = torch.randint(DIGIT_SIZE - crop_size, (size,), generator=generator)
    left = torch.randint(DIGIT_SIZE - crop_size, (size,), generator=generator)
    return crop(digits[source], top, left, crop_size).contiguous()


_BANK_ON_DEVICE: dict[tuple, torch.Tensor] = {}


class SonderbyClutter:
    """Sønderby et al.'s clutter, shared by their sequences and the scattered digits: ``num_distractors`` crops
    of ``crop_size`` written (each over the previous ones) into a layer of their own at positions
    0 .. W - 1 - s, from a fixed bank of crops of the MNIST training digits (``distractor_source=bank``, the
    reference) or from digits of the image's own split (``same_split``). The layer is added to the digits and
    the sum clipped by the generator."""

    image_size: int

    def set_clutter(self, canvas_size: int, num_distractors: int, crop_size: int, distractor_source: str,
                    bank_size: int, bank_seed: int, root: str) -> None:
        """Check and keep the clutter's settings (and the canvas size they are checked against)."""
        check_clutter(canvas_size, num_distractors, crop_size)
        if crop_size >= DIGIT_SIZE or crop_size >= canvas_size:
            raise ConfigError(f"crop_size={crop_size} must be below {DIGIT_SIZE} (positions are randint(28 - s)); "
                              "lower crop_size")
        if distractor_source not in DISTRACTOR_SOURCES:
            raise ConfigError(f"distractor_source must be one of {DISTRACTOR_SOURCES}, got "
                              f"'{distractor_source}'; use bank (the reference) or same_split")
        if bank_size < 1:
            raise ConfigError(f"bank_size must be a positive number of crops, got {bank_size}")
        self.image_size = canvas_size
        self.num_distractors, self.crop_size = num_distractors, crop_size
        self.distractor_source, self.bank_size, self.bank_seed = distractor_source, bank_size, bank_seed
        self.root = str(root)

    def bank(self, device: torch.device) -> torch.Tensor:
        key = (self.root, self.crop_size, self.bank_size, self.bank_seed, str(device))
        if key not in _BANK_ON_DEVICE:
            cpu = distractor_bank(self.root, self.crop_size, self.bank_size, self.bank_seed)
            _BANK_ON_DEVICE[key] = cpu.to(device)  # 8 MB per (bank, device): the CPU one and the training device
        return _BANK_ON_DEVICE[key]

    def distractors(self, pool: DigitSplit, batch: int, generator: torch.Generator,
                    device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The distractor layer [B, H, W]: crops written over each other at random positions."""
        count, size = self.num_distractors, self.crop_size
        layer = torch.zeros(batch, self.image_size, self.image_size, device=device)
        if count == 0:
            return layer, {}
        params: dict[str, torch.Tensor] = {}
        if self.distractor_source == "bank":
            bank = self.bank(device)
            params["distractor_index"] = random_int(0, len(bank) - 1, (batch, count), generator, device)
        else:
            params["distractor_index"] = random_int(0, len(pool) - 1, (batch, count), generator, device)
            params["crop_top"] = random_int(0, DIGIT_SIZE - size - 1, (batch, count), generator, device)
            params["crop_left"] = random_int(0, DIGIT_SIZE - size - 1, (batch, count), generator, device)
        params["distractor_top"] = random_int(0, self.image_size - size - 1, (batch, count), generator, device)
        params["distractor_left"] = random_int(0, self.image_size - size - 1, (batch, count), generator, device)
        for k in range(count):  # a small constant: one batched write per distractor, in order
            source = params["distractor_index"][:, k]
            if self.distractor_source == "bank":
                patches = bank[source].float().div_(255.0)
            else:
                patches = crop(as_float(pool, source), params["crop_top"][:, k], params["crop_left"][:, k], size)
            paste(layer, patches, params["distractor_top"][:, k], params["distractor_left"][:, k], overwrite=True)
        return layer, params


class SonderbySequence(SonderbyClutter, Distortion):
    """Sønderby et al.'s cluttered MNIST sequences, as their ``create_mnist_sequence.py`` makes them.

    Per image: ``num_digits`` digits drawn with replacement from the split, side by side ``spacing`` px
    apart (28: no gap), pasted (written, not added). The row starts at x in ``x_offset`` (default: the
    reference's centred row, ``[0, 2c - 1]`` with ``c = (W - row width) // 2``) and y in
    ``y_offset``; digit i sits ``i * step`` px lower, with one integer ``step`` in ``step_range`` per
    image (28 px advance: slope about +-0.5); each digit's top is then clamped into the canvas on its own,
    so rows bend at the edges. ``num_distractors`` crops of ``crop_size`` are written into their own layer
    at positions 0 .. W - 1 - s (numpy's ``randint(W - s)``), which is added to the digits and clipped.
    Crops come from a fixed bank of ``bank_size`` crops of the MNIST training digits, one for every split
    (``distractor_source=bank``, the reference), or from digits of the image's own split
    (``same_split``). The image index only counts images: digits are drawn at random, as the reference's
    fixed 60k/10k/10k sets were.
    """

    name = "multi_digit"

    def __init__(self, num_digits: int = 3, canvas_size: int = 100, spacing: int = 28,
                 step_range: Sequence[int] = (-14, 13), x_offset: Sequence[int] | None = None,
                 y_offset: Sequence[int] = (0, 99), num_distractors: int = 8, crop_size: int = 9,
                 distractor_source: str = "bank", bank_size: int = 100_000, bank_seed: int = 1234,
                 root: str = "data") -> None:
        if not 1 <= num_digits <= MAX_DIGITS:
            raise ConfigError(f"num_digits must be between 1 and {MAX_DIGITS}, got {num_digits}")
        if not MIN_SPACING <= spacing:
            raise ConfigError(f"spacing={spacing} px between neighbouring digits' left edges makes them "
                              f"overlap unreadably; use at least {MIN_SPACING} ({DIGIT_SIZE} = side by side)")
        self.step_range = int_range("step_range", step_range)
        if x_offset is None:  # the reference's centred row for any digit count (stnbench.resolvers.centred_row)
            x_offset = centred_row(canvas_size, num_digits, spacing)
        self.x_offset, self.y_offset = int_range("x_offset", x_offset), int_range("y_offset", y_offset)
        width = self.x_offset[1] + (num_digits - 1) * spacing + DIGIT_SIZE
        if self.x_offset[0] < 0 or canvas_size < width:
            raise ConfigError(f"canvas_size={canvas_size} cannot hold {num_digits} digits {spacing} px apart "
                              f"starting at x up to {self.x_offset[1]} ({width} px wide); raise canvas_size "
                              "or lower x_offset/spacing/num_digits")
        if self.y_offset[0] < 0 or self.y_offset[1] >= canvas_size:
            raise ConfigError(f"y_offset={list(self.y_offset)} must lie inside the canvas, 0 .. "
                              f"{canvas_size - 1}; lower it or raise canvas_size")
        self.num_digits, self.spacing = num_digits, spacing
        self.set_clutter(canvas_size, num_distractors, crop_size, distractor_source, bank_size, bank_seed, root)

    @property
    def sequence_length(self) -> int:  # type: ignore[override]
        return self.num_digits

    def sample_layout(self, batch: int, generator: torch.Generator,
                      device: torch.device) -> dict[str, torch.Tensor]:
        """Top-left corners [B, T] of the digits, and the row's step and offsets [B]."""
        steps = torch.arange(self.num_digits, device=device)
        step = random_int(*self.step_range, (batch,), generator, device)
        x0 = random_int(*self.x_offset, (batch,), generator, device)
        y0 = random_int(*self.y_offset, (batch,), generator, device)
        left = x0[:, None] + self.spacing * steps
        top = (y0[:, None] + step[:, None] * steps).clamp(0, self.image_size - DIGIT_SIZE)
        return {"left": left, "top": top, "step": step, "x_offset": x0, "y_offset": y0}

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        batch, device = len(index), index.device
        digits = random_int(0, len(pool) - 1, (batch, self.num_digits), generator, device)
        params = {"digit_index": digits, **self.sample_layout(batch, generator, device)}
        canvas = torch.zeros(batch, self.image_size, self.image_size, device=device)
        for t in range(self.num_digits):  # a small constant: one batched paste per digit
            paste(canvas, as_float(pool, digits[:, t]), params["top"][:, t], params["left"][:, t], overwrite=True)
        layer, clutter = self.distractors(pool, batch, generator, device)
        params.update(clutter)
        return Rendered(canvas.add_(layer).clamp_(0.0, 1.0).unsqueeze(1), pool.labels[digits], params)
