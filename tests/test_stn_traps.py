"""The classic ways an STN silently goes wrong, each pinned by a test that fails if it comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import CONFIG_DIR, compose_config
from stnbench import sampling
from stnbench.data.datamodule import DistortedMNIST
from stnbench.data.distortions import Plain
from stnbench.data.mnist import load_mnist
from test_models import STN_MODELS, TRANSFORMS, build_model

SRC = Path(__file__).resolve().parents[1] / "src" / "stnbench"


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: one thread beats two on a shared 2-core machine (runs after conftest's fixture)."""
    torch.set_num_threads(1)
    yield



def regressors(net) -> list[torch.nn.Linear]:
    """Every layer whose output is a θ (or a θ update)."""
    if hasattr(net, "update"):  # recurrent STN: θ_0 and the update layer
        return [net.stn.regressor, net.update]
    return [net.stn.regressor] if hasattr(net, "stn") else [net.regressor]


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("model", STN_MODELS)
def test_regression_layers_start_at_identity(model, transform):
    net = build_model(model, (1, 28, 28), transform=transform)
    for layer in regressors(net):
        assert torch.count_nonzero(layer.weight) == 0
        torch.testing.assert_close(layer.bias.detach(), net.transform.identity())


@pytest.fixture(scope="module")
def digits(mnist_root) -> torch.Tensor:
    return load_mnist(mnist_root, train=False).images[:64].unsqueeze(1).float() / 255.0


def test_raw_images_have_background_zero(digits):
    assert digits.min() == 0.0 and digits[..., 0, :].max() == 0.0  # top rows of MNIST are empty


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_out_of_frame_fill_is_background(digits, transform):
    """Zoom out 2x: the outer ring of the glimpse reads outside the image and must be exactly 0."""
    net = build_model("st_cnn", (1, 28, 28), transform=transform)
    zoom_out = {"affine": [2.0, 0, 0, 0, 2.0, 0], "projective": [2.0, 0, 0, 0, 2.0, 0, 0, 0],
                "attention": [2.0, 0, 0]}
    params = (torch.tensor(zoom_out[transform]) if transform != "tps" else 2.0 * net.transform.identity())
    glimpses = net.stn.warp(digits, params.expand(len(digits), -1))
    border = torch.ones(28, 28, dtype=torch.bool)
    border[7:21, 7:21] = False  # output pixels 7..20 read inside the input; all others read only outside
    assert torch.equal(glimpses[..., border], torch.zeros_like(glimpses[..., border]))
    assert glimpses[..., ~border].sum() > 0  # the digit is still there, shrunk


def test_data_pipeline_hands_models_unnormalised_images(mnist_root, cache_dir):
    data = DistortedMNIST(Plain(), root=str(mnist_root), cache_dir=str(cache_dir), num_val=100, seed=0)
    data.setup("fit")
    index = torch.arange(32)
    images, labels = data.materialize({"split": "train", "index": index, "seed": 5})
    raw = data.pools["train"].images[index].unsqueeze(1).float() / 255.0
    assert torch.equal(images, raw)  # exactly the raw [0, 1] digits: background 0, no mean/std applied
    val_images, _ = data.materialize({"split": "val", "index": index, "seed": 0})
    assert val_images.min() == 0.0 and val_images.max() <= 1.0


def test_affine_grid_and_grid_sample_share_align_corners(monkeypatch):
    seen: list[bool] = []
    real_grid, real_sample = F.affine_grid, F.grid_sample

    def spy_grid(*args, align_corners=None, **kwargs):
        seen.append(align_corners)
        return real_grid(*args, align_corners=align_corners, **kwargs)

    def spy_sample(*args, align_corners=None, **kwargs):
        seen.append(align_corners)
        return real_sample(*args, align_corners=align_corners, **kwargs)

    monkeypatch.setattr(F, "affine_grid", spy_grid)
    monkeypatch.setattr(F, "grid_sample", spy_sample)
    for model in STN_MODELS:
        for transform in TRANSFORMS:
            build_model(model, (1, 28, 28), transform=transform)(torch.rand(2, 1, 28, 28))
    assert seen and set(seen) == {sampling.ALIGN_CORNERS}
    # ...and nothing outside sampling.py calls torch's versions directly (which could pass another value).
    for path in SRC.rglob("*.py"):
        if path.name != "sampling.py":
            text = path.read_text()
            for call in ("F.affine_grid(", "functional.affine_grid(", "F.grid_sample(",
                         "functional.grid_sample("):
                assert call not in text, f"{path} calls {call} directly; use stnbench.sampling"


@pytest.mark.parametrize("model", STN_MODELS)
def test_classifier_sees_the_warped_image(model, digits):
    net = build_model(model, (1, 28, 28))
    seen = []
    handle = net.classifier.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    out = net(digits[:4])
    handle.remove()
    read = out.glimpses if model != "recurrent_stn" else out.glimpses[:, net.per_digit - 1::net.per_digit]
    torch.testing.assert_close(seen[0], read.flatten(0, 1))
    # Moving θ (the identity bias) moves what the classifier reads, so the logits change.
    with torch.no_grad():
        regressors(net)[0].bias.copy_(net.transform.identity() * 0.6)
    assert not torch.allclose(net(digits[:4]).logits, out.logits)


def test_trainer_configs_never_set_deterministic_true():
    options = sorted(path.stem for path in (CONFIG_DIR / "trainer").glob("*.yaml"))
    assert {"cpu", "default"} <= set(options)
    for option in options:
        cfg = compose_config([f"trainer={option}"])
        assert cfg.trainer.get("deterministic") is not True, f"trainer={option} sets deterministic: true"


@pytest.mark.parametrize("transform", ["affine", "projective", "tps"])
def test_grids_and_sampling_stay_fp32_under_mixed_precision(transform):
    """bf16 coordinates are off by up to half a pixel on a 100 px canvas: the sampler never runs in half."""
    model = build_model("st_cnn", input_shape=(1, 42, 42), transform=transform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.rand(4, 1, 42, 42))
    assert output.glimpses.dtype == torch.float32
    assert sampling.sample(torch.rand(1, 1, 8, 8, dtype=torch.bfloat16),
                           sampling.pixel_grid(8, 8)[None].bfloat16()).dtype == torch.bfloat16  # no autocast: as given
