"""The LightningModule: loss, error metrics, optimiser groups, and what TensorBoard shows.

It works for every model because every model returns ``ModelOutput`` (logits per step). Single-label
data is scored on the last step; sequence data (targets [B, T]) on every step, with a sequence counted
right only when all its digits are; sequences of variable length (data with an end class) on their first T
steps, and a model that can (``variable_steps``) runs as many steps as each batch's targets have: more at
test than in training when the test images hold more digits. What counts as right: ``stnbench.metrics``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric, MinMetric
from torchmetrics.classification import MulticlassAccuracy

from stnbench import viz
from stnbench.callbacks import replaying_epoch_end
from stnbench.data.datamodule import TRAIN_COUNTS_TEST, derive_seed
from stnbench.data.distortions import PAD
from stnbench.errors import CheckpointError
from stnbench.metrics import score
from stnbench.models.contract import run_model
from stnbench.models.output import ModelOutput
from stnbench.records import CONFIG_KEY

log = logging.getLogger("stnbench")
SPLITS = ("train", "val", "test", TRAIN_COUNTS_TEST)  # the last: the test digits at the training counts
WORLD_SIZE_KEY = "stnbench_world_size"  # ranks that trained the checkpoint, each drawing a full batch


def step_logits(output: ModelOutput, targets: torch.Tensor, end_class: int | None = None) -> torch.Tensor:
    """Logits aligned with ``targets``: [B, C] for single labels, [B, T, C] for sequences: the last T steps, or
    with an end class (sequences of variable length, read from the first step on) the first T."""
    if targets.dim() == 1:
        return output.logits[:, -1]
    steps = targets.shape[1]
    if output.logits.shape[1] < steps:
        raise ValueError(f"model emits {output.logits.shape[1]} predictions per image but the data has "
                         f"{steps} digits; set the model's num_steps to at least {steps}")
    return output.logits[:, :steps] if end_class is not None else output.logits[:, -steps:]


def classification_loss(output: ModelOutput, targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the step logits (``PAD`` targets are ignored); for a model that predicts from every glimpse
    (``output.glimpse_logits``), the mean over every glimpse, each scored against its digit's label, so
    intermediate glimpses learn too."""
    if output.glimpse_logits is None or output.glimpse_digit is None:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    every, digit = output.glimpse_logits, output.glimpse_digit.to(targets.device)
    if every.shape[1] != len(digit):
        raise ValueError(f"glimpse_logits has {every.shape[1]} glimpses but glimpse_digit names {len(digit)}")
    labels = targets.view(len(targets), -1)  # [B, T]: single labels are one step
    digit = digit - (output.logits.shape[1] - labels.shape[1])  # align with the last T steps, as step_logits
    keep = digit >= 0
    chosen = labels[:, digit[keep]]  # [B, S']: each glimpse's own label
    return F.cross_entropy(every[:, keep].reshape(-1, every.shape[-1]), chosen.reshape(-1))


def transform_scale(transform, thetas: torch.Tensor) -> torch.Tensor:
    """Linear scale of each glimpse relative to the whole image (1 = identity, 0.5 = zoom in 2x), from
    the area of the quadrilateral spanned by the sampled corners. Works for any transform family."""
    flat = thetas.reshape(-1, thetas.shape[-1])
    corners = transform.grid(flat, 2, 2).reshape(-1, 4, 2)[:, [0, 1, 3, 2]]  # clockwise order
    x, y = corners[..., 0], corners[..., 1]
    area = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1).abs()
    return area.sqrt()  # the identity's four pixel centres span a unit square in these coordinates


class STNBenchModule(L.LightningModule):
    def __init__(self, model: nn.Module, optimizer: Callable, scheduler: Callable | None = None,
                 num_classes: int = 10, seed: int = 0, preview_count: int = 16, channels_last: bool = False) -> None:
        super().__init__()
        # channels_last: conv weights and input batches in NHWC, which oneDNN (CPU) and cuDNN run faster
        # (scripts/bench_train.py measures it; docs/performance.md); the numbers it computes are the same model's.
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.seed, self.preview_count = seed, preview_count
        self.metrics = nn.ModuleDict({
            f"{split}_metrics": nn.ModuleDict({
                # digits only: PAD marks the steps that hold none (the end class and after it)
                "digit_acc": MulticlassAccuracy(num_classes=num_classes, average="micro", ignore_index=PAD),
                "seq_err": MeanMetric(),
                "count_err": MeanMetric(),  # data with an end class only
                "unordered_err": MeanMetric(),  # data with an end class only
                "loss": MeanMetric(nan_strategy="disable"),  # the training loss's epoch mean; NaN stays NaN
            }) for split in SPLITS
        })
        self.val_err_best = MinMetric()
        self.val_err_best.persistent(True)  # saved in checkpoints, so a resumed run keeps its best

    def forward(self, images: torch.Tensor) -> ModelOutput:
        return self.model(images)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints carry their config, so eval rebuilds the right model and resume can check it fits.
        checkpoint[CONFIG_KEY] = getattr(self, "run_config", None)
        checkpoint[WORLD_SIZE_KEY] = self.trainer.world_size if self._trainer is not None else 1

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resume must keep the number of ranks: each draws a full batch, so it sets the effective batch."""
        trained, now = checkpoint.get(WORLD_SIZE_KEY), self.trainer.world_size if self._trainer is not None else 1
        if trained is not None and self.trainer.state.fn == TrainerFn.FITTING and int(trained) != now:
            raise CheckpointError(f"the checkpoint was trained on {trained} device(s) and this run has {now}; every "
                                  "rank draws a full batch, so the effective batch would change. Resume with the "
                                  "run's own trainer.devices and trainer.num_nodes")

    # ---- shared step --------------------------------------------------------------------------------
    def _step(self, batch, split: str) -> torch.Tensor:
        images, targets = batch[0], batch[1]
        source = batch[2] if len(batch) > 2 else None  # the clean digits and their warps (data=perturbed)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # a model that can runs as many steps as the targets have (more at test than in training, say)
        output = run_model(self.model, images, targets.shape[1] if targets.dim() == 2 else None, source)
        end_class = self._end_class()
        logits = step_logits(output, targets, end_class)
        loss = classification_loss(output, targets, logits)
        scores = score(logits.detach(), targets, end_class)
        metrics = self.metrics[f"{split}_metrics"]
        metrics["digit_acc"].update(logits.reshape(-1, logits.shape[-1]).detach(), scores.digit_targets.reshape(-1))
        metrics["seq_err"].update(scores.sequence_wrong)
        if scores.count_wrong is not None:
            metrics["count_err"].update(scores.count_wrong)
            metrics["unordered_err"].update(scores.unordered_wrong)
        if split != "train":
            self.log(f"{split}/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(targets),
                     add_dataloader_idx=False)  # two test sets: each split names its own
            return loss
        # Training: every self.log call costs Lightning ~2 ms of bookkeeping on this CPU (scripts/bench_train.py,
        # docs/performance.md), 4 % of a 45 ms ST-CNN step; so the epoch mean is a metric of our own, logged at
        # the epoch's end, and the on-step value is logged on the steps that reach the logger only.
        metrics["loss"].update(loss.detach(), len(targets))
        if self._logged_step():
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
            if output.thetas is not None:
                self._log_transform_stats(output)
        return loss

    def _logged_step(self) -> bool:
        """Steps whose on-step values reach the logger (every ``log_every_n_steps``): statistics that only
        the logger reads are computed on those steps alone, not on every training step."""
        connector = getattr(self._trainer, "_logger_connector", None)  # Lightning's own rule for on-step logging
        return connector is None or bool(connector.should_update_logs)

    def _log_transform_stats(self, output: ModelOutput) -> None:
        with torch.no_grad():
            scale = transform_scale(self.model.transform, output.thetas.detach())
        self.log("train/stn_scale_mean", scale.mean(), on_step=True, on_epoch=False)
        self.log("train/stn_scale_std", scale.std() if scale.numel() > 1 else scale.new_zeros(()),
                 on_step=True, on_epoch=False)

    def _log_errors(self, split: str, sequence: bool) -> float:
        metrics = self.metrics[f"{split}_metrics"]
        digit_err = 100.0 * (1.0 - metrics["digit_acc"].compute())
        seq_err = 100.0 * metrics["seq_err"].compute()
        self.log(f"{split}/err", seq_err, prog_bar=split != "train", sync_dist=False)
        if split == "train":  # the names Lightning gives a value logged on step and epoch: loss_epoch for the
            loss = metrics["loss"].compute()  # logger, and train/loss itself for a checkpoint that monitors it
            self.log("train/loss_epoch", loss, prog_bar=True)
            self.log("train/loss", loss, logger=False)
        if sequence:
            self.log(f"{split}/digit_err", digit_err)
        if self._end_class() is not None:
            self.log(f"{split}/count_err", 100.0 * metrics["count_err"].compute())
            self.log(f"{split}/unordered_err", 100.0 * metrics["unordered_err"].compute())
        for metric in metrics.values():
            metric.reset()
        return float(seq_err)

    def _is_sequence(self) -> bool:
        datamodule = getattr(self.trainer, "datamodule", None)
        return bool(datamodule is not None and getattr(datamodule.distortion, "sequence_length", None))

    def _end_class(self) -> int | None:
        """The data's end class (sequences of variable length), or None; the data decides, as for ``_is_sequence``."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(getattr(datamodule, "distortion", None), "end_class", None)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._step(batch, self._test_splits()[dataloader_idx])

    def _test_splits(self) -> tuple[str, ...]:
        """The data's test sets in loader order: ("test",), and the training counts' where those differ."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return tuple(getattr(datamodule, "test_splits", ("test",)))

    # ---- fit hooks: what TensorBoard shows -----------------------------------------------------------
    def on_fit_start(self) -> None:
        from stnbench.tensorboard import fit_steps

        fit_steps(self.loggers, True)  # points at the steps done, as results.json and the pictures say

    def on_fit_end(self) -> None:
        from stnbench.tensorboard import fit_steps

        fit_steps(self.loggers, False)

    def on_train_start(self) -> None:
        self._log_short_epochs()

    def _log_short_epochs(self) -> None:
        """On-step series (``train/loss_step``, ``lr-*``, ``train/stn_scale_*``) reach the logger every
        ``trainer.log_every_n_steps`` optimiser steps; an epoch shorter than that would log none of them, so
        such runs log them once per epoch instead, at its last step."""
        trainer = self._trainer
        every, batches = getattr(trainer, "log_every_n_steps", 0), getattr(trainer, "num_training_batches", 0)
        if not every or not batches or not math.isfinite(batches):
            return
        steps = math.ceil(batches / max(1, int(getattr(trainer, "accumulate_grad_batches", 1) or 1)))
        if 0 < steps < every:
            trainer.log_every_n_steps = steps
            log.info("An epoch has %d optimiser steps, fewer than trainer.log_every_n_steps=%d: on-step series "
                     "(train/loss_step, lr-*, train/stn_scale_*) are logged once per epoch, at its last step",
                     steps, every)

    # ---- epoch hooks ----------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        # Any randomness inside the model (dropout, ...) depends on (seed, epoch) only, so a resumed run
        # continues exactly like an uninterrupted one.
        torch.manual_seed(derive_seed(self.seed, "model", self.current_epoch))

    def on_train_epoch_end(self) -> None:
        if replaying_epoch_end(self.trainer):
            return  # a resume replays the end of the epoch its checkpoint closed: logged before, no batch since
        self._log_errors("train", self._is_sequence())

    def on_validation_epoch_end(self) -> None:
        err = self._log_errors("val", self._is_sequence())
        if self.trainer.sanity_checking:
            return
        self.val_err_best.update(torch.tensor(err))
        best = self.val_err_best.compute()
        self.log("val/err_best", best)
        self._log_images()

    def on_test_epoch_end(self) -> None:
        for split in self._test_splits():
            self._log_errors(split, self._is_sequence())

    def _log_images(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        writer = getattr(self.logger, "experiment", None) if self.logger is not None else None
        if datamodule is None or not hasattr(writer, "add_image"):
            return
        images, labels = datamodule.preview("val", self.preview_count)
        source = datamodule.preview_source("val", self.preview_count)
        # a grid of the fixed validation images: input with glimpse outlines, glimpses, label and prediction
        picture = viz.labelled_model_picture(self.model, images, labels, self.device, end_class=self._end_class(),
                                             source=source)
        if picture is not None:
            writer.add_image("val/transformer", picture, self.global_step)  # the steps done, like the scalars

    # ---- optimisation ---------------------------------------------------------------------------------
    def configure_optimizers(self):
        if self.scheduler_factory is None:
            return self.make_optimizer(0)[0]
        total = self.trainer.estimated_stepping_batches
        optimizer, scheduler = self.make_optimizer(int(total) if math.isfinite(total) else 100_000)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def make_optimizer(self, total_steps: int):
        """The run's optimiser (the localisation net in a group of its own, at ``loc_lr_multiplier`` times the
        rate) and its per-step scheduler over ``total_steps`` (None without one); scripts/bench_train.py's plain
        loop uses the same."""
        loc_params = list(getattr(self.model, "localisation_parameters", list)())
        loc_ids = {id(p) for p in loc_params}
        other = [p for p in self.model.parameters() if id(p) not in loc_ids]
        optimizer = self.optimizer_factory(params=other)
        if loc_params:
            multiplier = float(getattr(self.model, "loc_lr_multiplier", 1.0))
            optimizer.add_param_group({"params": loc_params, "lr": optimizer.defaults["lr"] * multiplier})
        if self.scheduler_factory is None:
            return optimizer, None
        return optimizer, self.scheduler_factory(optimizer, total_steps=total_steps)
