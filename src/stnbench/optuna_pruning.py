"""Pruning of poor Optuna trials, for searches run by stnbench's Optuna sweeper (``hparams_search=optuna``).

The sweeper (``hydra_plugins/stnbench_optuna_sweeper``) asks Optuna for a trial and starts the job with
the trial's number, study name and storage in the environment (``STNBENCH_OPTUNA_*``). This callback opens
that very trial, reports the validation error after every validation, and when the study's pruner says
so stops training and flags the trial ``pruned``; the sweeper then tells Optuna PRUNED. Outside such a
search (no ``STNBENCH_OPTUNA_TRIAL``) the callback does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

from stnbench.optuna_trial import current_trial

log = logging.getLogger("stnbench")


class OptunaPruning(L.Callback):
    """Report ``monitor`` to this job's Optuna trial after each validation; stop if the pruner says so."""

    def __init__(self, pruner: Any = None, monitor: str = "val/err") -> None:
        self.pruner, self.monitor = pruner, monitor
        self.trial = None
        self.pruned = False  # train.py writes "pruned": true into results.json

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self.trial = current_trial(self.pruner)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is None or trainer.sanity_checking or value is None:
            return
        self.trial.report(float(value), step=trainer.global_step)
        if self.trial.should_prune():
            log.info("Optuna pruner stops trial %d at step %d (%s=%.2f)", self.trial.number,
                     trainer.global_step, self.monitor, float(value))
            self.trial.set_user_attr("pruned", True)  # the sweeper tells Optuna PRUNED
            self.pruned = True
            trainer.should_stop = True
