"""Sønderby et al. 2015's three systems on cluttered MNIST sequences, layer for layer as their released
Lasagne code builds them (skaae/recurrent-spatial-transformer-code: ``ffn_spn.py``, ``rnn_spn.py``).

* ``SonderbyCNN``: the FFN-SPN's classifier reading the whole image resampled by ``downsample`` (the
  paper's CNN baseline, which the released code does not contain).
* ``SonderbyFFNSPN`` (the paper's "CNN-SPN"): one spatial transformer, three softmax heads.
* ``SonderbyRNNSPN``: a GRU emits one transform per digit; a shared classifier reads each glimpse. With
  ``glimpse_feedback`` (ours, not the paper's; off by default) an encoding of glimpse t also enters the
  GRU's input at step t + 1.

Lasagne conventions kept: valid 3x3 convolutions, ReLU after every conv and hidden dense layer, 2x2
max-pooling (floor), Glorot-uniform weights and zero biases, GRU weights N(0, 0.1) and Lasagne's GRU
equations, glimpses of ``int(side // downsample)`` pixels. Inputs are read as they are ([0, 1], no
normalisation), as in the reference. Differences (sampler corners and padding) are in docs/models.md.
"""

from __future__ import annotations

import torch
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.classifiers import flat_size
from stnbench.models.output import ModelOutput
from stnbench.models.recurrent_stn import separate_rng, zero_feedback
from stnbench.models.stn import check_loc_lr_multiplier, identity_regressor, warp, warp_steps
from stnbench.models.transforms import Affine, Transform


def glimpse_hw(input_shape: tuple[int, int, int], downsample: float) -> tuple[int, int]:
    """Lasagne's TransformerLayer output size: ``int(side // downsample)`` (100 -> 50, 33)."""
    if downsample <= 0:
        raise ConfigError(f"downsample must be positive (the paper compares 1, 2 and 3), got {downsample}")
    height, width = int(input_shape[-2] // downsample), int(input_shape[-1] // downsample)
    if min(height, width) < 1:
        raise ConfigError(f"downsample={downsample} leaves no pixels of a {tuple(input_shape)} input; lower it")
    return height, width


def lasagne_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for convs and dense layers (Lasagne's defaults as used)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def conv_stack(in_channels: int, channels: int, pool_first: bool) -> nn.Sequential:
    """[pool ->] conv 3x3 -> pool -> conv 3x3 -> pool -> conv 3x3, ReLU after every conv (valid padding).

    ``pool_first``: the localisation nets' layout (a 2x2 max-pool before the first conv); the classifiers
    start with the conv."""
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool_first else []
    for number in range(3):
        layers += [nn.Conv2d(in_channels if number == 0 else channels, channels, 3), nn.ReLU()]
        if number < 2:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.Flatten())


def checked_flat_size(module: nn.Module, shape: tuple[int, int, int], what: str) -> int:
    try:
        return flat_size(module, shape)
    except RuntimeError as error:
        raise ConfigError(f"the {what} does not fit input {tuple(shape)} (three valid 3x3 convs and two or "
                          "three 2x2 pools need about 30 px): lower model.downsample") from error


class SonderbyClassifier(nn.Module):
    """conv 3x3 ``channels`` -> pool -> conv -> pool -> conv -> dense ``hidden`` -> ``heads`` x 10.

    RNN-SPN: 32 channels, one head shared by the steps. FFN-SPN and CNN: 96 channels, one head per digit
    (Lasagne's three dense softmax layers = one linear layer with 3 x 10 outputs, same parameters)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, channels: int = 96,
                 hidden: int = 400, heads: int = 1) -> None:
        super().__init__()
        features = conv_stack(input_shape[0], channels, pool_first=False)
        size = checked_flat_size(features, tuple(input_shape), "classifier")
        self.heads, self.num_classes = heads, num_classes
        self.net = nn.Sequential(features, nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, heads * num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, heads, classes]."""
        return self.net(images).view(images.shape[0], self.heads, self.num_classes)


class LasagneGRUCell(nn.Module):
    """Lasagne's GRULayer step: r, u = sigmoid(W_x x + W_h h + b); c = tanh(W_xc x + r * (W_hc h) + b_c);
    h' = (1 - u) h + u c. One bias per gate (torch's GRUCell has two), weights N(0, 0.1), biases 0.

    ``feedback_size`` > 0 adds a second input, the glimpse code, with input weights ``feedback`` of its own
    that start at zero (x = [code, glimpse code], W_x = [input | feedback]): drawn from no random stream."""

    def __init__(self, input_size: int, hidden_size: int, feedback_size: int = 0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input = nn.Linear(input_size, 3 * hidden_size)
        self.hidden = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        for weight in (self.input.weight, self.hidden.weight):
            nn.init.normal_(weight, std=0.1)
        nn.init.zeros_(self.input.bias)
        self.feedback = zero_feedback(feedback_size, hidden_size)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        return self.step(self.input(inputs), state)

    def step(self, drive: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """One step from the input gates' pre-activations ``drive`` (W_x x + b, [B, 3 * hidden])."""
        if state is None:
            state = drive.new_zeros(len(drive), self.hidden_size)  # hid_init = 0, not learned
        x_r, x_u, x_c = drive.chunk(3, 1)
        h_r, h_u, h_c = self.hidden(state).chunk(3, 1)
        reset, update = torch.sigmoid(x_r + h_r), torch.sigmoid(x_u + h_u)
        candidate = torch.tanh(x_c + reset * h_c)
        return (1 - update) * state + update * candidate


class _SonderbyBase(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], downsample: float,
                 loc_lr_multiplier: float | None = None) -> None:
        super().__init__()
        self.glimpse_hw = glimpse_hw(input_shape, downsample)
        if loc_lr_multiplier is not None:  # only the models with a localisation net have one
            self.loc_lr_multiplier = check_loc_lr_multiplier(loc_lr_multiplier)


class SonderbyCNN(_SonderbyBase):
    """The CNN baseline: the FFN-SPN's classifier (96 channels, one head per digit) on the whole image
    resampled to ``side // downsample`` by the same bilinear sampler at the identity transform."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, num_steps: int = 1,
                 downsample: float = 3, channels: int = 96, hidden: int = 400) -> None:
        super().__init__(input_shape, downsample)
        self.resample = Affine()
        self.classifier = SonderbyClassifier((input_shape[0], *self.glimpse_hw), num_classes, channels, hidden,
                                             heads=num_steps)
        lasagne_init(self)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        identity = self.resample.identity().to(images).expand(images.shape[0], -1)
        return ModelOutput(self.classifier(warp(images, self.resample, identity, self.glimpse_hw)))


class SonderbyFFNSPN(_SonderbyBase):
    """FFN-SPN ("CNN-SPN"): localisation [pool, conv 20, pool, conv 20, pool, conv 20] -> dense 200 ->
    dense 6 (zero weights, identity bias) -> one glimpse of ``side // downsample`` -> classifier with
    one head per digit."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, transform: Transform | None = None,
                 num_steps: int = 1, downsample: float = 3, loc_channels: int = 20, loc_hidden: int = 200,
                 channels: int = 96, hidden: int = 400, loc_lr_multiplier: float = 1.0) -> None:
        super().__init__(input_shape, downsample, loc_lr_multiplier)
        self.transform = transform or Affine()
        convs = conv_stack(input_shape[0], loc_channels, pool_first=True)
        size = checked_flat_size(convs, tuple(input_shape), "localisation net")
        self.localisation = nn.Sequential(convs, nn.Linear(size, loc_hidden), nn.ReLU())
        self.classifier = SonderbyClassifier((input_shape[0], *self.glimpse_hw), num_classes, channels, hidden,
                                             heads=num_steps)
        lasagne_init(self)
        self.regressor = identity_regressor(loc_hidden, self.transform)  # after lasagne_init: stays identity

    def localisation_parameters(self) -> list[nn.Parameter]:
        return [*self.localisation.parameters(), *self.regressor.parameters()]

    def forward(self, images: torch.Tensor) -> ModelOutput:
        theta = self.regressor(self.localisation(images))
        glimpse = warp(images, self.transform, theta, self.glimpse_hw)
        return ModelOutput(self.classifier(glimpse), thetas=theta.unsqueeze(1), glimpses=glimpse.unsqueeze(1))


class SonderbyRNNSPN(_SonderbyBase):
    """RNN-SPN: localisation convs (as FFN-SPN, no dense layer) -> the same code fed to a GRU of
    ``rnn_units`` at each of ``num_steps`` steps -> dense 6 (identity) per step -> glimpse of the full image
    -> shared classifier (32 channels, one head).

    ``glimpse_feedback`` (ours, off by default): a small encoder (the classifier's conv layout at
    ``encoder_channels``, then dense ``encoder_hidden``) codes glimpse t, and the code enters the GRU's input
    at step t + 1 through zero-initialised input weights (``rnn.feedback``). The encoder is built last, on a
    random stream of its own, so with the switch off the model is the reference's weight for weight, and at
    the same seed the two variants share every other parameter and start out computing the same θs.

    ``forward(images, num_steps=T)`` runs T steps, any T (no per-step weights): tested on more digits than
    trained, it simply keeps reading."""

    variable_steps = True  # the model contract: forward takes num_steps

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, transform: Transform | None = None,
                 num_steps: int = 1, downsample: float = 3, loc_channels: int = 20, rnn_units: int = 256,
                 channels: int = 32, hidden: int = 400, loc_lr_multiplier: float = 1.0,
                 glimpse_feedback: bool = False, encoder_channels: int = 16, encoder_hidden: int = 64) -> None:
        super().__init__(input_shape, downsample, loc_lr_multiplier)
        self.transform = transform or Affine()
        self.steps, self.num_classes = int(num_steps), num_classes
        self.glimpse_feedback = bool(glimpse_feedback)
        self.localisation = conv_stack(input_shape[0], loc_channels, pool_first=True)
        size = checked_flat_size(self.localisation, tuple(input_shape), "localisation net")
        glimpse_shape = (input_shape[0], *self.glimpse_hw)
        self.classifier = SonderbyClassifier(glimpse_shape, num_classes, channels, hidden)
        lasagne_init(self)
        self.rnn = LasagneGRUCell(size, rnn_units, encoder_hidden if self.glimpse_feedback else 0)
        self.regressor = identity_regressor(rnn_units, self.transform)
        self.encoder = None
        if self.glimpse_feedback:
            with separate_rng():
                self.encoder = glimpse_encoder(glimpse_shape, encoder_channels, encoder_hidden)

    def localisation_parameters(self) -> list[nn.Parameter]:
        encoder = list(self.encoder.parameters()) if self.encoder is not None else []
        return [*self.localisation.parameters(), *self.rnn.parameters(), *self.regressor.parameters(), *encoder]

    def sample(self, images: torch.Tensor, thetas: torch.Tensor) -> torch.Tensor:
        """Glimpses [B, S, C, h, w] for parameters [B, S, P]: every glimpse from the full image."""
        return warp_steps(images, self.transform, thetas, self.glimpse_hw)

    def forward(self, images: torch.Tensor, num_steps: int | None = None) -> ModelOutput:
        """Logits [B, T, classes] for T = ``num_steps`` steps (default: the number it was built for)."""
        steps = self.steps if num_steps is None else int(num_steps)
        # The same code every step (Lasagne's Repeat layer): its input gates W_x x + b once, not once per step.
        drive = self.rnn.input(self.localisation(images))
        if self.encoder is None:
            thetas, glimpses = self.look(images, drive, steps)
        else:
            thetas, glimpses = self.look_with_feedback(images, drive, steps)
        logits = self.classifier(glimpses.flatten(0, 1)).view(images.shape[0], steps, self.num_classes)
        return ModelOutput(logits, thetas=thetas, glimpses=glimpses)

    def look(self, images: torch.Tensor, drive: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference: all θs from the GRU first, then all glimpses in one sampler call."""
        state, hidden = None, []
        for _ in range(steps):
            state = self.rnn.step(drive, state)
            hidden.append(state)
        thetas = self.regressor(torch.stack(hidden, 1))  # [B, T, P]
        return thetas, self.sample(images, thetas)

    def look_with_feedback(self, images: torch.Tensor, drive: torch.Tensor,
                           steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Glimpse by glimpse: step t + 1's input gates also get ``rnn.feedback(encoder(glimpse t))``."""
        state, thetas, glimpses = None, [], []
        for step in range(steps):
            gates = drive if step == 0 else drive + self.rnn.feedback(self.encoder(glimpses[-1]))
            state = self.rnn.step(gates, state)
            thetas.append(self.regressor(state))
            glimpses.append(self.sample(images, thetas[-1].unsqueeze(1)).squeeze(1))
        return torch.stack(thetas, 1), torch.stack(glimpses, 1)


def glimpse_encoder(glimpse_shape: tuple[int, int, int], channels: int = 16, hidden: int = 64) -> nn.Sequential:
    """The RNN-SPN's glimpse code for feedback: conv 3x3 -> pool -> conv -> pool -> conv (the classifier's
    layout, so it fits every glimpse the classifier fits) at few channels -> dense ``hidden`` -> ReLU;
    Lasagne's init. A tenth of the classifier's work per glimpse: the model runs on CPUs for hours."""
    convs = conv_stack(glimpse_shape[0], channels, pool_first=False)
    encoder = nn.Sequential(convs, nn.Linear(checked_flat_size(convs, glimpse_shape, "glimpse encoder"), hidden),
                            nn.ReLU())
    lasagne_init(encoder)
    return encoder


def parameter_table(input_shape: tuple[int, int, int] = (1, 100, 100), num_steps: int = 3) -> str:
    """Parameter counts of the three systems (and the RNN-SPN with glimpse feedback) for downsample factors
    1, 2, 3 (the table in docs/models.md)."""
    lines = ["model                    downsample  glimpse  parameters"]
    variants = [(SonderbyCNN, {}), (SonderbyFFNSPN, {}), (SonderbyRNNSPN, {}),
                (SonderbyRNNSPN, {"glimpse_feedback": True})]
    for model, options in variants:
        name = model.__name__ + ("+feedback" if options else "")
        for factor in (1, 2, 3):
            net = model(input_shape, 10, num_steps=num_steps, downsample=factor, **options)
            side, count = "x".join(map(str, net.glimpse_hw)), sum(p.numel() for p in net.parameters())
            lines.append(f"{name:<24} {factor:>10}  {side:>7}  {count:>10,}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m stnbench.models.sonderby
    print(parameter_table())
