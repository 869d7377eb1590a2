"""Every config option composes, and bad configuration is refused before any training starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from conftest import CONFIG_DIR, compose_config
from stnbench.build import check_config
from stnbench.data.distortions import ConfigError
from stnbench.data.mnist import MNISTNotFoundError
from stnbench.train import train

# Groups whose options stand alone; data/model are checked by building them (see test_data_suite.py,
# test_models.py), experiment and hparams_search by test_experiments.py.
GROUPS = ["data", "model", "model/transform", "optimizer", "scheduler", "trainer", "logger", "callbacks",
          "paths", "debug"]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml") if not path.stem.startswith("_"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_resolves(group, option, tmp_path):
    cfg = compose_config([f"{group}={option}"], run_dir=tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["seed"] == 1 and container["data"]["_target_"].startswith("stnbench.")
    check_config(cfg)


def test_default_run_is_cnn_stn_on_rts():
    cfg = compose_config([])
    assert cfg.data.name == "rts" and cfg.model._target_.endswith("STClassifier")
    assert cfg.trainer.deterministic != True  # noqa: E712 - grid_sample backward on CUDA


def test_unknown_group_option_lists_the_choices():
    with pytest.raises(MissingConfigException, match="rotated"):  # the message lists available options
        compose_config(["data=rotatd"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["model.no_such_key=1"])


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size must be a positive integer"),
    ("data.batch_size=-8", "data.batch_size must be a positive integer"),
    ("optimizer.lr=0", "optimizer.lr must be positive"),
    ("optimizer.lr=-0.1", "optimizer.lr must be positive"),
    ("trainer.max_epochs=0", "max_epochs must be positive"),
    ("model.loc_lr_multiplier=-1", "loc_lr_multiplier must be >= 0"),
    ("data.distortion.canvas_size=20", "smaller than a 28x28 MNIST digit"),
    ("data.num_val=0", "num_val"),
])
def test_impossible_values_fail_before_training(override, message, tmp_path, cache_dir):
    cfg = compose_config([override], run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(ConfigError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists(), "nothing may be trained or written"


def test_missing_data_fails_before_training(tmp_path, cache_dir):
    cfg = compose_config(["data.download=false"], run_dir=tmp_path, cache=cache_dir)
    cfg.data.root = str(tmp_path / "nowhere")
    with pytest.raises(MNISTNotFoundError, match="MNIST/raw"):
        train(cfg)


def run_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name(args[0])
    return subprocess.run([str(script), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_help_works_from_any_directory(tmp_path):
    result = run_cli(["stnbench-train", "--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "data: " in result.stdout and "rts" in result.stdout and "st_cnn" in result.stdout


def test_cli_reports_bad_values_in_one_clear_line(tmp_path):
    result = run_cli(["stnbench-train", "data.batch_size=0"], cwd=tmp_path,
                     STNBENCH_OUTPUT_DIR=str(tmp_path / "out"), STNBENCH_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode != 0
    assert "stnbench-train: error: data.batch_size must be a positive integer, got 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_without_data_says_where_to_put_it(tmp_path):
    result = run_cli(["stnbench-train", "data.download=false"], cwd=tmp_path,
                     STNBENCH_DATA_DIR=str(tmp_path / "nodata"), STNBENCH_OUTPUT_DIR=str(tmp_path / "out"))
    assert result.returncode != 0
    assert "train-images-idx3-ubyte" in result.stderr and "STNBENCH_DATA_DIR" in result.stderr
