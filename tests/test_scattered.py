"""Scattered digits of unknown count (issue 23): the generator (non-overlap, reading order, end class and padding,
counts, the test count, determinism), the variable-length metrics on hand-made logits, recurrent models running
more steps at test than in training, fixed-head models refusing to, and one tiny run end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose_config
from stnbench.build import build_model
from stnbench.data.datamodule import TRAIN_COUNTS_TEST, DistortedMNIST
from stnbench.data.distortions import PAD, ConfigError
from stnbench.data.mnist import load_mnist
from stnbench.data.scattered import END_CLASS, ScatteredDigits
from stnbench.metrics import first_end, read, score
from stnbench.models.contract import run_model

SMALL_BANK = {"bank_size": 500}


@pytest.fixture(scope="module")
def pool(mnist_root):
    return load_mnist(mnist_root, train=False, download=False)


def scattered(mnist_root, **options) -> ScatteredDigits:
    return ScatteredDigits(root=str(mnist_root), **{**SMALL_BANK, **options})


def render(distortion, pool, count: int = 512, seed: int = 0):
    return distortion.render(pool, torch.arange(count), torch.Generator().manual_seed(seed))


# ---- the generator ----------------------------------------------------------------------------------------------
def test_digits_never_overlap_stay_on_the_canvas_and_are_read_left_to_right(pool, mnist_root):
    distortion = scattered(mnist_root, num_digits=[1, 4], canvas_size=100)
    out = render(distortion, pool)
    left, top, count = out.params["left"], out.params["top"], out.params["count"]
    active = torch.arange(4) < count[:, None]
    assert torch.equal(active, left >= 0) and torch.equal(active, top >= 0), "unused slots are -1, at the end"
    assert left[active].max() <= 100 - 28 and top[active].max() <= 100 - 28
    for b in range(len(count)):
        n = int(count[b])
        for i in range(n):
            for j in range(i + 1, n):
                apart = abs(int(left[b, i] - left[b, j])) >= 28 or abs(int(top[b, i] - top[b, j])) >= 28
                assert apart, f"image {b}: digit boxes {i} and {j} overlap"
        centres = [(int(left[b, i]) + 14, int(top[b, i]) + 14) for i in range(n)]
        assert centres == sorted(centres), f"image {b}: not left to right by centre (then top to bottom)"
    # the ink is where the params say: without clutter each box holds exactly its digit, and nothing else is lit
    clean = scattered(mnist_root, num_digits=[1, 4], canvas_size=100, num_distractors=0)
    out = render(clean, pool, count=64)
    for b in range(64):
        image = out.images[b, 0].clone()
        for i in range(int(out.params["count"][b])):
            t, l_, d = int(out.params["top"][b, i]), int(out.params["left"][b, i]), out.params["digit_index"][b, i]
            assert torch.equal(image[t:t + 28, l_:l_ + 28], pool.images[d].float() / 255)
            image[t:t + 28, l_:l_ + 28] = 0
        assert image.abs().max() == 0


def test_targets_are_the_digits_then_the_end_class_then_padding(pool, mnist_root):
    distortion = scattered(mnist_root, num_digits=[2, 4])
    out = render(distortion, pool)
    count, digits = out.params["count"], out.params["digit_index"]
    assert out.targets.shape == (512, 5) and out.targets.dtype == torch.int64
    assert distortion.num_classes == 11 and distortion.end_class == END_CLASS == 10 and distortion.sequence_length == 5
    assert set(count.tolist()) == {2, 3, 4}, "every count of the range is drawn"
    for b in range(len(count)):
        n = int(count[b])
        assert out.targets[b, :n].tolist() == pool.labels[digits[b, :n]].tolist()
        assert int(out.targets[b, n]) == END_CLASS and (out.targets[b, n + 1:] == PAD).all()
        assert (digits[b, n:] == -1).all()
    assert torch.equal(first_end(out.targets, END_CLASS), count)


def test_the_same_seed_draws_the_same_images_and_another_seed_others(pool, mnist_root):
    distortion = scattered(mnist_root)
    a, b = render(distortion, pool, 128, seed=3), render(distortion, pool, 128, seed=3)
    c = render(distortion, pool, 128, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.images, c.images)


def test_the_test_split_draws_the_test_count_and_validation_the_training_range(mnist_root, cache_dir):
    distortion = scattered(mnist_root, num_digits=[1, 2], test_num_digits=[3, 3], canvas_size=72,
                           num_distractors=2)
    assert distortion.for_split("val") is distortion and distortion.for_split("train") is distortion
    assert distortion.for_split("test").sequence_length == 4 and distortion.sequence_length == 3
    data = DistortedMNIST(distortion, root=str(mnist_root), cache_dir=str(cache_dir), num_val=500, seed=2)
    data.setup()
    assert data.test_splits == ("test", TRAIN_COUNTS_TEST)
    val, test, trained = data.fixed["val"], data.fixed["test"], data.fixed[TRAIN_COUNTS_TEST]
    assert val.labels.shape[1] == 3 and set(first_end(val.labels, END_CLASS).tolist()) == {1, 2}
    assert test.labels.shape[1] == 4 and (first_end(test.labels, END_CLASS) == 3).all()
    assert len(trained) == len(test) == 10000, "the test digits once more, at the training counts"
    assert set(first_end(trained.labels, END_CLASS).tolist()) == {1, 2}
    # the cache key covers the test count: another count, another test set (and the same one for the same)
    def described(test_num_digits) -> dict:
        other = DistortedMNIST(scattered(mnist_root, num_digits=[1, 2], test_num_digits=test_num_digits,
                                         canvas_size=72, num_distractors=2), num_val=500, seed=2)
        other.mnist_md5 = data.mnist_md5
        return other.dataset_description("test")

    assert described([2, 2]) != data.dataset_description("test") == described([3, 3])
    # without another test count there is one test set, as for every other data
    assert DistortedMNIST(scattered(mnist_root, num_digits=[1, 2], canvas_size=72)).test_splits == ("test",)


@pytest.mark.parametrize("options, message", [
    ({"num_digits": [0, 3]}, "at least one digit"),
    ({"num_digits": [3, 1]}, "low <= high"),
    ({"test_num_digits": 0}, "at least one digit"),
    ({"num_digits": [1, 5]}, "raise data.distortion.canvas_size to at least 107"),
    ({"num_digits": [1, 3], "test_num_digits": [4, 4], "canvas_size": 80}, "test_num_digits up to 4"),
    ({"canvas_size": 20}, "smaller than a 28x28"),
    ({"num_digits": [1, 12], "canvas_size": 400}, "at most 9"),
])
def test_impossible_settings_are_one_clear_line(options, message, mnist_root):
    with pytest.raises(ConfigError, match=message):
        scattered(mnist_root, **options)


# ---- the metrics ------------------------------------------------------------------------------------------------
def logits_of(steps: list[list[int]], classes: int = 11) -> torch.Tensor:
    """Logits [B, T, classes] whose argmax is ``steps``."""
    return torch.nn.functional.one_hot(torch.tensor(steps), classes).float()


def test_variable_length_scores_count_the_sequence_the_digits_present_and_the_count():
    targets = torch.tensor([[3, 1, 10, PAD, PAD]] * 6)
    said = [[3, 1, 10, 7, 7],   # right; what follows the end class does not count
            [3, 2, 10, 10, 10],  # one digit wrong, the count right
            [3, 10, 10, 10, 10],  # ends early: the count wrong, the second digit wrong
            [3, 1, 4, 10, 10],  # one digit too many: the digits present right, the count wrong
            [3, 1, 4, 4, 4],    # never ends: the count wrong
            [10, 10, 10, 10, 10]]  # says nothing
    scores = score(logits_of(said), targets, END_CLASS)
    assert scores.sequence_wrong.tolist() == [0, 1, 1, 1, 1, 1]
    assert scores.count_wrong.tolist() == [0, 0, 1, 1, 1, 1]
    assert scores.unordered_wrong.tolist() == [0, 1, 1, 1, 1, 1], "in any order, none of the wrong ones is right"
    digit_targets = scores.digit_targets
    assert (digit_targets[:, 2:] == PAD).all() and (digit_targets[:, :2] == torch.tensor([3, 1])).all()
    present = digit_targets != PAD
    wrong = (logits_of(said).argmax(-1) != digit_targets) & present
    assert wrong.sum(1).tolist() == [0, 1, 1, 0, 0, 2], "per digit present: an early end is a wrong digit"
    assert [read(row, END_CLASS) for row in logits_of(said).argmax(-1)] == [[3, 1], [3, 2], [3], [3, 1, 4],
                                                                           [3, 1, 4, 4, 4], []]


def test_the_error_in_any_order_forgives_the_order_only():
    targets = torch.tensor([[3, 1, 1, 10]] * 6)
    said = [[1, 3, 1, 10],  # the same digits in another order: right in any order, wrong as a sequence
            [1, 1, 3, 10],
            [3, 1, 1, 10],  # right both ways
            [3, 3, 1, 10],  # the same digits with other multiplicities: wrong both ways
            [1, 3, 10, 1],  # one of the ones after the end class: the count wrong, wrong both ways
            [1, 1, 3, 1]]   # never ends
    scores = score(logits_of(said), targets, END_CLASS)
    assert scores.sequence_wrong.tolist() == [1, 1, 0, 1, 1, 1]
    assert scores.unordered_wrong.tolist() == [0, 0, 0, 1, 1, 1]
    assert scores.digit_targets[0].tolist() == [3, 1, 1, PAD], "digit error stays position by position"


def test_fixed_length_and_single_label_scores_are_what_they_were():
    targets = torch.tensor([[1, 2, 3], [4, 5, 6]])
    scores = score(logits_of([[1, 2, 3], [4, 0, 6]], 10), targets)
    assert scores.sequence_wrong.tolist() == [0, 1] and scores.count_wrong is None and scores.unordered_wrong is None
    assert torch.equal(scores.digit_targets, targets)
    single = score(logits_of([7, 2], 10), torch.tensor([7, 3]))
    assert single.sequence_wrong.tolist() == [0, 1]


def test_the_module_logs_sequence_digit_and_count_errors_of_variable_length_data():
    from stnbench.models.output import ModelOutput
    from stnbench.module import STNBenchModule

    targets = torch.tensor([[3, 1, 10, PAD], [5, 10, PAD, PAD], [2, 2, 2, 10], [7, 10, PAD, PAD], [4, 6, 10, PAD]])
    said = logits_of([[3, 1, 10, 0], [5, 5, 10, 0], [2, 2, 2, 10], [7, 3, 3, 3], [6, 4, 10, 0]])

    class Says(torch.nn.Module):
        def forward(self, images):
            return ModelOutput(said)

    module = STNBenchModule(Says(), optimizer=None, num_classes=11)
    module._end_class = lambda: END_CLASS
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module._trainer = None
    module._step((torch.zeros(5, 1, 8, 8), targets), "val")
    module._log_errors("val", True)
    assert logged["val/err"] == pytest.approx(60.0), "images 2 (a digit too many), 4 (never ends), 5 (swapped)"
    assert logged["val/count_err"] == pytest.approx(40.0)
    assert logged["val/unordered_err"] == pytest.approx(40.0), "the swapped image is right in any order"
    assert logged["val/digit_err"] == pytest.approx(200 / 9), "2 of the 9 digits present are wrong (swapped)"


# ---- models: more steps at test than in training ------------------------------------------------------------------
def fake_data(num_digits, test_num_digits, canvas: int = 90):
    distortion = ScatteredDigits(num_digits=num_digits, test_num_digits=test_num_digits, canvas_size=canvas,
                                 root=".", bank_size=10)
    return SimpleNamespace(distortion=distortion, image_shape=(1, canvas, canvas))


@pytest.mark.parametrize("model, overrides", [
    ("recurrent_stn", ()), ("recurrent_stn", ("model.loss_at=every_glimpse", "model.glimpses_per_digit=2")),
    ("recurrent_stn_no_feedback", ()), ("sonderby_rnn_spn", ()),
    ("sonderby_rnn_spn", ("model.glimpse_feedback=true",)), ("rnn_stn", ()),
])
def test_a_recurrent_model_trained_on_three_digits_reads_four_at_test(model, overrides):
    data = fake_data([1, 3], [4, 4])
    cfg = compose_config([f"model={model}", *overrides]).model
    torch.manual_seed(0)
    net = build_model(cfg, data).eval()  # built for 4 steps (3 digits + the end class), checked at 5
    images = torch.rand(2, 1, 90, 90)
    with torch.no_grad():
        trained, tested = net(images), run_model(net, images, 5)
    per_digit = 2 if "model.glimpses_per_digit=2" in overrides else 1
    assert trained.logits.shape == (2, 4, 11) and tested.logits.shape == (2, 5, 11)
    assert tested.thetas.shape[1] == 5 * per_digit and tested.glimpses.shape[1] == 5 * per_digit
    # the recurrence is causal: the extra step leaves the first four as they were
    assert torch.allclose(tested.logits[:, :4], trained.logits, atol=1e-6)
    if tested.glimpse_logits is not None:
        assert tested.glimpse_logits.shape == (2, 10, 11) and tested.glimpse_digit.tolist() == [0, 0, 1, 1, 2, 2,
                                                                                                  3, 3, 4, 4]


@pytest.mark.parametrize("model", ["sonderby_cnn", "sonderby_cnn_spn", "cnn", "st_cnn"])
def test_a_model_with_a_head_per_position_refuses_more_test_digits_in_one_line(model):
    cfg = compose_config([f"model={model}", "data=multi_digit_scattered"]).model
    with pytest.raises(ConfigError, match=r"fixed output head per position: it was built for 4 prediction steps and "
                                          r"cannot emit the 5 .* use a recurrent model .*model=recurrent_stn") as error:
        build_model(cfg, fake_data([1, 3], [4, 4]))
    assert "\n" not in str(error.value)
    net = build_model(cfg, fake_data([1, 4], [1, 2], canvas=100))  # fewer test digits: its first 3 heads are read
    assert net(torch.rand(2, 1, 100, 100)).logits.shape == (2, 5, 11)


def test_a_plug_in_that_says_variable_steps_but_ignores_them_breaks_the_contract():
    from stnbench.models.contract import ModelContractError, check_model
    from stnbench.models.output import ModelOutput

    class Liar(torch.nn.Module):
        variable_steps = True

        def __init__(self, input_shape=(1, 8, 8), num_classes=11, num_steps=3):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def forward(self, images, num_steps=None):
            return ModelOutput(torch.zeros(len(images), 3, 11))

    with pytest.raises(ModelContractError, match="emitted 3 steps"):
        check_model(Liar(), (1, 8, 8), 11, num_steps=3, test_steps=4)


# ---- end to end -------------------------------------------------------------------------------------------------
TINY = ["data=multi_digit_scattered", "data.distortion.num_digits=[1,2]", "data.distortion.test_num_digits=[3,3]",
        "data.distortion.canvas_size=72", "data.distortion.num_distractors=2", "data.distortion.bank_size=500",
        "data.num_val=500", "data.eval_batch_size=100", "data.batch_size=16", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "+trainer.num_sanity_val_steps=0", "logger=csv", "model=recurrent_stn", "model.classifier.channels=[8,16]",
        "model.localisation.channels=[8,8]", "model.encoder.channels=[8,8]", "model.hidden_size=16"]


def test_a_tiny_run_reports_the_variable_length_metrics_on_both_test_sets(tmp_path, cache_dir):
    from stnbench.eval import evaluate
    from stnbench.report import display_table, report
    from stnbench.train import train

    results = train(compose_config(TINY, run_dir=tmp_path / "run", cache=cache_dir))
    assert results["status"] == "finished" and results["global_step"] == 3
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for split in ("test", TRAIN_COUNTS_TEST):
        for metric in ("err", "digit_err", "count_err", "unordered_err"):
            assert 0 <= saved[f"{split}/{metric}"] <= 100, f"{split}/{metric}"
        assert saved[f"{split}/unordered_err"] <= saved[f"{split}/err"], "right in order is right in any order"
    assert saved["test_images"] == 100
    logged = (tmp_path / "run" / "csv").rglob("metrics.csv")
    assert "val/count_err" in next(logged).read_text().splitlines()[0]
    # the report shows them, and an old checkpoint's model is read on another test count by stnbench-eval
    table = display_table(report(tmp_path, plots=False)["table"])
    assert {"count err %", "err % in any order", "test err % at training counts", "count err % at training counts",
            "err % in any order at training counts"} <= set(table.columns)
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    evaluated = evaluate(compose_config([f"ckpt_path={best}", "test_num_digits=[2,2]", "trainer.limit_test_batches=1",
                                         "picture=false"], config_name="eval", run_dir=tmp_path / "eval",
                                        cache=cache_dir))
    assert 0 <= evaluated["test/count_err"] <= 100 and 0 <= evaluated[f"{TRAIN_COUNTS_TEST}/err"] <= 100


def test_a_fixed_head_model_stops_before_training_when_the_test_holds_more_digits(tmp_path, cache_dir):
    from stnbench.train import train

    cfg = compose_config([*TINY[:-5], "model=sonderby_cnn"], run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(ConfigError, match="SonderbyCNN has a fixed output head per position"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_the_scattered_experiment_is_sized_as_documented():
    cfg = compose_config(["experiment=scattered"])
    distortion = instantiate(OmegaConf.to_container(cfg.data.distortion, resolve=True) | {"root": "."})
    assert distortion.num_digits == (1, 3) and distortion.test_num_digits == (4, 4) and distortion.image_size == 90
    assert cfg.trainer.max_steps == 8000 and cfg.sweep_name == "scattered" and cfg.data.batch_size == 64


def test_training_images_hold_only_training_digits(tmp_path):
    """Training digits are blank, val/test digits solid white: one leaked digit or crop shows up as ink."""
    from test_data_suite import filled

    distortion = ScatteredDigits(num_digits=[1, 3], distractor_source="same_split", root=".")
    datamodule = DistortedMNIST(distortion, cache_dir=str(tmp_path), batch_size=64)
    datamodule.pools = {"train": filled(600, 0), "val": filled(100, 255), "test": filled(100, 255)}
    images, _ = datamodule.materialize(next(iter(datamodule.train_dataloader())))
    assert images.shape[0] == 64 and images.max() == 0, "a training image holds ink from another split"
    val_images, _ = datamodule.materialize({"split": "val", "index": torch.arange(8), "seed": 0})
    assert (val_images.flatten(1).amax(1) == 1).all(), "control: the marked splits do produce ink"


def test_labels_and_answers_are_shown_up_to_the_end_class():
    from stnbench.gallery import label_text
    from stnbench.viz import caption, is_right

    target, said = torch.tensor([3, 1, 10, PAD]), torch.tensor([3, 1, 10, 4])
    assert label_text(target, 11, END_CLASS) == "3 1" and caption(target, said, END_CLASS) == "label 31  pred 31"
    assert is_right(target, said, END_CLASS) and not is_right(target, torch.tensor([3, 1, 4, 10]), END_CLASS)
    assert caption(target, torch.tensor([10, 1, 1, 1]), END_CLASS) == "label 31  pred -"
    assert caption(torch.tensor([3, 0, 5]), torch.tensor([3, 0, 5])) == "label 305  pred 305", "fixed length: as before"
