"""Full-recurrent STN: the recurrence runs over the whole transformer module, glimpse by glimpse.

Step t samples glimpse g_t = sample(image, θ_t); an encoder embeds g_t; a GRU reads [embedding, θ_t] and
its previous state and emits θ_{t+1}, either directly (``theta_mode: absolute``) or as an update in the
current glimpse's coordinates (``composed``: θ_{t+1} = θ_t ∘ Δ_t, affine only). θ_0 comes from an
identity-initialised localisation net on the whole image; Δ_t's regression layer is identity-initialised
too, so at init every glimpse is the whole image. A shared classifier labels the glimpse that ends each
digit (K = ``glimpses_per_digit`` glimpses per digit).

Design of the reduction: with one glimpse (T = 1, K = 1) the encoder and GRU are never used, and the model
*is* a CNN-STN: ``stn`` (localisation + regressor) and ``classifier`` carry the same names and shapes as in
``STClassifier``, so loading an ST-CNN's weights gives identical logits (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stnbench.data.distortions import ConfigError
from stnbench.models.output import ModelOutput
from stnbench.models.rnn_stn import check_positive
from stnbench.models.stn import SpatialTransformer, check_loc_lr_multiplier, identity_regressor
from stnbench.models.transforms import Transform

THETA_MODES = ("absolute", "composed")


class RecurrentSTN(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, encoder, output_size: int | Sequence[int] | None = None,
                 loc_lr_multiplier: float = 1.0, num_steps: int = 1, num_glimpses: int | None = None,
                 glimpses_per_digit: int = 1, theta_mode: str = "composed", hidden_size: int = 64) -> None:
        super().__init__()
        if theta_mode not in THETA_MODES:
            raise ConfigError(f"theta_mode must be one of {THETA_MODES}, got '{theta_mode}'")
        if theta_mode == "composed" and not transform.composable:
            raise ConfigError(f"theta_mode=composed needs a transform with a composition rule (affine); "
                              f"'{transform.name}' supports only model.theta_mode=absolute")
        for name, value in (("num_glimpses", num_glimpses), ("glimpses_per_digit", glimpses_per_digit),
                            ("hidden_size", hidden_size)):
            check_positive(name, value)
        self.loc_lr_multiplier = check_loc_lr_multiplier(loc_lr_multiplier)
        self.transform, self.theta_mode = transform, theta_mode
        self.num_steps, self.num_classes = int(num_steps), num_classes
        # Glimpses per prediction: num_glimpses for single-label data, else glimpses_per_digit.
        self.per_digit = int(num_glimpses) if num_steps == 1 and num_glimpses else int(glimpses_per_digit)
        self.num_glimpses = self.num_steps * self.per_digit
        self.stn = SpatialTransformer(input_shape, transform, localisation, output_size)  # gives θ_0
        glimpse_shape = (input_shape[0], *self.stn.output_hw)
        self.encoder = encoder(input_shape=glimpse_shape)
        self.rnn = nn.GRUCell(self.encoder.out_features + transform.num_params, hidden_size)
        self.update = identity_regressor(hidden_size, transform)
        self.classifier = classifier(input_shape=glimpse_shape, num_classes=num_classes)

    def localisation_parameters(self) -> list[nn.Parameter]:
        """Everything that produces a θ: the θ_0 net and the recurrent loop (encoder, GRU, update layer)."""
        return [*self.stn.localisation.parameters(), *self.stn.regressor.parameters(),
                *self.encoder.parameters(), *self.rnn.parameters(), *self.update.parameters()]

    def next_theta(self, theta: torch.Tensor, glimpse: torch.Tensor, state: torch.Tensor | None):
        state = self.rnn(torch.cat([self.encoder(glimpse), theta], 1), state)
        out = self.update(state)
        return (self.transform.compose(theta, out) if self.theta_mode == "composed" else out), state

    def forward(self, images: torch.Tensor) -> ModelOutput:
        theta = self.stn.regressor(self.stn.localisation(images))
        thetas, glimpses, state = [], [], None
        for step in range(self.num_glimpses):  # inherently sequential: θ_{t+1} depends on glimpse t
            glimpse = self.stn.warp(images, theta)
            thetas.append(theta)
            glimpses.append(glimpse)
            if step + 1 < self.num_glimpses:
                theta, state = self.next_theta(theta, glimpse, state)
        glimpses_t = torch.stack(glimpses, 1)  # [B, S, C, h, w]
        read = glimpses_t[:, self.per_digit - 1::self.per_digit]  # last glimpse of each digit: [B, T, ...]
        logits = self.classifier(read.flatten(0, 1)).view(len(images), self.num_steps, self.num_classes)
        return ModelOutput(logits, thetas=torch.stack(thetas, 1), glimpses=glimpses_t)
