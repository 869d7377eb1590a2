"""stnbench-train: fit a model on a distorted-MNIST benchmark, test its best checkpoint, write results.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from stnbench.build import (
    USER_ERRORS,
    build_datamodule,
    build_module,
    build_trainer,
    check_checkpoint_fits,
    check_config,
    instantiate_group,
    key_choices,
    load_checkpoint,
    parameter_count,
    write_json,
)
from stnbench.sweeps import config_hash, finished_results, is_multirun, record_failure, with_resume_checkpoint

log = logging.getLogger("stnbench")


def train(cfg: DictConfig) -> dict:
    """Everything a run does, as one plain function (tests call it with a composed config).

    In a folder that already holds this run: returns its results if it finished, else resumes from its
    ``checkpoints/last.ckpt`` (``skip_finished=false`` turns both off)."""
    check_config(cfg)
    done = finished_results(cfg)
    if done is not None:
        return done
    cfg = with_resume_checkpoint(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    if cfg.get("ckpt_path"):
        check_checkpoint_fits(load_checkpoint(cfg.ckpt_path), cfg, cfg.ckpt_path)

    run_dir = Path(cfg.paths.run_dir)
    loggers = instantiate_group(cfg.get("logger"), "logger")
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    trainer = build_trainer(cfg.trainer, loggers, callbacks)
    choices = key_choices(cfg)
    parameters = parameter_count(module.model)
    for logger in loggers:  # TensorBoard's HParams tab: one row per run, its choices beside its final metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams({**choices, "parameters": parameters},
                                   metrics={"hp/val_err_best": 100.0, "hp/test_err": 100.0})
        else:
            logger.log_hyperparams({**choices, "parameters": parameters})

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    results = {
        **{f"choice/{key}": value for key, value in choices.items()},
        "parameters": parameters,
        "fit_seconds": round(fit_seconds, 1),
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "val/err_best": _metric(trainer, "val/err_best"),
        "run_dir": str(run_dir),
        "status": "finished",
        "config_hash": config_hash(cfg),
    }
    if cfg.get("ckpt_path"):
        results["resumed_from"] = str(cfg.ckpt_path)
    if any(getattr(callback, "pruned", False) for callback in callbacks):
        results["pruned"] = True  # stopped early by the Optuna pruner (see stnbench.optuna_pruning)
    if cfg.get("test_after_fit") and not trainer.fast_dev_run:
        checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint or None, weights_only=False)
        results.update({key: float(value) for key, value in tested[0].items() if not key.startswith("hp/")})
        results["tested_checkpoint"] = checkpoint or "final weights"
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
        log.info("Results: %s", {k: v for k, v in results.items() if "/err" in k})
    return results


def _metric(trainer: L.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return None if value is None else float(value)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        results = train(cfg)
    except USER_ERRORS as error:
        if not is_multirun():
            raise SystemExit(f"stnbench-train: error: {error}") from None
        results = record_failure(cfg, error)  # one bad run of a sweep must not stop the others
    except Exception as error:
        if not is_multirun():
            raise
        results = record_failure(cfg, error)
    return results.get("val/err_best")  # the objective of hyper-parameter searches


if __name__ == "__main__":
    main()
