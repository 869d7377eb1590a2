"""Spatial transformer: localisation net -> transform parameters -> sampling grid -> bilinear sampler.

``SpatialTransformer`` is the reusable module (the recurrent models call it per step);
``STClassifier`` is the CNN-STN / FCN-STN of Jaderberg et al. 2015: the classifier sees only the warped
image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.classifiers import conv_features, flat_size
from stnbench.models.output import ModelOutput
from stnbench.models.transforms import Transform
from stnbench.sampling import sample
from stnbench.source import Source


class LocalisationCNN(nn.Module):
    """Downsample, two conv + max-pool stages, one hidden layer: a small net that reads the whole image.

    "Same" padding (default) keeps it valid on every canvas from 28x28 up; valid padding needs >= 42."""

    def __init__(self, input_shape: tuple[int, int, int], channels: tuple[int, ...] = (20, 20),
                 kernels: tuple[int, ...] = (5, 5), hidden: int = 50, downsample: int = 2,
                 same_padding: bool = True) -> None:
        super().__init__()
        body = nn.Sequential(nn.MaxPool2d(downsample) if downsample > 1 else nn.Identity(),
                             conv_features(input_shape[0], tuple(channels), tuple(kernels), same_padding),
                             nn.Flatten())
        try:
            size = flat_size(body, tuple(input_shape))
        except RuntimeError as error:
            raise ConfigError(f"localisation CNN (downsample={downsample}, kernels={tuple(kernels)}) does "
                              f"not fit input {tuple(input_shape)}: lower downsample or use same_padding"
                              ) from error
        self.net = nn.Sequential(body, nn.Linear(size, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class LocalisationFCN(nn.Module):
    """Fully-connected localisation net (for ST-FCN)."""

    def __init__(self, input_shape: tuple[int, int, int], hidden: tuple[int, ...] = (32, 32)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(torch.tensor(input_shape).prod())
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def identity_regressor(in_features: int, transform: Transform) -> nn.Linear:
    """The final localisation layer: zero weights, identity bias, so training starts from "no warp"."""
    layer = nn.Linear(in_features, transform.num_params)
    nn.init.zeros_(layer.weight)
    with torch.no_grad():
        layer.bias.copy_(transform.identity())
    return layer


def output_hw(output_size: int | Sequence[int] | None, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The sampler's output (height, width): ``None`` keeps the input size, an int gives a square."""
    if output_size is None:
        return int(input_shape[-2]), int(input_shape[-1])
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(map(int, output_size))
    if len(size) != 2 or min(size) <= 0:
        raise ConfigError(f"output_size must be a positive int, [height, width] or null, got {output_size}")
    return size


def check_loc_lr_multiplier(value: float) -> float:
    if value < 0:
        raise ConfigError(f"loc_lr_multiplier must be >= 0, got {value}")
    return float(value)


def warp(images: torch.Tensor, transform: Transform, theta: torch.Tensor,
         size: tuple[int, int]) -> torch.Tensor:
    """Glimpses [B, C, h, w] of ``images`` [B, C, H, W] under parameters ``theta`` [B, P]."""
    return sample(images, transform.grid(theta, *size))


def warp_steps(images: torch.Tensor, transform: Transform, thetas: torch.Tensor,
               size: tuple[int, int]) -> torch.Tensor:
    """All S glimpses per image in one sampler call: ``thetas`` [B, S, P] -> [B, S, C, h, w]."""
    batch, steps = thetas.shape[:2]
    repeated = images.unsqueeze(1).expand(-1, steps, -1, -1, -1).reshape(batch * steps, *images.shape[1:])
    glimpses = warp(repeated, transform, thetas.reshape(batch * steps, -1), size)
    return glimpses.view(batch, steps, *glimpses.shape[1:])


class SpatialTransformer(nn.Module):
    """localisation -> θ -> the image sampled on an ``output_size`` grid, then average-pooled by
    ``output_pool`` (Jaderberg et al.'s RTS and TC models downsample the transformer's output by 2 before
    the classifier; docs/models.md). ``output_hw`` is what comes out: the classifier's input size."""

    def __init__(self, input_shape: tuple[int, int, int], transform: Transform, localisation,
                 output_size: int | Sequence[int] | None = None, output_pool: int = 1) -> None:
        super().__init__()
        self.transform = transform
        self.localisation = localisation(input_shape=tuple(input_shape))
        self.regressor = identity_regressor(self.localisation.out_features, transform)
        self.sampled_hw = output_hw(output_size, input_shape)
        if isinstance(output_pool, bool) or int(output_pool) != output_pool or output_pool < 1:
            raise ConfigError(f"output_pool must be a positive integer (1: no pooling), got {output_pool}")
        self.output_pool = int(output_pool)
        if any(side % self.output_pool for side in self.sampled_hw):
            raise ConfigError(f"output_pool={output_pool} does not divide the sampled size {self.sampled_hw}; "
                              "pick an output_size that it divides")
        self.output_hw = (self.sampled_hw[0] // self.output_pool, self.sampled_hw[1] // self.output_pool)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.output_hw

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (warped images [B, C, h, w], parameters [B, P])."""
        theta = self.regressor(self.localisation(images))
        return self.warp(images, theta), theta

    def warp(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        sampled = warp(images, self.transform, theta, self.sampled_hw)
        return F.avg_pool2d(sampled, self.output_pool) if self.output_pool > 1 else sampled


class STClassifier(nn.Module):
    """CNN-STN / FCN-STN: ``classifier(stn(image))``. ``loc_lr_multiplier`` scales the localisation net's
    learning rate (read by the LightningModule when it builds optimiser groups). For sequence data the
    classifier has one head per digit position, like ``Baseline``.

    ``num_transformers`` > 1 is Jaderberg et al.'s parallel multi-transformer model (2xST-FCN for MNIST
    addition): each transformer has its own localisation net reading the whole input, and their outputs
    are stacked as channels for the classifier (C * N input channels). The first transformer is ``stn``
    (the single-transformer names, so checkpoints of the two kinds keep one layout), the others
    ``more_stns``.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, output_size: int | Sequence[int] | None = None, loc_lr_multiplier: float = 1.0,
                 num_steps: int = 1, num_transformers: int = 1, output_pool: int = 1) -> None:
        super().__init__()
        if int(num_transformers) != num_transformers or num_transformers < 1:
            raise ConfigError(f"num_transformers must be a positive integer (2 for 2xST-FCN), got {num_transformers}")
        self.loc_lr_multiplier = check_loc_lr_multiplier(loc_lr_multiplier)
        self.stn = SpatialTransformer(input_shape, transform, localisation, output_size, output_pool)
        self.more_stns = nn.ModuleList(
            SpatialTransformer(input_shape, transform, localisation, output_size, output_pool)
            for _ in range(int(num_transformers) - 1))
        self.transform = transform  # every STN model exposes its transform (metrics, pictures)
        self.num_steps, self.num_classes = num_steps, num_classes
        channels = input_shape[0] * int(num_transformers)
        self.classifier = classifier(input_shape=(channels, *self.stn.output_hw),
                                     num_classes=num_classes * num_steps)

    @property
    def transformers(self) -> list[SpatialTransformer]:
        return [self.stn, *self.more_stns]

    def localisation_parameters(self) -> list[nn.Parameter]:
        return [p for stn in self.transformers for p in (*stn.localisation.parameters(), *stn.regressor.parameters())]

    def forward(self, images: torch.Tensor) -> ModelOutput:
        warped, thetas = zip(*(stn(images) for stn in self.transformers), strict=True)
        logits = self.classifier(torch.cat(warped, 1)).view(images.shape[0], self.num_steps, self.num_classes)
        return ModelOutput(logits, thetas=torch.stack(thetas, 1), glimpses=torch.stack(warped, 1))


def check_from_source(from_source: bool, transform: Transform) -> bool:
    """``model.from_source``: a bool, and a transform that can hold the data's homography (projective)."""
    if not isinstance(from_source, bool):
        raise ConfigError(f"model.from_source must be true or false, got {from_source!r}")
    if from_source and not hasattr(transform, "params_of"):
        raise ConfigError(f"model.from_source=true starts from the homography that made each image, which "
                          f"model/transform={transform.name} cannot hold; use model/transform=projective, or set "
                          "model.from_source=false to start from the image at the identity")
    return from_source


def start(transform: Transform, images: torch.Tensor, source: Source | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the warps sample, θ_0): the source's clean digits at the homography that made ``images``, or,
    without a source, ``images`` at the identity."""
    if source is None:
        return images, transform.identity().to(images).expand(images.shape[0], -1)
    return source.images.to(images), transform.params_of(source.homography.to(images))
