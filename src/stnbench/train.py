"""stnbench-train: fit a model on a distorted-MNIST benchmark, test its best checkpoint, write results.json.

How a run ends, in results.json ``status`` and the exit code (a sweep records each and goes on, then
exits non-zero if any of its runs did not finish):

| status        | exit | when                                                                           |
| ------------- | ---- | ------------------------------------------------------------------------------ |
| finished      | 0    | trained (at least one optimiser step, finite loss) and tested                  |
| failed        | 1    | bad input (one-line message, no folder left behind) or a crash (error.log)     |
| diverged      | 3    | the training loss became NaN/inf or exploded (stnbench.callbacks.DivergenceGuard) |
| no_training   | 4    | training ended without a single optimiser step                                 |
| pruned        | 5    | an Optuna search's pruner stopped it early (a trial's outcome, not a result)   |
| interrupted   | 128+signal (143 SIGTERM, 130 SIGINT) | stopped with a resumable checkpoint; run it again to resume |
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from stnbench.cli_help import run_command
from stnbench.config_checks import check_config
from stnbench.console import errors_text, quiet_lightning
from stnbench.errors import USER_ERRORS, NoTraining, Pruned, RunEnded, RunInterrupted
from stnbench.optuna_trial import TRIAL_ENV
from stnbench.records import write_results
from stnbench.run_folder import open_run_folder, point_run_at, remove_if_empty, remove_new_folder, save_run_record
from stnbench.sweeps import failure, is_multirun, journal, record_failure, sweep_summary

if TYPE_CHECKING:  # the callbacks import Lightning: only once a run starts (a fast --help and config errors)
    from stnbench.callbacks import FitClock, SafeStops

log = logging.getLogger("stnbench")


def train(cfg: DictConfig) -> dict:
    """Everything a run does, as one plain function (tests call it with a composed config).

    In a folder that already holds this run (a sweep re-run): returns its results if it finished, else
    resumes from its ``checkpoints/last.ckpt`` (``skip_finished=false`` turns both off). An attempt in a
    folder holding a finished result replaces it only if it finishes too (stnbench.run_folder)."""
    started = time.perf_counter()  # results.json's wall_seconds: this command's time for the run, from here
    check_config(cfg)
    run = open_run_folder(cfg, new_run=not is_multirun() and not cfg.get("ckpt_path"))
    stops: SafeStops | None = None
    finished = False
    try:
        if run.finished is not None:
            log.info("Skipping %s run %s (delete its results.json to run it again)", run.finished.get("status"),
                     run.path)
            return run.finished
        from stnbench.callbacks import SafeStops  # Lightning: only once a run starts

        stops = SafeStops(cfg.get("checkpoint_minutes"), run.path)
        stops.install()  # from here a signal stops the run with its outcome recorded
        point_run_at(cfg, run)
        if not run.recorded:
            save_run_record(cfg)
        if run.resume_from:
            log.info("Resuming unfinished run from %s", run.resume_from)
        run.keep_finished()
        try:
            results = _fit_and_test(cfg, stops, started)
        except RunEnded:
            raise  # its results.json is written
        except USER_ERRORS as error:
            if run.created and not is_multirun():
                remove_new_folder(run)  # bad input found while building: a single new run leaves nothing
            else:
                record_failure(cfg, error)
            raise
        except Exception as error:  # a crash found while building or training: recorded in the run's folder
            record_failure(cfg, error)
            raise
        finished = results.get("status") == "finished"
        return results
    finally:
        if stops is not None:
            stops.uninstall()
        run.settle(finished)
        run.release()
        if stops is not None:
            stops.deliver_deferred()  # a signal that came while the outcome was written and settled: handled now


def _fit_and_test(cfg: DictConfig, stops: SafeStops, started: float) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from stnbench.build import (
        build_datamodule,
        build_module,
        build_trainer,
        instantiate_group,
        key_choices,
        parameter_count,
    )
    from stnbench.callbacks import DivergenceGuard, EpochProgressBar, FitClock
    from stnbench.identity import identity, identity_hash
    from stnbench.provenance import provenance
    from stnbench.tensorboard import log_hparams

    quiet_lightning()
    run_dir = Path(cfg.paths.run_dir)
    results: dict = {"run_dir": str(run_dir), "status": "failed"}
    if os.environ.get(TRIAL_ENV) is not None:  # a job of an Optuna search (stnbench.optuna_trial)
        results["optuna_trial"] = int(os.environ[TRIAL_ENV])
    trainer = None
    try:
        L.seed_everything(cfg.seed, workers=True)
        datamodule = build_datamodule(cfg.data)
        module = build_module(cfg, datamodule)
        # One image: Lightning's layer table (callbacks.model_summary.max_depth > 0) then counts real FLOPs.
        module.example_input_array = torch.zeros(1, *datamodule.image_shape)
        loggers = instantiate_group(cfg.get("logger"), "logger")
        callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
        clock = FitClock()
        callbacks += [stops, clock, DivergenceGuard(**cfg.get("divergence", {}))]
        trainer_cfg = cfg.trainer
        if not any(isinstance(callback, ProgressBar) for callback in callbacks):
            # Piped into a file or a sweep's log a progress bar is only clutter: EpochSummary's lines say it all.
            show_bar = trainer_cfg.get("enable_progress_bar", bool(sys.stdout and sys.stdout.isatty()))
            if show_bar:
                callbacks.append(EpochProgressBar())
            elif "enable_progress_bar" not in trainer_cfg:
                trainer_cfg = OmegaConf.create({**OmegaConf.to_container(trainer_cfg, resolve=True),
                                                "enable_progress_bar": False})
        trainer = build_trainer(trainer_cfg, loggers, callbacks)
        choices = key_choices(cfg)
        parameters = parameter_count(module.model)
        made_by = provenance(trainer.strategy.root_device)  # which code, versions and device made the results
        for logger in loggers:  # TensorBoard's HParams tab: one row per run, its choices beside its final metrics
            log_hparams(logger, choices, parameters, extra=made_by)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        results.update({
            **{f"choice/{key}": value for key, value in choices.items()},
            **made_by,
            "parameters": parameters,
            "world_size": trainer.world_size,  # ranks that each draw a full batch
            "config": identity(resolved),
            "config_hash": identity_hash(resolved),
            "configuration_hash": identity_hash(resolved, across_seeds=True),
        })
        if cfg.get("ckpt_path"):
            results["resumed_from"] = str(cfg.ckpt_path)

        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException:  # Lightning's own stop (a SIGTERM before our handler was back in place)
            raise RunInterrupted("stopped by SIGTERM", 15) from None
        results.update(_progress(trainer, module, clock))
        if stops.signum is not None:
            raise RunInterrupted("stopped by a signal after training; run again to test", stops.signum)
        if trainer.global_step == 0:
            raise NoTraining("training ended without a single optimiser step (trainer.limit_train_batches, "
                             "trainer.max_steps or data.batch_size leave no batch to train on?); nothing to report")
        if any(getattr(callback, "pruned", False) for callback in callbacks):
            raise Pruned(f"the Optuna pruner stopped the run at step {trainer.global_step} (see "
                         "stnbench.optuna_pruning); a pruned trial is not tested")
        if cfg.get("test_after_fit") and not trainer.fast_dev_run:
            checkpoint = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            tested = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint or None, weights_only=False,
                                  verbose=False)  # the last line shows the test error
            results.update({key: float(value) for key, value in tested[0].items()})
            results["tested_checkpoint"] = checkpoint or "final weights"
            results["test_images"] = datamodule.images_in("test", int(trainer.num_test_batches[0]))
        results["status"] = "finished"
    except RunEnded as ended:
        if trainer is not None:
            results.update(_progress(trainer, module, clock))
        results.update({"status": ended.status, "error": str(ended)})
        raise
    finally:
        results["wall_seconds"] = round(time.perf_counter() - started, 1)  # from train(): data building too
        stops.defer()  # a signal from now on must not cost the run its results.json
        if results.get("status") != "failed" and (trainer is None or trainer.is_global_zero):
            write_results(run_dir, results)
    log.info("%s", results_line(results))
    return results


def results_line(results: dict) -> str:
    """The run's last console line: its errors (in %, rounded) and where its folder is."""
    errors = errors_text(results)
    shown = f"Results (error %): {errors}" if errors else f"Run {results.get('status')} (not tested)"
    return f"{shown}; results.json, checkpoints and logs in the run folder {results['run_dir']}"


def _progress(trainer, module, clock: FitClock) -> dict:
    """Where training got to; ``val/err_best`` from the module's persisted best (also right after a resume
    of a run whose training had already finished, where Lightning's callback metrics are empty), and the
    seconds of fitting it cost over all its segments (``wall_seconds`` is this command's)."""
    best = float(getattr(module.val_err_best, module.val_err_best.state_name))  # inf: never validated
    return {"fit_seconds": round(clock.seconds(), 1), "epochs": trainer.current_epoch,
            "global_step": trainer.global_step, "val/err_best": best}


def _fail(message: str, code: int) -> None:
    if code == 1:
        raise SystemExit(message)  # Python prints it to stderr and exits with status 1
    print(message, file=sys.stderr)
    raise SystemExit(code)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    sweep = is_multirun()
    try:
        results = train(cfg)
    except USER_ERRORS as error:
        remove_if_empty(cfg.paths.run_dir)
        if not sweep:
            _fail(f"stnbench-train: error: {error}", 1)
        results = failure(cfg, error)  # one bad run of a sweep must not stop the others
    except RunEnded as ended:
        if not sweep:
            _fail(f"stnbench-train: {ended.status}: {ended}", ended.exit_code)
        results = {"status": ended.status, "error": str(ended), "run_dir": str(cfg.paths.run_dir)}
        if isinstance(ended, RunInterrupted):  # the sweep stops here; running it again resumes it
            _record(cfg, results)
            sweep_summary(stopped_by=str(ended))
            raise SystemExit(ended.exit_code) from None
    except Exception as error:
        if not sweep:
            raise
        results = failure(cfg, error)
    if sweep:
        _record(cfg, results)
    return results.get("val/err_best") if results.get("status") == "finished" else None  # a search's objective


def _record(cfg: DictConfig, results: dict) -> None:
    """A sweep job's outcome: into the sweep's runs.jsonl, and into its Optuna trial inside a search."""
    from stnbench.optuna_trial import record_outcome

    journal(cfg, results)
    objective = results.get("val/err_best") if results.get("status") == "finished" else None
    record_outcome(results.get("status", "failed"), objective, str(cfg.paths.run_dir))


def main() -> None:
    """The stnbench-train command (a fast ``--help``, see stnbench.cli_help)."""
    run_command("train", hydra_main)


if __name__ == "__main__":
    main()
