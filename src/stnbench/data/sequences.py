"""Multi-digit sequences in clutter (Sønderby et al. 2015, "Recurrent Spatial Transformer Networks").

``num_digits`` digits of the same split stand left to right along a line of random slope, each moved up
or down by its own random offset, on a cluttered canvas. The target is the digit sequence [B, T] read
left to right, so a recurrent model can attend to one digit per step.
"""

from __future__ import annotations

import torch

from stnbench.data.clutter import add_clutter, check_clutter, other_digits, paste, random_int
from stnbench.data.distortions import DIGIT_SIZE, ConfigError, Distortion, Rendered, as_float, uniform
from stnbench.data.mnist import DigitSplit

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
