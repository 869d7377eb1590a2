"""Spatial transformer: localisation net -> transform parameters -> sampling grid -> bilinear sampler.

``SpatialTransformer`` is the reusable module (the recurrent models call it per step);
``STClassifier`` is the CNN-STN / FCN-STN of Jaderberg et al. 2015: the classifier sees only the warped
image.
"""

from __future__ import annotations

import torch
from torch import nn

from stnbench.models.classifiers import conv_features, flat_size
from stnbench.models.output import ModelOutput
from stnbench.models.transforms import Transform
from stnbench.sampling import sample


class LocalisationCNN(nn.Module):
    """Downsample, two conv + max-pool stages, one hidden layer: a small net that reads the whole image."""

    def __init__(self, input_shape: tuple[int, int, int], channels: tuple[int, ...] = (20, 20),
                 kernels: tuple[int, ...] = (5, 5), hidden: int = 50, downsample: int = 2) -> None:
        super().__init__()
        body = nn.Sequential(nn.MaxPool2d(downsample) if downsample > 1 else nn.Identity(),
                             conv_features(input_shape[0], tuple(channels), tuple(kernels)), nn.Flatten())
        self.net = nn.Sequential(body, nn.Linear(flat_size(body, tuple(input_shape)), hidden), nn.ReLU())
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


class SpatialTransformer(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], transform: Transform, localisation,
                 output_size: int | None = None) -> None:
        super().__init__()
        self.transform = transform
        self.localisation = localisation(input_shape=tuple(input_shape))
        self.regressor = identity_regressor(self.localisation.out_features, transform)
        self.output_size = output_size or input_shape[-1]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (warped images [B, C, s, s], parameters [B, P])."""
        theta = self.regressor(self.localisation(images))
        return self.warp(images, theta), theta

    def warp(self, images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return sample(images, self.transform.grid(theta, self.output_size, self.output_size))


class STClassifier(nn.Module):
    """CNN-STN / FCN-STN: ``classifier(stn(image))``. ``loc_lr_multiplier`` scales the localisation net's
    learning rate (read by the LightningModule when it builds optimiser groups)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, output_size: int | None = None, loc_lr_multiplier: float = 1.0,
                 num_steps: int = 1) -> None:
        super().__init__()
        if loc_lr_multiplier < 0:
            raise ValueError(f"loc_lr_multiplier must be >= 0, got {loc_lr_multiplier}")
        self.stn = SpatialTransformer(input_shape, transform, localisation, output_size)
        self.transform = transform  # every STN model exposes its transform (metrics, pictures)
        self.loc_lr_multiplier = loc_lr_multiplier
        self.num_steps, self.num_classes = num_steps, num_classes
        size = self.stn.output_size
        self.classifier = classifier(input_shape=(input_shape[0], size, size), num_classes=num_classes * num_steps)

    def localisation_parameters(self) -> list[nn.Parameter]:
        return list(self.stn.localisation.parameters()) + list(self.stn.regressor.parameters())

    def forward(self, images: torch.Tensor) -> ModelOutput:
        warped, theta = self.stn(images)
        logits = self.classifier(warped).view(len(images), self.num_steps, self.num_classes)
        return ModelOutput(logits, thetas=theta.unsqueeze(1), glimpses=warped.unsqueeze(1))
