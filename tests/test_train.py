"""End-to-end behaviour of stnbench-train on real MNIST, shrunk to seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import add_callbacks, compose_config
from stnbench.build import CheckpointError
from stnbench.eval import evaluate
from stnbench.train import train

TINY = ["data.num_val=1000", "data.eval_batch_size=500", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "trainer.log_every_n_steps=5"]


def test_a_tiny_run_learns(tmp_path, cache_dir):
    cfg = compose_config(TINY + ["data=mnist", "model=st_cnn", "logger=csv", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=60", "data.batch_size=64"],
                         run_dir=tmp_path, cache=cache_dir)
    results = train(cfg)
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    losses = metrics["train/loss_step"].dropna().to_numpy()
    assert losses[-1] < 0.5 * losses[0], f"training loss did not fall: {losses}"
    assert results["test/err"] < 40.0, "10 classes: chance is 90% error; 60 steps of Adam get far below"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test/err"] == pytest.approx(results["test/err"])
    assert saved["parameters"] > 0 and saved["choice/data"] == "mnist" and saved["status"] == "finished"
    assert (tmp_path / "checkpoints" / "best.ckpt").exists() and (tmp_path / "checkpoints" / "last.ckpt").exists()


class StopAfterFirstEpoch(Callback):
    """Stands in for a run killed after its first epoch's checkpoint was written."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


class RecordFirstStep(Callback):
    first_steps: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        RecordFirstStep.first_steps.append(trainer.global_step)


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, cache_dir, monkeypatch):
    common = TINY + ["data=rotated", "model=st_cnn", "logger=csv", "trainer.limit_train_batches=8",
                     "data.batch_size=32", "trainer.max_epochs=3", "test_after_fit=false"]
    straight = train(compose_config(common, run_dir=tmp_path / "straight", cache=cache_dir))
    interrupted = compose_config(common, run_dir=tmp_path / "resumed", cache=cache_dir)
    with monkeypatch.context() as patch:
        add_callbacks(patch, StopAfterFirstEpoch())
        assert train(interrupted)["global_step"] == 8
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    add_callbacks(monkeypatch, RecordFirstStep())
    resumed = train(compose_config(common + [f"ckpt_path={last}"], run_dir=tmp_path / "resumed", cache=cache_dir))
    assert RecordFirstStep.first_steps == [8], "the resumed run must continue at step 8, not start over"
    assert resumed["global_step"] == straight["global_step"] == 24
    assert resumed["val/err_best"] == straight["val/err_best"]
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
               for run in ("straight", "resumed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_resuming_with_another_model_is_refused(tmp_path, cache_dir):
    common = TINY + ["data=rotated", "logger=csv", "trainer.limit_train_batches=2", "trainer.max_epochs=1"]
    train(compose_config(common + ["model=st_cnn"], run_dir=tmp_path / "a", cache=cache_dir))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="another configuration.*model._target_"):
        train(compose_config(common + ["model=cnn", f"ckpt_path={last}"], run_dir=tmp_path / "b", cache=cache_dir))


def test_tensorboard_holds_scalars_hparams_and_the_transformer_grid(tmp_path, cache_dir):
    cfg = compose_config(TINY + ["data=rts", "model=st_cnn", "logger=tensorboard", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=6"], run_dir=tmp_path, cache=cache_dir)
    train(cfg)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})  # events in the run folder itself
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss_step", "val/err", "val/err_best", "test/err", "train/stn_scale_mean"} <= scalars
    assert any(tag.startswith("lr-") for tag in scalars), scalars
    assert "val/transformer" in events.Tags()["images"]
    image = events.Images("val/transformer")[-1]
    # 16 inputs, each beside its glimpse (the grid's layout and captions: tests/test_tensorboard.py)
    assert image.width > 2 * 42 and image.width * image.height >= 16 * 2 * 42 * 42, (image.width, image.height)
    hparams = [path for path in tmp_path.iterdir() if path.name.startswith("events")]
    assert hparams and b"hparams" in b"".join(path.read_bytes() for path in hparams)


def test_eval_reproduces_the_test_error_of_the_best_checkpoint(tmp_path, cache_dir):
    train_results = train(compose_config(TINY + ["data=rotated", "model=cnn", "logger=csv",
                                                 "trainer.max_epochs=1", "trainer.limit_train_batches=5"],
                                         run_dir=tmp_path / "run", cache=cache_dir))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config([f"ckpt_path={best}", "trainer.limit_test_batches=1"], config_name="eval",
                         run_dir=tmp_path / "eval", cache=cache_dir)
    results = evaluate(cfg)
    assert results["test/err"] == pytest.approx(train_results["test/err"])
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text())["data"] == "rotated"


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path, cache_dir):
    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    cfg = compose_config([f"ckpt_path={bogus}"], config_name="eval", run_dir=tmp_path / "eval", cache=cache_dir)
    with pytest.raises(CheckpointError, match="unreadable"):
        evaluate(cfg)


def test_channels_last_puts_conv_weights_and_batches_in_nhwc(tmp_path, cache_dir):
    from stnbench.build import build_datamodule, build_module

    cfg = compose_config(TINY + ["data=rts", "model=st_cnn", "channels_last=true"], run_dir=tmp_path, cache=cache_dir)
    module = build_module(cfg, build_datamodule(cfg.data))
    convs = [p for p in module.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    seen = []
    module.model.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    module._step((torch.rand(4, 1, 42, 42), torch.zeros(4, dtype=torch.long)), "val")
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    cfg = compose_config(TINY + ["data=rts", "model=st_cnn", "channels_last=false"], run_dir=tmp_path, cache=cache_dir)
    module = build_module(cfg, build_datamodule(cfg.data))
    convs = [p for p in module.model.parameters() if p.dim() == 4]
    assert not all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


def test_eval_on_data_of_another_size_says_what_to_do_in_one_line(tmp_path, cache_dir):
    train(compose_config(TINY + ["data=rotated", "model=cnn", "logger=csv", "trainer.max_epochs=1",
                                 "trainer.limit_train_batches=2"], run_dir=tmp_path / "run", cache=cache_dir))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    cfg = compose_config([f"ckpt_path={best}", "data=rts"], config_name="eval", run_dir=tmp_path / "eval",
                         cache=cache_dir)
    with pytest.raises(CheckpointError) as error:
        evaluate(cfg)
    message = str(error.value)
    assert "\n" not in message and "size mismatch" not in message
    assert "trained on data=rotated (1x28x28 images, 10 classes)" in message
    assert "data=rts gives 1x42x42 images" in message and "drop data=" in message
    assert "data=elastic, mnist, perturbed, projective" in message  # the shipped data it can be tested on instead


def test_results_json_times_the_whole_run_and_names_its_optuna_trial(tmp_path, cache_dir, monkeypatch):
    import time

    from stnbench import build

    building = build.build_datamodule

    def slow_to_build(data_cfg):  # stands in for MNIST loading and the fixed val/test sets of a big benchmark
        time.sleep(2.0)
        return building(data_cfg)

    monkeypatch.setattr(build, "build_datamodule", slow_to_build)
    monkeypatch.setenv("STNBENCH_OPTUNA_TRIAL", "7")
    results = train(compose_config(TINY + ["data=rotated", "model=cnn", "logger=csv", "trainer.max_epochs=1",
                                           "trainer.limit_train_batches=2"], run_dir=tmp_path, cache=cache_dir))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["wall_seconds"] == results["wall_seconds"]
    assert saved["wall_seconds"] >= saved["fit_seconds"] + 2.0, saved  # data building counts: this command's time
    assert saved["optuna_trial"] == 7
    assert saved["config_hash"] != saved["configuration_hash"]  # with / without the seed


class FakeMNIST:
    """torchvision's MNIST as a download sees it: the raw folder first, then the files (or a network error)."""

    online = False

    def __init__(self, root, train=True, download=False):
        from stnbench.data.mnist import RAW_FILES

        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)  # what torchvision does before it tries the mirrors
        if not FakeMNIST.online:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error no network>")
        for name, size in RAW_FILES.items():
            with open(raw / name, "wb") as handle:
                handle.truncate(size)


def test_the_data_root_gets_nothing_unless_a_download_brings_the_files(tmp_path, monkeypatch):
    from stnbench.data.mnist import RAW_FILES, MNISTNotFoundError, ensure_mnist

    monkeypatch.setattr("stnbench.data.mnist.MNIST", FakeMNIST)
    for root in (tmp_path / "absent", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        with pytest.raises(MNISTNotFoundError, match="download failed"):
            ensure_mnist(root, download=True)
        assert not (root / "MNIST").exists() and (root.exists() == (root.name == "empty"))
    FakeMNIST.online = True
    try:
        assert ensure_mnist(tmp_path / "absent", download=True) == tmp_path / "absent"
    finally:
        FakeMNIST.online = False
    raw = tmp_path / "absent" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)


def test_the_epoch_loss_is_the_mean_of_its_steps_and_steps_log_only_when_the_logger_writes(tmp_path, cache_dir):
    """The training loss's epoch mean is a metric of the module's own (Lightning's per-call logging cost 4 % of a
    step); it must still be the mean over every step of the epoch, and on-step values reach the logger every
    ``log_every_n_steps`` steps, as Lightning's own on-step logging does."""
    common = TINY + ["data=mnist", "model=cnn", "logger=csv", "trainer.limit_train_batches=6", "data.batch_size=32",
                     "test_after_fit=false"]
    every = compose_config(common + ["trainer.max_epochs=2", "trainer.log_every_n_steps=1"], run_dir=tmp_path / "every",
                           cache=cache_dir)
    train(every)
    metrics = pd.read_csv(tmp_path / "every" / "csv" / "metrics.csv")
    steps = metrics.dropna(subset=["train/loss_step"])
    epochs = metrics.dropna(subset=["train/loss_epoch"])
    assert len(steps) == 12 and len(epochs) == 2
    for epoch in (0, 1):
        losses = steps[steps["epoch"] == epoch]["train/loss_step"]
        assert len(losses) == 6
        assert epochs["train/loss_epoch"].iloc[epoch] == pytest.approx(losses.mean(), rel=1e-5)
    sparse = compose_config(common + ["trainer.max_epochs=1", "trainer.log_every_n_steps=3"],
                            run_dir=tmp_path / "sparse", cache=cache_dir)
    train(sparse)
    logged = pd.read_csv(tmp_path / "sparse" / "csv" / "metrics.csv").dropna(subset=["train/loss_step"])
    assert logged["step"].tolist() == [2, 5]
