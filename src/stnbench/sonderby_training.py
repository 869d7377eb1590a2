"""The two parts of Sønderby et al.'s training recipe that Lightning has no flag for.

* ``reference_decay``: their learning-rate rule (``rnn_spn.py``/``ffn_spn.py``), as a ``LambdaLR`` that
  the LightningModule steps once per optimiser step.
* ``GradientValueClip``: element-wise clipping of every gradient to [-clip_value, clip_value]. Lightning
  offers one ``gradient_clip_val``/``gradient_clip_algorithm`` pair; this callback clips by value in
  ``on_before_optimizer_step``, which Lightning runs *before* its own clipping, so with
  ``trainer.gradient_clip_val=5 gradient_clip_algorithm=norm`` the order is the reference's: values to
  [-1, 1], then the total norm to 5.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from stnbench.errors import ConfigError


def decay_epochs(max_epochs: int, no_decay: int = 30, interval: int = 10) -> list[int]:
    """Epochs (0-based) after whose training the reference divides the rate, replaying its counter:

    ``if last_decay > interval and epoch > no_decay: decay, last_decay = 0 else: last_decay += 1``.
    With 30 and 10: after epochs 31, 43, 55, ... (every interval + 2 epochs, as the code runs).
    """
    epochs, counter = [], 0
    for epoch in range(max_epochs):
        if counter > interval and epoch > no_decay:
            epochs.append(epoch)
            counter = 0
        else:
            counter += 1
    return epochs


def reference_decay(optimizer: Optimizer, total_steps: int, max_epochs: int, no_decay: int = 30,
                    interval: int = 10, factor: float = 1.5) -> LambdaLR:
    """Divide the rate by ``factor`` at the epochs of ``decay_epochs``; a per-step ``LambdaLR``.

    Steps per epoch come from ``total_steps / max_epochs`` (the trainer's estimate for a run bounded by
    epochs), so ``limit_train_batches`` and the training-set size need no second setting.
    """
    if max_epochs is None or max_epochs < 1:
        raise ConfigError(f"scheduler.max_epochs must be the run's positive epoch count (trainer.max_epochs), "
                          f"got {max_epochs}; this schedule counts epochs")
    if factor <= 0:
        raise ConfigError(f"scheduler.factor must be positive (the rate is divided by it), got {factor}")
    steps_per_epoch = max(1, total_steps // max_epochs)
    decays = decay_epochs(max_epochs, no_decay, interval)

    def rate(step: int) -> float:
        epoch = step // steps_per_epoch
        return factor ** -sum(1 for decayed in decays if decayed < epoch)

    return LambdaLR(optimizer, rate)


class GradientValueClip(L.Callback):
    """Clip every gradient element to [-clip_value, clip_value] before the optimiser step (and before
    Lightning's own ``gradient_clip_val`` clipping)."""

    def __init__(self, clip_value: float = 1.0) -> None:
        if clip_value <= 0:
            raise ConfigError(f"clip_value must be positive, got {clip_value}; remove the callback for no clipping")
        self.clip_value = float(clip_value)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_value_(params, self.clip_value)
