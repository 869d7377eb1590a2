"""The datasets as the reference generators make them: Sønderby et al.'s multi-digit sequences (layout
statistics, pasting, where distractors come from per split), DeepMind's clutter crops, E's scale range."""

from __future__ import annotations

import pytest
import torch

from stnbench.data import sequences
from stnbench.data.clutter import Cluttered
from stnbench.data.distortions import ConfigError, Elastic
from stnbench.data.mnist import DigitSplit, load_mnist
from stnbench.data.sequences import SonderbySequence, distractor_bank
from test_data_suite import distortion_from_config, filled, render


@pytest.fixture(scope="module")
def pool(mnist_root) -> DigitSplit:
    return load_mnist(mnist_root, train=False, download=False)


def window(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int = 28) -> torch.Tensor:
    """The ``size`` squares [B, s, s] of ``images`` [B, H, W] at per-image corners [B]."""
    b = torch.arange(len(images))[:, None, None]
    rows = (top[:, None] + torch.arange(size))[:, :, None]
    cols = (left[:, None] + torch.arange(size))[:, None, :]
    return images[b, rows, cols]


def test_multi_digit_is_sonderbys_generator_with_its_numbers(pool):
    distortion, cfg = distortion_from_config("multi_digit")
    assert isinstance(distortion, SonderbySequence)
    assert (distortion.image_size, distortion.num_digits, distortion.spacing) == (100, 3, 28)
    assert (distortion.num_distractors, distortion.crop_size, distortion.bank_size) == (8, 9, 100_000)
    assert distortion.step_range == (-14, 13) and distortion.x_offset == (0, 15) and distortion.y_offset == (0, 99)
    assert distortion.distractor_source == "bank" and distortion.root == str(cfg.root)


def test_sonderby_layout_statistics(pool):
    """Integer steps in [-14, 13] per 28 px (slope up to ~0.5), row x in [0, 15], row y uniform over the
    canvas, each digit clamped into it on its own (rows bend at the edges), no gap, no jitter."""
    distortion = SonderbySequence(num_distractors=0, root="unused")
    _, out = render(distortion, pool, count=4096)
    p = out.params
    step, x0, y0 = p["step"], p["x_offset"], p["y_offset"]
    assert (step.min(), step.max()) == (-14, 13) and len(step.unique()) == 28
    assert (x0.min(), x0.max()) == (0, 15) and (y0.min(), y0.max()) == (0, 99)
    assert (step.float() / 28).abs().max() == 0.5
    i = torch.arange(3)
    assert torch.equal(p["left"], x0[:, None] + 28 * i), "side by side, no gap"
    assert torch.equal(p["top"], (y0[:, None] + step[:, None] * i).clamp(0, 72)), "clamped per digit, no jitter"
    bent = ((y0[:, None] + step[:, None] * i) != p["top"]).any(1)
    assert 0.2 < bent.float().mean() < 0.6, "rows leaving the canvas are bent back in, as the reference does"
    image = out.images[:, 0]
    for t in range(3):  # no distractors: each digit's window holds exactly its pixels
        digit = pool.images[p["digit_index"][:, t]].float() / 255
        assert torch.equal(window(image, p["top"][:, t], p["left"][:, t]), digit)
    assert torch.equal(out.targets, pool.labels[p["digit_index"]])
    counts = torch.bincount(p["digit_index"].flatten(), minlength=len(pool))
    assert counts.max() >= 3, "digits are drawn with replacement, independent of the image index"


def test_digits_are_pasted_over_each_other_not_added():
    distortion = SonderbySequence(num_digits=2, spacing=14, x_offset=(0, 0), y_offset=(0, 0), step_range=(0, 0),
                                  num_distractors=0, root="unused")
    out = distortion.render(filled(10, 100), torch.arange(4), torch.Generator().manual_seed(0))
    overlap = out.images[:, 0, :28, 14:28]
    assert torch.allclose(overlap, torch.full_like(overlap, 100 / 255)), "written over (added would be 200)"


def test_distractors_are_a_written_layer_added_to_the_digits_and_clipped(pool):
    distortion = SonderbySequence(distractor_source="same_split", root="unused")
    _, out = render(distortion, pool, count=256)
    p, image = out.params, out.images[:, 0]
    assert (p["crop_top"].min(), p["crop_top"].max()) == (0, 18), "numpy randint(28 - 9): 0 .. 18"
    assert p["distractor_top"].max() == 90 and p["distractor_left"].min() == 0, "randint(100 - 9): 0 .. 90"
    layer = torch.zeros(256, 100, 100)
    for k in range(8):  # later distractors overwrite earlier ones
        crops = window(pool.images[p["distractor_index"][:, k]].float() / 255, p["crop_top"][:, k],
                       p["crop_left"][:, k], 9)
        b = torch.arange(256)[:, None, None]
        rows = (p["distractor_top"][:, k, None] + torch.arange(9))[:, :, None]
        cols = (p["distractor_left"][:, k, None] + torch.arange(9))[:, None, :]
        layer[b, rows, cols] = crops
    digits = torch.zeros(256, 100, 100)
    for t in range(3):
        b = torch.arange(256)[:, None, None]
        rows = (p["top"][:, t, None] + torch.arange(28))[:, :, None]
        cols = (p["left"][:, t, None] + torch.arange(28))[:, None, :]
        digits[b, rows, cols] = pool.images[p["digit_index"][:, t]].float() / 255
    assert torch.equal(image, (digits + layer).clamp(0, 1))


def test_reference_bank_is_one_pool_of_training_digit_crops_for_every_split(monkeypatch):
    """distractor_source=bank: crops of the MNIST *training* file (our train + validation digits) for every
    split, test included; same_split: only the image's own split."""
    requested = []

    def marked_training_digits(root, train, download=True):
        requested.append(train)
        return DigitSplit(torch.full((50, 28, 28), 77, dtype=torch.uint8), torch.arange(50) % 10)

    monkeypatch.setattr(sequences, "load_mnist", marked_training_digits)
    distractor_bank.cache_clear()
    sequences._BANK_ON_DEVICE.clear()
    try:
        bank = SonderbySequence(root="marked", bank_size=500)
        blank_val, blank_test = filled(100, 0), filled(100, 0)
        val = bank.render(blank_val, torch.arange(64), torch.Generator().manual_seed(3))
        test = bank.render(blank_test, torch.arange(64), torch.Generator().manual_seed(3))
        assert requested == [True], "the bank reads the training file, never the test file"
        assert torch.equal(val.images, test.images), "the same bank for every split"
        ink = torch.tensor(77.0).div(255).item()
        assert set(val.images.unique().tolist()) == {0.0, ink}, "the only ink is bank (training) ink"
        same = SonderbySequence(root="marked", distractor_source="same_split")
        assert same.render(blank_test, torch.arange(64), torch.Generator().manual_seed(3)).images.max() == 0
    finally:
        distractor_bank.cache_clear()
        sequences._BANK_ON_DEVICE.clear()


def test_real_bank_crops_come_from_training_digits(mnist_root):
    bank = distractor_bank(str(mnist_root), 9, 64, 1234)
    train = load_mnist(mnist_root, train=True, download=False).images
    assert bank.shape == (64, 9, 9) and bank.dtype == torch.uint8
    inked = bank[bank.flatten(1).float().sum(1).argsort(descending=True)[:2]]  # blank crops match anything
    for crop in inked:
        found = False
        for start in range(0, len(train), 6000):  # every 9x9 crop at 0 .. 18 of 6000 digits at a time
            patches = train[start:start + 6000, :27, :27].unfold(1, 9, 1).unfold(2, 9, 1)
            if (patches == crop).flatten(3).all(3).any():
                found = True
                break
        assert found, "each crop is a crop of a training digit"
    assert torch.equal(bank, distractor_bank(str(mnist_root), 9, 64, 1234)), "fixed by its seed"


@pytest.mark.parametrize("kwargs, hint", [
    ({"step_range": (5, -5)}, "step_range"),
    ({"x_offset": (0, 30)}, "canvas_size"),
    ({"y_offset": (0, 100)}, "y_offset"),
    ({"distractor_source": "test"}, "distractor_source"),
    ({"crop_size": 28}, "crop_size"),
    ({"bank_size": 0}, "bank_size"),
])
def test_sonderby_config_errors_name_the_key(kwargs, hint):
    with pytest.raises(ConfigError, match=hint):
        SonderbySequence(root="unused", **kwargs)


def test_cluttered_crops_anywhere_in_the_digit_and_the_ink_box_option(pool):
    anywhere, _ = distortion_from_config("cluttered")
    inside, _ = distortion_from_config("cluttered", crop_region="ink_box")
    _, out = render(anywhere, pool, count=2048)
    assert out.params["crop_top"].min() == 0 and out.params["crop_left"].max() == 22
    _, boxed = render(inside, pool, count=2048)
    assert boxed.params["crop_top"].min() == 4 and boxed.params["crop_left"].max() == 18
    assert Cluttered.version == 2
    with pytest.raises(ConfigError, match="crop_region"):
        Cluttered(crop_region="centre")


def test_ram_clutter_is_a_named_option(pool):
    distortion, cfg = distortion_from_config("cluttered_ram")
    assert cfg.name == "cluttered_ram" and distortion.crop_region == "digit"
    _, out = render(distortion, pool, count=16)
    assert out.images.shape == (16, 1, 100, 100) and out.params["distractor_top"].shape == (16, 8)
    assert out.params["distractor_top"].max() <= 92


def test_elastic_scale_range_is_a_config_value(pool):
    default, _ = distortion_from_config("elastic")
    explicit = Elastic(min_scale=1.0, max_scale=1.0)
    _, a = render(default, pool, count=64)
    _, b = render(explicit, pool, count=64)
    assert torch.equal(a.images, b.images) and "scale" not in a.params, "the default does not scale"
    scaled, _ = distortion_from_config("elastic", min_scale=0.75)
    _, c = render(scaled, pool, count=512)
    assert 0.75 <= c.params["scale"].min() and c.params["scale"].max() <= 1.0
    ink_ratio = c.images.sum((1, 2, 3)) / a.images.sum((1, 2, 3)).mean()
    assert ink_ratio.mean() < 0.95, "scaled digits are smaller"
    with pytest.raises(ConfigError, match="min_scale"):
        Elastic(min_scale=1.0, max_scale=0.5)
