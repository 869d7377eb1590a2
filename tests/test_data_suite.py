"""The distorted-MNIST suite: batch contract, parameter ranges recovered from ``Rendered.params``,
geometry checks that tie the params to the pixels, clean config errors, no cross-split leaks."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import CONFIG_DIR
from stnbench.data.addition import Addition
from stnbench.data.clutter import Cluttered, Translated
from stnbench.data.datamodule import DistortedMNIST
from stnbench.data.distortions import ConfigError, Elastic, Projective, homography_from_points
from stnbench.data.mnist import DigitSplit, load_mnist
from stnbench.data.sequences import MultiDigit

SUITE = ("projective", "elastic", "translated", "cluttered", "multi_digit", "addition")
# Named settings of the same generators: checked here, not trained again in test_data_train.py.
VARIANTS = ("cluttered_ram", "multi_digit_jittered")
ALL_DATA = ("mnist", "rotated", "rts") + SUITE + VARIANTS
ALL_DATA += ("multi_digit_scattered",)  # targets of variable length: tests/test_scattered.py
ALL_DATA += ("perturbed",)  # IC-STN's benchmark: tests/test_perturbed.py


def distortion_from_config(name: str, **overrides):
    """The distortion exactly as ``data=<name>`` configures it, with optional ``distortion.*`` overrides."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}"]
                      + [f"data.distortion.{key}={value}" for key, value in overrides.items()])
    return instantiate(cfg.data.distortion), cfg.data


@pytest.fixture(scope="module")
def pool(mnist_root) -> DigitSplit:
    """Real clean digits of one split (the MNIST test split)."""
    return load_mnist(mnist_root, train=False, download=False)


def render(distortion, pool: DigitSplit, count: int = 256, seed: int = 0):
    index = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed + 1))[:count]
    return index, distortion.render(pool, index, torch.Generator().manual_seed(seed))


def filled(count: int, value: int) -> DigitSplit:
    """A pool of ``count`` uniform squares (value 0..255) with labels 0..9: marked digits."""
    return DigitSplit(torch.full((count, 28, 28), value, dtype=torch.uint8), torch.arange(count) % 10)


EXPECTED = {  # name: (channels, size, target shape per image, classes)
    "projective": (1, 28, (), 10), "elastic": (1, 28, (), 10), "translated": (1, 60, (), 10),
    "cluttered": (1, 60, (), 10), "cluttered_ram": (1, 100, (), 10), "multi_digit": (1, 100, (3,), 10),
    "multi_digit_jittered": (1, 100, (3,), 10), "addition": (2, 42, (), 19),
}


@pytest.mark.parametrize("name", SUITE + VARIANTS)
def test_batches_have_the_configured_shape_dtype_and_ranges(name, pool):
    distortion, _ = distortion_from_config(name)
    channels, size, target_shape, classes = EXPECTED[name]
    assert (distortion.channels, distortion.image_size, distortion.num_classes) == (channels, size, classes)
    assert distortion.sequence_length == (target_shape[0] if target_shape else None)
    index, out = render(distortion, pool)
    assert out.images.shape == (256, channels, size, size) and out.images.dtype == torch.float32
    assert out.images.min() == 0.0 and out.images.max() <= 1.0 and out.images.max() > 0.5
    assert out.targets.shape == (256, *target_shape) and out.targets.dtype == torch.int64
    assert 0 <= out.targets.min() and out.targets.max() < classes
    if name == "addition":
        assert torch.equal(out.params["digit_index"][:, 0], index)
        assert torch.equal(out.targets, pool.labels[out.params["digit_index"]].sum(1))
        assert (out.images.flatten(2).amax(2) > 0.5).all(), "both channels hold a digit"
    elif name.startswith("multi_digit"):
        if name == "multi_digit_jittered":  # Sønderby's generator draws every digit at random instead
            assert torch.equal(out.params["digit_index"][:, 0], index)
        assert torch.equal(out.targets, pool.labels[out.params["digit_index"]])
    else:
        assert torch.equal(out.targets, pool.labels[index])


def test_projective_params_stay_in_range_and_the_homography_matches_them(pool):
    distortion, _ = distortion_from_config("projective")
    _, out = render(distortion, pool, count=2048)
    scale, noise = out.params["scale"], out.params["corner_noise"]
    assert 0.75 <= scale.min() and scale.max() <= 1.0 and scale.max() - scale.min() > 0.2
    assert noise.mean().abs() < 0.3 and 4.5 < noise.std() < 5.5, "corner noise is N(0, 5 px)"

    # A white square digit, warped onto a roomy canvas, covers the quad the params describe.
    roomy = Projective(sigma=5.0, canvas_size=64)
    _, out = render(roomy, filled(10, 255), count=64)
    corners = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]]) * 14
    quad = corners * out.params["scale"][:, None, None] + out.params["corner_noise"]
    x, y = quad.unbind(-1)
    area = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1)  # shoelace, clockwise on screen -> positive
    ink = out.images.sum((1, 2, 3))
    assert torch.allclose(ink, area, rtol=0.04, atol=8), (ink[:5], area[:5])


def test_homography_maps_the_four_points_exactly():
    generator = torch.Generator().manual_seed(0)
    source = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]]).expand(16, 4, 2)
    target = source * 0.8 + 0.1 * torch.randn(16, 4, 2, generator=generator)
    matrix = homography_from_points(source, target)
    mapped = torch.cat([source, torch.ones(16, 4, 1)], -1) @ matrix.transpose(1, 2)
    assert torch.allclose(mapped[..., :2] / mapped[..., 2:], target, atol=1e-5)
    kornia = pytest.importorskip("kornia")
    reference = kornia.geometry.transform.get_perspective_transform(source.contiguous(), target)
    assert torch.allclose(matrix, reference / reference[:, 2:, 2:], atol=1e-4)


def test_elastic_displacements_follow_the_config_and_zero_sigma_is_the_identity(pool):
    distortion, _ = distortion_from_config("elastic")
    _, out = render(distortion, pool, count=1024)
    displacement = out.params["displacement"]
    assert displacement.shape == (1024, 16, 2), "a 4x4 grid of control points"
    assert displacement.mean().abs() < 0.1 and 1.4 < displacement.std() < 1.6
    index, still = render(Elastic(sigma=0.0), pool, count=32)
    assert torch.allclose(still.images[:, 0], pool.images[index].float() / 255, atol=1e-4)


def test_translated_keeps_the_digit_pixels_exactly_where_params_say(pool):
    distortion, _ = distortion_from_config("translated")
    index, out = render(distortion, pool, count=2048)
    top, left = out.params["top"], out.params["left"]
    assert top.min() == left.min() == 0 and top.max() == left.max() == 32, "every position of 60 - 28"
    b = torch.arange(2048)[:, None, None]
    rows, cols = (top[:, None] + torch.arange(28))[:, :, None], (left[:, None] + torch.arange(28))[:, None, :]
    window = out.images[:, 0][b, rows, cols]
    assert torch.equal(window, pool.images[index].float() / 255)
    assert torch.allclose(out.images.sum((1, 2, 3)), window.sum((1, 2)), atol=1e-3), "nothing else there"


def box_mask(size: int, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """bool [B, size, size]: inside the ``side`` box at (top, left) [B] (or any of [B, K] boxes)."""
    top, left = top.reshape(len(top), -1, 1, 1), left.reshape(len(left), -1, 1, 1)
    ticks = torch.arange(size)
    inside = ((ticks[:, None] >= top) & (ticks[:, None] < top + side)
              & (ticks[None, :] >= left) & (ticks[None, :] < left + side))
    return inside.any(1)


def test_cluttered_distractors_are_other_digits_in_range_and_only_where_params_say(pool):
    distortion, _ = distortion_from_config("cluttered")
    index, out = render(distortion, pool, count=512)
    p = out.params
    assert p["distractor_index"].shape == (512, 6)
    assert (p["distractor_index"] != index[:, None]).all() and p["distractor_index"].max() < len(pool)
    for key, high in (("distractor_top", 54), ("distractor_left", 54), ("crop_top", 22), ("crop_left", 22)):
        # crops come from anywhere inside the 28x28 digit, as DeepMind's mnist-cluttered cuts them
        assert 0 == p[key].min() and p[key].max() == high, key
    assert 0 <= p["top"].min() and p["top"].max() <= 32
    image = out.images[:, 0]
    digit = box_mask(60, p["top"], p["left"], 28)
    clutter = box_mask(60, p["distractor_top"], p["distractor_left"], 6)
    assert (image[~digit & ~clutter] == 0).all(), "ink only inside the digit and distractor boxes"
    assert (image[clutter].reshape(-1) > 0).float().mean() > 0.2, "distractors are mostly not empty"
    b = torch.arange(512)[:, None, None]
    rows = (p["top"][:, None] + torch.arange(28))[:, :, None]
    cols = (p["left"][:, None] + torch.arange(28))[:, None, :]
    clean = ~clutter[b, rows, cols]
    assert torch.equal(image[b, rows, cols][clean], (pool.images[index].float() / 255)[clean])


def test_bigger_clutter_variant_is_one_override_away(pool):
    distortion, _ = distortion_from_config("cluttered", canvas_size=100, num_distractors=8, crop_size=8)
    _, out = render(distortion, pool, count=16)
    assert out.images.shape == (16, 1, 100, 100) and out.params["distractor_top"].shape == (16, 8)


def test_jittered_multi_digit_layout_follows_the_config(pool):
    distortion, _ = distortion_from_config("multi_digit_jittered")
    _, out = render(distortion, pool, count=1024)
    p = out.params
    assert torch.equal(p["left"].diff(dim=1), torch.full((1024, 2), 28)), "left to right, 28 px apart"
    assert 0 <= p["left"].min() and p["left"].max() <= 72 and 0 <= p["top"].min() and p["top"].max() <= 72
    assert p["slope"].abs().max() <= 0.3 and p["slope"].abs().max() > 0.25
    assert p["offset"].abs().max() <= 6.0 and p["offset"].abs().max() > 5.5
    rise = p["slope"][:, None] * torch.tensor([-28.0, 0.0, 28.0]) + p["offset"]
    base = p["top"] - rise  # every digit sits on one sloped line, up to rounding
    assert (base.amax(1) - base.amin(1)).max() <= 1.0 + 1e-4
    assert p["distractor_index"].shape == (1024, 8) and out.images.shape[-1] == 100


@pytest.mark.parametrize("digits", [1, 3, 5])
def test_multi_digit_labels_read_the_digits_left_to_right(pool, digits):
    spacing = 28 if digits < 5 else 18
    canvas = 100 if digits < 5 else 120
    distortion = MultiDigit(num_digits=digits, spacing=spacing, canvas_size=canvas, num_distractors=0)
    _, out = render(distortion, pool, count=256)
    assert out.targets.shape == (256, digits) and distortion.sequence_length == digits
    image, p = out.images[:, 0], out.params
    columns = torch.arange(canvas, dtype=torch.float32)
    previous = torch.full((256,), -1.0)
    for t in range(digits):
        # The digit in slot t: its ink's horizontal centre lies inside slot t, left of slot t + 1's.
        mine = box_mask(canvas, p["top"][:, t], p["left"][:, t], 28)
        own = pool.images[p["digit_index"][:, t]].float() / 255
        if spacing == 28:  # no overlap: the window holds exactly the digit whose label is targets[:, t]
            b = torch.arange(256)[:, None, None]
            rows = (p["top"][:, t, None] + torch.arange(28))[:, :, None]
            cols = (p["left"][:, t, None] + torch.arange(28))[:, None, :]
            assert torch.equal(image[b, rows, cols], own)
        assert torch.equal(out.targets[:, t], pool.labels[p["digit_index"][:, t]])
        centre = (own.sum(1) * torch.arange(28.0)).sum(1) / own.sum((1, 2)) + p["left"][:, t]
        assert (centre > previous).float().mean() > 0.97, "label order follows the digits' x order"
        previous = centre
        assert mine.any()
    assert (image.sum(1) * columns).sum(1).gt(0).all()


def test_addition_params_stay_in_rts_ranges(pool):
    distortion, _ = distortion_from_config("addition")
    _, out = render(distortion, pool, count=1024)
    angle, scale, shift = out.params["angle"], out.params["scale"], out.params["shift"]
    assert angle.shape == (1024, 2) and angle.abs().max() <= 45 and angle.abs().max() > 40
    assert 0.7 <= scale.min() and scale.max() <= 1.2
    room = (42 - 28 * scale) / 2
    assert (shift.abs() <= room[..., None] + 1e-5).all()
    assert not torch.equal(angle[:, 0], angle[:, 1]), "the two digits are distorted independently"
    assert (out.params["digit_index"][:, 1] != out.params["digit_index"][:, 0]).float().mean() > 0.99


@pytest.mark.parametrize("make, hint", [
    (lambda: Projective(sigma=-1), "sigma"),
    (lambda: Projective(min_scale=1.0, max_scale=0.5), "min_scale"),
    (lambda: Projective(canvas_size=20), "canvas_size"),
    (lambda: Elastic(sigma=-0.5), "sigma"),
    (lambda: Elastic(grid_size=1), "grid_size"),
    (lambda: Translated(canvas_size=27), "canvas_size"),
    (lambda: Cluttered(num_distractors=-1), "num_distractors"),
    (lambda: Cluttered(crop_size=29), "crop_size"),
    (lambda: Cluttered(canvas_size=28, crop_size=0), "crop_size"),
    (lambda: MultiDigit(num_digits=0), "num_digits"),
    (lambda: MultiDigit(num_digits=6), "num_digits"),
    (lambda: MultiDigit(num_digits=5), "canvas_size"),
    (lambda: MultiDigit(max_slope=2.0), "max_slope"),
    (lambda: MultiDigit(max_offset=-1), "max_offset"),
    (lambda: MultiDigit(spacing=10), "spacing"),
    (lambda: Addition(canvas_size=30), "canvas_size"),
])
def test_impossible_values_raise_config_errors_that_say_how_to_fix_them(make, hint):
    with pytest.raises(ConfigError, match=hint) as error:
        make()
    assert any(word in str(error.value) for word in ("use", "raise", "lower", "must", "need"))


@pytest.mark.parametrize("name", SUITE + VARIANTS)
@pytest.mark.parametrize("train_mode", ["fresh", "fixed"])
def test_training_images_use_only_training_digits(name, train_mode, tmp_path):
    """Training digits are blank, val/test digits solid white: one leaked digit or crop shows up as ink."""
    # Sønderby's reference bank of distractors is shared by every split on purpose (tests/test_fidelity_data.py);
    # its same-split option must not leak.
    overrides = {"distractor_source": "same_split"} if name == "multi_digit" else {}
    distortion, _ = distortion_from_config(name, **overrides)
    datamodule = DistortedMNIST(distortion, cache_dir=str(tmp_path), train_mode=train_mode, batch_size=64)
    datamodule.pools = {"train": filled(600, 0), "val": filled(100, 255), "test": filled(100, 255)}
    batch = next(iter(datamodule.train_dataloader()))
    if train_mode == "fixed":
        datamodule.fixed["train"] = datamodule._fixed_set("train")
    images, _ = datamodule.materialize(batch)
    assert images.shape[0] == 64 and images.max() == 0, "a training image holds ink from another split"
    val_images, _ = datamodule.materialize({"split": "val", "index": torch.arange(8), "seed": 0})
    assert (val_images.flatten(1).amax(1) == 1).all(), "control: the marked splits do produce ink"
