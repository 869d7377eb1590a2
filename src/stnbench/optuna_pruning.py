"""Pruning of poor Optuna trials, for searches run by Hydra's Optuna sweeper.

The sweeper runs each trial as an ordinary job and never hands the trial to it, so it cannot prune. This
callback finds the job's trial itself (the RUNNING trial of the study on disk whose parameters equal the
job's overrides), reports the validation error after every validation, and stops training when the
study's pruner says so. What it cannot do: mark the trial PRUNED. The sweeper then tells Optuna the
trial COMPLETE with its best validation error so far; the trial carries the user attribute
``pruned=True`` and results.json ``"pruned": true``. The compute is saved, which is the point.
"""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger("stnbench")


def find_trial(pruner=None):
    """This job's Optuna trial, or None outside an Optuna sweep."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.get("sweeper") or {}
    if not sweeper.get("storage") or not sweeper.get("study_name"):
        return None
    import optuna

    overrides = dict(o.lstrip("+").split("=", 1) for o in hydra_cfg.overrides.task if "=" in o)
    study = optuna.load_study(study_name=sweeper.study_name, storage=sweeper.storage, pruner=pruner)
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if frozen.params and all(overrides.get(k) == str(v) for k, v in frozen.params.items()):
            return optuna.trial.Trial(study, frozen._trial_id)
    log.warning("Optuna pruning: no running trial of study %s matches this job's overrides",
                sweeper.study_name)
    return None


class OptunaPruning(L.Callback):
    """Report ``monitor`` to this job's Optuna trial after each validation; stop if the pruner says so."""

    def __init__(self, pruner=None, monitor: str = "val/err") -> None:
        self.pruner, self.monitor = pruner, monitor
        self.trial = None
        self.pruned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self.trial = find_trial(self.pruner)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is None or trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), step=trainer.global_step)
        if self.trial.should_prune():
            log.info("Optuna pruner stops trial %d at step %d (%s=%.2f)", self.trial.number,
                     trainer.global_step, self.monitor, float(value))
            self.trial.set_user_attr("pruned", True)
            self.pruned = True
            trainer.should_stop = True
