"""data=perturbed (Lin & Lucey 2017's perturbed MNIST): the generator's statistics, its coordinate convention
and zero fill, determinism, its fixed sets keyed by its config, clear errors, the gallery."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from stnbench.build import build_datamodule
from stnbench.data.distortions import digits_as_float
from stnbench.data.mnist import load_mnist
from stnbench.data.perturbed import CANONICAL, Perturbed, corners_homography, warp_to_corners
from stnbench.errors import ConfigError
from stnbench.gallery import gallery


@pytest.fixture(scope="module")
def pool(mnist_root):
    return load_mnist(mnist_root, train=False)


def draw(distortion: Perturbed, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return distortion.sample_params(n, torch.Generator().manual_seed(seed), torch.device("cpu"))


@pytest.mark.parametrize("corner_sigma, translation_sigma", [(0.25, 0.25), (0.1, 0.3)])
def test_corner_displacements_have_the_references_spread(corner_sigma, translation_sigma):
    """As genPerturbations: each coordinate of each corner moves by N(0, corner_sigma) of its own plus
    N(0, translation_sigma) shared by the image's four corners, so its spread is the root sum of squares and
    two corners of one image are correlated by translation^2 / total^2 (0.5 for the reference's 0.25, 0.25)."""
    params = draw(Perturbed(corner_sigma, translation_sigma), 200_000)
    displacement = params["corners"] - torch.tensor(CANONICAL)  # [B, 4, 2]
    total = (corner_sigma**2 + translation_sigma**2) ** 0.5
    assert displacement.mean((0, 1)).abs().max() < 0.01
    torch.testing.assert_close(displacement.std(0), torch.full((4, 2), total), atol=0.01 * total, rtol=0)
    flat = displacement.permute(1, 2, 0).reshape(8, -1)  # rows: corner 0 x, corner 0 y, corner 1 x, ...
    correlation = torch.corrcoef(flat)
    same_axis = torch.tensor([[i % 2 == j % 2 and i != j for j in range(8)] for i in range(8)])
    expected = translation_sigma**2 / total**2
    assert (correlation[same_axis] - expected).abs().max() < 0.01, correlation
    assert correlation[~same_axis & ~torch.eye(8, dtype=torch.bool)].abs().max() < 0.01, "x and y independent"
    torch.testing.assert_close(params["translation"].std(0), torch.full((2,), translation_sigma),
                               atol=0.01 * translation_sigma, rtol=0)


def test_the_homography_takes_the_square_to_the_drawn_corners():
    corners = draw(Perturbed(), 64)["corners"]
    matrix = corners_homography(corners, 28).double()
    scale = 27 / 28  # the reference's unit (corner pixels' centres at +-1) in stnbench's coordinates
    square = torch.tensor(CANONICAL, dtype=torch.float64) * scale
    mapped = torch.cat([square, torch.ones(4, 1, dtype=torch.float64)], 1) @ matrix.transpose(1, 2)
    torch.testing.assert_close(mapped[..., :2] / mapped[..., 2:], corners.double() * scale, atol=1e-5, rtol=0)


def test_a_translation_moves_the_digit_the_opposite_way_in_the_references_pixels_and_fills_with_zero(pool):
    """A corner reads the digit where it moved to: translating all four by +2 reference pixels in x (2 / 13.5
    units) shows the digit 2 px further left, exactly, with 2 columns of background on the right."""
    digits = digits_as_float(pool, torch.arange(8))
    corners = torch.tensor(CANONICAL).expand(8, 4, 2) + torch.tensor([2 / 13.5, 0.0])
    shifted = warp_to_corners(digits, corners)
    torch.testing.assert_close(shifted[..., :-2], digits[..., 2:], atol=1e-4, rtol=0)
    assert shifted[..., -2:].abs().max() < 1e-4, "outside the digit reads background"
    gone = warp_to_corners(digits, torch.tensor(CANONICAL).expand(8, 4, 2) + 2.5)
    assert gone.abs().max() == 0, "a quad entirely off the digit reads only background"


def test_batches_have_the_right_shape_range_and_labels_and_no_noise_is_the_digit(pool):
    index = torch.arange(32)
    rendered = Perturbed().render(pool, index, torch.Generator().manual_seed(0))
    assert rendered.images.shape == (32, 1, 28, 28) and rendered.images.dtype == torch.float32
    assert rendered.images.min() >= 0 and rendered.images.max() <= 1
    assert torch.equal(rendered.targets, pool.labels[index])
    assert set(rendered.params) == {"corners", "translation"} and rendered.params["corners"].shape == (32, 4, 2)
    still = Perturbed(0.0, 0.0).render(pool, index, torch.Generator().manual_seed(0))
    torch.testing.assert_close(still.images, digits_as_float(pool, index), atol=1e-5, rtol=0)
    moved = (rendered.images - digits_as_float(pool, index)).abs().amax((1, 2, 3))
    assert (moved > 0.1).float().mean() > 0.9, "nearly every digit is visibly perturbed"


def test_the_same_seed_gives_the_same_images(pool):
    index = torch.arange(16)

    def render(seed: int) -> torch.Tensor:
        return Perturbed().render(pool, index, torch.Generator().manual_seed(seed)).images

    assert torch.equal(render(3), render(3))
    assert not torch.equal(render(3), render(4))


@pytest.mark.parametrize("key, value", [("corner_sigma", -0.1), ("translation_sigma", -1.0),
                                        ("corner_sigma", float("nan")), ("translation_sigma", float("inf"))])
def test_impossible_scales_are_one_clear_config_error(key, value):
    with pytest.raises(ConfigError, match=f"data.distortion.{key} is a standard deviation.*>= 0"):
        Perturbed(**{key: value})


def test_fixed_sets_are_keyed_by_the_config_and_reproducible_per_seed(tmp_path, cache_dir):
    def datamodule(*overrides: str):
        cfg = compose_config(["data=perturbed", "data.num_val=300", *overrides], run_dir=tmp_path, cache=cache_dir)
        return build_datamodule(cfg.data)

    default, other = datamodule(), datamodule("data.distortion.corner_sigma=0.1")
    assert default.dataset_description("val")["params"] == {"corner_sigma": 0.25, "translation_sigma": 0.25}
    assert default.dataset_description("val") != other.dataset_description("val")
    for module in (default, other):
        module.setup()
    again, reseeded = datamodule(), datamodule("seed=2")
    again.setup()
    reseeded.setup()
    val = default.fixed["val"].images
    assert val.shape == (300, 1, 28, 28) and val.dtype == torch.uint8
    assert torch.equal(again.fixed["val"].images, val)
    assert not torch.equal(other.fixed["val"].images, val)
    assert not torch.equal(reseeded.fixed["val"].images, val)


def test_the_gallery_draws_it(tmp_path, cache_dir):
    cfg = compose_config(["data=perturbed", "count=8", "data.num_val=500"], config_name="gallery",
                         run_dir=tmp_path, cache=cache_dir)
    path = gallery(cfg)
    assert path.name == "perturbed.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
