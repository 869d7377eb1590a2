"""What counts as right, defined once for every kind of target (the LightningModule, pictures and predict use it).

* Single labels [B]: an image is right when its label is.
* Digit sequences of fixed length [B, T]: a sequence is right when every digit is (``err``); ``digit_err``
  counts the digits.
* Sequences of variable length (data with an end class, ``data=multi_digit_scattered``): the target holds the
  digits, the end class, then ``PAD``; a model's answer is what it emits up to its first end class. A sequence is
  right when the count and every digit are (``err``: every step up to and including the end class is right);
  ``digit_err`` counts the digits present (the steps before the target's end class, position by position: an
  early end class or a skipped digit is wrong there); ``count_err``: the first end class the model emits is not
  at the target's (no end class at all: a wrong count); ``unordered_err``: the digits said up to the first end
  class are not the target's digits in some order (count included). Where digits lie anywhere on the canvas,
  two of them can stand within a pixel of each other in reading order; ``err - unordered_err`` is the share
  of images a model read right but ordered wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stnbench.data.distortions import PAD


@dataclass
class Scores:
    """Per image ``sequence_wrong`` [B] (float 0/1); per step ``digit_targets`` [B, T], the targets with every
    step that holds no digit set to ``PAD``; ``count_wrong`` and ``unordered_wrong`` [B] (float 0/1), or None
    without an end class."""

    sequence_wrong: torch.Tensor
    digit_targets: torch.Tensor
    count_wrong: torch.Tensor | None
    unordered_wrong: torch.Tensor | None = None


def first_end(steps: torch.Tensor, end_class: int) -> torch.Tensor:
    """Index of the first ``end_class`` in each row of ``steps`` [B, T]; T where there is none."""
    ended = steps == end_class
    length = torch.full(ended.shape[:1], ended.shape[1], dtype=torch.long, device=steps.device)
    return torch.where(ended.any(1), ended.int().argmax(1), length)


def digit_histogram(steps: torch.Tensor, length: torch.Tensor, classes: int) -> torch.Tensor:
    """How often each class [B, classes] stands among the first ``length`` [B] steps of ``steps`` [B, T]."""
    present = torch.arange(steps.shape[1], device=steps.device) < length[:, None]
    one_hot = torch.nn.functional.one_hot(steps.clamp(0, classes - 1), classes)
    return (one_hot * present[..., None]).sum(1)


def score(logits: torch.Tensor, targets: torch.Tensor, end_class: int | None = None) -> Scores:
    """The scores of step logits [B, C] or [B, T, C] against targets [B] or [B, T]."""
    predicted = logits.argmax(-1).view(len(targets), -1)
    labels = targets.view(len(targets), -1)
    scored = labels != PAD
    sequence_wrong = ((predicted != labels) & scored).any(1).float()
    if end_class is None:
        return Scores(sequence_wrong, labels, None)
    digits = scored & (labels != end_class)
    said, meant = first_end(predicted, end_class), first_end(labels, end_class)
    count_wrong = (said != meant).float()
    # before its first end class a row holds digits only (PAD in the targets is past their end class)
    unordered_wrong = (digit_histogram(predicted, said, end_class) != digit_histogram(labels, meant, end_class))
    return Scores(sequence_wrong, labels.masked_fill(~digits, PAD), count_wrong, unordered_wrong.any(1).float())


def read(steps: torch.Tensor, end_class: int | None = None) -> list[int]:
    """A sequence as a model says it: the steps [T] up to the first end class (all of them without one)."""
    values = [int(value) for value in steps.reshape(-1)]
    if end_class is not None and end_class in values:
        values = values[:values.index(end_class)]
    return [value for value in values if value != PAD]
