"""The fast ``--help`` (stnbench.cli_help): what it lists, that overrides apply, and one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from stnbench.cli_help import config_groups, help_requested, help_text, print_help


def test_groups_are_the_config_folders_choices_without_building_blocks():
    groups = config_groups()
    assert "rts" in groups["data"] and "_datamodule" not in groups["data"]
    assert groups["model/transform"] == ["affine", "attention", "projective", "tps"]
    assert groups["hydra/launcher"] == ["local", "slurm"]  # ours, and users need it for parallel sweeps
    assert "hydra" not in groups


def test_help_shows_the_composed_config_with_the_overrides_applied():
    text = help_text("train", ["model=cnn", "optimizer.lr=0.123"])
    assert "stnbench.models.classifiers.Baseline" in text and "lr: 0.123" in text
    assert "stnbench.models.stn.STClassifier" not in text


def test_a_bad_override_in_help_is_one_line_naming_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        print_help("train", ["model=nope", "--help"])
    message = str(exit_info.value)
    assert message.startswith("stnbench-train: error: model=nope: model has no option nope") and "\n" not in message
    assert "st_cnn" in message


@pytest.mark.parametrize("command, groups", [
    ("train", ["data", "model", "model/transform", "optimizer", "trainer", "experiment", "hparams_search",
               "schedule", "hydra/launcher"]),
    ("eval", ["data", "paths", "trainer"]),
    ("gallery", ["data", "paths"]),
    ("predict", []),
])
def test_help_lists_only_the_groups_the_commands_own_config_uses(command, groups):
    text = help_text(command, [])
    listed = [line.partition(":")[0] for line in text.split("== Configuration groups ==")[1].split("==")[0].splitlines()
              if re.match(r"[\w/]+: ", line)]
    assert listed == sorted(listed) and set(groups) <= set(listed)
    if command != "train":
        assert listed == groups


def test_help_lists_the_commands_own_keys_with_their_comments():
    keys = help_text("predict", []).split("== Keys of stnbench-predict ==")[1].split("==")[0]
    assert [line.split()[0] for line in keys.strip().splitlines()] == ["ckpt_path", "input", "output", "glimpses",
                                                                      "batch_size", "device"]
    assert "required:" in keys and "has none: set its keys" in help_text("predict", [])
    keys = help_text("eval", []).split("== Keys of stnbench-eval ==")[1].split("==")[0]
    assert re.search(r"ckpt_path +required: the checkpoint to test", keys)


def test_only_plain_help_is_answered_here():
    assert help_requested(["--help"]) and help_requested(["data=rts", "-h"])
    assert not help_requested(["data=rts"])
    assert not help_requested(["--help", "--resolve"])  # flags only Hydra knows go to Hydra
    assert not help_requested(["--hydra-help"])


@pytest.mark.parametrize("command, config_key", [("stnbench-train", "test_after_fit:"), ("stnbench-eval", "ckpt_path:"),
                                                 ("stnbench-predict", "ckpt_path:"), ("stnbench-gallery", "data:")])
def test_every_hydra_command_answers_help_with_its_own_config(command, config_key, tmp_path):
    script = Path(sys.executable).with_name(command)
    result = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: " + command) and config_key in result.stdout
