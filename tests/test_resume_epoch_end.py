"""A run resumed from a last.ckpt saved at an epoch's end goes on exactly as if never stopped.

Step-bounded training (``trainer.max_steps``, every stnbench schedule that counts steps) makes Lightning replay
the end of that epoch with no metric logged; Lightning's EarlyStopping then fails the resume
(Lightning-AI/pytorch-lightning#18595). stnbench.callbacks.EarlyStopping skips the replay. Plain Lightning on
random tensors: no MNIST, a second or two.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from stnbench.callbacks import EarlyStopping
from stnbench.identity import identity


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.linear(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StopAtEpoch(L.Callback):
    """A crash right after epoch ``epoch - 1`` ended and its last.ckpt was written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("stopped")


def loader() -> DataLoader:
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def fit(stopping: type, folder, *, ckpt_path=None, stop_at: int | None = None):
    L.seed_everything(0)
    # no epoch after the first improves by min_delta: the run stops at epoch 3, its count spanning the crash
    early = stopping(monitor="val/loss", patience=3, min_delta=10.0)
    callbacks = [early, ModelCheckpoint(dirpath=folder, save_last=True, monitor="val/loss")]
    if stop_at is not None:
        callbacks.append(StopAtEpoch(stop_at))
    trainer = L.Trainer(max_epochs=8, max_steps=10_000, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module = Regression()
    trainer.fit(module, loader(), loader(), ckpt_path=ckpt_path)
    return early, module, trainer


def crashed(stopping: type, folder) -> None:
    with pytest.raises(RuntimeError, match="stopped"):
        fit(stopping, folder, stop_at=2)
    assert (folder / "last.ckpt").exists()


def test_a_resume_from_an_epoch_end_stops_where_the_uninterrupted_run_stops(tmp_path):
    whole, whole_module, whole_trainer = fit(EarlyStopping, tmp_path / "whole")
    assert whole_trainer.should_stop and whole.stopped_epoch > 2  # early stopping did end it, after the crash
    crashed(EarlyStopping, tmp_path / "resumed")
    resumed, module, trainer = fit(EarlyStopping, tmp_path / "resumed", ckpt_path=tmp_path / "resumed" / "last.ckpt")
    assert (resumed.stopped_epoch, resumed.wait_count, trainer.global_step) == \
        (whole.stopped_epoch, whole.wait_count, whole_trainer.global_step)
    assert torch.equal(resumed.best_score, whole.best_score)
    assert torch.equal(module.linear.weight, whole_module.linear.weight)


def test_lightning_s_own_early_stopping_is_what_fails_there(tmp_path):
    """Why the subclass exists; if a Lightning release mends this, the subclass can go."""
    crashed(LightningEarlyStopping, tmp_path)
    with pytest.raises(RuntimeError, match="not available"):
        fit(LightningEarlyStopping, tmp_path, ckpt_path=tmp_path / "last.ckpt")


def test_the_mended_early_stopping_is_the_same_run_as_lightning_s():
    config = {"callbacks": {"early_stopping": {"_target_": "stnbench.callbacks.EarlyStopping", "patience": 50}}}
    lightning = {"callbacks": {"early_stopping": {"_target_": "lightning.pytorch.callbacks.EarlyStopping",
                                                  "patience": 50}}}
    assert identity(config) == identity(lightning)
