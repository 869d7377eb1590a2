"""Every data config composes into a working data module, and every suite dataset trains end to end with
the CNN baseline and the CNN-STN (a couple of batches; the fixed sets come from the session cache)."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hydra.utils import instantiate

from conftest import CONFIG_DIR, compose_config
from stnbench.gallery import gallery, label_text
from stnbench.train import train
from test_data_suite import ALL_DATA, SUITE

TINY = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.max_epochs=1", "data.num_val=500", "data.eval_batch_size=100",
        "data.batch_size=32", "+trainer.num_sanity_val_steps=0"]


def test_every_data_config_is_tested_and_composes():
    files = (CONFIG_DIR / "data").glob("*.yaml")
    names = sorted(path.stem for path in files if not path.stem.startswith("_"))
    assert names == sorted(ALL_DATA), "a new data config needs its place in the suite tests"
    for name in names:
        cfg = compose_config([f"data={name}"])
        datamodule = instantiate(cfg.data)
        assert datamodule.name == name and len(datamodule.image_shape) == 3
        assert cfg.data.distortion._target_.startswith("stnbench.data.")


@pytest.mark.parametrize("name", SUITE)
@pytest.mark.parametrize("model", ["cnn", "st_cnn"])
def test_each_dataset_trains_end_to_end(name, model, tmp_path, cache_dir):
    cfg = compose_config([f"data={name}", f"model={model}", *TINY], run_dir=tmp_path, cache=cache_dir)
    start = time.perf_counter()
    results = train(cfg)
    assert results["global_step"] == 2
    assert math.isfinite(results["test/err"]) and 0 <= results["test/err"] <= 100
    if name == "multi_digit":
        assert "test/digit_err" in results, "sequence targets are scored per digit too"
    assert time.perf_counter() - start < 120, "tiny limits must keep a run short"


def test_gallery_writes_a_png_with_labels(tmp_path, cache_dir):
    cfg = compose_config(["data=addition", "count=4", "data.num_val=500"], config_name="gallery",
                         run_dir=tmp_path, cache=cache_dir)
    path = gallery(cfg)
    assert path.parent == tmp_path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert label_text(torch.tensor([3, 1, 4]), 10) == "3 1 4" and label_text(torch.tensor(7), 19) == "sum 7"
