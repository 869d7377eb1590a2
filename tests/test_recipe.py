"""The recipe options of issue 21: an exponential moving average of the weights through Lightning's own callback
(validation, checkpoints and test on the average; resumes stay exact) and AdamW's decoupled weight decay."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback

from conftest import add_callbacks, compose_config
from stnbench.records import best_checkpoint, last_checkpoint
from stnbench.train import train

TINY = ["data=rotated", "model=cnn", "logger=csv", "data.num_val=500", "data.eval_batch_size=500",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "callbacks.model_summary=null",
        "data.batch_size=32", "trainer.limit_train_batches=6", "trainer.max_epochs=2",
        "callbacks/weight_averaging=ema", "callbacks.weight_averaging.decay=0.5"]


class StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


def _state(path) -> tuple[dict, dict]:
    checkpoint = torch.load(path, weights_only=False)
    return checkpoint["state_dict"], checkpoint["current_model_state"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class RecordTestWeights(Callback):
    weights: dict = {}

    def on_test_start(self, trainer, pl_module) -> None:
        RecordTestWeights.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("ema")
    with pytest.MonkeyPatch.context() as patch:
        add_callbacks(patch, RecordTestWeights())
        results = train(compose_config(TINY, run_dir=run_dir, cache=cache_dir))
    return run_dir, results


def test_checkpoints_and_the_test_use_the_averaged_weights(straight):
    from stnbench import load_model

    run_dir, results = straight
    assert results["status"] == "finished" and results["global_step"] == 12
    averaged, current = _state(last_checkpoint(run_dir))
    assert not _same(averaged, current)  # the average is not the last weights
    best, _ = _state(best_checkpoint(run_dir))
    loaded = load_model(best_checkpoint(run_dir)).state_dict()  # what eval and predict load
    assert all(torch.equal(loaded[k], best[f"model.{k}"]) for k in loaded)
    tested = {k: v for k, v in RecordTestWeights.weights.items() if k in best}  # the run's own test after fit
    assert tested.keys() == best.keys() and _same(tested, best)  # Lightning's own callback tested the raw weights


def test_a_resumed_ema_run_ends_exactly_like_an_uninterrupted_one(straight, tmp_path, cache_dir, monkeypatch):
    run_dir, results = straight
    with monkeypatch.context() as patch:
        add_callbacks(patch, StopAfterFirstEpoch())
        assert train(compose_config(TINY, run_dir=tmp_path, cache=cache_dir))["global_step"] == 6
    resumed = train(compose_config(TINY + [f"ckpt_path={last_checkpoint(tmp_path)}"], run_dir=tmp_path,
                                   cache=cache_dir))
    assert resumed["global_step"] == 12 and resumed["test/err"] == results["test/err"]
    for ours, theirs in zip(_state(last_checkpoint(tmp_path)), _state(last_checkpoint(run_dir)), strict=True):
        assert _same(ours, theirs)


def test_adamw_decays_the_weights_apart_from_the_gradient():
    """AdamW shrinks every weight by lr * weight_decay per step, whatever the gradient (Adam's weight_decay is
    an L2 term that the adaptive step normalises away)."""
    from hydra.utils import instantiate

    cfg = compose_config(["optimizer=adamw", "optimizer.lr=0.1", "optimizer.weight_decay=0.5"])
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = instantiate(cfg.optimizer)(params=[weight])
    weight.grad = torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((3,), 1 - 0.1 * 0.5))
