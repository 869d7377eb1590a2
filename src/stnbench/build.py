"""Turn a composed config into data, model and trainer, failing early and clearly on bad input.

Shared by the entry points (train, eval, gallery) so each of them stays a short script.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stnbench.data.datamodule import DistortedMNIST
from stnbench.data.distortions import ConfigError
from stnbench.data.mnist import MNISTNotFoundError
from stnbench.module import CONFIG_KEY, STNBenchModule  # noqa: F401 (re-exported)

log = logging.getLogger("stnbench")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the configured model."""


USER_ERRORS = (ConfigError, MNISTNotFoundError, CheckpointError)


def _instantiate(config: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces our own errors instead of Hydra's wrapper."""
    try:
        return instantiate(config, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"bad {what} configuration: {cause}") from None
        raise


def check_config(cfg: DictConfig) -> None:
    """Reject impossible values before anything is built."""
    for key in ("batch_size", "eval_batch_size"):
        value = cfg.data.get(key)
        if value is not None and value <= 0:
            raise ConfigError(f"data.{key} must be a positive integer, got {value}")
    optimizer = cfg.get("optimizer")
    if optimizer is not None and (optimizer.get("lr") is None or optimizer.lr <= 0):
        raise ConfigError(f"optimizer.lr must be positive, got {optimizer.get('lr')}")
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and (max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs must be positive (or -1 for no limit), got {max_epochs}")
    multiplier = cfg.get("model", {}).get("loc_lr_multiplier")
    if multiplier is not None and multiplier < 0:
        raise ConfigError(f"model.loc_lr_multiplier must be >= 0, got {multiplier}")


def build_datamodule(data_cfg: DictConfig | dict) -> DistortedMNIST:
    """Instantiate, load MNIST and build the fixed val/test sets now, so missing data fails early."""
    datamodule = _instantiate(data_cfg, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(model_cfg: DictConfig | dict, datamodule: DistortedMNIST) -> torch.nn.Module:
    distortion = datamodule.distortion
    return _instantiate(model_cfg, "model", input_shape=datamodule.image_shape,
                        num_classes=distortion.num_classes, num_steps=distortion.sequence_length or 1)


def build_module(cfg: DictConfig, datamodule: DistortedMNIST) -> STNBenchModule:
    model = build_model(cfg.model, datamodule)
    scheduler = _instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    module = STNBenchModule(model, optimizer=_instantiate(cfg.optimizer, "optimizer"), scheduler=scheduler,
                            num_classes=datamodule.distortion.num_classes, seed=cfg.seed)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def key_choices(cfg: DictConfig) -> dict[str, Any]:
    """The choices that tell runs apart: results.json, the HParams tab and the report use these."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "data": choices.get("data", cfg.data.get("name")),
        "model": choices.get("model"),
        "transform": choices.get("model/transform"),
        "optimizer": choices.get("optimizer"),
        "scheduler": choices.get("scheduler"),
        "lr": cfg.optimizer.get("lr") if cfg.get("optimizer") else None,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.get("max_epochs"),
        "loc_lr_multiplier": cfg.model.get("loc_lr_multiplier"),
        "seed": cfg.seed,
    }


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass ckpt_path=<run>/checkpoints/last.ckpt "
                              "or best.ckpt of a finished run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"checkpoint '{path}' is unreadable ({type(error).__name__}: {error})") from None
    if CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"'{path}' is not a stnbench checkpoint (no stored config or weights)")
    return checkpoint


def check_checkpoint_fits(checkpoint: dict, cfg: DictConfig, path: str) -> None:
    """A resumed run must rebuild the same data and model as the run that wrote the checkpoint."""
    stored = checkpoint[CONFIG_KEY]
    current = OmegaConf.to_container(cfg, resolve=True)
    for section in ("model",):
        if stored.get(section) != current.get(section):
            raise CheckpointError(
                f"checkpoint '{path}' was trained with a different {section} config:\n"
                f"  checkpoint: {json.dumps(stored.get(section), sort_keys=True)}\n"
                f"  now:        {json.dumps(current.get(section), sort_keys=True)}\n"
                "Resume with the same overrides as the original run (see its .hydra/overrides.yaml)."
            )
    for key in ("distortion", "name", "seed"):
        if stored["data"].get(key) != current["data"].get(key):
            raise CheckpointError(f"checkpoint '{path}' was trained with data.{key}="
                                  f"{stored['data'].get(key)!r}, not {current['data'].get(key)!r}")


def load_weights(module: STNBenchModule, state_dict: dict, path: str) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint '{path}' does not fit the model: {error}") from None


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def build_trainer(trainer_cfg: DictConfig, loggers: list, callbacks: list) -> L.Trainer:
    return _instantiate(trainer_cfg, "trainer", logger=loggers or False, callbacks=callbacks)


def instantiate_group(group_cfg: DictConfig | None, what: str) -> list:
    """Loggers and callbacks are dicts of named configs; ``null`` or ``{}`` means none."""
    if not group_cfg:
        return []
    return [_instantiate(conf, what) for conf in group_cfg.values() if conf and "_target_" in conf]
