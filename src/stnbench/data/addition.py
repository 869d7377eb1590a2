"""MNIST addition (Jaderberg et al. 2015, appendix): two channels, each an independent RTS digit; the
label is their sum, so a model must find and read both digits (e.g. one spatial transformer per channel).
"""

from __future__ import annotations

import math

import torch

from stnbench.data.distortions import AffinePlacement, Rendered, placement_theta
from stnbench.data.mnist import DigitSplit
from stnbench.sampling import affine_grid, sample


class Addition(AffinePlacement):
    """Channel 0 holds the main digit, channel 1 a second digit drawn from the same pool; both get their
    own rotation, scale and position (RTS ranges by default). Target = sum of the two labels (0-18)."""

    name = "addition"
    channels = 2
    num_classes = 19

    def __init__(self, max_angle: float = 45.0, min_scale: float = 0.7, max_scale: float = 1.2,
                 canvas_size: int = 42) -> None:
        super().__init__(max_angle, min_scale, max_scale, canvas_size, translate=True)

    def render(self, pool: DigitSplit, index: torch.Tensor, generator: torch.Generator) -> Rendered:
        batch = len(index)
        second = torch.randint(len(pool), (batch,), generator=generator, device=index.device)
        digits = torch.stack([index, second], 1)  # [B, 2]
        draws = [self.sample_params(batch, generator, index.device) for _ in range(2)]
        params = {key: torch.stack([draw[key] for draw in draws], 1) for key in draws[0]}
        # Both channels in one batched grid_sample: [2B] digits on [2B] canvases.
        flat = {key: value.flatten(0, 1) for key, value in params.items()}
        angle = flat["angle"] * (math.pi / 180)
        theta = placement_theta(angle, flat["scale"], flat["shift"], self.image_size)
        grid = affine_grid(theta, self.image_size, self.image_size)
        source = pool.images[digits.flatten()].unsqueeze(1).float().div_(255.0)
        images = sample(source, grid).clamp_(0.0, 1.0).view(batch, 2, self.image_size, self.image_size)
        params["digit_index"] = digits
        return Rendered(images, pool.labels[digits].sum(1), params)
