"""The paper's IC-STN setting (issue 25): data=perturbed hands models the clean digit and the warp that made
each image (stnbench.source.Source), and model.from_source starts IC-STN and the seed's recurrent STN there,
resampling the digit itself, so what the perturbation pushed out of the frame can be brought back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import compose_config
from stnbench.build import build_datamodule
from stnbench.build import build_model as build_for_data
from stnbench.data.datamodule import quantize
from stnbench.data.perturbed import warp_with
from stnbench.errors import ConfigError
from stnbench.models.contract import ModelContractError, check_model, run_model
from stnbench.models.output import ModelOutput
from stnbench.models.transforms import Projective
from stnbench.source import Source
from stnbench.viz import in_image_frame, labelled_model_picture
from test_models import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def perturbed(cache_dir, tmp_path_factory):
    cfg = compose_config(["data=perturbed", "data.num_val=300", "data.batch_size=16"],
                         run_dir=tmp_path_factory.mktemp("run"), cache=cache_dir)
    datamodule = build_datamodule(cfg.data)
    datamodule.setup()
    return datamodule


def batch_of(datamodule, loader) -> tuple:
    return datamodule.on_after_batch_transfer(next(iter(loader)), 0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_each_image_is_its_clean_digit_through_its_homography(perturbed, split):
    """Fresh training batches and the cached validation set alike: the Source says exactly how each image
    was made (to the uint8 quantisation of the stored images)."""
    loader = perturbed.train_dataloader() if split == "train" else perturbed.val_dataloader()
    images, labels, source = batch_of(perturbed, loader)
    assert isinstance(source, Source) and len(source) == len(images) == len(labels)
    assert source.images.shape == images.shape and source.homography.shape == (len(images), 3, 3)
    remade = quantize(warp_with(source.images, source.homography)).float() / 255
    torch.testing.assert_close(remade, images, atol=1.5 / 255, rtol=0)
    assert not torch.equal(source.images, images), "the source is the clean digit, not the perturbed image"
    assert (source.homography - torch.eye(3)).abs().amax((1, 2)).min() > 0.01, "every image is perturbed"


def test_the_cached_homographies_are_reproducible_and_the_picture_source_matches(perturbed, cache_dir, tmp_path):
    again = build_datamodule(compose_config(["data=perturbed", "data.num_val=300"], run_dir=tmp_path,
                                            cache=cache_dir).data)
    again.setup()
    assert torch.equal(again.homographies["val"], perturbed.homographies["val"])
    images, _ = perturbed.preview("val", 5)
    source = perturbed.preview_source("val", 5)
    remade = quantize(warp_with(source.images, source.homography)).float() / 255
    torch.testing.assert_close(remade, images, atol=1.5 / 255, rtol=0)


def test_data_without_a_source_hands_two_items(cache_dir, tmp_path):
    datamodule = build_datamodule(compose_config(["data=rotated", "data.num_val=300"], run_dir=tmp_path,
                                                 cache=cache_dir).data)
    datamodule.setup()
    assert len(batch_of(datamodule, datamodule.val_dataloader())) == 2
    assert datamodule.preview_source("val", 4) is None


def perturbation(batch: int = 3) -> torch.Tensor:
    """Sampling homographies that zoom in by 1.6 and tilt: the image shows only the middle of the digit."""
    matrix = torch.tensor([[0.6, 0.05, 0.1], [-0.04, 0.62, -0.05], [0.03, -0.02, 1.0]])
    return matrix.expand(batch, 3, 3).clone()


def digits(batch: int = 3) -> torch.Tensor:
    """Ink everywhere, up to the borders: what leaves the frame is visible."""
    return torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5


def test_ic_stn_from_the_source_starts_at_the_perturbation_and_can_undo_it():
    """At init (every update the identity) each glimpse is the perturbed image; a predictor that answers the
    inverse warp brings back the whole clean digit, border included, which no warp of the perturbed image can."""
    source = Source(digits(), perturbation())
    images = warp_with(source.images, source.homography)
    net = build_model("ic_stn", overrides=("model.num_warps=2",))
    assert net.reads_source
    out = net(images, source=source)
    start = Projective.params_of(source.homography)
    torch.testing.assert_close(out.thetas, start[:, None].expand(-1, 2, -1))
    torch.testing.assert_close(out.glimpses[:, -1], images, atol=1e-5, rtol=0)
    inverse = Projective.params_of(torch.linalg.inv(perturbation(1)))[0]
    with torch.no_grad():
        net.stn.regressor.weight.zero_()
        net.stn.regressor.bias.copy_(inverse)  # an update that undoes the perturbation
    undone = build_model("ic_stn", overrides=("model.num_warps=1",))
    undone.load_state_dict(net.state_dict())
    recovered = undone(images, source=source).glimpses[:, 0]
    torch.testing.assert_close(recovered, source.images, atol=1e-4, rtol=0)
    from_image = undone(images).glimpses[:, 0]  # the same warp applied to the perturbed image: borders lost
    assert (from_image - source.images).abs().max() > 0.4


def test_with_the_source_off_or_absent_ic_stn_starts_at_the_identity_on_the_image():
    source = Source(digits(), perturbation())
    images = warp_with(source.images, source.homography)
    off = build_model("ic_stn", overrides=("model.from_source=false",), seed=3)
    on = build_model("ic_stn", seed=3)
    assert not off.reads_source
    alone = on(images)
    for out in (off(images, source=source), run_model(off, images, source=source), alone):
        torch.testing.assert_close(out.thetas, Projective().identity().expand_as(out.thetas), atol=0, rtol=0)
    assert not torch.allclose(run_model(on, images, source=source).thetas, alone.thetas)


def test_the_recurrent_stn_samples_the_digit_but_its_recurrence_never_sees_the_perturbation():
    """Without feedback the GRU's inputs are the image code and its own θ_t: with a source its warps are
    exactly the perturbation composed with the warps it computes without one."""
    source = Source(digits(), perturbation())
    images = warp_with(source.images, source.homography)
    net = build_model("recurrent_stn_perturbed_no_feedback", seed=4)
    with torch.no_grad():
        net.update.weight.normal_(0, 0.05)  # off the identity, so the steps differ
    assert net.reads_source
    alone, started = net(images), net(images, source=source)
    start = Projective.params_of(source.homography)
    for step in range(alone.thetas.shape[1]):
        composed = Projective().compose(start, alone.thetas[:, step])
        torch.testing.assert_close(started.thetas[:, step], composed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(started.glimpses[:, 0], images, atol=1e-4, rtol=0)
    torch.testing.assert_close(in_image_frame(net.transform, started.thetas, source.homography), alone.thetas,
                               atol=1e-4, rtol=1e-4)


def test_the_feedback_pair_still_computes_the_same_at_init_from_the_source():
    source = Source(digits(), perturbation())
    images = warp_with(source.images, source.homography)
    on = build_model("recurrent_stn_perturbed", seed=2)
    off = build_model("recurrent_stn_perturbed_no_feedback", seed=2)
    torch.testing.assert_close(on(images, source=source).logits, off(images, source=source).logits, atol=0, rtol=0)


def test_a_model_that_starts_from_the_source_is_refused_data_without_one(cache_dir, tmp_path):
    cfg = compose_config(["data=rotated", "model=ic_stn", "data.num_val=300"], run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(ConfigError, match=r"data 'rotated' does not say how its images were made; use "
                                          r"data=perturbed, or set model.from_source=false"):
        build_for_data(cfg.model, build_datamodule(cfg.data))
    cfg = compose_config(["data=rotated", "model=ic_stn", "model.from_source=false", "data.num_val=300"],
                         run_dir=tmp_path, cache=cache_dir)
    assert not build_for_data(cfg.model, build_datamodule(cfg.data)).reads_source


@pytest.mark.parametrize("model", ["ic_stn", "recurrent_stn_perturbed"])
def test_from_source_needs_a_transform_that_holds_a_homography(model):
    with pytest.raises(ConfigError, match="model/transform=affine cannot hold"):
        build_model(model, overrides=("model/transform=affine",))
    with pytest.raises(ConfigError, match="from_source must be true or false"):
        build_model(model, overrides=("model.from_source=3",))


class NoSourceArgument(nn.Module):
    """Says it reads the source but its forward takes none: the contract check names the rule."""

    reads_source = True

    def __init__(self, input_shape=(1, 28, 28), num_classes=10, num_steps=1) -> None:
        super().__init__()
        self.head = nn.Linear(28 * 28, num_classes)

    def forward(self, images):
        return ModelOutput(self.head(images.flatten(1))[:, None])


def test_a_plug_in_that_claims_the_source_but_cannot_take_it_breaks_the_contract():
    with pytest.raises(ModelContractError, match=r"reads_source but forward\(images, source=...\) failed"):
        check_model(NoSourceArgument(), (1, 28, 28), num_classes=10)


def test_the_picture_outlines_each_glimpse_where_it_falls_on_the_input():
    source = Source(digits(2), perturbation(2))
    images = warp_with(source.images, source.homography)
    net = build_model("ic_stn", overrides=("model.num_warps=1",))
    with torch.no_grad():
        net.stn.regressor.weight.zero_()
        net.stn.regressor.bias.copy_(Projective.params_of(torch.linalg.inv(perturbation(1)))[0])
    out = net(images, source=source)
    relative = in_image_frame(net.transform, out.thetas, source.homography)
    # the glimpse is the clean digit: on the input it is the quad of H_0^-1, larger than the frame
    torch.testing.assert_close(relative[:, 0], Projective.params_of(torch.linalg.inv(perturbation(2))), atol=1e-5,
                               rtol=1e-5)
    with_source = labelled_model_picture(net, images, torch.tensor([1, 2]), source=source)
    without = labelled_model_picture(net, images, torch.tensor([1, 2]))
    assert with_source.shape == without.shape and not torch.equal(with_source, without)
