"""The data module: splits, fixed evaluation sets, reproducible training batches, clean errors."""

from __future__ import annotations

import pytest
import torch

from stnbench.data.datamodule import DistortedMNIST, IndexBatches
from stnbench.data.distortions import RTS, ConfigError, Plain, Rotated
from stnbench.data.mnist import MNISTNotFoundError, load_mnist


def make(mnist_root, cache_dir, distortion=None, **kwargs) -> DistortedMNIST:
    datamodule = DistortedMNIST(distortion or RTS(), root=str(mnist_root), cache_dir=str(cache_dir),
                                download=False, **kwargs)
    datamodule.setup("fit")
    return datamodule


def first_train_batch(datamodule: DistortedMNIST, epoch: int = 0):
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return datamodule.on_after_batch_transfer(next(iter(loader)), 0)


def test_split_sizes_are_50k_10k_and_disjoint(mnist_root, cache_dir):
    datamodule = make(mnist_root, cache_dir, Plain())
    assert len(datamodule.pools["train"]) == 50000
    assert len(datamodule.pools["val"]) == 10000
    assert len(datamodule.pools["test"]) == 10000
    train = {bytes(x) for x in datamodule.pools["train"].images[:2000].numpy()}
    assert not any(bytes(x) in train for x in datamodule.pools["val"].images[:2000].numpy())


@pytest.mark.parametrize("distortion, size", [(Plain(), 28), (Rotated(), 28), (RTS(), 42)])
def test_batches_have_the_benchmark_shape_range_and_background(mnist_root, cache_dir, distortion, size):
    datamodule = make(mnist_root, cache_dir, distortion, batch_size=64)
    images, labels = first_train_batch(datamodule)
    assert images.shape == (64, 1, size, size) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64 and 0 <= labels.min() <= labels.max() <= 9
    assert images.min() == 0.0 and images.max() <= 1.0
    corners = images[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).float().mean() > 0.95, "background must stay exactly 0 (no normalisation here)"
    val_images, _ = datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    assert val_images.shape[1:] == (1, size, size)


def test_val_and_test_sets_are_fixed_by_the_seed(mnist_root, tmp_path):
    first = make(mnist_root, tmp_path / "a", Rotated(), seed=3)
    again = make(mnist_root, tmp_path / "b", Rotated(), seed=3)  # separate cache: regenerated
    other = make(mnist_root, tmp_path / "c", Rotated(), seed=4)
    for split in ("val", "test"):
        assert torch.equal(first.fixed[split].images, again.fixed[split].images)
        assert torch.equal(first.fixed[split].labels, again.fixed[split].labels)
        assert not torch.equal(first.fixed[split].images, other.fixed[split].images)


def test_training_batches_depend_only_on_seed_and_epoch(mnist_root, cache_dir):
    datamodule = make(mnist_root, cache_dir, RTS(), seed=5, batch_size=32)
    a, labels_a = first_train_batch(datamodule, epoch=2)
    b, labels_b = first_train_batch(make(mnist_root, cache_dir, RTS(), seed=5, batch_size=32), epoch=2)
    assert torch.equal(a, b) and torch.equal(labels_a, labels_b)
    c, _ = first_train_batch(datamodule, epoch=3)
    assert not torch.equal(a, c), "each epoch draws fresh distortions and a new order"


def test_fixed_train_mode_freezes_the_training_images(mnist_root, cache_dir):
    datamodule = make(mnist_root, cache_dir, Rotated(), train_mode="fixed", seed=2)
    batch = next(iter(datamodule.train_dataloader()))
    images, _ = datamodule.on_after_batch_transfer(batch, 0)
    stored = datamodule.fixed["train"].images[batch["index"]].float() / 255
    assert torch.equal(images, stored)


def test_sampler_shards_across_ranks_without_overlap():
    shards = [IndexBatches("train", 1000, 100, True, 0, drop_last=True, rank=r, world_size=2) for r in (0, 1)]
    seen = [torch.cat([b["index"] for b in shard]) for shard in shards]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert len(shards[0]) == len(list(shards[0])) == 5


def test_missing_mnist_says_where_to_put_the_files(tmp_path):
    with pytest.raises(MNISTNotFoundError, match="train-images-idx3-ubyte") as error:
        load_mnist(tmp_path / "empty", train=True, download=False)
    assert "STNBENCH_DATA_DIR" in str(error.value) and str(tmp_path / "empty" / "MNIST" / "raw") in str(error.value)


def test_failed_download_keeps_the_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("stnbench.data.mnist.MNIST", offline)
    with pytest.raises(MNISTNotFoundError, match="download failed: OSError: network is unreachable"):
        load_mnist(tmp_path, train=True, download=True)


def test_corrupt_mnist_is_reported_not_loaded(tmp_path, mnist_root):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        data = (mnist_root / "MNIST" / "raw" / name).read_bytes()
        (raw / name).write_bytes(data[: len(data) // 2] if name.startswith("t10k-images") else data)
    with pytest.raises(MNISTNotFoundError, match="corrupt: t10k-images-idx3-ubyte has 3920008 bytes"):
        load_mnist(tmp_path, train=False, download=True)  # corrupt files are never "repaired" silently


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch sizes must be positive"),
    ({"num_val": 60000}, "num_val"),
    ({"train_mode": "frozen"}, "train_mode"),
])
def test_impossible_data_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DistortedMNIST(Plain(), **kwargs)


def test_rts_canvas_must_hold_a_digit():
    with pytest.raises(ConfigError, match="smaller than a 28x28"):
        RTS(canvas_size=20)
    with pytest.raises(ConfigError, match="max_scale"):
        RTS(canvas_size=30, max_scale=1.2)
