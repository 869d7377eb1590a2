"""Small Lightning callbacks of stnbench's own."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("stnbench")


class EpochSummary(L.Callback):
    """One log line per epoch (train.log and non-interactive terminals show no progress bar)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not hasattr(self, "start"):
            return
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{name}={float(metrics[name]):.4g}" for name in
                          ("train/loss_epoch", "val/loss", "val/err", "val/digit_err", "val/err_best")
                          if name in metrics)
        log.info("epoch %d/%d step %d (%.0f s): %s", trainer.current_epoch + 1, trainer.max_epochs,
                 trainer.global_step, time.perf_counter() - self.start, shown)
