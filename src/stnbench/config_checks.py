"""Check a composed config before anything is built: wrong types, NaN and impossible values, one line each.

Types come from the code itself: every config node with a ``_target_`` is checked against the type hints
of that target's constructor (``DistortedMNIST``, a distortion, a model and its parts, the optimizer,
the scheduler, Lightning's ``Trainer``), so a user's own plug-in with annotated arguments is checked
too. Only hints a config value can satisfy are enforced (numbers, strings, booleans, ``None``,
``Literal``, lists/tuples of those, unions of them); an argument typed as some other class accepts a
nested config and nothing else. The hints are read from the targets' source files wherever the source
settles them, so that a type error, like every other config error, comes without importing torch or Lightning.
The impossible-value rules that types cannot express are at the bottom; ``check_devices`` (the
entry points call it) refuses a GPU trainer on a machine without one.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from stnbench.errors import ConfigError
from stnbench.source_hints import clear_cache, source_hints

# Config sections whose ``_target_`` decides what a run computes; loggers and callbacks only observe it.
CHECKED_SECTIONS = ("data", "model", "optimizer", "scheduler", "trainer")
TOP_LEVEL = {"seed": int, "skip_finished": bool, "test_after_fit": bool, "channels_last": bool}
_ANY = object()  # "cannot check this hint": the value is accepted


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` naming the key, the value and what was expected, for the first bad value.

    Cheap rules first; the type hints of the targets come last, since a target whose hints its source file
    cannot settle is imported to read them (torch, Lightning: seconds)."""
    try:
        _check_config(cfg)
    except InterpolationResolutionError as error:  # e.g. a resolver's ConfigError: its own line, and the key
        message = error.msg.splitlines()[0].removeprefix("ConfigError raised while resolving interpolation: ")
        raise ConfigError(f"{error.full_key}: {message}") from None
    finally:
        clear_cache()  # the parsed source files (megabytes for torch's): not kept for the whole run


def _check_config(cfg: DictConfig) -> None:
    for key, expected in TOP_LEVEL.items():
        if key in cfg:
            _check_value(key, cfg[key], expected)
    _check_values(cfg)
    for section in CHECKED_SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            _check_finite(section, node)
    for section in CHECKED_SECTIONS:
        node = cfg.get(section)
        if isinstance(node, DictConfig):
            _check_node(section, node)


# ---- types ----------------------------------------------------------------------------------------------
def _check_node(path: str, node: DictConfig) -> None:
    hints = _constructor_hints(node.get("_target_")) if "_target_" in node else {}
    for key in node:
        key = str(key)
        if key.startswith("_") or OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        where = f"{path}.{key}"
        if isinstance(value, DictConfig):
            _check_node(where, value)
        elif key in hints:
            _check_value(where, value, hints[key])
        elif not isinstance(value, ListConfig):
            _check_scalar(where, value)


def _constructor_hints(target: str | None) -> dict[str, Any]:
    """Type hints of the target's constructor; empty when the target cannot be imported or inspected
    (a missing target is reported by instantiation with its own clear message). Read from the source when
    the target's module is not imported yet and its source settles every hint (see ``source_hints``)."""
    if not isinstance(target, str) or "." not in target:
        return {}
    module_name, _, name = target.rpartition(".")
    if module_name not in sys.modules:
        hints = source_hints(target)
        if hints is not None:
            return hints
    try:
        obj = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return {}
    function: Callable = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: fall back to the raw annotations we can read
        hints = {k: v for k, v in getattr(function, "__annotations__", {}).items() if not isinstance(v, str)}
    hints.pop("return", None)
    return hints


def _check_value(where: str, value: Any, hint: Any) -> None:
    if isinstance(value, ListConfig | DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    _check_scalar(where, value)
    if not _matches(value, hint):
        raise ConfigError(f"{where}={_show(value)} has the wrong type: expected {_describe(hint)}, "
                          f"got {type(value).__name__}")


def _check_finite(path: str, node: DictConfig) -> None:
    for key in node:
        if OmegaConf.is_missing(node, key):
            continue
        value = node[key]
        if isinstance(value, DictConfig):
            _check_finite(f"{path}.{key}", value)
        else:
            _check_scalar(f"{path}.{key}", value)


def _check_scalar(where: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}={value} is not a finite number")


def _matches(value: Any, hint: Any) -> bool:
    result = _match(value, hint)
    return True if result is _ANY else bool(result)


def _match(value: Any, hint: Any) -> Any:
    if hint is Any or hint is inspect.Parameter.empty:
        return _ANY
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        results = [_match(value, arg) for arg in args]
        return True if any(r is True for r in results) else (_ANY if all(r is _ANY for r in results) else False)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):  # some other class (a Tensor, an Accelerator ...): only a nested config fits
        return isinstance(value, dict)
    return _ANY  # TypeVars, callables, protocols: nothing a config value can be checked against


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        # typing caches unions up to order (float | int may come back as int | float): name them sorted,
        # null last, so a message is the same whichever order the annotation was first written in
        shown = sorted(dict.fromkeys(_describe(a) for a in args if _match_possible(a)), key=lambda d: (d == "null", d))
        return " or ".join(shown)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None) or hint is None:
        return "null"
    if origin in (list, tuple, Sequence, typing.Sequence):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if hint is float:
        return "a number (float)"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint))


def _match_possible(hint: Any) -> bool:
    """Union members worth naming in a message: not classes that only a nested config could be."""
    return not (isinstance(hint, type) and hint not in (int, float, str, bool, type(None), list, tuple, dict))


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


# ---- impossible values that types cannot express ----------------------------------------------------------
def _number(value: Any) -> bool:
    """Value rules apply to numbers; anything else is left to the type checks, which name the type."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_values(cfg: DictConfig) -> None:
    data = cfg.get("data") or {}
    for key in ("batch_size", "eval_batch_size"):
        value = data.get(key)
        if _number(value) and value <= 0:
            raise ConfigError(f"data.{key} must be a positive integer, got {value}")
    optimizer = cfg.get("optimizer")
    if optimizer is not None:
        lr = optimizer.get("lr")
        if lr is None or (_number(lr) and lr <= 0):
            raise ConfigError(f"optimizer.lr must be positive, got {lr}")
    trainer = cfg.get("trainer") or {}
    max_epochs = trainer.get("max_epochs")
    if _number(max_epochs) and (max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs must be positive (or -1 for no limit), got {max_epochs}")
    if trainer.get("overfit_batches"):
        raise ConfigError("trainer.overfit_batches is not supported (Lightning would replace stnbench's batch "
                          "sampler and train on nothing); use debug=overfit or data.overfit_batches=N")
    if (optimizer is not None and optimizer.get("fused") is True and trainer.get("gradient_clip_val")
            and "mixed" in str(trainer.get("precision", ""))):
        raise ConfigError("optimizer.fused=true cannot be combined with gradient clipping under mixed precision "
                          "(Lightning refuses to clip gradients a fused optimizer unscales itself); set "
                          "optimizer.fused=false")
    multiplier = (cfg.get("model") or {}).get("loc_lr_multiplier")
    if _number(multiplier) and multiplier < 0:
        raise ConfigError(f"model.loc_lr_multiplier must be >= 0, got {multiplier}")
    check_checkpoint_minutes(cfg.get("checkpoint_minutes"))
    divergence = cfg.get("divergence")
    if divergence is not None:
        if not isinstance(divergence, DictConfig) or set(divergence) - {"factor", "window"}:
            raise ConfigError(f"divergence={_show(divergence)} must be a mapping with factor and window, e.g. "
                              "divergence.factor=10 divergence.window=20")
        check_divergence(divergence.get("factor", 10.0), divergence.get("window", 20))
    _check_checkpoint_folder(cfg)


def check_checkpoint_minutes(minutes: Any) -> None:
    """``checkpoint_minutes``: how often a resumable last.ckpt is written (the SafeStops callback's rule)."""
    if minutes is not None and (not _number(minutes) or not math.isfinite(minutes) or minutes < 0):
        raise ConfigError(f"checkpoint_minutes={_show(minutes)} must be a number of minutes >= 0 (0: before every "
                          "batch) or null (never)")


def check_divergence(factor: Any, window: Any) -> None:
    """``divergence.factor`` and ``window`` (the DivergenceGuard callback's rule)."""
    if not _number(factor) or not factor > 1:
        raise ConfigError(f"divergence.factor={_show(factor)} must be a number > 1 (the run stops when its mean loss "
                          "exceeds factor x its first step's loss)")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ConfigError(f"divergence.window={_show(window)} must be a whole number of steps >= 1")


def _check_checkpoint_folder(cfg: DictConfig) -> None:
    """Resume, skip, the report and the pictures find a run's checkpoints in one place
    (stnbench.records.checkpoint_dir): ModelCheckpoint must write best.ckpt and last.ckpt there."""
    from stnbench.records import BEST, checkpoint_dir

    paths, callbacks = cfg.get("paths"), cfg.get("callbacks")
    entry = callbacks.get("model_checkpoint") if isinstance(callbacks, DictConfig) else None
    if not isinstance(entry, DictConfig) or paths is None or "run_dir" not in paths:
        return
    expected = checkpoint_dir(paths.run_dir)
    if "dirpath" in entry and Path(str(entry.dirpath)) != expected:
        raise ConfigError(f"callbacks.model_checkpoint.dirpath={entry.dirpath} must be the run's checkpoints "
                          f"folder ({expected}): resume and the report look for {BEST} and last.ckpt there; drop "
                          "the override")
    if "filename" in entry and f"{entry.filename}.ckpt" != BEST:
        raise ConfigError(f"callbacks.model_checkpoint.filename={entry.filename} must be '{Path(BEST).stem}': "
                          f"the report and stnbench-eval look for {BEST}; drop the override")


# ---- devices ------------------------------------------------------------------------------------------------
GPU_ACCELERATORS = ("gpu", "cuda")


def check_devices(trainer: Any) -> None:
    """``trainer.accelerator=gpu`` needs a CUDA GPU this process can see, and ``trainer.devices`` no more of
    them than there are (Lightning's own refusal is a traceback from inside instantiation). torch is imported
    only for a GPU accelerator, so every other config error stays fast. Not part of ``check_config``: a config
    for a GPU is a good config on a machine without one (the entry points call this for runs made here)."""
    if not isinstance(trainer, DictConfig | dict):
        return
    accelerator = trainer.get("accelerator")
    if not isinstance(accelerator, str) or accelerator.lower() not in GPU_ACCELERATORS:
        return
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu")
    devices = trainer.get("devices")
    if isinstance(devices, ListConfig | list):
        wanted = [d for d in devices if isinstance(d, int) and not isinstance(d, bool)]
        missing = [d for d in wanted if d >= visible]
        if missing:
            raise ConfigError(f"trainer.devices={_show(list(devices))} names GPU {missing[0]}, but only {visible} "
                              f"CUDA GPU{'s are' if visible > 1 else ' is'} visible (0-{visible - 1})")
    elif isinstance(devices, int) and not isinstance(devices, bool) and devices > visible:
        raise ConfigError(f"trainer.devices={devices} but only {visible} CUDA GPU{'s are' if visible > 1 else ' is'} "
                          f"visible; use trainer.devices={visible}")
