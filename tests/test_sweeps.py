"""Sweeps through the real command line: a re-run skips finished runs and resumes interrupted ones, and a
user error on a single run is a clean exit (the Optuna search: test_optuna_search.py, test_optuna_sweeper.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config, data_root

TINY = ["data=rotated", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_val=500",
        "callbacks.model_summary=null"]


def stnbench_train(args: list[str], out: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STNBENCH_DATA_DIR": str(data_root()), "STNBENCH_OUTPUT_DIR": str(out),
           "STNBENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-c", "from stnbench.train import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_rerun_skips_finished_runs_and_resumes_the_interrupted_one(tmp_path, cache_dir):
    sweep = ["-m", "model=cnn,fcn", "seed=1", "sweep_name=resumable", *TINY]
    first = stnbench_train(sweep, tmp_path, cache_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep_dir = tmp_path / "multirun" / "resumable"
    runs = {p.parent.name.split("-")[1]: p.parent for p in sweep_dir.glob("*/results.json")}
    assert set(runs) == {"cnn", "fcn"}, runs  # named by choices: rotated-cnn-s1_..., rotated-fcn-s1_...
    finished = runs["fcn"] / "results.json"
    finished_before = (finished.stat().st_mtime_ns, finished.read_text())
    straight = json.loads((runs["cnn"] / "results.json").read_text())
    # Interrupt the cnn run after its last checkpoint: no results.json, checkpoints/last.ckpt is there.
    (runs["cnn"] / "results.json").unlink()
    assert (runs["cnn"] / "checkpoints" / "last.ckpt").is_file()

    second = stnbench_train(sweep, tmp_path, cache_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert f"Skipping finished run {runs['fcn']}" in log
    assert f"Resuming unfinished run from {runs['cnn'] / 'checkpoints' / 'last.ckpt'}" in log
    assert (finished.stat().st_mtime_ns, finished.read_text()) == finished_before  # not run again
    resumed = json.loads((runs["cnn"] / "results.json").read_text())
    assert resumed["status"] == "finished" and resumed["resumed_from"].endswith("last.ckpt")
    assert resumed["global_step"] == straight["global_step"] == 3  # nothing trained twice
    assert resumed["test/err"] == straight["test/err"]
    assert sorted(p.name for p in (tmp_path / "multirun" / "resumable").iterdir()
                  if p.is_dir() and p.name != "tensorboard_layout") == \
        sorted(p.name for p in runs.values())  # no new run folders: the re-run found the same ones


def test_run_folders_are_named_by_choices_and_other_overrides(tmp_path, cache_dir):
    from stnbench.resolvers import override_tag

    cfg = compose_config(["data=rotated", "model=st_cnn", "model/transform=tps", "seed=2", "schedule=paper",
                          "optimizer.lr=0.02", "paths.output_dir=/x/y"], run_dir=tmp_path, cache=cache_dir)
    assert cfg.run_name == "rotated-st_cnn-tps-s2"  # the transform shows for models that have one
    assert override_tag() == "_optimizer.lr=0.02,schedule=paper"  # what else differs, paths excluded
    cfg = compose_config(["data=rts", "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=3"],
                         run_dir=tmp_path, cache=cache_dir)
    assert cfg.run_name == "rts-cnn-s1"
    assert override_tag() == "_trainer.limit_train_batches=3,trainer.max_epochs=1"  # readable, not a hash


@pytest.mark.parametrize(("override", "named"), [
    ("callbacks.model_checkpoint.monitor=train/loss", True),   # picks the checkpoint that is tested
    ("+callbacks.early_stopping.patience=3", True),            # stops training
    ("trainer.devices=2", True),                               # every rank draws a full batch
    ("trainer=ddp", True),
    ("callbacks.model_checkpoint.dirpath=/elsewhere", False),  # where files go
    ("callbacks.lr_monitor.logging_interval=epoch", False),    # observes only
    ("callbacks.model_summary=null", True),                   # what it switched off is not known here
    ("trainer.log_every_n_steps=1", False),
    ("trainer.accelerator=cpu", False),
    ("logger=csv", False),
    ("data.root=/elsewhere", False),
    ("checkpoint_minutes=1", False),
    ("hydra/launcher=local", False),
])
def test_a_folder_name_shows_each_override_that_can_change_a_result(override, named):
    """issue 20: the folder name and the drift check share one definition of what a run computes."""
    from stnbench.identity import folder_tag, in_identity

    cfg = compose_config([override, "model=cnn"], run_dir=None)
    key = override.partition("=")[0]
    assert in_identity(key, cfg) is named
    assert bool(folder_tag([override], cfg)) is named


def test_a_long_folder_tag_keeps_its_start_and_ends_in_a_hash():
    from stnbench.identity import MAX_TAG, folder_tag

    overrides = [f"model.layer{i}.channels={i}" for i in range(30)]
    tag = folder_tag(overrides)
    assert len(tag) <= MAX_TAG + 1 and tag.startswith("_model.layer0.channels=0,")
    assert tag != folder_tag(overrides[:-1] + ["model.layer29.channels=30"])  # the hash tells them apart


def test_user_error_on_a_single_run_is_a_clean_exit(tmp_path, monkeypatch, capsys):
    from stnbench.train import main

    monkeypatch.setattr(sys, "argv", ["stnbench-train", "data.batch_size=0", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert str(exit_info.value) == "stnbench-train: error: data.batch_size must be a positive integer, got 0"
    assert not (tmp_path / "results.json").exists()  # a single run's error is not recorded as a sweep failure
