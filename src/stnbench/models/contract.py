"""The model contract: what a model (built-in or a user's own) must do for stnbench to train, score,
picture and export it. Checked once when a model is built, by :func:`check_model`, so a plug-in that
breaks it fails with one message that says which rule and how to fix it, not deep inside training.

A model is a ``torch.nn.Module`` that

* is built with the keyword arguments ``input_shape`` (C, H, W), ``num_classes`` and ``num_steps`` (1, or the
  digits per image of sequence data) besides its own config keys;
* maps float images [B, C, H, W] in [0, 1] (background 0) to a :class:`ModelOutput` whose ``logits`` are
  [B, T, num_classes] with T >= ``num_steps`` (the last ``num_steps`` steps are scored; for data with an end
  class, sequences of variable length, the first);
* may run another number of prediction steps than it was built for (a recurrent model: one step per digit,
  however many there are): it then sets the class attribute ``variable_steps = True`` and takes
  ``num_steps`` as a keyword argument of ``forward`` (``model(images, num_steps=T)`` emits T steps;
  :func:`run_model` is how stnbench calls it). A model without it has a fixed head per position and is refused
  test data that needs more steps than it was built for (:func:`check_test_steps`);
* may start from where the data's images came from (the clean digit and the warp that made the image, a
  :class:`stnbench.source.Source`, from data with ``source_warp`` such as ``data=perturbed``): it then sets the
  attribute ``reads_source = True`` and takes ``source`` as a keyword argument of ``forward``
  (``model(images, source=...)``, :func:`run_model`); with ``source=None`` (images of a user's own) it starts
  from the image alone. Such a model is refused data that hands no source (:func:`check_source`);
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
from stnbench.source import Source

CONSTRUCTOR_KWARGS = ("input_shape", "num_classes", "num_steps")
# What to use instead of a model with a fixed head per position, when the test needs more steps.
RECURRENT_MODELS = "model=recurrent_stn, recurrent_stn_no_feedback, sonderby_rnn_spn or rnn_stn"


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


def variable_steps(model: nn.Module) -> bool:
    """Whether ``model`` can emit another number of steps than it was built for (``forward(..., num_steps=T)``)."""
    return bool(getattr(model, "variable_steps", False))


def parameter_count(model: nn.Module) -> int:
    """All of a model's parameters, trainable or not: the count results.json, the report and the console give."""
    return sum(p.numel() for p in model.parameters())


def reads_source(model: nn.Module) -> bool:
    """Whether ``model`` starts from the data's :class:`~stnbench.source.Source` (``forward(..., source=...)``)."""
    return bool(getattr(model, "reads_source", False))


def run_model(model: nn.Module, images: torch.Tensor, num_steps: int | None = None,
              source: Source | None = None) -> ModelOutput:
    """``model(images)``, asking a model with ``variable_steps`` for ``num_steps`` steps (None: its own number)
    and handing a model that ``reads_source`` the batch's ``source``; every other model emits the steps it was
    built for, whatever ``num_steps`` says, and never sees the source."""
    kwargs: dict = {}
    if num_steps is not None and variable_steps(model):
        kwargs["num_steps"] = num_steps
    if source is not None and reads_source(model):
        kwargs["source"] = source
    return model(images, **kwargs)


def check_source(model: nn.Module, data_has_source: bool, data_name: str) -> None:
    """A model that starts from the data's source needs data that hands one: one line that says what to change."""
    if reads_source(model) and not data_has_source:
        raise ConfigError(f"model {type(model).__name__} starts from the clean digit and the warp that made each "
                          f"image (model.from_source=true), but data '{data_name}' does not say how its images were "
                          "made; use data=perturbed, or set model.from_source=false to start from the image alone")


def check_test_steps(model: nn.Module, num_steps: int, test_steps: int) -> None:
    """A model built for ``num_steps`` steps must be able to emit the ``test_steps`` its test data needs: one
    clear line for a model with a fixed head per position asked for more (more test digits than trained)."""
    if test_steps <= num_steps or variable_steps(model):
        return
    raise ConfigError(f"model {type(model).__name__} has a fixed output head per position: it was built for "
                      f"{num_steps} prediction steps and cannot emit the {test_steps} that the test images need "
                      f"(data.distortion.test_num_digits holds more digits than num_digits); test it on at most as "
                      f"many digits as it trained on, or use a recurrent model that runs as many steps as the test "
                      f"needs ({RECURRENT_MODELS})")


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
                num_steps: int = 1, test_steps: int | None = None) -> None:
    """Raise :class:`ModelContractError` (a ConfigError) naming the first rule ``model`` breaks, and a
    ConfigError when it cannot emit the ``test_steps`` its test data needs (:func:`check_test_steps`).

    Runs one forward pass on two blank images (no gradients; training mode is restored), and one at
    ``test_steps`` for a model with ``variable_steps`` that the test asks for another number of steps."""
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
    if test_steps is not None and test_steps != num_steps:
        check_test_steps(model, num_steps, test_steps)
        if variable_steps(model):
            _check_steps_on_demand(model, images, test_steps)
    if reads_source(model):
        _check_source_input(model, images)


def _check_source_input(model: nn.Module, images: torch.Tensor) -> None:
    """A model that ``reads_source`` takes ``forward(images, source=...)`` and gives logits of the same shape."""
    eye = torch.eye(3, device=images.device).expand(images.shape[0], 3, 3)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone, started = model(images).logits, model(images, source=Source(images, eye)).logits
    except TypeError as error:
        raise _fail(model, f"it sets reads_source but forward(images, source=...) failed ({error})",
                    "take source (a stnbench.source.Source, or None) as a keyword argument of forward") from None
    finally:
        model.train(was_training)
    if alone.shape != started.shape:
        raise _fail(model, f"forward(images, source=...) gave logits {list(started.shape)}, without a source "
                    f"{list(alone.shape)}", "emit the same steps with and without a source")


def _check_steps_on_demand(model: nn.Module, images: torch.Tensor, steps: int) -> None:
    """A model with ``variable_steps`` emits exactly the steps it is asked for."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = run_model(model, images, steps).logits
    except TypeError as error:
        raise _fail(model, f"it sets variable_steps but forward(images, num_steps={steps}) failed ({error})",
                    "take num_steps as a keyword argument of forward") from None
    finally:
        model.train(was_training)
    if logits.shape[1] != steps:
        raise _fail(model, f"forward(images, num_steps={steps}) emitted {logits.shape[1]} steps",
                    "emit num_steps steps when asked for them")


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
