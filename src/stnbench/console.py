"""The console of a run: one line per log record, and none of Lightning's advertisements."""

from __future__ import annotations

import logging
import warnings

# Lightning's console lines that are advertisements or about stnbench's own set-up, not about the run.
LIGHTNING_NOISE = ("💡 Tip:", "Trainer already configured with model summary callbacks",
                   "Loading `train_dataloader` to estimate number of stepping batches")


class _LightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """One console line per log record, and none of Lightning's tips.

    ``import lightning`` gives the ``lightning`` logger a console handler of its own ("INFO: ...") that also
    passes every record on to the root logger, where Hydra's handlers print it again (with time and name) and
    write it to train.log. Once logging is configured (the root logger has handlers) Lightning's own console
    handlers go and its records take the root's way only. Safe to call again (every run of a sweep does)."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # where Lightning's info lines come from
    if not any(isinstance(f, _LightningNoise) for f in rank_zero.filters):
        rank_zero.addFilter(_LightningNoise())
    # Recent torch deprecates a pytree class that Lightning's own code still uses: nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # stnbench logs the on-step series of such short epochs once per epoch and says so in a line of its own
    # (STNBenchModule._log_short_epochs); Lightning's advice to lower log_every_n_steps would repeat it.
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                            r"logging interval")
    # A resume continues in its own run folder (stnbench.run_folder decides who may write there), so that its
    # checkpoint and log folders are not empty is what a resume means.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    # Resumed from an epoch-end checkpoint, Lightning replays that epoch's end before any validation has run in
    # this process, and ModelCheckpoint finds no metric there; after a validation a missing key is an error.
    warnings.filterwarnings("ignore", message=r"`ModelCheckpoint\(monitor=.*\)` could not find the monitored key")


def errors_text(results: dict) -> str:
    """A command's errors as its last console line shows them: ``test/err 1.23, val/err_best 1.50`` (in %,
    rounded); empty when there are none."""
    return ", ".join(f"{key} {value:.2f}" for key, value in results.items()
                     if "/err" in key and isinstance(value, float))
