"""Full-recurrent STN: the recurrence runs over the whole transformer module, glimpse by glimpse.

Step t samples glimpse g_t = sample(image, θ_t). A GRU reads a configurable step input and its previous
state and emits θ_{t+1}, either directly (``theta_mode: absolute``) or as an update in the current
glimpse's coordinates (``composed``: θ_{t+1} = θ_t ∘ Δ_t, affine or projective). Its input is whichever of these are
switched on:

* ``glimpse_feedback``: an embedding of the current glimpse g_t (the seed's proposal: what the model just
  saw decides where it looks next);
* ``context``: a whole-image code computed once per image, the localisation net's features that also give
  θ_0 (RNN-SPN feeds this code at every step; DRAM's context network plays the same part);
* ``theta_input``: θ_t itself (where the model is looking now).

Glimpse feedback enters additively: the GRU's input gates get ``rnn.feedback(encoder(g_t))`` on top of
what its other inputs give, through input weights of its own that start at zero (the same function as
concatenating the embedding to the input, with zero weights for those columns). So a feedback model and its
``glimpse_feedback=false`` partner differ in one thing only, the ability to learn to use the glimpse: built
at the same seed, every parameter they share is identical, because the encoder draws its random numbers
from a stream of its own (:func:`separate_rng`); and at step 0 the two compute the same function, bit for
bit. With ``glimpse_feedback=false`` (context on) the model is RNN-STN-like: the GRU sees the same
whole-image code at every step and never looks at its glimpses. Only the inputs that are switched on exist
(no dead weights); docs/models.md lists the counts of each variant.

θ_0 comes from an identity-initialised localisation net on the whole image; Δ_t's regression layer is
identity-initialised too, so at init every glimpse is the whole image. A shared classifier labels the
glimpse that ends each digit (K = ``glimpses_per_digit`` glimpses per digit), or, with
``loss_at=every_glimpse``, every glimpse (``ModelOutput.glimpse_logits``): the training loss then also
teaches the intermediate glimpses to show the digit.

Where it samples (``from_source``, IC-STN's setting, ``data=perturbed``): with a
:class:`stnbench.source.Source` the glimpses are sampled from the clean digit at θ_0^data ∘ θ_t, the warp that
made the image composed with the model's own, exactly as IC-STN resamples the digit. The recurrence itself
(its θ_t, the θ it is fed, the image code) stays in the image's frame: the model is never told the
perturbation, as IC-STN's predictor is not. The returned ``thetas`` are the sampling warps (the digit's frame).

Design of the reduction: with one glimpse (T = 1, K = 1) the encoder and GRU are never used, and the model
*is* a CNN-STN: ``stn`` (localisation + regressor) and ``classifier`` carry the same names and shapes as in
``STClassifier``, so loading an ST-CNN's weights gives identical logits (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from stnbench.errors import ConfigError
from stnbench.models.output import ModelOutput
from stnbench.models.rnn_stn import check_positive
from stnbench.models.stn import (
    SpatialTransformer,
    check_from_source,
    check_loc_lr_multiplier,
    identity_regressor,
    start,
)
from stnbench.models.transforms import Transform
from stnbench.source import Source

THETA_MODES = ("absolute", "composed")
LOSS_AT = ("last_glimpse", "every_glimpse")


@contextmanager
def separate_rng() -> Iterator[None]:
    """Run the block on a CPU random stream of its own, seeded from the global stream without advancing it.

    Modules that only one model of a feedback / no-feedback pair has are built in here: the modules the two
    share then draw the same numbers at the same seed, and the global stream (data order, later models) is
    left where the partner leaves it."""
    with torch.random.fork_rng(devices=[]):  # restores the CPU stream on exit; CUDA streams are not touched
        seed = int(torch.randint(0, 2**62, (1,)))
        torch.default_generator.manual_seed(seed)
        yield


def zero_feedback(feedback_size: int, hidden_size: int) -> nn.Linear | None:
    """The GRU's input weights for the glimpse code (3 gates, no bias): zero at the start, drawn from no
    random stream, so the feedback model starts out computing what its no-feedback partner computes."""
    if not feedback_size:
        return None
    layer = skip_init(nn.Linear, feedback_size, 3 * hidden_size, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


class FeedbackGRUCell(nn.GRUCell):
    """torch's GRU cell (same parameters, init and, on CPU, the same arithmetic op for op) with a second
    input, the glimpse code, that enters the input gates through its own weights ``feedback``.

    Checkpoints of the layout before issue 22 (the glimpse code concatenated first into ``weight_ih``) are
    split into the two on load: the same function."""

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0) -> None:
        super().__init__(input_size, hidden_size)
        self.feedback = zero_feedback(feedback_size, hidden_size)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if getattr(self, "feedback", None) is not None:
            nn.init.zeros_(self.feedback.weight)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor | None = None,
                glimpse_code: torch.Tensor | None = None) -> torch.Tensor:
        if state is None:
            state = inputs.new_zeros(inputs.shape[0], self.hidden_size)
        gates_x = F.linear(inputs, self.weight_ih, self.bias_ih)
        if glimpse_code is not None:
            gates_x = gates_x + self.feedback(glimpse_code)
        x_r, x_z, x_n = gates_x.chunk(3, 1)
        h_r, h_z, h_n = F.linear(state, self.weight_hh, self.bias_hh).chunk(3, 1)
        reset, update = torch.sigmoid(h_r + x_r), torch.sigmoid(h_z + x_z)
        candidate = torch.tanh(x_n + h_n * reset)
        return (state - candidate) * update + candidate

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        weight, feedback = prefix + "weight_ih", prefix + "feedback.weight"
        if self.feedback is not None and feedback not in state_dict and weight in state_dict:
            old, size = state_dict[weight], self.feedback.in_features
            if old.shape[1:] == (self.input_size + size,):  # [glimpse code | context | θ] -> feedback, weight_ih
                state_dict[feedback], state_dict[weight] = old[:, :size], old[:, size:]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RecurrentSTN(nn.Module):
    """See the module docstring. ``forward(images, num_steps=T)`` reads T digits (T x K glimpses), any T: the
    recurrence has no per-position weights, so a model trained on 3 digits can be tested on 4."""

    variable_steps = True  # the model contract: forward takes num_steps

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, encoder, output_size: int | Sequence[int] | None = None,
                 loc_lr_multiplier: float = 1.0, num_steps: int = 1, num_glimpses: int | None = None,
                 glimpses_per_digit: int = 1, theta_mode: str = "composed", hidden_size: int = 64,
                 glimpse_feedback: bool = True, context: bool = True, theta_input: bool = True,
                 loss_at: str = "last_glimpse", from_source: bool = False) -> None:
        super().__init__()
        self.reads_source = check_from_source(from_source, transform)  # the model contract: forward takes source
        if theta_mode not in THETA_MODES:
            raise ConfigError(f"theta_mode must be one of {THETA_MODES}, got '{theta_mode}'")
        if theta_mode == "composed" and not transform.composable:
            raise ConfigError(f"theta_mode=composed needs a transform with a composition rule (affine or projective); "
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
        # The feedback path (the glimpse encoder and the GRU's zero input weights for its code) exists only
        # with glimpse_feedback and draws from a stream of its own: the shared modules get the same numbers.
        with separate_rng():
            self.encoder = encoder(input_shape=glimpse_shape) if self.glimpse_feedback else None
        width = ((self.stn.localisation.out_features if self.context else 0)
                 + (transform.num_params if self.theta_input else 0))
        self.rnn = FeedbackGRUCell(width, hidden_size, self.encoder.out_features if self.encoder is not None else 0)
        self.update = identity_regressor(hidden_size, transform)
        self.classifier = classifier(input_shape=glimpse_shape, num_classes=num_classes)

    def localisation_parameters(self) -> list[nn.Parameter]:
        """Everything that produces a θ: the θ_0 net and the recurrent loop (encoder, GRU with its feedback
        weights, update layer)."""
        encoder = list(self.encoder.parameters()) if self.encoder is not None else []
        return [*self.stn.localisation.parameters(), *self.stn.regressor.parameters(),
                *encoder, *self.rnn.parameters(), *self.update.parameters()]

    def step_input(self, theta: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The GRU's input besides the glimpse code: the switched-on parts of [context code, θ_t] ([B, 0]
        when only the glimpse is fed)."""
        parts = ([code] if self.context else []) + ([theta] if self.theta_input else [])
        return torch.cat(parts, 1) if parts else theta.new_zeros(theta.shape[0], 0)

    def next_theta(self, theta: torch.Tensor, glimpse: torch.Tensor, code: torch.Tensor,
                   state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """θ_{t+1} and the new GRU state from θ_t, glimpse g_t, the whole-image code and the old state."""
        glimpse_code = self.encoder(glimpse) if self.encoder is not None else None
        state = self.rnn(self.step_input(theta, code), state, glimpse_code)
        out = self.update(state)
        return (self.transform.compose(theta, out) if self.theta_mode == "composed" else out), state

    def glimpse_digit(self, device: torch.device | None = None, num_steps: int | None = None) -> torch.Tensor:
        """For each glimpse s, the prediction step (digit) it belongs to: s // K."""
        steps = self.num_steps if num_steps is None else int(num_steps)
        return torch.arange(steps * self.per_digit, device=device) // self.per_digit

    def forward(self, images: torch.Tensor, num_steps: int | None = None,
                source: Source | None = None) -> ModelOutput:
        """Logits [B, T, classes] for T = ``num_steps`` digits (default: the number it was built for); with a
        ``source`` (``from_source``), glimpses of the clean digit (module docstring)."""
        steps = self.num_steps if num_steps is None else int(num_steps)
        count = steps * self.per_digit  # glimpses
        base, origin = start(self.transform, images, source) if self.reads_source and source is not None \
            else (images, None)
        code = self.stn.localisation(images)
        theta = self.stn.regressor(code)
        thetas, glimpses, state = [], [], None
        for step in range(count):  # inherently sequential: θ_{t+1} may depend on glimpse t
            sampling = theta if origin is None else self.transform.compose(origin, theta)
            glimpse = self.stn.warp(base, sampling)
            thetas.append(sampling)
            glimpses.append(glimpse)
            if step + 1 < count:
                theta, state = self.next_theta(theta, glimpse, code, state)
        glimpses_t = torch.stack(glimpses, 1)  # [B, S, C, h, w]
        batch = images.shape[0]  # not len(): traceable at any batch size
        if self.loss_at == "every_glimpse":  # classify every glimpse; the digits' last ones are the logits
            every = self.classifier(glimpses_t.flatten(0, 1)).view(batch, count, self.num_classes)
            return ModelOutput(every[:, self.per_digit - 1::self.per_digit], thetas=torch.stack(thetas, 1),
                               glimpses=glimpses_t, glimpse_logits=every,
                               glimpse_digit=self.glimpse_digit(images.device, steps))
        read = glimpses_t[:, self.per_digit - 1::self.per_digit]  # last glimpse of each digit: [B, T, ...]
        logits = self.classifier(read.flatten(0, 1)).view(batch, steps, self.num_classes)
        return ModelOutput(logits, thetas=torch.stack(thetas, 1), glimpses=glimpses_t)
