"""The errors a user can cause, shared by every package of stnbench.

Each one means "the input is wrong and nothing was trained on it": the entry points print its message as
one line (``stnbench-train: error: ...``) instead of a traceback, and a sweep records it and goes on.
The run outcomes at the bottom are not input errors: they end a run that started, with a status of their own.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is impossible; raised before any data is generated or any training starts."""


class MNISTNotFoundError(RuntimeError):
    """MNIST is neither on disk nor downloadable, or the files on disk are not MNIST."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the configured model or run."""


class RunFolderTaken(ConfigError):
    """A run folder holds another configuration's run (or another process's): it must not be touched."""


class StorageError(OSError):
    """A cache or output folder cannot be written."""


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, MNISTNotFoundError, CheckpointError, StorageError)


class RunEnded(Exception):
    """A run that started but did not earn ``status: finished``; ``status`` and ``exit_code`` say how it ended."""

    status = "failed"
    exit_code = 1


class Diverged(RunEnded):
    """The training loss became non-finite or exploded far above where it started."""

    status = "diverged"
    exit_code = 3


class NoTraining(RunEnded):
    """Training ended without a single optimiser step: any result would be the untrained network's."""

    status = "no_training"
    exit_code = 4


class Pruned(RunEnded):
    """An Optuna search's pruner stopped the run early: a trial's outcome, not a result to report."""

    status = "pruned"
    exit_code = 5


class RunInterrupted(RunEnded):
    """SIGTERM or SIGINT: the run saved a resumable checkpoint and stops (exit code 128 + signal number)."""

    status = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
