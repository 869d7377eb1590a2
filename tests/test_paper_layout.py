"""Jaderberg et al.'s layout for RTS and TC (issue 21): the ST models classify the transformer's output
downsampled by 2, the CNN baseline keeps the whole image, and the full-size layout stays one option away."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from stnbench.errors import ConfigError
from stnbench.identity import Run, differences
from stnbench.models.stn import STClassifier


def built(overrides: list[str], canvas: int) -> torch.nn.Module:
    cfg = compose_config(overrides)
    return instantiate(cfg.model, input_shape=(1, canvas, canvas), num_classes=10, num_steps=1)


def first_conv_input(model: torch.nn.Module, canvas: int) -> tuple[int, int]:
    """The height and width the classifier's first convolution is given."""
    seen = []
    conv = next(m for m in model.classifier.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        model(torch.rand(2, 1, canvas, canvas))
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(("data", "canvas", "limit"), [("rts", 42, 21), ("cluttered", 60, 30)])
@pytest.mark.parametrize("model", ["st_cnn", "st_fcn"])
def test_st_models_on_rts_and_tc_classify_the_output_at_half_resolution(data, canvas, limit, model):
    net = built([f"data={data}", f"model={model}"], canvas)
    assert isinstance(net, STClassifier) and net.stn.output_hw == (limit, limit)
    if model == "st_cnn":
        assert first_conv_input(net, canvas) == (limit, limit)
    full = built([f"data={data}", f"model={model}", "model/layout=full"], canvas)
    assert full.stn.output_hw == (canvas, canvas)  # the layout before issue 21, one option away


@pytest.mark.parametrize("data", ["rotated", "projective", "elastic"])
def test_other_datasets_and_the_cnn_keep_the_whole_image(data):
    assert built([f"data={data}", "model=st_cnn"], 28).stn.output_hw == (28, 28)
    cnn = built(["data=rts", "model=cnn"], 42)
    assert first_conv_input(cnn, 42) == (42, 42)


def test_pooling_averages_the_full_size_sample():
    """output_pool=2 is the sampled image averaged over 2x2 blocks: the identity transform keeps the input."""
    net = built(["data=rts", "model=st_cnn"], 42)
    images = torch.rand(3, 1, 42, 42)
    with torch.no_grad():
        glimpses = net(images).glimpses[:, 0]
    torch.testing.assert_close(glimpses, torch.nn.functional.avg_pool2d(images, 2), atol=1e-5, rtol=0)


def test_half_size_sampling_is_the_other_choice():
    net = built(["data=rts", "model=st_cnn", "model.output_pool=1", "model.output_size=21"], 42)
    assert net.stn.output_hw == (21, 21) and first_conv_input(net, 42) == (21, 21)


def test_a_pool_that_does_not_divide_the_sample_is_refused():
    with pytest.raises(InstantiationException) as raised:  # the entry points unwrap it into one line
        built(["data=rts", "model=st_cnn", "model.output_pool=4"], 42)
    assert isinstance(raised.value.__cause__, ConfigError)
    assert "output_pool=4 does not divide the sampled size (42, 42)" in str(raised.value.__cause__)


def test_an_older_full_size_run_is_not_the_new_layout():
    """A run made before issue 21 has no output_pool in its stored config: it is the full-size model, so a
    re-run of its sweep with the new default must not skip or resume it as if it were the same run."""
    new = OmegaConf.to_container(compose_config(["data=rts", "model=st_cnn"]))
    old = OmegaConf.to_container(compose_config(["data=rts", "model=st_cnn", "model/layout=full"]))
    old["model"]["classifier"].pop("ceil_mode", None)
    assert "output_pool" not in old["model"]
    drift = differences(Run(old), Run(new))
    assert "model.output_pool: 1 -> 2" in drift and "model.classifier.ceil_mode: False -> True" in drift
    assert not differences(Run(old), Run(OmegaConf.to_container(
        compose_config(["data=rts", "model=st_cnn", "model/layout=full"]))))
