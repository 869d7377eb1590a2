"""model=ic_stn (Lin & Lucey 2017) and the models of its comparison (issue 25): composing warps, no border
loss, identity at init, the output contract, c-STN = the plain STN, learning-rate groups, clear errors, the
recurrent STN built from the same parts, and one tiny training run on data=perturbed."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

from conftest import compose_config
from stnbench.errors import ConfigError
from stnbench.models.contract import check_model
from stnbench.models.transforms import Projective
from stnbench.module import STNBenchModule
from stnbench.sampling import sample
from stnbench.train import train
from test_models import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # many tiny ops: one thread beats two on a shared 2-core machine
    yield


def rotation(degrees: float) -> torch.Tensor:
    """Projective parameters [8] of a rotation about the image centre."""
    angle = math.radians(degrees)
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([c, -s, 0.0, s, c, 0.0, 0.0, 0.0])


def blob(size: int) -> torch.Tensor:
    """A smooth image [1, 1, size, size] far from its borders: bilinear resampling barely blurs it."""
    ticks = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.exp(-((x - 0.1) ** 2 + (y + 0.05) ** 2 * 2) / (2 * 0.2**2))[None, None]


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    return sample(images, Projective().grid(theta, *images.shape[-2:]))


def test_composing_warps_matches_warping_twice():
    """Convention: a warp maps glimpse coordinates to input coordinates, and θ1 ∘ θ2 (H_θ1 H_θ2, ic_stn's
    update_frame=glimpse) samples in one step what warping by θ1 and then warping that result by θ2 shows."""
    image = blob(96)
    zoom, shift = torch.tensor([0.9, 0.9, 1, 0.9, 0.9, 1, 1, 1]), torch.tensor([0, 0, 0.05, 0, 0, -0.05, 0.04, -0.03])
    first = (rotation(30) * zoom + shift)[None]  # rotate 30 degrees, zoom in, move, a little perspective
    second = torch.tensor([[1.05, 0.05, 0.25, -0.04, 0.95, 0.12, -0.04, 0.05]])
    twice = warp(warp(image, first), second)
    once = warp(image, Projective().compose(first, second))
    assert twice.max() > 0.9, "the blob stays in the frame"
    torch.testing.assert_close(once, twice, atol=0.01, rtol=0)
    other_order = warp(image, Projective().compose(second, first))
    assert (other_order - twice).abs().max() > 0.1, "the order matters: the test can tell the conventions apart"


@pytest.mark.parametrize("frame", ["glimpse", "image"])
def test_update_frame_picks_the_order_of_the_product(frame):
    net = build_model("ic_stn", overrides=(f"model.update_frame={frame}",))
    theta, update = rotation(20)[None], torch.tensor([[0.9, 0.0, 0.2, 0.0, 0.9, -0.1, 0.0, 0.0]])
    expected = Projective().compose(theta, update) if frame == "glimpse" else Projective().compose(update, theta)
    torch.testing.assert_close(net.compose(theta, update), expected)


def test_ic_stn_resamples_the_input_so_nothing_is_lost_at_the_borders():
    """Two steps of +45 degrees: IC-STN's second glimpse is the input rotated by 90 degrees, all of it (one
    resampling of the input with the composed warp), while warping the first glimpse again loses the corners
    the first rotation moved out of the frame."""
    net = build_model("ic_stn", overrides=("model.num_warps=2",))
    with torch.no_grad():
        net.stn.regressor.weight.zero_()
        net.stn.regressor.bias.copy_(rotation(45))  # every update: +45 degrees in the current glimpse
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5  # ink everywhere
    out = net(images)
    composed = Projective().compose(out.thetas[:, 0], rotation(45).expand(3, -1))
    torch.testing.assert_close(out.thetas[:, 1], composed)
    torch.testing.assert_close(out.glimpses[:, 1], warp(images, composed), atol=1e-6, rtol=0)
    turned = [torch.rot90(images, k, dims=(-2, -1)) for k in (1, -1)]
    assert min((out.glimpses[:, 1] - t).abs().max() for t in turned) < 1e-4, "the whole input, rotated by 90"
    chained = warp(warp(images, rotation(45).expand(3, -1)), rotation(45).expand(3, -1))
    corners = chained[..., [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.abs().max() < 0.05 and images[..., [0, 0, -1, -1], [0, -1, 0, -1]].min() > 0.5, \
        "warping the warped image loses what left the frame"


@pytest.mark.parametrize("warps", [1, 2, 4])
def test_identity_at_init_and_the_output_contract(warps):
    net = build_model("ic_stn", overrides=(f"model.num_warps={warps}",))
    images = torch.rand(5, 1, 28, 28)
    out = net(images)
    assert out.logits.shape == (5, 1, 10)
    assert out.thetas.shape == (5, warps, 8) and out.glimpses.shape == (5, warps, 1, 28, 28)
    torch.testing.assert_close(out.thetas, Projective().identity().expand(5, warps, 8), atol=0, rtol=0)
    torch.testing.assert_close(out.glimpses, images.unsqueeze(1).expand_as(out.glimpses), atol=1e-5, rtol=0)
    check_model(net, (1, 28, 28), num_classes=10)
    assert net.transform.name == "projective"


def test_glimpses_of_another_size_and_affine_warps():
    net = build_model("ic_stn", (1, 42, 42), overrides=("model.output_size=28", "model/transform=affine",
                                                       "model.from_source=false"))
    out = net(torch.rand(2, 1, 42, 42))
    assert out.glimpses.shape == (2, 4, 1, 28, 28) and out.thetas.shape == (2, 4, 6)


def test_c_stn_is_the_plain_stn_and_the_two_start_from_the_same_weights():
    """Without a source (``from_source=false``, or images that come without one), with K = 1 IC-STN reads the
    input once and resamples it once: the plain STN (STClassifier with the same predictor and classifier).
    Built at the same seed the two hold the same weights; moved off the identity, the STN's weights give
    IC-STN K = 1 the same θs and logits."""
    plain = build_model("ic_plain_stn", seed=5)
    compositional = build_model("ic_stn", overrides=("model.num_warps=1",), seed=5)
    state_plain, state_ic = plain.state_dict(), compositional.state_dict()
    assert state_plain.keys() == state_ic.keys()
    assert all(torch.equal(state_plain[k], state_ic[k]) for k in state_plain)
    with torch.no_grad():
        plain.stn.regressor.weight.normal_(0, 0.01)
    compositional.load_state_dict(plain.state_dict())
    images = torch.rand(4, 1, 28, 28)
    a, b = plain(images), compositional(images)
    assert not torch.allclose(a.thetas, Projective().identity().expand_as(a.thetas))
    for name in ("thetas", "glimpses", "logits"):
        torch.testing.assert_close(getattr(b, name), getattr(a, name), atol=0, rtol=0)


@pytest.mark.parametrize("model, multiplier", [("ic_stn", 0.01), ("ic_plain_stn", 1.0),
                                               ("recurrent_stn_perturbed", 0.01)])
def test_the_predictor_trains_at_its_own_learning_rate(model, multiplier):
    net = build_model(model)
    module = STNBenchModule(net, optimizer=partial(torch.optim.SGD, lr=1e-2, momentum=0.0))
    groups = module.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-2 * multiplier])
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    classifier = {id(p) for p in net.classifier.parameters()}
    assert {id(p) for p in groups[0]["params"]} == classifier, "only the classifier at the full rate"


@pytest.mark.parametrize("override, message", [
    ("model.num_warps=0", "num_warps must be a positive integer"),
    ("model.num_warps=-2", "num_warps must be a positive integer"),
    ("model.update_frame=input", "update_frame must be one of"),
    ("model/transform=tps", "IC-STN composes warps: model/transform=tps has no composition rule"),
    ("model/transform=attention", "no composition rule"),
    ("model.loc_lr_multiplier=-1", "loc_lr_multiplier must be >= 0"),
    ("model.localisation.init_std=-0.1", "init_std must be >= 0"),
])
def test_impossible_values_are_one_clear_config_error(override, message):
    with pytest.raises(ConfigError, match=message):
        build_model("ic_stn", overrides=(override,))


def test_the_baselines_read_through_the_same_weak_classifier():
    ic = compose_config(["data=perturbed", "model=ic_stn"]).model
    for model in ("ic_plain_stn", "ic_cnn", "recurrent_stn_perturbed"):
        assert compose_config(["data=perturbed", f"model={model}"]).model.classifier == ic.classifier, model
    for model in ("ic_plain_stn", "recurrent_stn_perturbed"):
        cfg = compose_config(["data=perturbed", f"model={model}"]).model
        assert cfg.localisation == ic.localisation and cfg.transform == ic.transform, model
    counts = {m: sum(p.numel() for p in build_model(m).parameters())
              for m in ("ic_cnn", "ic_full_cnn", "ic_plain_stn", "ic_stn")}
    assert counts == {"ic_cnn": 12_256, "ic_full_cnn": 39_079, "ic_plain_stn": 39_048, "ic_stn": 39_048}


@pytest.mark.parametrize("seed", [1, 2])
def test_the_recurrent_pair_on_perturbed_shares_every_parameter_at_the_same_seed(seed):
    """The seed's model with and without glimpse feedback (paired initialisation, issue 22) from IC-STN's
    parts: identical tensors under every shared name, the same global stream after construction, the same
    output at init; the feedback model only adds the glimpse encoder and its zero GRU input weights."""
    on = build_model("recurrent_stn_perturbed", seed=seed)
    stream = torch.get_rng_state()
    off = build_model("recurrent_stn_perturbed_no_feedback", seed=seed)
    assert torch.equal(torch.get_rng_state(), stream)
    state_on, state_off = on.state_dict(), off.state_dict()
    assert set(state_on) - set(state_off) == {k for k in state_on if k.startswith(("encoder.", "rnn.feedback."))}
    assert all(torch.equal(state_on[k], v) for k, v in state_off.items())
    assert on.num_glimpses == 4 and on.glimpse_feedback and not off.glimpse_feedback
    ic = build_model("ic_stn", seed=seed)
    assert all(torch.equal(v, ic.state_dict()[k]) for k, v in state_on.items() if k.startswith("stn."))
    assert on.transform.name == "projective" and on.theta_mode == "composed"
    images = torch.rand(2, 1, 28, 28)
    out_on, out_off = on(images), off(images)
    assert out_on.glimpses.shape == (2, 4, 1, 28, 28)
    torch.testing.assert_close(out_on.logits, out_off.logits, atol=0, rtol=0)


@pytest.mark.parametrize("model, parameters", [("ic_stn", 39_048), ("recurrent_stn_perturbed", 88_016)])
def test_a_tiny_run_from_the_source_on_perturbed_finishes(tmp_path, cache_dir, model, parameters):
    """Both models that start from the clean digit train through the batches' Source (tests/test_source.py)."""
    steps = "model.num_warps=2" if model == "ic_stn" else "model.num_glimpses=2"
    cfg = compose_config(["experiment=perturbed", f"model={model}", steps, "data.num_val=500",
                          "data.eval_batch_size=500",
                          "trainer.limit_train_batches=4", "trainer.max_steps=8", "trainer.limit_val_batches=1",
                          "trainer.limit_test_batches=1", "logger=csv"], run_dir=tmp_path, cache=cache_dir)
    # the study's recipe, schedule=perturbed_cpu: the reference's SGD rates with momentum and a cosine decay
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0.9
    assert cfg.scheduler._target_.endswith("cosine_schedule") and cfg.data.batch_size == 100
    results = train(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "finished" and saved["global_step"] == 8
    assert saved["choice/data"] == "perturbed" and saved["choice/model"] == model
    assert saved["config"]["model"]["from_source"] is True
    assert saved["parameters"] == parameters and math.isfinite(results["test/err"])

