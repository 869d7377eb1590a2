"""Turn a composed config into data, model and trainer, failing early and clearly on bad input.

Shared by the entry points (train, eval, gallery) so each of them stays a short script.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from stnbench.config_checks import check_config  # noqa: F401 (re-exported for the entry points)
from stnbench.data.datamodule import DistortedMNIST
from stnbench.errors import USER_ERRORS, CheckpointError, ConfigError
from stnbench.models.contract import parameter_count  # noqa: F401 (re-exported for the entry points)
from stnbench.module import STNBenchModule
from stnbench.records import CONFIG_KEY, load_checkpoint, write_json  # noqa: F401 (re-exported)

log = logging.getLogger("stnbench")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the shipped config groups


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


def build_datamodule(data_cfg: DictConfig | dict) -> DistortedMNIST:
    """Instantiate, load MNIST and build the fixed val/test sets now, so missing data fails early."""
    datamodule = _instantiate(data_cfg, "data")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(model_cfg: DictConfig | dict, datamodule: DistortedMNIST) -> torch.nn.Module:
    """The configured model, checked against the model contract (one clear error when a plug-in breaks it) and
    against its test data: it is built for the training targets' steps, and a model with a fixed head per
    position that the test images need more steps of is refused now, not after training; so is a model that
    starts from the data's source (``reads_source``) on data that hands none."""
    from stnbench.models.contract import check_model, check_source

    distortion = datamodule.distortion
    num_steps = distortion.sequence_length or 1  # how many steps a model runs: as many as a target has
    test_steps = distortion.for_split("test").sequence_length or 1
    model = _instantiate(model_cfg, "model", input_shape=datamodule.image_shape,
                         num_classes=distortion.num_classes, num_steps=num_steps)
    check_model(model, datamodule.image_shape, num_classes=distortion.num_classes, num_steps=num_steps,
                test_steps=test_steps)
    check_source(model, distortion.source_warp, getattr(datamodule, "name", distortion.name))
    return model


def build_module(cfg: DictConfig, datamodule: DistortedMNIST) -> STNBenchModule:
    model = build_model(cfg.model, datamodule)
    scheduler = _instantiate(cfg.scheduler, "scheduler") if cfg.get("scheduler") else None
    module = STNBenchModule(model, optimizer=_instantiate(cfg.optimizer, "optimizer"), scheduler=scheduler,
                            num_classes=datamodule.distortion.num_classes, seed=cfg.seed,
                            channels_last=bool(cfg.get("channels_last", False)))
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return module


def key_choices(cfg: DictConfig) -> dict[str, Any]:
    """The choices that tell runs apart: results.json, the HParams tab and the report use these."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "data": choices.get("data", cfg.data.get("name")),
        "model": model_name(choices.get("model"), cfg.model.get("_target_")),
        "transform": choices.get("model/transform"),
        "optimizer": choices.get("optimizer"),
        "scheduler": choices.get("scheduler"),
        "lr": cfg.optimizer.get("lr") if cfg.get("optimizer") else None,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.get("max_epochs"),
        "loc_lr_multiplier": cfg.model.get("loc_lr_multiplier"),
        "seed": cfg.seed,
    }


def model_name(choice: str | None, target: str | None) -> str | None:
    """The ``model=`` option, or the model's ``_target_`` when that was overridden (``model._target_=...``
    turns a ``model=cnn`` run into another model, which must not be reported as the CNN)."""
    shipped = CONFIG_DIR / "model" / f"{choice}.yaml"
    if choice is None or not shipped.is_file():
        return choice or target
    return choice if OmegaConf.load(shipped).get("_target_") == target else target


def load_weights(module: STNBenchModule, state_dict: dict, path: str) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint '{path}' does not fit the model: {error}") from None


def build_trainer(trainer_cfg: DictConfig, loggers: list, callbacks: list) -> L.Trainer:
    return _instantiate(trainer_cfg, "trainer", logger=loggers or False, callbacks=callbacks)


def instantiate_group(group_cfg: DictConfig | None, what: str) -> list:
    """Loggers and callbacks are dicts of named configs; ``null`` or ``{}`` means none."""
    if not group_cfg:
        return []
    return [_instantiate(conf, what) for conf in group_cfg.values() if conf and "_target_" in conf]
