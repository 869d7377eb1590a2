"""Sønderby et al.'s three systems layer for layer (shapes, parameter counts, identity start, Lasagne's GRU),
the RNN-SPN's glimpse-feedback switch (issue 22), their training recipe (RMSprop, clipping order, decay rule,
early stopping), and the parallel 2xST model."""

from __future__ import annotations

import inspect

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.precision import Precision
from torch import nn

from conftest import compose_config
from stnbench import viz
from stnbench.build import _instantiate, build_model
from stnbench.data.mnist import load_mnist
from stnbench.errors import ConfigError
from stnbench.models import sonderby
from stnbench.models.output import ModelOutput
from stnbench.models.sonderby import LasagneGRUCell, SonderbyCNN, SonderbyFFNSPN, SonderbyRNNSPN
from stnbench.models.stn import identity_regressor, warp, warp_steps
from stnbench.models.transforms import Affine
from stnbench.sonderby_training import GradientValueClip, decay_epochs, reference_decay
from stnbench.train import train
from test_data_train import TINY

SONDERBY = ("sonderby_cnn", "sonderby_cnn_spn", "sonderby_rnn_spn")
# Parameter counts on 100x100 inputs, 3 digits, downsample 3 (33x33 glimpses); docs/models.md derives them.
PARAMETERS = {"sonderby_cnn": 793_870, "sonderby_cnn_spn": 1_126_716, "sonderby_rnn_spn": 1_678_544}
# With model.glimpse_feedback=true: + encoder convs 160 + 2,320 + 2,320, dense 256·64 + 64, GRU input weights
# for the code 64·768 (docs/models.md).
FEEDBACK_PARAMETERS = 1_748_944
FEEDBACK = "model.glimpse_feedback=true"


def build(name: str, *overrides: str, shape=(1, 100, 100), num_classes: int = 10, num_steps: int = 3):
    cfg = compose_config([f"model={name}", *overrides])
    return instantiate(cfg.model, input_shape=shape, num_classes=num_classes, num_steps=num_steps)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", SONDERBY)
def test_sonderby_models_have_the_papers_shapes_and_parameter_counts(name):
    model = build(name)
    assert count(model) == PARAMETERS[name]
    output = model(torch.rand(4, 1, 100, 100))
    assert output.logits.shape == (4, 3, 10)
    if name == "sonderby_cnn":
        assert output.glimpses is None
    else:
        steps = 3 if name == "sonderby_rnn_spn" else 1
        assert output.glimpses.shape == (4, steps, 1, 33, 33) and output.thetas.shape == (4, steps, 6)


@pytest.mark.parametrize("name", SONDERBY)
@pytest.mark.parametrize("factor, side", [(1, 100), (2, 50), (3, 33)])
def test_downsample_factor_is_a_config_value(name, factor, side):
    model = build(name, f"model.downsample={factor}")
    assert model.glimpse_hw == (side, side)
    conv = model.classifier.net[0][0]
    with torch.no_grad():
        features = model.classifier.net[0](torch.zeros(1, 1, side, side))
    channels = 96 if name != "sonderby_rnn_spn" else 32
    assert conv.out_channels == channels and features.shape[1] == channels * (((side - 2) // 2 - 2) // 2 - 2) ** 2


def test_layers_are_the_reference_layers():
    ffn = SonderbyFFNSPN((1, 100, 100), 10, num_steps=3)
    convs = [m for m in ffn.localisation.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(1, 20, (3, 3), (0, 0)), (20, 20, (3, 3), (0, 0)), (20, 20, (3, 3), (0, 0))]
    assert isinstance(ffn.localisation[0][0], nn.MaxPool2d), "the localisation net pools first"
    dense = [m for m in ffn.modules() if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(1620, 200), (1536, 400), (400, 30), (200, 6)]
    rnn = SonderbyRNNSPN((1, 100, 100), 10, num_steps=3)
    assert (rnn.rnn.input.in_features, rnn.rnn.hidden_size) == (1620, 256), "the conv code itself feeds the GRU"
    assert rnn.classifier.heads == 1 and rnn.classifier.net[-1].out_features == 10, "one head shared by steps"


@pytest.mark.parametrize("model_class", [SonderbyFFNSPN, SonderbyRNNSPN])
def test_spn_models_start_at_the_identity(model_class):
    torch.manual_seed(0)
    model = model_class((1, 100, 100), 10, num_steps=3)
    images = torch.rand(2, 1, 100, 100)
    output = model(images)
    identity = torch.tensor([1.0, 0, 0, 0, 1, 0])
    assert torch.allclose(output.thetas, identity.expand_as(output.thetas))
    resampled = SonderbyCNN((1, 100, 100), 10, num_steps=3)  # the CNN sees the identity glimpse
    with torch.no_grad():
        expected = warp(images, resampled.resample, identity.expand(2, 6), (33, 33))
    assert torch.allclose(output.glimpses[:, 0], expected)


def test_lasagne_gru_is_torchs_gru_with_one_bias_per_gate_and_the_update_gate_flipped():
    torch.manual_seed(0)
    cell = LasagneGRUCell(7, 5)
    nn.init.normal_(cell.input.bias)
    torch_cell = nn.GRUCell(7, 5)
    (wx_r, wx_u, wx_c), (wh_r, wh_u, wh_c) = cell.input.weight.chunk(3), cell.hidden.weight.chunk(3)
    b_r, b_u, b_c = cell.input.bias.chunk(3)
    with torch.no_grad():  # torch: h' = (1 - z) n + z h with z = 1 - u = sigmoid(-(...))
        torch_cell.weight_ih.copy_(torch.cat([wx_r, -wx_u, wx_c]))
        torch_cell.weight_hh.copy_(torch.cat([wh_r, -wh_u, wh_c]))
        torch_cell.bias_ih.copy_(torch.cat([b_r, -b_u, b_c]))
        torch_cell.bias_hh.zero_()
    x, h = torch.randn(4, 7), torch.randn(4, 5)
    assert torch.allclose(cell(x, h), torch_cell(x, h), atol=1e-6)
    assert count(cell) == 3 * (7 * 5 + 5 * 5 + 5), "Lasagne: one bias per gate"


class ReferenceRNNSPN(nn.Module):
    """The RNN-SPN as sonderby.py built it before issue 22 (no feedback switch), kept here as the yardstick:
    the same construction order from the same building blocks, and the forward pass written out as it was."""

    def __init__(self, input_shape=(1, 100, 100), num_steps: int = 3) -> None:
        super().__init__()
        self.transform, self.steps, self.glimpse_hw = Affine(), num_steps, (33, 33)
        self.localisation = sonderby.conv_stack(1, 20, pool_first=True)
        size = sonderby.checked_flat_size(self.localisation, input_shape, "localisation net")
        self.classifier = sonderby.SonderbyClassifier((1, 33, 33), 10, 32, 400)
        sonderby.lasagne_init(self)
        self.rnn = LasagneGRUCell(size, 256)
        self.regressor = identity_regressor(256, self.transform)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        code = self.localisation(images)
        state, hidden = None, []
        for _ in range(self.steps):
            state = self.rnn(code, state)
            hidden.append(state)
        thetas = self.regressor(torch.stack(hidden, 1))
        glimpses = warp_steps(images, self.transform, thetas, self.glimpse_hw)
        logits = self.classifier(glimpses.flatten(0, 1)).view(images.shape[0], self.steps, 10)
        return ModelOutput(logits, thetas=thetas, glimpses=glimpses)


def move_regressor(*models: nn.Module) -> None:
    """The same small random weights in each model's θ layer, so the θs depend on the GRU state."""
    weight = torch.randn(6, 256, generator=torch.Generator().manual_seed(11)) * 0.01
    with torch.no_grad():
        for model in models:
            model.regressor.weight.copy_(weight)


def assert_same_output(a: ModelOutput, b: ModelOutput) -> None:
    for name in ("logits", "thetas", "glimpses"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_rnn_spn_without_feedback_is_the_reference_weight_for_weight(seed):
    """glimpse_feedback=false (the default) is the RNN-SPN of before the switch: at the same seed every
    tensor of the state dict, the global random stream after construction, and the forward pass bit for bit."""
    for overrides in ((), ("model.glimpse_feedback=false",)):
        torch.manual_seed(seed)
        reference = ReferenceRNNSPN()
        stream = torch.get_rng_state()
        torch.manual_seed(seed)
        model = build("sonderby_rnn_spn", *overrides)
        assert torch.equal(torch.get_rng_state(), stream)
        assert model.encoder is None and model.rnn.feedback is None
        ours, theirs = model.state_dict(), reference.state_dict()
        assert list(ours) == list(theirs)
        for key, tensor in theirs.items():
            assert torch.equal(ours[key], tensor), key
        move_regressor(model, reference)
        images = torch.rand(3, 1, 100, 100, generator=torch.Generator().manual_seed(seed))
        output = model(images)
        assert not torch.allclose(output.thetas[:, 0], output.thetas[:, 1])
        assert_same_output(output, reference(images))


@pytest.mark.parametrize("seed", [0, 1])
def test_rnn_spn_feedback_pair_shares_every_parameter_at_the_same_seed(seed):
    """With the switch on, the model has the encoder and the GRU's input weights for its code on top (the
    counts of docs/models.md); every other tensor is the switch-off model's, the global stream ends in the
    same place, and, the feedback weights starting at zero, both compute the same output at step 0."""
    torch.manual_seed(seed)
    off = build("sonderby_rnn_spn")
    stream = torch.get_rng_state()
    torch.manual_seed(seed)
    on = build("sonderby_rnn_spn", FEEDBACK)
    assert torch.equal(torch.get_rng_state(), stream), "the feedback path must not move the global stream"
    state_on, state_off = on.state_dict(), off.state_dict()
    assert set(state_on) - set(state_off) == {k for k in state_on if k.startswith(("encoder.", "rnn.feedback."))}
    for key, tensor in state_off.items():
        assert state_on[key].shape == tensor.shape and torch.equal(state_on[key], tensor), key
    assert not on.rnn.feedback.weight.any() and on.rnn.feedback.weight.shape == (3 * 256, 64)
    assert (count(off), count(on)) == (PARAMETERS["sonderby_rnn_spn"], FEEDBACK_PARAMETERS)
    assert {id(p) for p in on.parameters()} - {id(p) for p in on.classifier.parameters()} == \
        {id(p) for p in on.localisation_parameters()}, "the encoder produces θs: it is localisation"
    move_regressor(on, off)
    images = torch.rand(3, 1, 100, 100, generator=torch.Generator().manual_seed(seed))
    assert_same_output(on(images), off(images))


@pytest.mark.parametrize("feedback", [False, True])
def test_rnn_spn_feedback_makes_the_next_theta_depend_on_the_glimpse(feedback):
    """Perturb every sampled glimpse: with feedback, θ_1 and θ_2 move once the GRU's weights for the glimpse
    code are non-zero (at their zero start they do not); without, no θ moves, though the logits do."""
    torch.manual_seed(0)
    model = build("sonderby_rnn_spn", f"model.glimpse_feedback={str(feedback).lower()}")
    move_regressor(model)
    images = torch.rand(2, 1, 100, 100, generator=torch.Generator().manual_seed(3))
    noise = torch.rand(2, 3, 1, 33, 33, generator=torch.Generator().manual_seed(5))
    sample = model.sample

    def clean_and_perturbed() -> tuple[ModelOutput, ModelOutput]:
        model.sample = sample
        clean = model(images)
        model.sample = lambda images, thetas: sample(images, thetas) + noise[:, :thetas.shape[1]]
        return clean, model(images)

    clean, perturbed = clean_and_perturbed()
    torch.testing.assert_close(perturbed.thetas, clean.thetas, atol=0, rtol=0)
    assert not torch.allclose(perturbed.logits, clean.logits), "the perturbation reached the classifier"
    if feedback:
        with torch.no_grad():
            model.rnn.feedback.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(7))
    clean, perturbed = clean_and_perturbed()
    torch.testing.assert_close(perturbed.thetas[:, 0], clean.thetas[:, 0], atol=0, rtol=0)  # no glimpse yet
    if feedback:
        assert not torch.allclose(perturbed.thetas[:, 1], clean.thetas[:, 1])
        assert not torch.allclose(perturbed.thetas[:, 2], clean.thetas[:, 2])
    else:
        torch.testing.assert_close(perturbed.thetas, clean.thetas, atol=0, rtol=0)


def test_rnn_spn_with_feedback_builds_through_the_builder_and_trains(tmp_path, cache_dir, mnist_root):
    """model=sonderby_rnn_spn model.glimpse_feedback=true from the real configs through the project's model
    builder (which checks the model contract), then two RMSprop steps of the recipe on a tiny real batch of
    cluttered sequences: nothing turns NaN, and the feedback weights leave zero on the second step (the θ
    layer's gradient reaches the GRU once the θ layer is off zero)."""
    cfg = compose_config(["data=multi_digit", "model=sonderby_rnn_spn", FEEDBACK, "data.distortion.bank_size=500"],
                         run_dir=tmp_path, cache=cache_dir)
    datamodule = _instantiate(cfg.data, "data")
    torch.manual_seed(0)
    model = build_model(cfg.model, datamodule)
    assert model.encoder is not None and count(model) == FEEDBACK_PARAMETERS
    batch = datamodule.distortion.render(load_mnist(mnist_root, train=False), torch.arange(6),
                                         torch.Generator().manual_seed(0))
    assert batch.images.shape == (6, 1, 100, 100) and batch.targets.shape == (6, 3)
    optimiser = torch.optim.RMSprop(model.parameters(), lr=5e-4, alpha=0.9, eps=1e-3)
    for _ in range(2):
        logits = model(batch.images).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), batch.targets.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.rnn.feedback.weight.any()


def test_weights_are_glorot_uniform_and_biases_zero():
    model = SonderbyFFNSPN((1, 100, 100), 10, num_steps=3)
    dense = model.localisation[1]
    bound = (6 / (dense.in_features + dense.out_features)) ** 0.5
    assert dense.weight.abs().max() <= bound and dense.weight.abs().max() > 0.9 * bound
    assert (dense.bias == 0).all()


def test_experiment_is_the_reference_recipe(tmp_path, cache_dir):
    cfg = compose_config(["experiment=sonderby_multi_digit"], run_dir=tmp_path, cache=cache_dir)
    assert cfg.optimizer._target_ == "torch.optim.RMSprop" and cfg.optimizer.lr == 5e-4
    assert cfg.data.batch_size == 100 and cfg.data.train_mode == "fixed" and cfg.data.name == "multi_digit"
    assert cfg.trainer.max_epochs == 300
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.gradient_clip_algorithm) == (5.0, "norm")
    assert cfg.callbacks.grad_value_clip.clip_value == 1.0
    stopping = instantiate(cfg.callbacks.early_stopping)
    assert (stopping.monitor, stopping.patience, stopping.mode) == ("val/digit_err", 50, "min")
    assert cfg.scheduler.max_epochs == 300 and cfg.scheduler.factor == 1.5


def test_the_recipe_trains_end_to_end(tmp_path, cache_dir):
    """RMSprop, both clippings, the decay rule and early stopping wired into a real (tiny) run."""
    cfg = compose_config(["experiment=sonderby_multi_digit", "model=sonderby_cnn", "data.train_mode=fresh",
                          "data.train_size=null", *TINY],
                         run_dir=tmp_path, cache=cache_dir)
    results = train(cfg)
    assert results["global_step"] == 2 and results["parameters"] == PARAMETERS["sonderby_cnn"]
    assert "test/digit_err" in results and results["status"] == "finished"


def test_reference_decay_replays_the_reference_counter():
    assert decay_epochs(80) == [31, 43, 55, 67, 79]
    optimizer = torch.optim.RMSprop([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = reference_decay(optimizer, total_steps=80 * 7, max_epochs=80)  # 7 steps per epoch
    rates = []
    for _ in range(80 * 7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    per_epoch = rates[::7]
    assert per_epoch[31] == 1.0 and per_epoch[32] == pytest.approx(1 / 1.5)
    assert per_epoch[44] == pytest.approx(1 / 1.5 ** 2) and per_epoch[43] == pytest.approx(1 / 1.5)
    with pytest.raises(ConfigError, match="max_epochs"):
        reference_decay(optimizer, total_steps=10, max_epochs=-1)


def test_value_clipping_runs_before_lightnings_norm_clipping():
    """The callback clips elements to [-1, 1]; Lightning's norm clipping, which runs after the callback
    hook, then sees the clipped gradients: the reference's order."""
    weight = nn.Parameter(torch.zeros(4))
    weight.grad = torch.tensor([3.0, -0.5, -7.0, 0.25])
    optimizer = torch.optim.SGD([weight], lr=0.1)
    GradientValueClip(1.0).on_before_optimizer_step(None, None, optimizer)
    assert torch.equal(weight.grad, torch.tensor([1.0, -0.5, -1.0, 0.25]))
    source = inspect.getsource(Precision._after_closure)
    assert source.index('"on_before_optimizer_step"') < source.index("_clip_gradients")


# ---- the parallel multi-transformer model (2xST) ------------------------------------------------------------

@pytest.mark.parametrize("name, overrides", [("st_fcn", ["model.num_transformers=2"]), ("st_fcn_2x", []),
                                             ("st_cnn", ["model.num_transformers=2"])])
def test_two_transformers_start_at_identity_and_feed_stacked_channels(name, overrides):
    model = build(name, "data=addition", *overrides, shape=(2, 42, 42), num_classes=19, num_steps=1)
    assert len(model.transformers) == 2
    first, second = (set(map(id, stn.localisation.parameters())) for stn in model.transformers)
    assert not first & second, "each transformer has its own localisation net"
    assert len(model.localisation_parameters()) == 2 * len(list(model.stn.localisation.parameters())) + 4
    images = torch.rand(3, 2, 42, 42)
    output = model(images)
    assert output.logits.shape == (3, 1, 19) and output.thetas.shape == (3, 2, 6)
    assert output.glimpses.shape == (3, 2, 2, 42, 42)
    for s in range(2):  # identity start: both transformers pass the whole 2-channel input on
        assert torch.allclose(output.glimpses[:, s], images, atol=1e-5)
    seen = {}
    model.classifier.register_forward_pre_hook(lambda module, args: seen.setdefault("input", args[0]))
    model(images)
    assert seen["input"].shape == (3, 4, 42, 42), "outputs stacked as channels"


def test_single_transformer_keeps_its_checkpoint_layout():
    keys = build("st_cnn", shape=(1, 42, 42), num_steps=1).state_dict().keys()
    assert not any(key.startswith("more_stns") for key in keys) and any(key.startswith("stn.") for key in keys)
    with pytest.raises(Exception, match="num_transformers must be a positive integer"):
        build("st_fcn", "model.num_transformers=0", shape=(1, 42, 42), num_steps=1)


def test_picture_shows_both_transformers():
    model = build("st_fcn_2x", shape=(2, 42, 42), num_classes=19, num_steps=1)
    picture = viz.model_picture(model, torch.rand(2, 2, 42, 42))
    tile_width = 2 * 42 * 2 + 2  # two channels side by side, upscaled 2x, plus the grid padding
    assert picture.shape[-1] == 3 * tile_width + 2, "input, glimpse of transformer 1, glimpse of transformer 2"
