"""The one output type every model returns, so training, metrics and pictures never ask which model ran."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """``logits`` [B, T, classes]: one prediction per step (T = 1 for plain classifiers).
    ``thetas`` [B, S, P] and ``glimpses`` [B, S, C, h, w]: the transform parameters and the warped images
    of each of the S glimpses, or None for models without a spatial transformer."""

    logits: torch.Tensor
    thetas: torch.Tensor | None = None
    glimpses: torch.Tensor | None = None
