"""The model contract: what a model (built-in or a user's own) must do for stnbench to train, score,
picture and export it. Checked once when a model is built, by :func:`check_model`, so a plug-in that
breaks it fails with one message that says which rule and how to fix it, not deep inside training.

A model is a ``torch.nn.Module`` that

* is built with the keyword arguments ``input_shape`` (C, H, W), ``num_classes`` and ``num_steps`` (1, or the
  digits per image of sequence data) besides its own config keys;
* maps float images [B, C, H, W] in [0, 1] (background 0) to a :class:`ModelOutput` whose ``logits`` are
  [B, T, num_classes] with T >= ``num_steps`` (the last ``num_steps`` steps are scored);
* if it has a spatial transformer, also returns ``thetas`` [B, S, P] and ``glimpses`` [B, S, C, h, w] and
  exposes ``transform`` (a :class:`stnbench.models.transforms.Transform`, for the zoom metric and pictures);
* may expose ``localisation_parameters()`` and ``loc_lr_multiplier`` (>= 0): those parameters then train at
  ``loc_lr_multiplier`` times the learning rate, and the Optuna search tunes the multiplier.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from stnbench.errors import ConfigError
from stnbench.models.output import ModelOutput

CONSTRUCTOR_KWARGS = ("input_shape", "num_classes", "num_steps")


@runtime_checkable
class Model(Protocol):
    """Every stnbench model: ``model(images) -> ModelOutput`` (an ``nn.Module``)."""

    def __call__(self, images: torch.Tensor) -> ModelOutput: ...


@runtime_checkable
class LocalisedModel(Model, Protocol):
    """A model with a localisation net whose learning rate is scaled separately (STN models)."""

    loc_lr_multiplier: float

    def localisation_parameters(self) -> Iterable[nn.Parameter]: ...


class ModelContractError(ConfigError):
    """A model does not meet the contract above."""


def _fail(model: nn.Module, rule: str, fix: str) -> ModelContractError:
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    return ModelContractError(f"model {name} breaks the model contract: {rule}; {fix} "
                              "(see docs/extending.md)")


def check_constructor(model: nn.Module) -> None:
    """Its class takes ``input_shape``, ``num_classes`` and ``num_steps`` as keyword arguments."""
    parameters = inspect.signature(type(model).__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    missing = [k for k in CONSTRUCTOR_KWARGS if k not in parameters]
    if missing:
        raise _fail(model, f"__init__ has no keyword argument(s) {', '.join(missing)}",
                    "accept input_shape, num_classes and num_steps (stnbench passes all three)")


def check_model(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int | None = None,
                num_steps: int = 1) -> None:
    """Raise :class:`ModelContractError` (a ConfigError) naming the first rule ``model`` breaks.

    Runs one forward pass on two blank images (no gradients; training mode is restored)."""
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"model {type(model).__qualname__} is not a torch.nn.Module; subclass nn.Module")
    check_constructor(model)
    parameter = next(model.parameters(), None)
    images = torch.zeros(2, *input_shape, device=parameter.device if parameter is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(images)
    except Exception as error:
        raise _fail(model, f"forward failed on images of shape {list(images.shape)} ({type(error).__name__}: "
                    f"{error})", "accept float images [B, C, H, W] of the data's input_shape") from None
    finally:
        model.train(was_training)
    if not isinstance(output, ModelOutput):
        raise _fail(model, f"forward returned {type(output).__name__}, not ModelOutput",
                    "return stnbench.models.output.ModelOutput(logits=...)")
    logits = output.logits
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[0] != 2:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise _fail(model, f"logits have shape {shape}, not [B, T, classes]",
                    "reshape them with .view(batch, num_steps, num_classes)")
    if num_classes is not None and logits.shape[2] != num_classes:
        raise _fail(model, f"logits have {logits.shape[2]} classes, the data has {num_classes}",
                    "size the output layer with the num_classes argument")
    if logits.shape[1] < num_steps:
        raise _fail(model, f"logits have {logits.shape[1]} steps, the data needs {num_steps}",
                    "emit one step per digit (the num_steps argument)")
    if (output.thetas is None) != (output.glimpses is None):
        raise _fail(model, "only one of thetas and glimpses is set", "return both (a spatial transformer) or neither")
    if output.thetas is not None:
        if output.thetas.dim() != 3 or output.glimpses.dim() != 5:
            raise _fail(model, f"thetas {list(output.thetas.shape)} / glimpses {list(output.glimpses.shape)} are "
                        "not [B, S, P] / [B, S, C, h, w]", "add the glimpse axis S (1 for one transformer)")
        if not hasattr(model, "transform"):
            raise _fail(model, "it returns thetas but has no `transform` attribute",
                        "expose the Transform that turns thetas into sampling grids as self.transform")
    if hasattr(model, "loc_lr_multiplier") or hasattr(model, "localisation_parameters"):
        _check_localisation(model)


def _check_localisation(model: nn.Module) -> None:
    multiplier = getattr(model, "loc_lr_multiplier", 1.0)
    if not isinstance(multiplier, (int, float)) or multiplier < 0:
        raise _fail(model, f"loc_lr_multiplier is {multiplier!r}", "make it a number >= 0")
    if not callable(getattr(model, "localisation_parameters", None)):
        raise _fail(model, "it has loc_lr_multiplier but no localisation_parameters() method",
                    "return the localisation net's parameters from localisation_parameters()")
    own = {id(p) for p in model.parameters()}
    if any(id(p) not in own for p in model.localisation_parameters()):
        raise _fail(model, "localisation_parameters() returns parameters that are not the model's own",
                    "return parameters of the model's submodules")
