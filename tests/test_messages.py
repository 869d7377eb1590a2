"""A new user's first hour (issue 24, "Messages"): every mistake on the command line gets one line naming
what was wrong, the options or the closest key, and the fix; fast, and before Hydra's own text."""

from __future__ import annotations

import re
import subprocess
import sys
import typing

import pytest

from conftest import CONFIG_DIR
from stnbench import cli_help, config_checks
from stnbench.cli_help import run_command
from stnbench.errors import ConfigError


def run(command: str, *args: str) -> tuple[str | None, bool]:
    """(the one-line error run_command exits with, or None; whether it handed over to Hydra)."""
    handed_over = []
    argv = sys.argv
    sys.argv = [f"stnbench-{command}", *args]
    try:
        run_command(command, lambda: handed_over.append(True))
    except SystemExit as exit_info:
        return str(exit_info.code), bool(handed_over)
    finally:
        sys.argv = argv
    return None, bool(handed_over)


def only_line(message: str | None, command: str = "train") -> str:
    assert message is not None and "\n" not in message, message
    assert message.startswith(f"stnbench-{command}: error: "), message
    return message.removeprefix(f"stnbench-{command}: error: ")


# ---- options, keys and groups -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "eval", "gallery"])
def test_a_mistyped_option_names_the_closest_and_the_options_not_the_building_blocks(command):
    message, handed_over = run(command, "data=rtss", *(["ckpt_path=x.ckpt"] if command == "eval" else []))
    line = only_line(message, command)
    assert not handed_over
    assert line.startswith("data=rtss: data has no option rtss; did you mean data=rts?")
    assert "rotated" in line and "_datamodule" not in line


def test_a_building_block_is_not_an_option():
    line = only_line(run("train", "data=_datamodule")[0])
    assert line.startswith("data=_datamodule: _datamodule is a building block") and "rts" in line


@pytest.mark.parametrize("args", [["schedule=null"], ["-m", "schedule=null,fast"]])
def test_a_group_set_to_null_is_one_line_that_names_the_way_to_drop_it(args):
    """Hydra answers ``group=null`` with a ValueError traceback; ``~group`` is how a group is left out."""
    message, handed_over = run("train", *args)
    line = only_line(message)
    assert not handed_over
    assert "not null" in line and "~schedule" in line and "perturbed_cpu" in line


@pytest.mark.parametrize("args, fix", [
    (["trainer.max_epoch=1"], "did you mean trainer.max_epochs=1?"),
    (["trainr.max_epochs=1"], "did you mean trainer.max_epochs=1?"),
    (["max_epochs=1"], "did you mean trainer.max_epochs=1?"),
    (["modle=cnn"], "did you mean model=cnn?"),
    (["~trainer.max_epoch"], "did you mean ~trainer.max_epochs?"),
    (["model/transfrom=tps"], "did you mean model/transform=tps?"),
])
def test_a_mistyped_key_names_the_key_it_looks_like_and_never_advises_plus(args, fix):
    line = only_line(run("train", *args)[0])
    assert line.endswith(fix) and "+" not in line


def test_a_new_key_under_a_target_may_be_added_on_purpose():
    line = only_line(run("train", "trainer.accumulate_grad_batches=2")[0])
    assert "trainer has: " in line and "max_epochs" in line
    assert line.endswith("write +trainer.accumulate_grad_batches=2")


def test_a_plus_for_a_key_that_exists_is_dropped():
    line = only_line(run("train", "+trainer.max_epochs=2")[0])
    assert line.endswith("drop the + (trainer.max_epochs=2)")


def test_a_transform_for_a_model_without_one_names_the_models_that_have_one():
    for args in (["model=cnn", "model/transform=tps"], ["experiment=rotated_cnn", "model/transform=tps"]):
        line = only_line(run("train", *args)[0])
        assert line.startswith("model/transform=tps: model=cnn has no transform; transforms belong to")
        assert "st_cnn" in line and "st_fcn" in line and "e.g. model=st_cnn model/transform=tps" in line
        assert "defaults list" not in line


@pytest.mark.parametrize("command, args, group", [("eval", ["optimizer=sgd"], "optimizer"),
                                                  ("eval", ["model/transform=tps"], "model/transform"),
                                                  ("gallery", ["model=cnn"], "model")])
def test_a_group_the_command_does_not_use_names_the_groups_it_does(command, args, group):
    line = only_line(run(command, *args)[0], command)
    assert f"stnbench-{command} does not use the group {group}" in line and "data" in line


def test_each_mistake_gets_its_own_line():
    message, handed_over = run("train", "optimizer=adamm", "trainer.max_epoch=1", "schedule=quikc")
    lines = message.splitlines()
    assert not handed_over and len(lines) == 3 and all(line.startswith("stnbench-train: error: ") for line in lines)
    assert "did you mean optimizer=adam?" in lines[0] and "did you mean trainer.max_epochs=1?" in lines[1]
    assert "did you mean schedule=quick?" in lines[2]


def test_a_sweep_checks_every_choice_and_a_sweep_without_m_says_so():
    line = only_line(run("train", "-m", "data=rts,rotatd", "seed=1,2")[0])
    assert line.startswith("data=rts,rotatd: data has no option rotatd; did you mean data=rotated?")
    line = only_line(run("train", "data=rts,rotated")[0])
    assert "add -m (stnbench-train -m data=rts,rotated)" in line


def test_a_word_that_is_not_an_override_says_how_to_write_one():
    line = only_line(run("train", "data=rts", "max_epochs")[0])
    assert line.startswith("max_epochs: not an override") and "write key=value, group=option" in line


def test_options_of_the_users_own_config_folder_are_options(tmp_path, monkeypatch):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "my_model.yaml").write_text("_target_: my_models.Mine\nhidden: 8\n")
    monkeypatch.chdir(tmp_path)
    assert run("train", "hydra.searchpath=[file://conf]", "model=my_model") == (None, True)
    assert run("train", "-m", "hydra.searchpath=[file://conf]", "model=cnn,my_model") == (None, True)
    line = only_line(run("train", "hydra.searchpath=[file://conf]", "model=my_modle")[0])
    assert "did you mean model=my_model?" in line


def test_a_predict_key_and_a_missing_required_one():
    line = only_line(run("predict", "images=digits/", "ckpt_path=x.ckpt")[0], "predict")
    assert line.startswith("images=digits/: the config has no images") and "input" in line
    line = only_line(run("predict", "ckpt_path=x.ckpt")[0], "predict")
    assert line.startswith("input is required: add input=<value>")


@pytest.mark.parametrize("command, args", [
    ("train", ["data=rotated", "model=st_cnn", "model/transform=tps", "trainer.max_epochs=2", "optimizer.lr=0.01"]),
    ("train", ["-m", "data=rts,rotated", "model=cnn,st_cnn", "seed=range(1,3)", "optimizer.lr=0.1,0.01"]),
    ("train", ["+trainer.accumulate_grad_batches=2", "callbacks.model_summary=null", "hydra/launcher=local"]),
    ("train", ["-m", "hparams_search=optuna", "optimizer.lr=interval(0.0001,0.1)"]),
    ("train", ["--cfg", "job", "seed=3"]),
    ("train", ["-cn", "no_such_config", "whatever=1"]),  # another config: Hydra's to read
    ("eval", ["ckpt_path=x.ckpt", "data=rotated", "trainer.limit_test_batches=2"]),
    ("predict", ["ckpt_path=x.ckpt", "input=digits/", "device=cpu"]),
    ("gallery", ["data=cluttered", "count=4"]),
])
def test_a_good_command_line_goes_to_hydra(command, args):
    assert run(command, *args) == (None, True)


# ---- a GPU trainer on a machine without one ----------------------------------------------------------------
def test_a_gpu_trainer_without_a_gpu_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for args in (["trainer=gpu"], ["trainer=ddp"], ["trainer.accelerator=gpu"]):
        line = only_line(run("train", *args)[0])
        assert line == "trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu"
    assert only_line(run("eval", "trainer=gpu", "ckpt_path=x.ckpt")[0], "eval").startswith("trainer.accelerator=gpu")
    assert run("train", "-m", "trainer=gpu", "hydra/launcher=slurm") == (None, True)  # its runs are on GPU nodes
    assert run("train", "--cfg", "job", "trainer=gpu") == (None, True)  # prints, runs nothing


def test_more_gpus_than_there_are_is_one_line(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    config_checks.check_devices({"accelerator": "gpu", "devices": 1})
    with pytest.raises(ConfigError, match=r"^trainer.devices=2 but only 1 CUDA GPU is visible; use trainer.devices=1$"):
        config_checks.check_devices({"accelerator": "gpu", "devices": 2})
    with pytest.raises(ConfigError, match=r"^trainer.devices=\[0, 1\] names GPU 1"):
        config_checks.check_devices({"accelerator": "cuda", "devices": [0, 1]})


FAST = r"""
import sys
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from stnbench.cli_help import command_line_errors
from stnbench.config_checks import check_config, check_devices
from stnbench.errors import ConfigError

assert command_line_errors("train", ["data=rtss"]) and command_line_errors("train", ["trainer.max_epoch=1"])
check_devices({"accelerator": "cpu", "devices": 1})
with initialize_config_module("stnbench.configs", version_base="1.3"):
    for override in ("trainer.max_epochs=abc", "data.batch_size=2.5", "optimizer.lr=abc", "model.loc_lr_multiplier=x"):
        cfg = compose("train", overrides=[override, "paths.data_dir=/nowhere"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = "/nowhere/run"
        HydraConfig.instance().set_config(cfg)
        try:
            check_config(cfg)
        except ConfigError as error:
            assert "has the wrong type" in str(error), error
        else:
            raise AssertionError(override)
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "lightning", "pytorch_lightning"))
print("heavy:", heavy[:5])
"""


def test_command_line_and_type_errors_import_neither_torch_nor_lightning():
    result = subprocess.run([sys.executable, "-c", FAST], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "heavy: []" in result.stdout, result.stdout


# ---- type hints read from the source agree with the imported ones -----------------------------------------
SAMPLES = [None, True, False, 0, 3, -1, 2.5, "abc", "32-true", "bf16-mixed", "warn", "gpu", [1, 2], [1.5, 2.5],
           ["a"], [[1, 2], [3]], {"a": 1}]


def shipped_targets() -> list[str]:
    sections = ("data", "model", "optimizer", "scheduler", "trainer")
    return sorted({found.group(1) for section in sections for path in (CONFIG_DIR / section).rglob("*.yaml")
                   for found in re.finditer(r"_target_:\s*([\w.]+)", path.read_text())})


def imported_hints(target: str) -> dict:
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    obj = getattr(importlib.import_module(module), name)
    function = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        hints = {k: v for k, v in getattr(function, "__annotations__", {}).items() if not isinstance(v, str)}
    hints.pop("return", None)
    return hints


@pytest.mark.parametrize("target", shipped_targets())
def test_hints_read_from_the_source_check_what_the_imported_ones_check(target):
    _describe, _matches = config_checks._describe, config_checks._matches
    static, imported = config_checks.source_hints(target), imported_hints(target)
    assert static is not None, f"{target}: its source does not settle its hints, so checking it imports it"
    assert set(static) == set(imported)
    for key, hint in imported.items():
        for value in SAMPLES + list(typing.get_args(hint)):
            assert _matches(value, static[key]) == _matches(value, hint), (key, value, hint, static[key])
        assert _describe(static[key]) == _describe(hint)


def test_a_target_the_source_cannot_settle_is_imported_instead(tmp_path, monkeypatch):
    (tmp_path / "made_at_run_time.py").write_text(
        "from typing import Literal\n"
        "Kind = Literal['a', 'b'] if True else int\n"
        "class Made:\n    def __init__(self, kind: Kind = 'a', size: int = 1) -> None: ...\n"
        "class Settled:\n    def __init__(self, size: int = 1, name: 'str | None' = None) -> None: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert config_checks.source_hints("made_at_run_time.Made") is None
    assert config_checks.source_hints("made_at_run_time.Settled") == {"size": int, "name": str | None}
    assert config_checks._constructor_hints("made_at_run_time.Made") == {"kind": typing.Literal["a", "b"], "size": int}


def test_the_predict_usage_names_its_input_key():
    text = cli_help.help_text("predict", [])
    usage = text.splitlines()[0]
    assert usage.startswith("usage: stnbench-predict ckpt_path=") and " input=<" in usage and "images=" not in text


@pytest.mark.parametrize("command", ["train", "eval", "gallery", "report", "predict"])
def test_a_command_module_imports_neither_torch_nor_lightning(command):
    """A mistyped command line is answered before torch is imported (about a second), by every command that
    can: the models, data and pictures are imported where a command uses them."""
    code = (f"import sys, stnbench.{command}; "
            "print('heavy:', [m for m in ('torch', 'lightning', 'matplotlib') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "heavy: []" in result.stdout, result.stdout
