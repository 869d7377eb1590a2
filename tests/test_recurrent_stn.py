"""The full-recurrent STN's options (issue 13): step inputs, feedback ablation, loss at every glimpse, the
seed_hypothesis experiment and the glimpse pictures, on real MNIST; the paired initialisation of the
feedback / no-feedback models (issue 22)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from stnbench.config_checks import check_config
from stnbench.errors import ConfigError
from stnbench.models.recurrent_stn import FeedbackGRUCell, RecurrentSTN
from stnbench.module import STNBenchModule, classification_loss, step_logits
from test_models import build_model

INPUTS = ("glimpse_feedback", "context", "theta_input")
COMBINATIONS = [c for c in itertools.product((True, False), repeat=3) if any(c)]
SMALL = ("model.classifier.channels=[8,16]", "model.localisation.channels=[8,8]", "model.localisation.hidden=32",
         "model.encoder.channels=[8,8]", "model.encoder.hidden=32", "model.hidden_size=32")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # many tiny ops: one thread beats two on a shared 2-core machine
    yield


def switches(combination: tuple[bool, bool, bool]) -> tuple[str, ...]:
    return tuple(f"model.{name}={str(on).lower()}" for name, on in zip(INPUTS, combination, strict=True))


def combination_id(combination) -> str:
    return "+".join(name for name, on in zip(INPUTS, combination, strict=True) if on)


@pytest.fixture(scope="module")
def digits(mnist_root) -> tuple[torch.Tensor, torch.Tensor]:
    from stnbench.data.mnist import load_mnist

    test = load_mnist(mnist_root, train=False)
    return test.images[:512].float().div(255.0).unsqueeze(1), test.labels[:512].long()


def randomise_recurrence(net: RecurrentSTN, seed: int = 0, feedback: bool = True) -> None:
    """Move θ_0 and the update layer off their identity init, so later θs depend on the GRU's input, and
    (``feedback``) the GRU's glimpse-code weights off zero, so they depend on the glimpse too."""
    generator = torch.Generator().manual_seed(seed)
    code_weights = getattr(net.rnn, "feedback", None)
    layers = [net.stn.regressor, net.update] + ([code_weights] if feedback and code_weights is not None else [])
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_every_step_input_combination_builds_and_trains(digits, combination):
    torch.manual_seed(0)
    net = build_model("recurrent_stn", (1, 28, 28), overrides=(*SMALL, "model.num_glimpses=2", *switches(combination)))
    assert (net.encoder is not None) == (net.rnn.feedback is not None) == combination[0]
    if combination[0]:
        assert net.rnn.feedback.in_features == 32, "the glimpse code enters through weights of its own"
    widths = {"context": 32, "theta_input": net.transform.num_params}
    assert net.rnn.input_size == sum(w for (name, w), on in zip(widths.items(), combination[1:], strict=True) if on)
    images, labels = digits
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    order = torch.randint(0, len(images), (30, 32), generator=torch.Generator().manual_seed(0))
    losses = []
    for index in order:
        output = net(images[index])
        assert output.thetas.shape[1] == 2 and output.glimpses.shape[1] == 2
        loss = classification_loss(output, labels[index], step_logits(output, labels[index]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)


def test_all_step_inputs_off_and_bad_loss_at_are_config_errors():
    with pytest.raises(ConfigError, match="glimpse_feedback, model.context and model.theta_input are all false"):
        build_model("recurrent_stn", overrides=switches((False, False, False)))
    with pytest.raises(ConfigError, match="model.loss_at must be one of"):
        build_model("recurrent_stn", overrides=("model.loss_at=middle",))


def test_feedback_off_drops_exactly_the_feedback_path():
    """The ablation's budget: without feedback only the glimpse encoder and the GRU's weights for its
    embedding are missing; every other parameter has the same name and shape."""
    on = build_model("recurrent_stn", (1, 60, 60), num_steps=2)
    off = build_model("recurrent_stn_no_feedback", (1, 60, 60), num_steps=2)
    assert off.encoder is None and not off.glimpse_feedback and off.context and off.theta_input
    shapes_on = {k: v.shape for k, v in on.state_dict().items()}
    shapes_off = {k: v.shape for k, v in off.state_dict().items()}
    assert {k for k in shapes_on if k not in shapes_off} == feedback_keys(on)
    assert all(shapes_on[k] == shape for k, shape in shapes_off.items())
    embedding = on.encoder.out_features
    missing = sum(p.numel() for p in on.encoder.parameters()) + 3 * on.rnn.hidden_size * embedding
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(on) - count(off) == missing


@pytest.mark.parametrize("feedback", [False, True])
def test_feedback_off_ignores_the_glimpse(feedback):
    """Perturb every sampled glimpse (the sampler's output, before anything reads it): without feedback
    the θs are bit-identical (the GRU never sees a glimpse), while the classifier's logits change (so the
    perturbation reached the model); with feedback θ_1 and θ_2 move once the GRU's glimpse-code weights are
    off their zero start (at the start they are not: the feedback model begins as its partner)."""
    net = build_model("recurrent_stn", (1, 42, 42), overrides=(f"model.glimpse_feedback={str(feedback).lower()}",),
                      seed=1)
    images = torch.rand(4, 1, 42, 42)
    noise = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    warp = net.stn.warp

    def clean_and_perturbed():
        net.stn.warp = warp
        clean = net(images)
        net.stn.warp = lambda image, theta: warp(image, theta) + noise
        return clean, net(images)

    randomise_recurrence(net, feedback=False)
    clean, perturbed = clean_and_perturbed()
    torch.testing.assert_close(perturbed.thetas, clean.thetas, atol=0, rtol=0)  # zero start: no glimpse yet
    randomise_recurrence(net)
    clean, perturbed = clean_and_perturbed()
    assert not torch.allclose(perturbed.logits, clean.logits)
    torch.testing.assert_close(perturbed.thetas[:, 0], clean.thetas[:, 0], atol=0, rtol=0)  # θ_0: whole image
    if feedback:
        assert not torch.allclose(perturbed.thetas[:, 1:], clean.thetas[:, 1:])
    else:
        torch.testing.assert_close(perturbed.thetas, clean.thetas, atol=0, rtol=0)


def feedback_keys(net: RecurrentSTN) -> set[str]:
    """The state-dict keys of the feedback path: the glimpse encoder and the GRU's weights for its code."""
    return {k for k in net.state_dict() if k.startswith(("encoder.", "rnn.feedback."))}


PAIRS = [(("recurrent_stn",), ("recurrent_stn_no_feedback",))] + [
    (("recurrent_stn", *switches((True, *inputs))), ("recurrent_stn", *switches((False, *inputs))))
    for inputs in ((True, True), (True, False), (False, True))]


@pytest.mark.parametrize("on, off", PAIRS, ids=["no_feedback_config", "context+theta_input", "context", "theta_input"])
@pytest.mark.parametrize("seed", [1, 2])
def test_feedback_pairs_share_every_parameter_at_the_same_seed(on, off, seed):
    """Issue 22: at the same seed the feedback model and its no-feedback partner have identical tensors under
    every shared name (no shared name has another shape: the glimpse code has input weights of its own, so
    there is no partly shared weight), the global random stream ends where it ends for the partner, and at
    step 0 the two compute the same θs and logits bit for bit (the feedback weights start at zero)."""
    with_feedback = build_model(on[0], (1, 60, 60), num_steps=2, overrides=on[1:], seed=seed)
    stream_on = torch.get_rng_state()
    without = build_model(off[0], (1, 60, 60), num_steps=2, overrides=off[1:], seed=seed)
    assert torch.equal(torch.get_rng_state(), stream_on), "the feedback path must not move the global stream"
    state_on, state_off = with_feedback.state_dict(), without.state_dict()
    assert set(state_on) - set(state_off) == feedback_keys(with_feedback) and set(state_off) <= set(state_on)
    for key, tensor in state_off.items():
        assert state_on[key].shape == tensor.shape and torch.equal(state_on[key], tensor), key
    assert not state_on["rnn.feedback.weight"].any()
    for net in (with_feedback, without):
        randomise_recurrence(net, feedback=False)  # θs that depend on the GRU state, same in both
    images = torch.rand(3, 1, 60, 60, generator=torch.Generator().manual_seed(seed))
    out_on, out_off = with_feedback(images), without(images)
    assert not torch.allclose(out_off.thetas[:, 1], out_off.thetas[:, 0])
    for name in ("thetas", "logits", "glimpses"):
        torch.testing.assert_close(getattr(out_on, name), getattr(out_off, name), atol=0, rtol=0)


def test_feedback_gru_cell_is_torchs_gru_cell_plus_the_glimpse_code():
    """Without a glimpse code the cell computes what nn.GRUCell computes, bit for bit on CPU (so the
    no-feedback model is the one of before issue 22); the glimpse code adds feedback(code) to the input gates,
    the same function as concatenating it to the input."""
    torch.manual_seed(0)
    cell, reference = FeedbackGRUCell(7, 5, feedback_size=3), torch.nn.GRUCell(7, 5)
    assert not cell.feedback.weight.any()
    reference.load_state_dict({k: v for k, v in cell.state_dict().items() if not k.startswith("feedback.")})
    x, h, code = torch.randn(4, 7), torch.randn(4, 5), torch.randn(4, 3)
    torch.testing.assert_close(cell(x, h), reference(x, h), atol=0, rtol=0)
    torch.testing.assert_close(cell(x, None), reference(x), atol=0, rtol=0)
    torch.nn.init.normal_(cell.feedback.weight)
    concatenated = torch.nn.GRUCell(10, 5)
    with torch.no_grad():
        concatenated.weight_ih.copy_(torch.cat([cell.feedback.weight, cell.weight_ih], 1))
        for name in ("weight_hh", "bias_ih", "bias_hh"):
            getattr(concatenated, name).copy_(getattr(cell, name))
    torch.testing.assert_close(cell(x, h, code), concatenated(torch.cat([code, x], 1), h))


def test_checkpoints_of_the_concatenated_layout_still_load():
    """Before issue 22 the glimpse code was concatenated first into the GRU's input (``rnn.weight_ih`` of
    [3H, code + context + θ]); such a state dict loads into today's layout (strict) and gives the same model."""
    net = build_model("recurrent_stn", (1, 42, 42), seed=3)
    randomise_recurrence(net)
    old = dict(net.state_dict())
    old["rnn.weight_ih"] = torch.cat([old.pop("rnn.feedback.weight"), old["rnn.weight_ih"]], 1)
    loaded = build_model("recurrent_stn", (1, 42, 42), seed=4)
    loaded.load_state_dict(old)
    for key, tensor in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    images = torch.rand(2, 1, 42, 42)
    torch.testing.assert_close(loaded(images).thetas, net(images).thetas, atol=0, rtol=0)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_one_glimpse_is_a_cnn_stn_for_every_step_input(combination):
    st = build_model("st_cnn", (1, 42, 42), seed=3)
    with torch.no_grad():
        st.stn.regressor.weight.normal_(0, 0.05)
    recurrent = build_model("recurrent_stn", (1, 42, 42), overrides=("model.num_glimpses=1", "model.output_size=null",
                                                                      *switches(combination)), seed=4)
    missing, unexpected = recurrent.load_state_dict(st.state_dict(), strict=False)
    assert not unexpected and all(key.split(".")[0] in {"encoder", "rnn", "update"} for key in missing)
    images = torch.rand(3, 1, 42, 42)
    torch.testing.assert_close(recurrent(images).logits, st(images).logits, atol=0, rtol=0)


def paired_models(loss_at: str, overrides: tuple[str, ...] = (), input_shape=(1, 42, 42), num_steps: int = 1):
    net = build_model("recurrent_stn", input_shape, num_steps=num_steps, seed=2,
                      overrides=(f"model.loss_at={loss_at}", *overrides))
    randomise_recurrence(net)
    return net


def test_every_glimpse_loss_reaches_the_intermediate_glimpses():
    """With the loss on the last glimpse only, an intermediate glimpse gets no classification gradient
    (only the θ path reaches it); with every_glimpse it does. The step logits are the same either way."""
    images, targets = torch.rand(4, 1, 42, 42), torch.tensor([1, 2, 3, 4])
    gradients, logits = {}, {}
    for loss_at in ("last_glimpse", "every_glimpse"):
        net = paired_models(loss_at)  # same seed: the same weights
        output = net(images)
        output.glimpses.retain_grad()
        classification_loss(output, targets, step_logits(output, targets)).backward()
        gradients[loss_at], logits[loss_at] = output.glimpses.grad, output.logits.detach()
    assert gradients["last_glimpse"][:, :2].abs().sum() == 0 and gradients["last_glimpse"][:, 2].abs().sum() > 0
    assert (gradients["every_glimpse"][:, :2].flatten(2).abs().sum(-1) > 0).all()
    torch.testing.assert_close(logits["every_glimpse"], logits["last_glimpse"])


def test_every_glimpse_loss_scores_each_glimpse_against_its_own_digit():
    """Sequence data, 2 glimpses per digit: glimpses 0,1 predict digit 0 and 2,3 digit 1; the training loss
    the LightningModule computes is the mean cross-entropy over all four."""
    net = paired_models("every_glimpse", ("model.glimpses_per_digit=2",), (1, 28, 56), num_steps=2)
    images, targets = torch.rand(3, 1, 28, 56), torch.tensor([[1, 7], [0, 3], [9, 9]])
    output = net(images)
    assert output.glimpse_logits.shape == (3, 4, 10) and output.glimpse_digit.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(output.logits, output.glimpse_logits[:, [1, 3]])
    expected = torch.nn.functional.cross_entropy(output.glimpse_logits.reshape(-1, 10),
                                                 targets[:, [0, 0, 1, 1]].reshape(-1))
    module = STNBenchModule(net, optimizer=None)
    module.log = lambda *args, **kwargs: None  # no trainer here: _step's logging is not under test
    with torch.no_grad():
        loss = module._step((images, targets), "val")
    torch.testing.assert_close(loss, expected)
    output.glimpse_logits = None
    torch.testing.assert_close(classification_loss(output, targets, output.logits),
                               torch.nn.functional.cross_entropy(output.logits.reshape(-1, 10), targets.reshape(-1)))


TINY = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "trainer.max_epochs=1", "data.num_val=500", "data.eval_batch_size=100", "data.batch_size=16",
        "+trainer.num_sanity_val_steps=0", "callbacks.model_summary=null"]


def test_seed_hypothesis_sweep_is_the_five_models_on_one_wall_clock_budget(tmp_path):
    cfg = compose_config(["experiment=seed_hypothesis"], run_dir=None)
    params = cfg.hydra.sweeper.params
    assert params.model.split(",") == ["cnn", "st_cnn", "rnn_stn", "recurrent_stn", "recurrent_stn_no_feedback"]
    assert len(params.seed.split(",")) >= 2 and params.data == "multi_digit"
    assert cfg.data.distortion.num_digits == 2 and cfg.data.distortion.canvas_size == 60
    # the same wall-clock budget for every model: budget.minutes over each model's measured seconds per step
    for model in params.model.split(","):
        one = compose_config(["experiment=seed_hypothesis", f"model={model}"])
        seconds = one.budget.seconds_per_step[model]
        assert one.trainer.max_steps == round(one.budget.minutes * 60 / seconds) > 1000, model
        assert one.trainer.max_epochs * one.trainer.limit_train_batches > one.trainer.max_steps
    fixed = compose_config(["experiment=seed_hypothesis", "model=cnn", "trainer.max_steps=5000"])
    assert fixed.trainer.max_steps == 5000
    with pytest.raises(ConfigError, match=r"^trainer.max_steps: .*no entry for model=fcn.*trainer.max_steps=N"):
        check_config(compose_config(["experiment=seed_hypothesis", "model=fcn"], run_dir=tmp_path))
    paper = compose_config(["experiment=seed_hypothesis", "schedule=paper"])
    assert paper.data.distortion.num_digits == 3 and paper.data.distortion.canvas_size == 100
    assert paper.trainer.max_steps == 150000 and paper.hydra.sweeper.params.model == params.model


def test_seed_hypothesis_runs_and_glimpse_pictures(tmp_path, cache_dir, mnist_root):
    """Two tiny real runs of the experiment (the full-recurrent STN with the every-glimpse loss, and the CNN),
    then one glimpse picture per model on the same test images."""
    from stnbench.glimpses import model_title, reference_batch, reference_images, write_glimpse_pictures
    from stnbench.train import train

    runs = {}
    for model, extra in (("recurrent_stn", ["model.loss_at=every_glimpse", "model.glimpses_per_digit=2"]),
                         ("cnn", [])):
        run = tmp_path / model
        cfg = compose_config(["experiment=seed_hypothesis", f"model={model}", *TINY, *extra], run_dir=run,
                             cache=cache_dir)
        results = train(cfg)
        assert results["global_step"] == 2 and math.isfinite(results["test/err"]), results
        runs[model] = run
    stored = OmegaConf.load(runs["recurrent_stn"] / ".hydra" / "config.yaml")
    assert stored.model.loss_at == "every_glimpse"

    written = write_glimpse_pictures(runs.values(), tmp_path / "report", count=3, cache_dir=cache_dir)
    assert written["cnn"] is None and not (tmp_path / "report" / "cnn.png").exists()
    path = written["recurrent_stn"]
    assert path == tmp_path / "report" / "recurrent_stn.png"
    images, labels = reference_batch(runs.values(), count=3, cache_dir=cache_dir)
    assert images.shape == (3, 1, 60, 60) and images.max() > 0.5
    # the picture is viz.labelled_model_picture of the run's best checkpoint on those images: the run and its model
    # on top, per image the input with the glimpse outlines (a step colour is drawn) and the 4 glimpses, 3x
    # upscaled, under the image's label and the model's prediction
    from stnbench import load_model, viz

    expected = viz.labelled_model_picture(load_model(runs["recurrent_stn"] / "checkpoints" / "best.ckpt"), images,
                                          labels, upscale=3, title=model_title(runs["recurrent_stn"], "recurrent_stn"))
    picture = torch.tensor(list(Image.open(path).convert("RGB").getdata())).view(*Image.open(path).size[::-1], 3)
    assert picture.shape[:2] == expected.shape[1:] and picture.shape[0] > 3 * 180 and picture.shape[1] > 5 * 180
    torch.testing.assert_close(picture.permute(2, 0, 1).float(), (expected * 255).round(), atol=1, rtol=0)
    colours = (viz.STEP_COLOURS[:4] * 255 + 0.5).long()
    assert any((picture == colour).all(-1).any() for colour in colours)

    # a whole sweep: finished runs grouped by data, one seed each (the two runs here: seed 1, same data)
    from stnbench.glimpses import write_sweep_glimpse_pictures

    sweep = write_sweep_glimpse_pictures(tmp_path, count=3, cache_dir=cache_dir)
    assert sweep == {"cnn": None, "recurrent_stn": tmp_path / "glimpses" / "recurrent_stn.png"}
    assert (tmp_path / "glimpses" / "recurrent_stn.png").read_bytes() == path.read_bytes()

    other = tmp_path / "other_data"
    (other / ".hydra").mkdir(parents=True)
    config = OmegaConf.load(runs["cnn"] / ".hydra" / "config.yaml")
    config.data.distortion.num_distractors = 0
    OmegaConf.save(config, other / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match=r"other data.*distortion\.num_distractors"):
        reference_images([runs["cnn"], other], cache_dir=cache_dir)
