"""The one output type every model returns, so training, metrics and pictures never ask which model ran."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """``logits`` [B, T, classes]: one prediction per step (T = 1 for plain classifiers); metrics and the
    default loss read these.
    ``thetas`` [B, S, P] and ``glimpses`` [B, S, C, h, w]: the transform parameters and the warped images
    of each of the S glimpses, or None for models without a spatial transformer.

    Optional, for models that predict from every glimpse (the recurrent STN's ``loss_at=every_glimpse``):
    ``glimpse_logits`` [B, S, classes], one prediction per glimpse, and ``glimpse_digit`` [S] (long), the
    index into ``logits``' step axis of the step each glimpse predicts (e.g. [0, 0, 1, 1] for 2 glimpses
    per digit). When both are set the LightningModule trains on the mean cross-entropy over every glimpse
    instead of over ``logits`` alone, so intermediate glimpses get a learning signal of their own; metrics
    still come from ``logits``. Both None (the default) for every other model."""

    logits: torch.Tensor
    thetas: torch.Tensor | None = None
    glimpses: torch.Tensor | None = None
    glimpse_logits: torch.Tensor | None = None
    glimpse_digit: torch.Tensor | None = None
