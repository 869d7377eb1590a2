"""RNN-STN (Sønderby et al. 2015, arXiv 1509.05329): one localisation encoding, a recurrent net that
emits one transform per step, and a shared classifier that labels each step's glimpse.

The localisation CNN reads the whole image once; a GRU (or LSTM) runs T steps with that encoding as its
input every step, and an identity-initialised regression layer turns each hidden state into θ_t. Every
glimpse is sampled from the *full* image, so steps never compound interpolation blur.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.output import ModelOutput
from stnbench.models.stn import check_loc_lr_multiplier, identity_regressor, output_hw, warp_steps
from stnbench.models.transforms import Transform

CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}


def check_positive(name: str, value: int | None) -> None:
    if value is not None and (int(value) != value or value < 1):
        raise ConfigError(f"{name} must be a positive integer (or null), got {value}")


class RNNSTN(nn.Module):
    """T glimpses, one prediction per glimpse: logits [B, T, classes].

    T = ``num_steps`` (the number of digits) for sequence data; for single-label data (num_steps = 1)
    ``num_glimpses`` may set T, and the module scores the last step. ``forward(images, num_steps=T)`` runs T
    steps, any T (the GRU has no per-step weights)."""

    variable_steps = True  # the model contract: forward takes num_steps

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, output_size: int | Sequence[int] | None = None, loc_lr_multiplier: float = 1.0,
                 num_steps: int = 1, num_glimpses: int | None = None, rnn: str = "gru",
                 hidden_size: int = 64) -> None:
        super().__init__()
        if rnn not in CELLS:
            raise ConfigError(f"rnn must be one of {sorted(CELLS)}, got '{rnn}'")
        check_positive("num_glimpses", num_glimpses)
        check_positive("hidden_size", hidden_size)
        self.loc_lr_multiplier = check_loc_lr_multiplier(loc_lr_multiplier)
        self.transform, self.num_classes = transform, num_classes
        # num_glimpses only applies to single-label data: sequence data needs one glimpse per digit.
        self.steps = int(num_glimpses) if num_steps == 1 and num_glimpses else int(num_steps)
        self.output_hw = output_hw(output_size, input_shape)
        self.localisation = localisation(input_shape=tuple(input_shape))
        self.rnn_type = rnn
        self.rnn = CELLS[rnn](self.localisation.out_features, hidden_size)
        self.regressor = identity_regressor(hidden_size, transform)
        self.classifier = classifier(input_shape=(input_shape[0], *self.output_hw), num_classes=num_classes)

    def localisation_parameters(self) -> list[nn.Parameter]:
        return [*self.localisation.parameters(), *self.rnn.parameters(), *self.regressor.parameters()]

    def forward(self, images: torch.Tensor, num_steps: int | None = None) -> ModelOutput:
        steps = self.steps if num_steps is None else int(num_steps)
        code = self.localisation(images)
        state, hidden = None, []
        for _ in range(steps):  # a loop over steps (T is small), batched over images
            state = self.rnn(code, state)
            hidden.append(state[0] if self.rnn_type == "lstm" else state)
        thetas = self.regressor(torch.stack(hidden, 1))  # [B, T, P]
        glimpses = warp_steps(images, self.transform, thetas, self.output_hw)
        logits = self.classifier(glimpses.flatten(0, 1)).view(images.shape[0], steps, self.num_classes)
        return ModelOutput(logits, thetas=thetas, glimpses=glimpses)
