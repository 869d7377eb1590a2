"""How a job of an stnbench Optuna search finds its trial, and how the study's storage is opened.

Kept apart from the Lightning callback (stnbench.optuna_pruning) so the sweeper and light-weight jobs can
use it without importing torch.
"""

from __future__ import annotations

import logging
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
