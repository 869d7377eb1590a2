"""The baseline classifiers of Jaderberg et al. 2015, also used as the classifier behind every STN.

Inputs are raw [0, 1] images with a background of 0; each classifier normalises its own input, *after*
any spatial transformer has sampled it (see ``stnbench.sampling``).
"""

from __future__ import annotations

import torch
from torch import nn

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
