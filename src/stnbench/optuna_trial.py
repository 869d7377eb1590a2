"""How a job of an stnbench Optuna search finds its trial, records how it ended, and how the study's
storage is opened.

A job records its own outcome in its trial (:func:`record_outcome`) because the sweeper cannot always learn
it from Hydra: when a batch of parallel jobs is interrupted, ``launcher.launch`` raises and the return
values of the jobs that had already ended are lost. Kept apart from the Lightning callback
(stnbench.optuna_pruning) so the sweeper and light-weight jobs can use it without importing torch.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("stnbench")

TRIAL_ENV = "STNBENCH_OPTUNA_TRIAL"
STUDY_ENV = "STNBENCH_OPTUNA_STUDY"
STORAGE_ENV = "STNBENCH_OPTUNA_STORAGE"


def open_storage(storage: str) -> Any:
    """An Optuna storage from a URL (``sqlite:///...``, ``postgresql://...``) or a journal file path.

    A journal file (appended under a file lock) is what several processes (joblib workers, SLURM array
    jobs) can write at once without the "database is locked" failures of SQLite."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if "://" in storage:
        return optuna.storages.RDBStorage(storage)
    path = Path(storage).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def current_trial(pruner: Any = None) -> Any:
    """This job's Optuna trial (``optuna.trial.Trial``), or None outside an stnbench Optuna search."""
    number = os.environ.get(TRIAL_ENV)
    if number is None:
        return None
    import optuna

    study_name, storage_name = os.environ.get(STUDY_ENV), os.environ.get(STORAGE_ENV)
    if not study_name or not storage_name:
        log.warning("Optuna pruning: %s is set but %s or %s is not; not pruning", TRIAL_ENV, STUDY_ENV, STORAGE_ENV)
        return None
    storage = open_storage(storage_name)
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name),
                                                               int(number))
    return optuna.trial.Trial(study, trial_id)


def finite(value: Any) -> float | None:
    """``value`` as a finite float, else None (an objective that Optuna can be told)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def record_outcome(status: str, objective: float | None, run_dir: str | None) -> None:
    """Record in this job's trial how its run ended: user attrs ``objective``, ``run_dir`` and ``outcome``.

    ``status`` is the run's results.json status ("finished", "pruned", "failed", "diverged", "no_training",
    "interrupted"). The sweeper decides the trial's state from it, so jobs that ended keep their outcome
    even when their batch is interrupted. Outside an stnbench Optuna search it does nothing (and imports
    no Optuna). Recording is advisory: a storage error is logged, never raised, as the sweeper then falls
    back to the job's return value (or, in an interrupted batch, runs the trial again, which a finished
    run folder skips)."""
    if os.environ.get(TRIAL_ENV) is None:
        return
    try:
        trial = current_trial()
        if trial is None:
            return
        trial.set_user_attr("objective", finite(objective))
        trial.set_user_attr("run_dir", None if run_dir is None else str(run_dir))
        trial.set_user_attr("outcome", str(status))  # last: a sweeper that sees it sees the others too
    except Exception as error:  # see the docstring: never fail a run over its bookkeeping
        log.warning("Optuna: could not record the outcome %r of trial %s: %s", status, os.environ.get(TRIAL_ENV),
                    error)
