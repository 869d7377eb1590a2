"""Every model from its real config: output shapes, identity at init, gradients, recurrent reductions."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from stnbench.build import _instantiate
from stnbench.data.distortions import ConfigError
from stnbench.models.stn import STClassifier

BASELINES = ("fcn", "cnn")
STN_MODELS = ("st_fcn", "st_cnn", "rnn_stn", "recurrent_stn")
MODELS = BASELINES + STN_MODELS
TRANSFORMS = ("affine", "projective", "tps", "attention")
SHAPES = [(1, 28, 28), (1, 42, 42), (1, 60, 60), (1, 100, 100), (2, 42, 42)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: one thread beats two on a shared 2-core machine (runs after conftest's fixture)."""
    torch.set_num_threads(1)
    yield



@cache
def model_config(model: str, overrides: tuple[str, ...] = ()) -> dict:
    """The model's config on a dataset without a layout of its own (data=rotated): these tests build the
    model for any input shape, so the RTS/TC layout (tests/test_paper_layout.py) must not come with it."""
    cfg = compose_config(["data=rotated", f"model={model}", *overrides])
    return OmegaConf.to_container(cfg.model, resolve=True)


def build_model(model: str, input_shape=(1, 28, 28), num_steps: int = 1, num_classes: int = 10,
                overrides: tuple[str, ...] = (), transform: str | None = None, seed: int = 0):
    """The model as ``stnbench-train model=<model> [model/transform=<transform>] <overrides>`` builds it."""
    if transform is not None:
        overrides = (f"model/transform={transform}", *overrides)
        if model == "recurrent_stn" and transform != "affine":
            overrides = (*overrides, "model.theta_mode=absolute")
    torch.manual_seed(seed)
    # build.py's instantiation, so our ConfigErrors surface the way the command line shows them
    return _instantiate(model_config(model, tuple(overrides)), "model", input_shape=tuple(input_shape),
                        num_classes=num_classes, num_steps=num_steps)


def glimpse_count(model: str, num_steps: int) -> int:
    if model == "recurrent_stn":
        return 3 if num_steps == 1 else num_steps  # config: num_glimpses=3, glimpses_per_digit=1
    return 1 if model.startswith("st_") else num_steps


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("model", MODELS)
def test_output_shapes_single_label(model, shape):
    out = build_model(model, shape)(torch.rand(3, *shape))
    assert out.logits.shape == (3, 1, 10)
    if model in BASELINES:
        assert out.thetas is None and out.glimpses is None
    else:
        steps = glimpse_count(model, 1)
        assert out.thetas.shape[:2] == (3, steps)
        # recurrent models read digit-sized 28x28 glimpses by default; single-step STNs keep the input size
        glimpse = (28, 28) if model in ("rnn_stn", "recurrent_stn") else shape[1:]
        assert out.glimpses.shape == (3, steps, shape[0], *glimpse)


@pytest.mark.parametrize("model", MODELS)
def test_output_shapes_multi_digit_and_addition(model):
    out = build_model(model, (1, 28, 56), num_steps=2)(torch.rand(3, 1, 28, 56))
    assert out.logits.shape == (3, 2, 10)
    addition = build_model(model, (2, 42, 42), num_classes=19)(torch.rand(3, 2, 42, 42))
    assert addition.logits.shape == (3, 1, 19)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("model", STN_MODELS)
def test_every_stn_starts_at_identity_and_reproduces_its_input(model, transform):
    shape = (1, 28, 28)
    net = build_model(model, shape, transform=transform)
    images = torch.rand(4, *shape)
    out = net(images)
    assert out.thetas.shape[-1] == net.transform.num_params
    torch.testing.assert_close(out.thetas, net.transform.identity().expand_as(out.thetas), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.glimpses, images.unsqueeze(1).expand_as(out.glimpses), atol=1e-4, rtol=0)


def test_glimpse_size_is_configurable():
    for model in STN_MODELS:
        out = build_model(model, (1, 42, 42), overrides=("model.output_size=28",))(torch.rand(2, 1, 42, 42))
        assert out.glimpses.shape[-2:] == (28, 28) and out.logits.shape == (2, 1, 10)


@pytest.mark.parametrize("model", STN_MODELS)
def test_gradients_reach_every_localisation_parameter(model):
    # Two or more steps, so the recurrent weights (hidden-to-hidden) are used too.
    overrides = ("model.num_glimpses=2",) if model == "rnn_stn" else ()
    net = build_model(model, (1, 42, 42), overrides=overrides, seed=1)
    loc = net.localisation_parameters()
    loc_ids = {id(p) for p in loc}
    assert loc and len(loc_ids) == len(loc)
    assert set(loc_ids) < {id(p) for p in net.parameters()}  # the classifier is not localisation
    images, targets = torch.rand(8, 1, 42, 42), torch.randint(0, 10, (8,))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    # At init the regression layers have zero weights, so only they get gradients on step one; after one
    # update the gradient flows back through every parameter that produces θ. recurrent_stn's glimpse
    # feedback weights start at zero too (issue 22), so its glimpse encoder needs one step more.
    for _ in range(3 if model == "recurrent_stn" else 2):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(images).logits[:, -1], targets).backward()
        optimiser.step()
    for parameter in loc:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_loc_lr_multiplier_sets_the_localisation_learning_rate():
    from functools import partial

    from stnbench.module import STNBenchModule

    for model in STN_MODELS:
        net = build_model(model, (1, 42, 42), overrides=("model.loc_lr_multiplier=0.1",))
        module = STNBenchModule(net, optimizer=partial(torch.optim.Adam, lr=1e-3))
        optimiser = module.configure_optimizers()
        assert [group["lr"] for group in optimiser.param_groups] == pytest.approx([1e-3, 1e-4])
        assert sum(len(g["params"]) for g in optimiser.param_groups) == len(list(net.parameters()))
    with pytest.raises(ConfigError, match="loc_lr_multiplier"):
        build_model("rnn_stn", overrides=("model.loc_lr_multiplier=-1",))


def test_recurrent_stn_with_one_glimpse_is_a_cnn_stn():
    """Design: with T = 1 glimpse the recurrent STN never runs its encoder/GRU; θ_0 from its localisation
    net, one glimpse, the shared classifier — exactly ``STClassifier``. Same weights -> same logits."""
    st = build_model("st_cnn", (1, 42, 42), seed=3)
    with torch.no_grad():  # move away from the identity so the check is not trivial
        st.stn.regressor.weight.normal_(0, 0.05)
    recurrent = build_model("recurrent_stn", (1, 42, 42), overrides=("model.num_glimpses=1",
                                                                     "model.output_size=null"), seed=4)
    missing, unexpected = recurrent.load_state_dict(st.state_dict(), strict=False)
    assert not unexpected
    assert all(key.split(".")[0] in {"encoder", "rnn", "update"} for key in missing)
    images = torch.rand(5, 1, 42, 42)
    st_out, rec_out = st(images), recurrent(images)
    torch.testing.assert_close(rec_out.logits, st_out.logits, atol=0, rtol=0)
    torch.testing.assert_close(rec_out.thetas, st_out.thetas, atol=0, rtol=0)
    assert not torch.allclose(st_out.thetas, st.transform.identity().expand_as(st_out.thetas))


def test_rnn_stn_glimpses_and_lstm_option():
    net = build_model("rnn_stn", (1, 42, 42), overrides=("model.num_glimpses=3", "model.rnn=lstm"))
    out = net(torch.rand(2, 1, 42, 42))
    assert out.logits.shape == (2, 3, 10) and out.glimpses.shape[:2] == (2, 3)
    with pytest.raises(ConfigError, match="rnn must be"):
        build_model("rnn_stn", overrides=("model.rnn=transformer",))


def test_recurrent_stn_glimpses_per_digit():
    net = build_model("recurrent_stn", (1, 28, 56), num_steps=2, overrides=("model.glimpses_per_digit=3",))
    out = net(torch.rand(2, 1, 28, 56))
    assert out.logits.shape == (2, 2, 10)  # read at glimpses 3 and 6
    assert out.thetas.shape[:2] == (2, 6) and out.glimpses.shape[:2] == (2, 6)
    # The classifier labels the last glimpse of each digit.
    expected = net.classifier(out.glimpses[:, [2, 5]].flatten(0, 1)).view(2, 2, 10)
    torch.testing.assert_close(out.logits, expected)


@pytest.mark.parametrize("mode", ["absolute", "composed"])
def test_recurrent_stn_theta_modes_move_later_glimpses(mode):
    net = build_model("recurrent_stn", (1, 42, 42), overrides=(f"model.theta_mode={mode}",))
    with torch.no_grad():
        net.update.weight.normal_(0, 0.1)
    out = net(torch.rand(2, 1, 42, 42))
    assert not torch.allclose(out.thetas[:, 1], out.thetas[:, 0])


def test_recurrent_stn_composed_needs_affine():
    with pytest.raises(ConfigError, match="theta_mode=absolute"):
        build_model("recurrent_stn", overrides=("model/transform=tps", "model.theta_mode=composed"))
    with pytest.raises(ConfigError, match="theta_mode must be"):
        build_model("recurrent_stn", overrides=("model.theta_mode=relative",))


def test_st_classifier_is_what_st_cnn_builds():
    assert isinstance(build_model("st_cnn"), STClassifier)


def test_eval_writes_the_transformer_picture(tmp_path, mnist_root):
    from PIL import Image

    from stnbench.data.mnist import load_mnist
    from stnbench.eval import save_transformer_picture
    from stnbench.module import STNBenchModule

    digits = load_mnist(mnist_root, train=False).images[:6].unsqueeze(1).float() / 255.0

    class Preview:  # what eval needs of a data module
        def preview(self, split, count):
            return digits[:count], torch.zeros(count, dtype=torch.long)

        def preview_source(self, split, count):
            return None  # digits without a known warp (data=perturbed has one)

    stn = STNBenchModule(build_model("recurrent_stn", (1, 28, 28)), optimizer=None)
    path = save_transformer_picture(stn, Preview(), tmp_path / "transformer.png", count=6)
    width, height = Image.open(path).size
    assert path == tmp_path / "transformer.png" and height > 6 * 28 and width > 4 * 28  # 6 rows, input + 3
    baseline = STNBenchModule(build_model("cnn", (1, 28, 28)), optimizer=None)
    assert save_transformer_picture(baseline, Preview(), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_bad_output_size_is_a_config_error():
    with pytest.raises(ConfigError, match="output_size"):
        build_model("st_cnn", overrides=("model.output_size=0",))
