"""docs/extending.md, done exactly as written from a folder outside the repository; and the model contract."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import compose_config, data_root
from stnbench.build import build_datamodule, build_model
from stnbench.models.contract import LocalisedModel, Model, ModelContractError, check_model
from stnbench.models.output import ModelOutput

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
BUDGET = ["trainer.max_epochs=1", "trainer.limit_train_batches=30", "trainer.limit_val_batches=1",
          "trainer.limit_test_batches=1", "data.num_val=500", "data.eval_batch_size=500",
          "callbacks.model_summary=null"]


def doc_files_and_command() -> tuple[dict[str, str], str]:
    blocks = re.findall(r"```\w+\n(.*?)```", DOC.read_text(), flags=re.S)
    files = {m.group(1): block.split("\n", 1)[1] for block in blocks if (m := re.match(r"# file: (\S+)\n", block))}
    command = next(line for block in blocks for line in block.splitlines() if "stnbench-train" in line)
    return files, command


def test_the_extending_doc_works_from_outside_the_repository(tmp_path, cache_dir):
    files, command = doc_files_and_command()
    assert {"my_project/my_models.py", "my_project/my_distortions.py", "my_project/conf/model/my_model.yaml",
            "my_project/conf/data/mirrored.yaml"} <= set(files)
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env_part, _, args = command.partition("stnbench-train")
    env = {**os.environ, **dict(item.split("=", 1) for item in shlex.split(env_part)),
           "STNBENCH_DATA_DIR": str(data_root()), "STNBENCH_OUTPUT_DIR": str(tmp_path / "outputs"),
           "STNBENCH_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONSAFEPATH", None)
    executable = Path(sys.executable).parent / "stnbench-train"  # the console script, as a user runs it
    result = subprocess.run([str(executable), *shlex.split(args), *BUDGET], cwd=tmp_path / "my_project", env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [results_file] = (tmp_path / "outputs").rglob("results.json")
    results = json.loads(results_file.read_text())
    assert results["status"] == "finished" and results["choice/model"] == "my_model"
    assert results["choice/data"] == "mirrored"
    assert results["test/err"] < 80.0, results  # 30 steps: it learned (chance is 90 %)


def test_every_built_in_model_meets_the_contract(cache_dir, tmp_path):
    datamodule = None
    for model_name in ("fcn", "cnn", "st_fcn", "st_cnn", "rnn_stn", "recurrent_stn"):
        cfg = compose_config(["data=rts", f"model={model_name}", "data.num_val=500"], run_dir=tmp_path,
                             cache=cache_dir)
        datamodule = datamodule or build_datamodule(cfg.data)
        model = build_model(cfg.model, datamodule)
        check_model(model, datamodule.image_shape, num_classes=10, num_steps=1)
        assert isinstance(model, Model)
        assert isinstance(model, LocalisedModel) == model_name.startswith(("st_", "rnn_", "recurrent_"))


class Good(nn.Module):
    def __init__(self, input_shape, num_classes, num_steps=1):
        super().__init__()
        self.linear = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes * num_steps)
        self.shape = (num_steps, num_classes)

    def forward(self, images):
        return ModelOutput(self.linear(images.flatten(1)).view(images.shape[0], *self.shape))


class ReturnsTensor(Good):
    def forward(self, images):
        return super().forward(images).logits


class FlatLogits(Good):
    def forward(self, images):
        return ModelOutput(super().forward(images).logits[:, 0])


class NoShapeKwargs(Good):
    def __init__(self, size=784):
        super().__init__((1, 28, 28), 10)


class MultiplierWithoutParameters(Good):
    loc_lr_multiplier = 0.1


@pytest.mark.parametrize(("model", "message"), [
    (ReturnsTensor((1, 28, 28), 10), "forward returned Tensor, not ModelOutput; return stnbench.models.output"),
    (FlatLogits((1, 28, 28), 10), r"logits have shape \[2, 10\], not \[B, T, classes\]"),
    (NoShapeKwargs(), "__init__ has no keyword argument.* input_shape, num_classes, num_steps"),
    (Good((1, 42, 42), 10), r"forward failed on images of shape \[2, 1, 28, 28\]"),
    (Good((1, 28, 28), 19), "logits have 19 classes, the data has 10"),
    (MultiplierWithoutParameters((1, 28, 28), 10), "no localisation_parameters"),
])
def test_a_model_that_breaks_the_contract_gets_one_clear_error(model, message):
    with pytest.raises(ModelContractError, match=message) as error:
        check_model(model, (1, 28, 28), num_classes=10)
    assert str(error.value).startswith(f"model tests.test_extending.{type(model).__name__}") or \
        f".{type(model).__name__} breaks the model contract" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_model_that_meets_the_contract_passes():
    check_model(Good((1, 28, 28), 10, num_steps=3), (1, 28, 28), num_classes=10, num_steps=3)
