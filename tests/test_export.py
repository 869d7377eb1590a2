"""Export of single-glimpse models to ONNX and TorchScript, checked against PyTorch's own outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_config
from stnbench import load_model
from stnbench.errors import ConfigError
from stnbench.export import export, main
from stnbench.train import train

TINY = ["data=rts", "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.num_val=500",
        "data.eval_batch_size=250", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "callbacks.model_summary=null"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, cache_dir) -> dict[str, Path]:
    paths = {}
    for model in ("st_cnn", "cnn", "rnn_stn"):
        run_dir = tmp_path_factory.mktemp(model)
        overrides = [*TINY, f"model={model}"] + (["model.num_glimpses=2"] if model == "rnn_stn" else [])
        train(compose_config(overrides, run_dir=run_dir, cache=cache_dir))
        paths[model] = run_dir / "checkpoints" / "last.ckpt"
    return paths


def reference(ckpt: Path, images: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        output = load_model(ckpt)(images)
    return [t.numpy() for t in (output.logits, output.thetas, output.glimpses) if t is not None]


def run_onnx(checkpoint: Path, tmp_path: Path, export_batch: int, batch: int) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export(checkpoint, tmp_path / "model.onnx", "onnx", batch_size=export_batch)
    images = torch.rand(batch, 1, 42, 42)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images.numpy()})
    expected = reference(checkpoint, images)
    assert [o.name for o in session.get_outputs()] == ["logits", "thetas", "glimpses"][:len(expected)]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model", ["st_cnn", "cnn"])
def test_onnx_export_matches_pytorch(checkpoints, model, tmp_path):
    run_onnx(checkpoints[model], tmp_path, export_batch=4, batch=4)


def test_onnx_export_takes_any_batch_size(checkpoints, tmp_path):
    run_onnx(checkpoints["st_cnn"], tmp_path, export_batch=1, batch=5)


def test_torchscript_export_matches_pytorch(checkpoints, tmp_path):
    main([f"ckpt_path={checkpoints['st_cnn']}", "format=torchscript", f"output={tmp_path / 'model.pt'}",
          "batch_size=3"])
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    images = torch.rand(3, 1, 42, 42)
    with torch.no_grad():
        got = [t.numpy() for t in scripted(images)]
    for g, e in zip(got, reference(checkpoints["st_cnn"], images), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_export_refuses_what_it_cannot_do(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="single-glimpse"):
        export(checkpoints["rnn_stn"], tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="opset >= 16"):
        export(checkpoints["st_cnn"], tmp_path / "x.onnx", opset=11)
    with pytest.raises(ConfigError, match="format='tflite'"):
        export(checkpoints["st_cnn"], tmp_path / "x", "tflite")
