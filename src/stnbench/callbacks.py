"""Small Lightning callbacks of stnbench's own: the epoch log line, divergence, safe stops, the fit clock, and two
of Lightning's with a fix (early stopping on resume, EMA's test weights)."""

from __future__ import annotations

import logging
import math
import signal
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMAWeightAveraging
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.trainer.states import TrainerFn

from stnbench.config_checks import check_checkpoint_minutes, check_divergence
from stnbench.errors import Diverged, RunInterrupted
from stnbench.models.contract import parameter_count
from stnbench.records import last_checkpoint

log = logging.getLogger("stnbench")


def epoch_text(epoch: int, max_epochs: int | None) -> str:
    """``1/8`` for Lightning's epoch index 0 of 8: epochs counted from 1 (just ``1`` when steps bound training)."""
    return f"{epoch + 1}/{max_epochs}" if max_epochs and max_epochs > 0 else f"{epoch + 1}"


class EpochSummary(L.Callback):
    """One log line per epoch (train.log and non-interactive terminals show no progress bar), and a first line
    with the model's size. Epochs count from 1, as in :class:`EpochProgressBar`."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        model = getattr(pl_module, "model", pl_module)
        total = parameter_count(model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("model %s: %s parameters%s", type(model).__name__, f"{total:,}",
                 "" if trainable == total else f" ({trainable:,} trainable)")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not hasattr(self, "start") or replaying_epoch_end(trainer):
            return
        metrics = trainer.callback_metrics
        shown = ", ".join(f"{name}={float(metrics[name]):.4g}" for name in
                          ("train/loss_epoch", "val/loss", "val/err", "val/digit_err", "val/count_err", "val/err_best")
                          if name in metrics)
        log.info("epoch %s step %d (%.0f s): %s", epoch_text(trainer.current_epoch, trainer.max_epochs),
                 trainer.global_step, time.perf_counter() - self.start, shown)


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar with epochs counted from 1, as in :class:`EpochSummary`'s lines (Lightning's own bars
    count from 0, so a 1-epoch run would show ``Epoch 0/0`` above ``epoch 1/1``)."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(f"Epoch {epoch_text(trainer.current_epoch, trainer.max_epochs)}")


def replaying_epoch_end(trainer: L.Trainer) -> bool:
    """A resume from a checkpoint saved at an epoch's end (ModelCheckpoint's ``last.ckpt``): Lightning runs that
    epoch's end hooks again, with no metric logged in this process (the validation it replays has no batch)."""
    return trainer.fit_loop.restarted_on_epoch_end


class EarlyStopping(LightningEarlyStopping):
    """Lightning's EarlyStopping, resumable from any ``last.ckpt``.

    Resumed from a checkpoint saved at an epoch's end, Lightning replays the epoch's end with no metric, and its
    strict check fails the resume ("Early stopping conditioned on metric ... which is not available",
    Lightning-AI/pytorch-lightning#18595). That epoch was checked before the checkpoint was saved
    (ModelCheckpoint runs after every other callback), so its state already counts it: the replay is skipped,
    and every later check is Lightning's own. It stops exactly when Lightning's would (the same identity)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not replaying_epoch_end(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not replaying_epoch_end(trainer):
            super().on_validation_end(trainer, pl_module)


class EMAWeightAveraging(LightningEMAWeightAveraging):
    """Lightning's EMA of the weights, whose test after fit scores the average.

    A checkpoint holds the average in ``state_dict`` and the raw weights in ``current_model_state``; Lightning's
    ``on_load_checkpoint`` reloads the raw weights whenever its averaged model exists, which it still does in the
    trainer that fitted, so ``trainer.test(ckpt_path="best")`` after fit scored the raw weights of the best epoch,
    not the average that epoch was validated and chosen on. Outside fitting the loaded ``state_dict`` (the average)
    is kept; a resumed fit restores both exactly, as Lightning does."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        super().on_load_checkpoint(trainer, pl_module, checkpoint)


class DivergenceGuard(L.Callback):
    """Stop a run whose training loss diverges, so it can never be reported as finished.

    The rule: the loss of any training step is NaN or infinite, or the mean loss over the last
    ``window`` steps exceeds ``factor`` times the loss of the run's first step (an untrained classifier
    starts near ln(classes), about 2.3; a healthy run never averages 10x that for 20 steps).
    """

    def __init__(self, factor: float = 10.0, window: int = 20) -> None:
        check_divergence(factor, window)
        self.factor, self.window = factor, window
        self.first_loss: float | None = None
        self.recent: deque[float] = deque(maxlen=window)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        step = trainer.global_step
        group = trainer.optimizers[0].param_groups[0] if trainer.optimizers else {}
        base, now = group.get("initial_lr", group.get("lr", math.nan)), group.get("lr", math.nan)
        hint = (f"lower optimizer.lr (it is {base:.3g}; {now:.3g} at this step of the schedule) or clip "
                "gradients (trainer.gradient_clip_val=1.0)")
        if not math.isfinite(value):
            raise Diverged(f"training diverged at step {step}: the loss is {value}; {hint}")
        if self.first_loss is None:
            self.first_loss = value
        self.recent.append(value)
        mean = sum(self.recent) / len(self.recent)
        if len(self.recent) == self.window and mean > self.factor * self.first_loss:
            raise Diverged(f"training diverged at step {step}: the mean loss of the last {self.window} steps is "
                           f"{mean:.4g}, over {self.factor:g}x the first step's {self.first_loss:.4g}; {hint}")

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_loss = state_dict.get("first_loss")


class SafeStops(L.Callback):
    """SIGTERM / SIGINT stop a run at the next batch boundary with a resumable checkpoint, and a checkpoint
    every ``every_minutes`` bounds what a SIGKILL or a power cut can cost.

    Checkpoints are written at the start of a training batch, when the previous batch is complete in
    every piece of state (weights, optimiser, scheduler, data position), and the loop progress is saved as it
    stood at that batch's end (:func:`progress_at_batch_end`): resuming from one gives exactly the run that was
    never stopped (the data loader skips the batches already seen, see ``DistortedMNIST``), however many times
    it is resumed, from here or from an epoch's end (tested). Lightning's own SIGTERM handling (stop, exit
    status 0, no checkpoint inside an epoch) is replaced while training runs. A second SIGINT stops at once.
    Once the run's outcome is being written (``defer``), a signal waits until it is on disk
    (``deliver_deferred``)."""

    def __init__(self, every_minutes: float | None, run_dir: str | Path) -> None:
        check_checkpoint_minutes(every_minutes)
        self.every_seconds = None if every_minutes is None else 60.0 * every_minutes
        self.path = last_checkpoint(run_dir)
        self.signum: int | None = None
        self._training = False
        self._deferring = False
        self._deferred: int | None = None
        self._last_save = time.monotonic()
        self._previous: dict[int, Any] = {}
        self._saving = False  # a checkpoint of ours is being written (at a batch's start)

    # ---- signals ----------------------------------------------------------------------------------------
    def install(self) -> None:
        """Catch SIGTERM and SIGINT from now on (train() calls this before building anything)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def defer(self) -> None:
        """From now on a signal is held back (the run's outcome is being written), see ``deliver_deferred``."""
        self._deferring = True

    def deliver_deferred(self) -> None:
        """Send a held-back signal again, to the handlers in place before ``install`` (after ``uninstall``)."""
        signum, self._deferred = self._deferred, None
        if signum is not None:
            signal.raise_signal(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._deferred = self._deferred or signum
            log.warning("Received %s while writing the run's outcome: stopping once it is written",
                        signal.Signals(signum).name)
            return
        first = self.signum is None
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        if self._training and first:
            log.warning("Received %s: saving a checkpoint after the current batch, then stopping", name)
            return
        raise RunInterrupted(f"stopped by {name} before training could checkpoint", self.signum)

    # ---- Lightning hooks --------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()  # again: Lightning installed its own SIGTERM handler when fit() started
        self._training = True
        self._last_save = time.monotonic()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._training = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.signum is not None:
            path = self.save(trainer)
            name = signal.Signals(self.signum).name
            raise RunInterrupted(f"stopped by {name} at step {trainer.global_step}; resumable checkpoint {path}",
                                 self.signum)
        if self.every_seconds is not None and time.monotonic() - self._last_save >= self.every_seconds:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        path = self.path
        self._saving = True
        try:
            trainer.save_checkpoint(path, weights_only=False)  # the whole state (and no log line saying so)
        finally:
            self._saving = False
        self._last_save = time.monotonic()
        log.info("Saved a resumable checkpoint at step %d: %s", trainer.global_step, path)
        return path


    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving:
            progress_at_batch_end(checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        progress_at_batch_end(checkpoint)  # one that older stnbench wrote (before the loops load it)


BATCH_PROGRESS = "epoch_loop.batch_progress"


def progress_at_batch_end(checkpoint: dict) -> None:
    """A checkpoint written as a training batch starts: its loop progress as it stood when the previous batch
    ended. Lightning has already counted the new batch as fetched ("ready") there; a resume would keep that
    count in its running totals (one more with every such resume), and at the next resume from an epoch's
    end Lightning, misreading where it stopped, trains one batch too many: the run then differs from the
    uninterrupted one. Totals that older stnbench let drift so are mended in any checkpoint (fetched and
    started batches differ by what the epoch's own count says, 0 between batches)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get(BATCH_PROGRESS)
    if progress is None:
        return
    current, total = progress["current"], progress["total"]
    if current["ready"] > current["started"]:  # written as a batch starts: that batch was not fetched yet
        current["ready"] = current["started"]
        progress["is_last_batch"] = False  # a batch of this epoch was still to come
    total["ready"] = total["started"] + current["ready"] - current["started"]


class FitClock(L.Callback):
    """Seconds spent fitting, carried across resumes in the checkpoint, so a resumed run's ``fit_seconds``
    is the time its result cost: every earlier segment up to its last checkpoint plus this one (work lost
    after that checkpoint and done again counts once). Logged as ``time/fit_seconds`` at every validation,
    which is what the report's error-against-time curves use: wall-clock event times would include the
    hours a run spent stopped."""

    def __init__(self) -> None:
        self.before = 0.0
        self.started: float | None = None

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("time/fit_seconds", self.seconds(), on_epoch=True, sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("seconds", 0.0))
