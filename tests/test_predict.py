"""Checkpoints as products: load_model and stnbench-predict on real MNIST digits saved as PNG / .npy."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_config, data_root
from stnbench import load_model
from stnbench.data.mnist import load_mnist
from stnbench.errors import ConfigError
from stnbench.models.output import ModelOutput
from stnbench.predict import glimpse_file_names, read_inputs
from stnbench.train import train

TINY = ["data=mnist", "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=60", "data.batch_size=64",
        "data.num_val=1000", "data.eval_batch_size=500", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "callbacks.model_summary=null"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir) -> Path:
    """A CNN-STN trained for 60 steps on MNIST: well below chance, so its labels can be checked."""
    run_dir = tmp_path_factory.mktemp("run")
    results = train(compose_config([*TINY, "model=st_cnn"], run_dir=run_dir, cache=cache_dir))
    assert results["test/err"] < 40.0
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    test = load_mnist(data_root(), train=False, download=False)
    return test.images[:64].numpy(), test.labels[:64].numpy()


def stnbench_predict(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-c", "from stnbench.predict import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_load_model_is_ready_for_inference(trained, digits):
    model = load_model(trained)
    assert not model.training
    images, labels = digits
    with torch.no_grad():
        output = model(torch.from_numpy(images).float().div(255)[:, None])
    assert isinstance(output, ModelOutput) and output.glimpses.shape[:2] == (64, 1)
    accuracy = (output.logits[:, -1].argmax(-1).numpy() == labels).mean()
    assert accuracy > 0.6, accuracy  # the trained weights, not a fresh initialisation (~10 %)


def test_predict_a_folder_of_pngs_writes_labels_and_glimpses(trained, digits, tmp_path):
    images, labels = digits
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images[:16]):
        Image.fromarray(image).save(folder / f"digit{i:02d}.png")
    result = stnbench_predict(f"ckpt_path={trained}", f"input={folder}", f"output={tmp_path / 'labels.csv'}",
                              f"glimpses={tmp_path / 'glimpses'}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert [r["input"] for r in rows] == [f"digit{i:02d}.png" for i in range(16)]
    assert np.mean([int(r["label"]) == int(y) for r, y in zip(rows, labels[:16], strict=True)]) > 0.6
    picture = Image.open(tmp_path / "glimpses" / "digit00_glimpses.png")
    assert picture.size[0] > 2 * 28  # the input beside its glimpse
    assert not list(Path.cwd().glob("predict.log"))  # writes only what it was asked to


def test_predict_an_npy_batch_prints_labels(trained, digits, tmp_path):
    images, labels = digits
    np.save(tmp_path / "batch.npy", images[:8])
    result = stnbench_predict(f"ckpt_path={trained}", f"input={tmp_path / 'batch.npy'}")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [name for name, _, _ in lines] == [f"batch.npy[{i}]" for i in range(8)]
    with torch.no_grad():
        expected = load_model(trained)(torch.from_numpy(images[:8]).float().div(255)[:, None]).logits
    assert [int(label) for _, label, _ in lines] == expected[:, -1].argmax(-1).tolist()


def test_predict_refuses_inputs_it_cannot_read_right(tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((2, 42, 42), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"images are \[1, 42, 42\].*takes \[1, 28, 28\]"):
        read_inputs(tmp_path / "big.npy", (1, 28, 28))
    np.save(tmp_path / "bright.npy", np.full((2, 28, 28), 7.0, dtype=np.float32))
    with pytest.raises(ConfigError, match=r"float values must lie in \[0, 1\]"):
        read_inputs(tmp_path / "bright.npy", (1, 28, 28))
    with pytest.raises(ConfigError, match="is not a .npy file"):
        read_inputs(tmp_path / "missing.txt", (1, 28, 28))


def test_predict_an_npy_batch_writes_one_glimpse_picture_per_image(trained, digits, tmp_path):
    images, _ = digits
    np.save(tmp_path / "batch.npy", images[:8])
    result = stnbench_predict(f"ckpt_path={trained}", f"input={tmp_path / 'batch.npy'}",
                              f"glimpses={tmp_path / 'glimpses'}")
    assert result.returncode == 0, result.stderr[-2000:]
    written = sorted(p.name for p in (tmp_path / "glimpses").iterdir())
    assert written == [f"batch_{i}_glimpses.png" for i in range(8)], written  # not one file holding the last
    pictures = [np.asarray(Image.open(tmp_path / "glimpses" / name)) for name in written]
    assert len({picture.tobytes() for picture in pictures}) == 8, "each picture shows its own image"
    assert "Wrote 8 glimpse pictures" in result.stdout + result.stderr


def test_glimpse_pictures_never_share_a_name():
    assert glimpse_file_names(["digit00.png", "digit01.png"]) == ["digit00_glimpses.png", "digit01_glimpses.png"]
    batch = glimpse_file_names([f"big.npy[{i}]" for i in range(12)])
    assert batch[0] == "big_00_glimpses.png" and batch[11] == "big_11_glimpses.png"  # they sort in batch order
    clashing = ["a.png", "a.jpg", "A.png", "a_png.png", "x y.png"]
    names = glimpse_file_names(clashing)
    assert len({name.lower() for name in names}) == len(clashing), names  # also on case-insensitive disks
    assert names[:2] == ["a_png_glimpses.png", "a_jpg_glimpses.png"] and names[4] == "x_y_glimpses.png"
