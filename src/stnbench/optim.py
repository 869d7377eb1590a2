"""Learning-rate schedules, stepped once per optimisation step.

Each takes ``total_steps`` (filled in by the LightningModule from the trainer) so that configs can say
"cosine over the run" without knowing the dataset size or epoch count.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_schedule(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                    final_fraction: float = 0.0) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``final_fraction`` of the base rate at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_schedule(optimizer: Optimizer, total_steps: int, step_size: int = 50_000, gamma: float = 0.1) -> LambdaLR:
    """Multiply the rate by ``gamma`` every ``step_size`` steps (the papers' "divide by 10 every 50k")."""
    if step_size <= 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    return LambdaLR(optimizer, lambda step: gamma ** (step // step_size))


def constant_schedule(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: 1.0)
