"""Transform families: parameter counts, identities, grids and composition."""

from __future__ import annotations

import pytest
import torch

from stnbench.data.distortions import ConfigError
from stnbench.models.transforms import Affine, Attention, Projective, ThinPlateSpline
from stnbench.sampling import affine_grid, pixel_grid, sample

TRANSFORMS = {"affine": (Affine, 6), "projective": (Projective, 8), "tps": (ThinPlateSpline, 32),
              "attention": (Attention, 3)}


@pytest.fixture(autouse=True)
def _one_thread():
    """Many tiny ops: one thread beats two on a shared 2-core machine (runs after conftest's fixture)."""
    torch.set_num_threads(1)
    yield



def make(name: str):
    return TRANSFORMS[name][0]()


@pytest.mark.parametrize("name", TRANSFORMS)
def test_parameter_counts(name):
    transform = make(name)
    assert transform.num_params == TRANSFORMS[name][1]
    assert transform.identity().shape == (transform.num_params,)


@pytest.mark.parametrize("name", TRANSFORMS)
@pytest.mark.parametrize("size", [(28, 28), (42, 42), (28, 56)])
def test_identity_grid_is_the_pixel_grid(name, size):
    transform = make(name)
    grid = transform.grid(transform.identity().repeat(3, 1), *size)
    assert grid.shape == (3, *size, 2)
    torch.testing.assert_close(grid, pixel_grid(*size).expand(3, -1, -1, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_identity_reproduces_the_image(name):
    transform = make(name)
    images = torch.rand(2, 2, 42, 42)
    warped = sample(images, transform.grid(transform.identity().repeat(2, 1), 42, 42))
    torch.testing.assert_close(warped, images, atol=1e-4, rtol=0)


def test_tps_grid_is_4x4_and_its_control_points_move_where_told():
    assert ThinPlateSpline().control.shape == (16, 2)
    # With span 0.75 the 16 control points are exactly the pixel centres of a 4x4 output image, so the
    # grid must read each of them from its target (the spline interpolates its control points).
    tps = ThinPlateSpline(grid_size=4, span=0.75)
    targets = tps.control + 0.1 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    grid = tps.grid(targets.flatten()[None], 4, 4)
    torch.testing.assert_close(grid.reshape(16, 2), targets, atol=1e-4, rtol=0)


def test_attention_is_a_scaled_translated_affine():
    params = torch.tensor([[0.5, 0.2, -0.3]])
    theta = torch.tensor([[[0.5, 0.0, 0.2], [0.0, 0.5, -0.3]]])
    torch.testing.assert_close(Attention().grid(params, 9, 7), affine_grid(theta, 9, 7))


def test_projective_with_zero_perspective_is_affine():
    params = torch.tensor([[0.8, 0.1, 0.2, -0.1, 1.1, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(Projective().grid(params, 8, 8), Affine().grid(params[:, :6], 8, 8),
                               atol=1e-6, rtol=0)


def test_affine_composition_applies_the_update_inside_the_outer_glimpse():
    affine = Affine()
    outer = torch.tensor([[0.5, 0.1, 0.2, -0.1, 0.6, -0.3]])
    update = torch.tensor([[0.9, 0.0, 0.3, 0.2, 0.8, 0.1]])
    composed = affine.compose(outer, update)
    # grid of the composition == outer's map applied to the update's grid points
    inner = affine.grid(update, 6, 6).reshape(-1, 2)
    mapped = inner @ outer.view(2, 3)[:, :2].T + outer.view(2, 3)[:, 2]
    torch.testing.assert_close(affine.grid(composed, 6, 6).reshape(-1, 2), mapped, atol=1e-6, rtol=0)
    torch.testing.assert_close(affine.compose(outer, affine.identity()[None]), outer)


def test_projective_composition_applies_the_update_inside_the_outer_glimpse():
    """As affine: the grid of outer o update is the outer homography applied to the update's grid points, and
    composing with an affine update agrees with Affine.compose (issue 25, IC-STN's homographies)."""
    projective = Projective()
    outer = torch.tensor([[0.9, 0.1, 0.05, -0.1, 1.1, -0.1, 0.05, -0.08]])
    update = torch.tensor([[1.05, -0.05, 0.1, 0.02, 0.95, 0.03, -0.04, 0.06]])
    composed = projective.compose(outer, update)
    inner = projective.grid(update, 6, 6).reshape(-1, 2)
    mapped = torch.cat([inner, torch.ones(len(inner), 1)], 1) @ projective.matrix(outer)[0].T
    torch.testing.assert_close(projective.grid(composed, 6, 6).reshape(-1, 2), mapped[:, :2] / mapped[:, 2:],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(projective.compose(outer, projective.identity()[None]), outer)
    affine_outer, affine_update = outer.clone(), update.clone()
    affine_outer[:, 6:], affine_update[:, 6:] = 0, 0
    torch.testing.assert_close(projective.compose(affine_outer, affine_update)[:, :6],
                               Affine().compose(affine_outer[:, :6], affine_update[:, :6]), atol=1e-6, rtol=0)
    assert projective.composable


@pytest.mark.parametrize("name", ["tps", "attention"])
def test_other_transforms_refuse_composition(name):
    transform = make(name)
    assert not transform.composable
    with pytest.raises(ConfigError, match="absolute"):
        transform.compose(transform.identity()[None], transform.identity()[None])


def test_bad_tps_grid_is_a_config_error():
    with pytest.raises(ConfigError, match="grid_size"):
        ThinPlateSpline(grid_size=1)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_scale_statistic_works_for_every_family(name):
    """module.transform_scale (logged as train/stn_scale_*) must read 1 at identity and 0.5 for a 2x zoom
    in, for every transform and for multi-glimpse thetas [B, S, P]."""
    from stnbench.module import transform_scale

    transform = make(name)
    identity = transform.identity()
    zoom = {"affine": [0.5, 0, 0, 0, 0.5, 0], "projective": [0.5, 0, 0, 0, 0.5, 0, 0, 0],
            "attention": [0.5, 0.1, -0.2]}.get(name)
    zoom = torch.tensor(zoom) if zoom is not None else 0.5 * identity
    thetas = torch.stack([identity, zoom, identity]).expand(4, -1, -1)  # [B=4, S=3, P]
    scale = transform_scale(transform, thetas).view(4, 3)
    torch.testing.assert_close(scale, torch.tensor([1.0, 0.5, 1.0]).expand(4, -1), atol=1e-4, rtol=0)
