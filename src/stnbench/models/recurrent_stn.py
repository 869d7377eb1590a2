"""Full-recurrent STN: the recurrence runs over the whole transformer module, glimpse by glimpse.

Step t samples glimpse g_t = sample(image, θ_t). A GRU reads a configurable step input and its previous
state and emits θ_{t+1}, either directly (``theta_mode: absolute``) or as an update in the current
glimpse's coordinates (``composed``: θ_{t+1} = θ_t ∘ Δ_t, affine only). The step input is the concatenation
of whichever of these are switched on:

* ``glimpse_feedback``: an embedding of the current glimpse g_t (the seed's proposal: what the model just
  saw decides where it looks next);
* ``context``: a whole-image code computed once per image, the localisation net's features that also give
  θ_0 (RNN-SPN feeds this code at every step; DRAM's context network plays the same part);
* ``theta_input``: θ_t itself (where the model is looking now).

With ``glimpse_feedback=false`` (context on) the model is RNN-STN-like: the GRU sees the same whole-image
code at every step and never looks at its glimpses. Parameter budget: only the inputs that are switched on
exist (no dead weights): the feedback-off model lacks exactly the glimpse encoder and the GRU's input
weights for the embedding, everything else (θ_0 net, GRU state, update layer, classifier) is the same
shape; docs/models.md lists the counts of each variant.

θ_0 comes from an identity-initialised localisation net on the whole image; Δ_t's regression layer is
identity-initialised too, so at init every glimpse is the whole image. A shared classifier labels the
glimpse that ends each digit (K = ``glimpses_per_digit`` glimpses per digit), or, with
``loss_at=every_glimpse``, every glimpse (``ModelOutput.glimpse_logits``): the training loss then also
teaches the intermediate glimpses to show the digit.

Design of the reduction: with one glimpse (T = 1, K = 1) the encoder and GRU are never used, and the model
*is* a CNN-STN: ``stn`` (localisation + regressor) and ``classifier`` carry the same names and shapes as in
``STClassifier``, so loading an ST-CNN's weights gives identical logits (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.output import ModelOutput
from stnbench.models.rnn_stn import check_positive
from stnbench.models.stn import SpatialTransformer, check_loc_lr_multiplier, identity_regressor
from stnbench.models.transforms import Transform

THETA_MODES = ("absolute", "composed")
LOSS_AT = ("last_glimpse", "every_glimpse")


class RecurrentSTN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, encoder, output_size: int | Sequence[int] | None = None,
                 loc_lr_multiplier: float = 1.0, num_steps: int = 1, num_glimpses: int | None = None,
                 glimpses_per_digit: int = 1, theta_mode: str = "composed", hidden_size: int = 64,
                 glimpse_feedback: bool = True, context: bool = True, theta_input: bool = True,
                 loss_at: str = "last_glimpse") -> None:
        super().__init__()
        if theta_mode not in THETA_MODES:
            raise ConfigError(f"theta_mode must be one of {THETA_MODES}, got '{theta_mode}'")
        if theta_mode == "composed" and not transform.composable:
            raise ConfigError(f"theta_mode=composed needs a transform with a composition rule (affine); "
                              f"'{transform.name}' supports only model.theta_mode=absolute")
        if loss_at not in LOSS_AT:
            raise ConfigError(f"model.loss_at must be one of {LOSS_AT}, got '{loss_at}'")
        if not (glimpse_feedback or context or theta_input):
            raise ConfigError("model.glimpse_feedback, model.context and model.theta_input are all false: the "
                              "recurrent STN's GRU would have no input; set at least one of them to true")
        for name, value in (("num_glimpses", num_glimpses), ("glimpses_per_digit", glimpses_per_digit),
                            ("hidden_size", hidden_size)):
            check_positive(name, value)
        self.loc_lr_multiplier = check_loc_lr_multiplier(loc_lr_multiplier)
        self.transform, self.theta_mode, self.loss_at = transform, theta_mode, loss_at
        self.glimpse_feedback, self.context, self.theta_input = bool(glimpse_feedback), bool(context), bool(theta_input)
        self.num_steps, self.num_classes = int(num_steps), num_classes
        # Glimpses per prediction: num_glimpses for single-label data, else glimpses_per_digit.
        self.per_digit = int(num_glimpses) if num_steps == 1 and num_glimpses else int(glimpses_per_digit)
        self.num_glimpses = self.num_steps * self.per_digit
        self.stn = SpatialTransformer(input_shape, transform, localisation, output_size)  # θ_0 and the context
        glimpse_shape = (input_shape[0], *self.stn.output_hw)
        # The glimpse encoder is the feedback path itself: built only when the glimpse is fed back.
        self.encoder = encoder(input_shape=glimpse_shape) if self.glimpse_feedback else None
        width = ((self.encoder.out_features if self.encoder is not None else 0)
                 + (self.stn.localisation.out_features if self.context else 0)
                 + (transform.num_params if self.theta_input else 0))
        self.rnn = nn.GRUCell(width, hidden_size)
        self.update = identity_regressor(hidden_size, transform)
        self.classifier = classifier(input_shape=glimpse_shape, num_classes=num_classes)

    def localisation_parameters(self) -> list[nn.Parameter]:
        """Everything that produces a θ: the θ_0 net and the recurrent loop (encoder, GRU, update layer)."""
        encoder = list(self.encoder.parameters()) if self.encoder is not None else []
        return [*self.stn.localisation.parameters(), *self.stn.regressor.parameters(),
                *encoder, *self.rnn.parameters(), *self.update.parameters()]

    def step_input(self, theta: torch.Tensor, glimpse: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The GRU's input at one step: the switched-on parts of [glimpse embedding, context code, θ_t]."""
        parts = []
        if self.encoder is not None:
            parts.append(self.encoder(glimpse))
        if self.context:
            parts.append(code)
        if self.theta_input:
            parts.append(theta)
        return torch.cat(parts, 1)

    def next_theta(self, theta: torch.Tensor, glimpse: torch.Tensor, code: torch.Tensor,
                   state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """θ_{t+1} and the new GRU state from θ_t, glimpse g_t, the whole-image code and the old state."""
        state = self.rnn(self.step_input(theta, glimpse, code), state)
        out = self.update(state)
        return (self.transform.compose(theta, out) if self.theta_mode == "composed" else out), state

    def glimpse_digit(self, device: torch.device | None = None) -> torch.Tensor:
        """For each glimpse s, the prediction step (digit) it belongs to: s // K."""
        return torch.arange(self.num_glimpses, device=device) // self.per_digit

    def forward(self, images: torch.Tensor) -> ModelOutput:
        code = self.stn.localisation(images)
        theta = self.stn.regressor(code)
        thetas, glimpses, state = [], [], None
        for step in range(self.num_glimpses):  # inherently sequential: θ_{t+1} may depend on glimpse t
            glimpse = self.stn.warp(images, theta)
            thetas.append(theta)
            glimpses.append(glimpse)
            if step + 1 < self.num_glimpses:
                theta, state = self.next_theta(theta, glimpse, code, state)
        glimpses_t = torch.stack(glimpses, 1)  # [B, S, C, h, w]
        batch = images.shape[0]  # not len(): traceable at any batch size
        if self.loss_at == "every_glimpse":  # classify every glimpse; the digits' last ones are the logits
            every = self.classifier(glimpses_t.flatten(0, 1)).view(batch, self.num_glimpses, self.num_classes)
            return ModelOutput(every[:, self.per_digit - 1::self.per_digit], thetas=torch.stack(thetas, 1),
                               glimpses=glimpses_t, glimpse_logits=every,
                               glimpse_digit=self.glimpse_digit(images.device))
        read = glimpses_t[:, self.per_digit - 1::self.per_digit]  # last glimpse of each digit: [B, T, ...]
        logits = self.classifier(read.flatten(0, 1)).view(batch, self.num_steps, self.num_classes)
        return ModelOutput(logits, thetas=torch.stack(thetas, 1), glimpses=glimpses_t)
