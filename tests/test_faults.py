"""Nothing lost, nothing raw: interruptions, folder collisions, exit codes and bad input (issue 9)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import OmegaConf

from conftest import add_callbacks, compose_config, data_root
from stnbench.config_checks import check_config
from stnbench.data.mnist import MEMO_FILE, RAW_FILES, verify_mnist
from stnbench.errors import CheckpointError, ConfigError, MNISTNotFoundError, RunInterrupted, StorageError
from stnbench.eval import evaluate
from stnbench.run_folder import open_run_folder
from stnbench.train import train
from test_sweeps import stnbench_train

TINY = ["data.num_val=1000", "data.eval_batch_size=500", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "callbacks.model_summary=null", "logger=csv"]
# Two epochs of 10 batches: an interruption inside the first epoch is "mid-epoch".
RESUMABLE = TINY + ["data=rotated", "model=st_cnn", "data.batch_size=32", "trainer.max_epochs=2",
                    "trainer.limit_train_batches=10"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir) -> tuple[dict, dict]:
    """The uninterrupted run every interrupted one must end identical to."""
    run_dir = tmp_path_factory.mktemp("straight")
    results = train(compose_config(RESUMABLE, run_dir=run_dir, cache=cache_dir))
    return results, _weights(run_dir)


class TermAtStep(Callback):
    """Sends this process SIGTERM after training step 4, as `kill -TERM` would."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_mid_epoch_checkpoints_and_resumes_exactly(tmp_path, cache_dir, straight, monkeypatch):
    cfg = compose_config(RESUMABLE, run_dir=tmp_path, cache=cache_dir)
    with monkeypatch.context() as patch, pytest.raises(RunInterrupted, match="stopped by SIGTERM at step 4") as stopped:
        add_callbacks(patch, TermAtStep())
        train(cfg)
    assert stopped.value.exit_code == 143
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and results["global_step"] == 4
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 0  # inside the first epoch
    assert checkpoint["callbacks"]["FitClock"]["seconds"] > 0
    checkpoint["callbacks"]["FitClock"]["seconds"] = 1000.0  # as if the first segment had taken 1000 s
    torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")

    resumed = train(compose_config(RESUMABLE + [f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"],
                                   run_dir=tmp_path, cache=cache_dir))
    expected, weights = straight
    assert resumed["status"] == "finished" and resumed["global_step"] == expected["global_step"] == 20
    assert resumed["val/err_best"] == expected["val/err_best"] and resumed["test/err"] == expected["test/err"]
    assert _same_weights(_weights(tmp_path), weights)
    # fit_seconds is what the result cost: the earlier segment's seconds plus this command's, not this one's alone
    assert 1000 < resumed["fit_seconds"] <= 1000 + resumed["wall_seconds"]  # both rounded to 0.1 s


class CrashAtEpoch(Callback):
    """A crash as epoch ``epoch`` starts: the epoch before it ended, validated and wrote its last.ckpt."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("crashed between epochs")


@pytest.mark.parametrize("bound, drifted", [([], False), (["trainer.max_epochs=1000", "trainer.max_steps=20"], False),
                                            (["trainer.max_epochs=1000", "trainer.max_steps=20"], True)],
                         ids=["epochs", "steps", "steps-older-totals"])
def test_a_resume_from_an_epoch_end_checkpoint_trains_no_batch_twice(tmp_path, cache_dir, straight, monkeypatch,
                                                                     bound, drifted):
    """The last.ckpt that ModelCheckpoint writes at an epoch's end (after its validation) has that epoch's
    batches all completed: the resumed run starts the next epoch at its first batch, with no extra step,
    whether epochs or steps bound the training (Lightning restarts the two differently), and also from a
    checkpoint whose running totals older stnbench let drift (a run resumed before from a batch-start one)."""
    cfg = compose_config(RESUMABLE + bound, run_dir=tmp_path, cache=cache_dir)
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="crashed between epochs"):
        add_callbacks(patch, CrashAtEpoch(1))
        train(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 10 and checkpoint["epoch"] == 0  # the end of the first epoch
    if drifted:
        checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] += 1
        torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = train(compose_config(RESUMABLE + bound + [f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}"],
                                       run_dir=tmp_path, cache=cache_dir))
    # the replayed epoch end and the folders a resume continues in are no news to the user
    assert not [str(w.message) for w in caught if "monitored key" in str(w.message) or "not empty" in str(w.message)]
    expected, weights = straight
    assert resumed["status"] == "finished" and resumed["global_step"] == expected["global_step"] == 20
    assert resumed["epochs"] == expected["epochs"] == 2
    assert resumed["val/err_best"] == expected["val/err_best"] and resumed["test/err"] == expected["test/err"]
    assert _same_weights(_weights(tmp_path), weights)


def as_older_stnbench_wrote_it(path: Path) -> None:
    """The batch progress of a batch-start checkpoint as stnbench wrote it before: the next batch counted as
    fetched, once in the epoch's count and twice in the totals (a run resumed once before)."""
    checkpoint = torch.load(path, weights_only=False)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    progress["current"]["ready"] += 1
    progress["total"]["ready"] += 2
    torch.save(checkpoint, path)


@pytest.mark.parametrize("written_by", ["this", "older"])
def test_a_run_resumed_mid_epoch_and_then_from_an_epoch_end_is_still_the_uninterrupted_run(tmp_path, cache_dir,
                                                                                         straight, monkeypatch,
                                                                                         written_by):
    """A checkpoint written as a batch starts holds the loop progress of the previous batch's end: Lightning
    has already counted the new batch as fetched there, and that count, carried into the resumed run, made the
    next resume from an epoch's end train one batch too many (issue 22's seed-2 run: 601 steps in an epoch).
    One that older stnbench wrote is mended as it loads."""
    bound = ["trainer.max_epochs=1000", "trainer.max_steps=20"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    with monkeypatch.context() as patch, pytest.raises(RunInterrupted, match="at step 4"):
        add_callbacks(patch, TermAtStep())
        train(compose_config(RESUMABLE + bound, run_dir=tmp_path, cache=cache_dir))
    progress = torch.load(last, weights_only=False)["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["total"]["ready"] == progress["total"]["completed"] == 4 and not progress["is_last_batch"]
    if written_by == "older":
        as_older_stnbench_wrote_it(last)
    with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="crashed between epochs"):
        add_callbacks(patch, CrashAtEpoch(1))
        train(compose_config(RESUMABLE + bound + [f"ckpt_path={last}"], run_dir=tmp_path, cache=cache_dir))
    assert torch.load(last, weights_only=False)["global_step"] == 10
    resumed = train(compose_config(RESUMABLE + bound + [f"ckpt_path={last}"], run_dir=tmp_path, cache=cache_dir))
    expected, weights = straight
    assert resumed["status"] == "finished" and resumed["global_step"] == expected["global_step"] == 20
    assert resumed["val/err_best"] == expected["val/err_best"] and resumed["test/err"] == expected["test/err"]
    assert _same_weights(_weights(tmp_path), weights)


def _wait_for(predicate, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=False)["global_step"]
    except Exception:  # noqa: BLE001 - not written yet, or being replaced
        return -1


def _start(args: list[str], out: Path, cache: Path, threads: int = 1) -> subprocess.Popen:
    """stnbench-train in a subprocess; ``threads=2`` computes bit-identically to the in-process runs
    (conftest sets 2 threads; float sums depend on the thread count)."""
    env = {**os.environ, "STNBENCH_DATA_DIR": str(data_root()), "STNBENCH_OUTPUT_DIR": str(out),
           "STNBENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-c", "from stnbench.train import main; main()", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_command_resumes_to_the_same_weights(tmp_path, cache_dir, straight, kill):
    """SIGTERM: exit 143, status interrupted. SIGKILL: nothing runs, but the time-based checkpoint
    (checkpoint_minutes=0: before every batch) bounds the loss. Either way resuming ends identical."""
    run_dir = tmp_path / "run"
    process = _start(RESUMABLE + ["checkpoint_minutes=0", f"hydra.run.dir={run_dir}"], tmp_path, cache_dir, threads=2)
    last = run_dir / "checkpoints" / "last.ckpt"
    _wait_for(lambda: _checkpoint_step(last) >= 3 or process.poll() is not None)
    process.send_signal(kill)
    _, stderr = process.communicate(timeout=240)
    step = _checkpoint_step(last)
    assert 3 <= step < 20, f"killed at step {step}: not inside training"
    if kill == signal.SIGTERM:
        assert process.returncode == 143, stderr[-2000:]
        assert "stnbench-train: interrupted: stopped by SIGTERM" in stderr
        assert json.loads((run_dir / "results.json").read_text())["status"] == "interrupted"
    else:
        assert process.returncode == -signal.SIGKILL and not (run_dir / "results.json").exists()
    resumed = train(compose_config(RESUMABLE + [f"ckpt_path={last}"], run_dir=run_dir, cache=cache_dir))
    expected, weights = straight
    assert resumed["test/err"] == expected["test/err"] and _same_weights(_weights(run_dir), weights)


def test_two_runs_started_at_once_get_their_own_folders(tmp_path, cache_dir):
    run_dir = tmp_path / "same-second_rotated-cnn-s1"
    args = TINY + ["data=rotated", "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                   f"hydra.run.dir={run_dir}"]
    processes = {lr: _start(args + [f"optimizer.lr={lr}"], tmp_path, cache_dir) for lr in ("0.001", "0.01")}
    for process in processes.values():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    folders = sorted(p.parent for p in tmp_path.glob("same-second*/results.json"))
    assert [f.name for f in folders] == [run_dir.name, run_dir.name + "-2"]
    lrs = sorted(json.loads((f / "results.json").read_text())["choice/lr"] for f in folders)
    assert lrs == [0.001, 0.01]
    for folder in folders:  # each folder's record is its own run's
        lr = OmegaConf.load(folder / ".hydra" / "config.yaml").optimizer.lr
        assert json.loads((folder / "results.json").read_text())["choice/lr"] == lr


def test_a_claimed_folder_is_never_shared(tmp_path, cache_dir):
    cfg = compose_config(["data=rotated", "model=cnn"], run_dir=tmp_path / "run", cache=cache_dir)
    first = open_run_folder(cfg, new_run=True)  # holds the lock, like a run in progress
    second = open_run_folder(cfg, new_run=True)
    assert (first.path.name, second.path.name) == ("run", "run-2")
    first.release(), second.release()


def test_a_multirun_with_a_failed_run_exits_non_zero_after_the_others(tmp_path, cache_dir):
    result = stnbench_train(["-m", "data=rotated", "model=cnn", "data.num_val=500,0", "sweep_name=partly",
                             *TINY[1:], "trainer.max_epochs=1", "trainer.limit_train_batches=2"], tmp_path, cache_dir)
    assert result.returncode == 1, result.stderr[-2000:]
    sweep = tmp_path / "multirun" / "partly"
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json"))
    assert statuses == ["failed", "finished"]
    assert "1 did not finish" in result.stdout + result.stderr


# ---- bad values: one line naming the key, the value and the expected type ---------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=abc", "trainer.max_epochs='abc' has the wrong type: expected an integer"),
    ("optimizer.lr=abc", "optimizer.lr='abc' has the wrong type: expected a number"),
    ("data.batch_size=2.5", "data.batch_size=2.5 has the wrong type: expected an integer"),
    ("optimizer.lr=nan", "optimizer.lr=nan is not a finite number"),
    ("data.distortion.max_angle=abc", "data.distortion.max_angle='abc' has the wrong type: expected a number"),
    ("model.loc_lr_multiplier=fast", "model.loc_lr_multiplier='fast' has the wrong type"),
    ("trainer.limit_train_batches=all", "trainer.limit_train_batches='all' has the wrong type"),
    ("seed=one", "seed='one' has the wrong type: expected an integer"),
    ("data.train_mode=1", "data.train_mode=1 has the wrong type: expected a string"),
])
def test_wrong_types_name_key_value_and_type(tmp_path, cache_dir, override, message):
    cfg = compose_config(["data=rotated", "model=st_cnn", override], run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_every_shipped_option_passes_the_type_checks(tmp_path, cache_dir):
    from conftest import CONFIG_DIR

    for group in ("data", "model", "optimizer", "scheduler", "trainer"):
        for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_")):
            if (group, option) in {("trainer", "default")}:
                continue
            check_config(compose_config([f"{group}={option}"], run_dir=tmp_path, cache=cache_dir))


def test_a_bad_value_leaves_no_folder_behind(tmp_path, cache_dir):
    result = stnbench_train(["data.batch_size=2.5", f"hydra.run.dir={tmp_path / 'x'}"], tmp_path, cache_dir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("stnbench-train: error: data.batch_size=2.5")
    assert not (tmp_path / "x").exists()


# ---- MNIST verified by content ----------------------------------------------------------------------------------
@pytest.fixture
def mnist_copy(tmp_path) -> Path:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in RAW_FILES:
        shutil.copyfile(data_root() / "MNIST" / "raw" / name, raw / name)
    return tmp_path / "data"


def test_a_right_sized_file_of_other_content_is_named(mnist_copy, tmp_path):
    labels = mnist_copy / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:8] + bytes((b * 7 + 3) % 256 for b in labels.read_bytes()[8:]))
    with pytest.raises(MNISTNotFoundError, match="t10k-labels-idx1-ubyte is not the original MNIST file"):
        verify_mnist(mnist_copy, memo_dir=tmp_path / "cache")
    with pytest.raises(MNISTNotFoundError, match="t10k-labels-idx1-ubyte holds label .*; MNIST labels are 0-9"):
        verify_mnist(mnist_copy, check_known=False, memo_dir=tmp_path / "cache")
    images = mnist_copy / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(os.urandom(images.stat().st_size))
    with pytest.raises(MNISTNotFoundError, match="train-images-idx3-ubyte is not an MNIST IDX file"):
        verify_mnist(mnist_copy, check_known=False, memo_dir=tmp_path / "cache")


def test_checksums_are_remembered_by_size_and_mtime(mnist_copy, tmp_path, monkeypatch):
    sums = verify_mnist(mnist_copy, memo_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / MEMO_FILE).is_file()
    monkeypatch.setattr("stnbench.data.mnist.file_md5", lambda path: pytest.fail(f"re-read {path}"))
    assert verify_mnist(mnist_copy, memo_dir=tmp_path / "cache") == sums


# ---- unwritable folders, stnbench-eval's input ------------------------------------------------------------------
def test_an_unwritable_cache_names_the_variable(tmp_path, cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    cfg = compose_config(TINY + ["data=rotated", "model=cnn", f"paths.cache_dir={blocker / 'cache'}"],
                         run_dir=tmp_path / "run", cache=blocker / "cache")
    with pytest.raises(StorageError, match="set STNBENCH_CACHE_DIR"):
        train(cfg)


@pytest.mark.parametrize("mode", [[], ["-m"]])
def test_an_unwritable_output_folder_names_the_variable(tmp_path, cache_dir, mode):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = stnbench_train([*mode, "data=rotated"], blocker / "outputs", cache_dir)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: cannot write to the output folder" in result.stderr.splitlines()[-1]
    assert "set STNBENCH_OUTPUT_DIR" in result.stderr.splitlines()[-1]


def test_eval_without_a_checkpoint_says_so(tmp_path, cache_dir):
    cfg = compose_config([], config_name="eval", run_dir=tmp_path / "eval", cache=cache_dir)
    with pytest.raises(CheckpointError, match="pass ckpt_path=<run>/checkpoints/best.ckpt"):
        evaluate(cfg)


def test_eval_refuses_a_model_that_is_not_the_checkpoints(tmp_path, cache_dir):
    train(compose_config(TINY + ["data=rotated", "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=2"],
                         run_dir=tmp_path / "run", cache=cache_dir))
    cfg = compose_config([f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", "+model=st_cnn"],
                         config_name="eval", run_dir=tmp_path / "eval", cache=cache_dir)
    with pytest.raises(CheckpointError, match="holds another model than the one given"):
        evaluate(cfg)


def test_sigterm_stops_a_multirun_non_zero_and_a_re_run_resumes_it(tmp_path, cache_dir):
    args = ["-m", "data=rotated", "model=cnn", "seed=1,2", "sweep_name=stopped", "checkpoint_minutes=0", *TINY[:-1],
            "trainer.max_epochs=1", "trainer.limit_train_batches=30", "data.batch_size=32"]
    process = _start(args, tmp_path, cache_dir)
    sweep = tmp_path / "multirun" / "stopped"
    _wait_for(lambda: any(_checkpoint_step(p) >= 2 for p in sweep.glob("*/checkpoints/last.ckpt"))
              or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 143, stderr[-2000:]
    assert "stopped (stopped by SIGTERM" in stdout + stderr  # the summary says so and how to resume
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert [r["status"] for r in results] == ["interrupted"]  # the second run never started

    again = stnbench_train(args, tmp_path, cache_dir)  # the same command
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json")) == ["finished"] * 2


def test_the_sweep_summary_counts_refused_runs_of_this_invocation_only(tmp_path, monkeypatch):
    from stnbench.sweeps import INVOCATION_ENV, JOURNAL, sweep_summary

    lines = [{"invocation": "old", "run_dir": "a", "status": "failed", "error": "x"},
             {"invocation": "now", "run_dir": "a", "status": "finished", "error": None},
             {"invocation": "now", "run_dir": "b", "status": "failed", "error": "RunFolderTaken: ..."},
             {"invocation": "now", "run_dir": "c", "status": "diverged", "error": "training diverged"}]
    (tmp_path / JOURNAL).write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.setenv(INVOCATION_ENV, "now")
    assert sweep_summary(tmp_path) == 2


def test_fused_adam_with_clipping_under_mixed_precision_is_refused_early(tmp_path, cache_dir):
    cfg = compose_config(["optimizer.fused=true", "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0"],
                         run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(ConfigError, match="set optimizer.fused=false"):
        check_config(cfg)
    check_config(compose_config(["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0",
                                 "optimizer.fused=false"], run_dir=tmp_path, cache=cache_dir))
