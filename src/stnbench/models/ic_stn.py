"""IC-STN (Lin & Lucey 2017, *Inverse Compositional Spatial Transformer Networks*): one geometric predictor,
applied K times, propagates *warp parameters* instead of images.

Step k reads the current glimpse g_{k-1}, predicts an update Δ_k, composes it with the warp so far,
θ_k = θ_{k-1} ∘ Δ_k, and samples the next glimpse g_k = sample(source, θ_k) from the *source* again, never
from g_{k-1}: what one step moves out of the frame the next step can bring back, and the source is
interpolated once, whatever K (tested). Every Δ_k starts at the identity (zero-initialised last layer), so at
init every glimpse is the input g_0. The classifier reads g_K.

Where it starts (``from_source``). As in the paper and the authors' code (``geometric(image, pInit)``), with
``from_source: true`` the source is the *clean digit* and θ_0 the perturbation that made the image (the data's
:class:`stnbench.source.Source`, ``data=perturbed``): g_0 is the perturbed image, and the warps resample the
digit itself, so ink the perturbation pushed out of the frame is still there to be brought back. With
``from_source: false`` (and for images without a source, such as a user's own in ``stnbench-predict``) the
source is the image and θ_0 the identity.

The definitions (the authors' code, chenhsuanlin/inverse-compositional-STN, ``graphST.py`` / ``graph.py``):

* STN: the predictor reads the perturbed image once and its warp resamples that image: ``STClassifier`` with
  the same predictor and classifier (``model=ic_plain_stn``).
* c-STN: one compositional step, ``model=ic_stn model.num_warps=1``: it reads the perturbed image as the STN
  does, but composes its update with the perturbation and resamples the clean digit. (With
  ``from_source: false`` it computes exactly what the STN computes: the same weights give the same logits, tested.)
* IC-STN: K steps with one shared predictor (the reference's default K = 4).

Composition convention. A warp maps output (glimpse) coordinates to input coordinates: glimpse pixel x
reads the input at H_θ x (normalised coordinates, stnbench.sampling). ``update_frame: glimpse`` (default)
composes H_θk = H_θ(k-1) H_Δk: the update is a warp *of the glimpse the predictor saw*, so K steps compute
exactly what K spatial transformers chained on each other's outputs would, minus their border loss
(composing equals warping twice: tested). ``update_frame: image`` is the order of the authors' code,
H_θk = H_Δk H_θ(k-1) (``warp.compose``: ``dpMtrx @ pMtrx``), the update acting in the input's coordinates;
the two agree for one step from the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.classifiers import flat_size, normal_init, plain_layers
from stnbench.models.output import ModelOutput
from stnbench.models.stn import SpatialTransformer, check_from_source, check_loc_lr_multiplier, output_hw, start
from stnbench.models.transforms import Transform
from stnbench.source import Source

UPDATE_FRAMES = ("glimpse", "image")


class GeometricPredictor(nn.Module):
    """Lin & Lucey's geometric predictor up to its last layer: conv 7x7, 4 -> ReLU -> conv 7x7, 8 -> ReLU ->
    max-pool 2 -> dense 48 -> ReLU (valid convolutions, N(0, ``init_std``) weights, the raw image). A
    localisation net: the models put the zero-weight, identity-bias regression layer on ``out_features``."""

    def __init__(self, input_shape: tuple[int, int, int], channels: tuple[int, ...] = (4, 8),
                 kernels: tuple[int, ...] = (7, 7), pool_after: tuple[int, ...] = (2,), hidden: int = 48,
                 init_std: float | None = 0.1) -> None:
        super().__init__()
        body = nn.Sequential(*plain_layers(input_shape[0], tuple(channels), tuple(kernels), tuple(pool_after)),
                             nn.Flatten())
        try:
            size = flat_size(body, tuple(input_shape))
        except RuntimeError as error:
            raise ConfigError(f"geometric predictor with kernels {list(kernels)} and pools after "
                              f"{list(pool_after)} does not fit input {tuple(input_shape)}") from error
        if hidden < 1:
            raise ConfigError(f"geometric predictor hidden must be a positive width, got {hidden}")
        self.net = nn.Sequential(body, nn.Linear(size, hidden), nn.ReLU())
        normal_init(self.net, init_std)
        self.out_features = hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ICSTN(nn.Module):
    """IC-STN: ``num_warps`` compositional steps of one shared predictor, then the classifier on the last
    glimpse. Returns every step's θ_k and glimpse g_k (k = 1..K: [B, K, P], [B, K, C, h, w]).

    ``stn`` (predictor ``stn.localisation`` + regression layer ``stn.regressor``) and ``classifier`` carry
    ``STClassifier``'s names and shapes, so a plain STN's weights load into it (with K = 1 and the input's
    size: the same logits). ``localisation`` is the predictor (a partial taking ``input_shape``, with
    ``out_features``), named as in every stnbench STN."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, classifier, transform: Transform,
                 localisation, num_warps: int = 4, output_size: int | Sequence[int] | None = None,
                 loc_lr_multiplier: float = 1.0, num_steps: int = 1, update_frame: str = "glimpse",
                 from_source: bool = False) -> None:
        super().__init__()
        if isinstance(num_warps, bool) or int(num_warps) != num_warps or num_warps < 1:
            raise ConfigError(f"model.num_warps must be a positive integer (K compositional steps; 1 = c-STN), "
                              f"got {num_warps}")
        if update_frame not in UPDATE_FRAMES:
            raise ConfigError(f"model.update_frame must be one of {UPDATE_FRAMES}, got '{update_frame}'")
        if not transform.composable:
            raise ConfigError(f"IC-STN composes warps: model/transform={transform.name} has no composition rule; "
                              "use model/transform=projective (the paper's homography) or affine")
        self.reads_source = check_from_source(from_source, transform)  # the model contract: forward takes source
        self.loc_lr_multiplier = check_loc_lr_multiplier(loc_lr_multiplier)
        self.num_warps, self.update_frame = int(num_warps), update_frame
        self.num_steps, self.num_classes = int(num_steps), num_classes
        self.transform = transform
        glimpse_hw = output_hw(output_size, input_shape)
        glimpse_shape = (input_shape[0], *glimpse_hw)
        # The predictor reads glimpses, so it is built for the glimpse's size; θ samples the source (or the input).
        self.stn = SpatialTransformer(glimpse_shape, transform, localisation, glimpse_hw)
        self.classifier = classifier(input_shape=glimpse_shape, num_classes=num_classes * self.num_steps)

    def localisation_parameters(self) -> list[nn.Parameter]:
        return [*self.stn.localisation.parameters(), *self.stn.regressor.parameters()]

    def compose(self, theta: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        """θ ∘ Δ in the configured frame (module docstring)."""
        if self.update_frame == "glimpse":
            return self.transform.compose(theta, update)
        return self.transform.compose(update, theta)

    def forward(self, images: torch.Tensor, source: Source | None = None) -> ModelOutput:
        batch = images.shape[0]  # not len(): traceable at any batch size
        base, theta = start(self.transform, images, source if self.reads_source else None)
        # g_0 = the input: the image itself when the glimpse has its size (it is the source at θ_0).
        same_size = tuple(images.shape[-2:]) == tuple(self.stn.output_hw)
        glimpse = images if same_size else self.stn.warp(base, theta)
        thetas, glimpses = [], []
        for _ in range(self.num_warps):  # sequential: Δ_k depends on glimpse k - 1
            update = self.stn.regressor(self.stn.localisation(glimpse))
            theta = self.compose(theta, update)
            glimpse = self.stn.warp(base, theta)  # from the source, not from the last glimpse
            thetas.append(theta)
            glimpses.append(glimpse)
        logits = self.classifier(glimpse).view(batch, self.num_steps, self.num_classes)
        return ModelOutput(logits, thetas=torch.stack(thetas, 1), glimpses=torch.stack(glimpses, 1))

