"""The baseline classifiers of Jaderberg et al. 2015, also used as the classifier behind every STN.

Inputs are raw [0, 1] images with a background of 0; each classifier normalises its own input, *after*
any spatial transformer has sampled it (see ``stnbench.sampling``).
"""

from __future__ import annotations

import torch
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.output import ModelOutput

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class Normalize(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images - MNIST_MEAN) / MNIST_STD


def conv_features(in_channels: int, channels: tuple[int, ...], kernels: tuple[int, ...],
                  same_padding: bool = False, ceil_mode: bool = False) -> nn.Sequential:
    """conv (valid, or size-preserving "same" padding) -> ReLU -> 2x2 max-pool, once per stage; ``ceil_mode``:
    the pool keeps a last odd row and column (Chainer's default), so a 21x21 input fits 9x9 and 7x7 convs."""
    layers: list[nn.Module] = []
    for out_channels, kernel in zip(channels, kernels, strict=True):
        padding = kernel // 2 if same_padding else 0
        layers += [nn.Conv2d(in_channels, out_channels, kernel, padding=padding), nn.ReLU(),
                   nn.MaxPool2d(2, ceil_mode=ceil_mode)]
        in_channels = out_channels
    return nn.Sequential(*layers)


def flat_size(module: nn.Module, shape: tuple[int, int, int]) -> int:
    """Number of features ``module`` produces for one input of ``shape`` (C, H, W)."""
    with torch.no_grad():
        return module(torch.zeros(1, *shape)).flatten(1).shape[1]


class CNN(nn.Module):
    """Two conv + max-pool stages and a linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int = 10,
                 channels: tuple[int, ...] = (32, 64), kernels: tuple[int, ...] = (9, 7),
                 ceil_mode: bool = False) -> None:
        super().__init__()
        channels, kernels = tuple(channels), tuple(kernels)
        features = nn.Sequential(Normalize(), conv_features(input_shape[0], channels, kernels, ceil_mode=ceil_mode),
                                 nn.Flatten())
        try:
            size = flat_size(features, tuple(input_shape))
        except RuntimeError as error:
            raise ValueError(f"CNN with kernels {kernels} does not fit input {tuple(input_shape)}: "
                             "use a larger image, smaller kernels or classifier.ceil_mode=true") from error
        self.net = nn.Sequential(features, nn.Linear(size, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def plain_layers(in_channels: int, channels: tuple[int, ...], kernels: tuple[int, ...],
                 pool_after: tuple[int, ...] = ()) -> list[nn.Module]:
    """Valid convolutions, a ReLU after each, and a 2x2 max-pool after the (1-based) stages in ``pool_after``:
    the layer lists of Lin & Lucey's MNIST networks (IC-STN), which pool after some convolutions only."""
    if len(channels) != len(kernels):
        raise ConfigError(f"channels {list(channels)} and kernels {list(kernels)} must have one entry per "
                          "convolution")
    if any(not 1 <= stage <= len(channels) for stage in pool_after):
        raise ConfigError(f"pool_after {list(pool_after)} names stages outside 1..{len(channels)} (the "
                          "convolutions a 2x2 max-pool follows)")
    layers: list[nn.Module] = []
    for stage, (out_channels, kernel) in enumerate(zip(channels, kernels, strict=True), start=1):
        layers += [nn.Conv2d(in_channels, out_channels, kernel), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if stage in pool_after else []
        in_channels = out_channels
    return layers


def dense_layers(width: int, hidden: tuple[int, ...]) -> list[nn.Module]:
    """Hidden fully-connected layers, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    return layers


def normal_init(module: nn.Module, std: float | None) -> None:
    """Every weight and bias of ``module`` from N(0, std), as Lin & Lucey's code initialises (``None``:
    keep torch's default initialisation)."""
    if std is None:
        return
    if std < 0:
        raise ConfigError(f"init_std must be >= 0 (or null for torch's default init), got {std}")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.normal_(layer.bias, 0.0, std)


class PlainCNN(nn.Module):
    """Valid convs (``pool_after``: which of them a 2x2 max-pool follows), hidden dense layers, a linear
    output; N(0, ``init_std``) weights. Lin & Lucey's MNIST classifiers as layer lists: their deliberately weak
    ``CNN`` (one 9x9 conv of 3 channels, no pooling, so only an aligned digit is easy to read) and the
    ``FullCNN`` baseline. Reads the raw [0, 1] image as their code does unless ``normalize``."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int = 10, channels: tuple[int, ...] = (3,),
                 kernels: tuple[int, ...] = (9,), pool_after: tuple[int, ...] = (), hidden: tuple[int, ...] = (),
                 init_std: float | None = 0.1, normalize: bool = False) -> None:
        super().__init__()
        convs = plain_layers(input_shape[0], tuple(channels), tuple(kernels), tuple(pool_after))
        features = nn.Sequential(*([Normalize()] if normalize else []), *convs, nn.Flatten())
        try:
            size = flat_size(features, tuple(input_shape))
        except RuntimeError as error:
            raise ConfigError(f"classifier with kernels {list(kernels)} and pools after {list(pool_after)} does "
                              f"not fit input {tuple(input_shape)}: use smaller kernels or fewer pools") from error
        hidden = tuple(hidden)
        self.net = nn.Sequential(features, *dense_layers(size, hidden), nn.Linear((size, *hidden)[-1], num_classes))
        normal_init(self.net, init_std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class FCN(nn.Module):
    """Fully-connected baseline: hidden ReLU layers and a linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int = 10,
                 hidden: tuple[int, ...] = (128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = [Normalize(), nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        self.net = nn.Sequential(*layers, nn.Linear(width, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class Baseline(nn.Module):
    """A classifier with no spatial transformer. For sequence data it has one head per position (one
    linear layer with ``num_steps * num_classes`` outputs)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier,
                 num_steps: int = 1) -> None:
        super().__init__()
        self.num_steps, self.num_classes = num_steps, num_classes
        self.classifier = classifier(input_shape=tuple(input_shape), num_classes=num_classes * num_steps)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        logits = self.classifier(images).view(images.shape[0], self.num_steps, self.num_classes)
        return ModelOutput(logits)
