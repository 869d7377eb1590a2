"""LightningDataModule for distorted MNIST.

Data loaders yield only *indices* (plus a per-batch seed); ``on_after_batch_transfer`` turns them into
images on the device the model trains on. Training therefore never waits for a CPU image pipeline, and
every training batch is a pure function of (seed, epoch, batch number): a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stnbench.data.cache import cached
from stnbench.data.distortions import Distortion, digits_as_float
from stnbench.data.mnist import DigitSplit, ensure_mnist, load_mnist, verify_mnist
from stnbench.errors import ConfigError
from stnbench.source import Source

TRAIN_MODES = ("fresh", "fixed")
RENDER_CHUNK = 2048
# A second test set where the test images are drawn differently from the training ones (another digit count):
# the test digits drawn as the training images are, so one run reports both (its metrics: test_train_counts/*).
TRAIN_COUNTS_TEST = "test_train_counts"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values; stable across processes and platforms."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] -> uint8, the storage format of the fixed sets (training batches go through it too,
    so training and evaluation images come from one distribution)."""
    return images.mul(255.0).round_().to(torch.uint8)


class IndexBatches(Sampler):
    """Yields ``{"split", "index", "seed"}`` batch descriptions; a new order each epoch via ``set_epoch``."""

    def __init__(self, split: str, num_items: int, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.split, self.num_items, self.batch_size = split, num_items, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.first_batch: Callable[[], int] = lambda: 0  # where an epoch starts: > 0 when resumed inside it
        self.trainer_epoch: Callable[[], int] | None = None  # the epoch a trainer is in, when one runs the loader

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def current_epoch(self) -> int:
        """The epoch whose order and distortions an iterator draws: the trainer's own count when a trainer runs
        the loader, else ``set_epoch``'s. (Resumed from an epoch-end checkpoint, step-bounded training gets a
        ``set_epoch`` one ahead of the epoch it trains, so the resumed run would draw the wrong epoch's batches.)"""
        return self.trainer_epoch() if self.trainer_epoch is not None else self.epoch

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(self.num_items)
        else:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.split, "order", epoch))
            order = torch.randperm(self.num_items, generator=generator)
        usable = len(order) - len(order) % self.world_size if self.world_size > 1 else len(order)
        return order[self.rank:usable:self.world_size]

    def __len__(self) -> int:
        per_rank = self.num_items // self.world_size if self.world_size > 1 else self.num_items
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        epoch = self.current_epoch()
        order = self._order(epoch)
        for number in range(self.first_batch(), len(self)):
            index = order[number * self.batch_size:(number + 1) * self.batch_size]
            seed = derive_seed(self.seed, self.split, epoch, number, self.rank)
            yield {"split": self.split, "index": index, "seed": seed}


class FixedBatches(IndexBatches):
    """The first ``count`` batches of epoch 0, with their distortions, in every epoch: what a model should
    be able to memorise (``data.overfit_batches``, used by ``debug=overfit``)."""

    def __init__(self, split: str, num_items: int, batch_size: int, seed: int, count: int) -> None:
        super().__init__(split, num_items, batch_size, shuffle=True, seed=seed, drop_last=True)
        self.count = count

    def __len__(self) -> int:
        return min(self.count, super().__len__())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = 0

    def current_epoch(self) -> int:
        return 0


class ResumableLoader(DataLoader):
    """The training loader, resumable inside an epoch: a resumed epoch starts after the batches it had
    already trained on. Lightning restores its loop progress from the checkpoint and counts the batches
    of the current epoch already done; the sampler starts there (``first_batch``), and since every batch
    is a pure function of (seed, epoch, batch number) the rest of the epoch is exactly the uninterrupted
    run's. (Lightning restores a loader's own ``load_state_dict`` only after it has created the epoch's
    iterator, so the position is read from the loop instead; the state below is for the record.)"""

    def __init__(self, sampler: IndexBatches, batches_done: Callable[[], int],
                 epoch: Callable[[], int] | None = None) -> None:
        super().__init__(_PassThrough(), sampler=sampler, batch_size=None)
        sampler.first_batch = batches_done
        sampler.trainer_epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.current_epoch(), "batches_done": int(self.sampler.first_batch())}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to load: the position comes from Lightning's restored loop progress."""


class _PassThrough(Dataset):
    """The sampler already built the batch description; the dataset hands it on unchanged."""

    def __getitem__(self, description: dict) -> dict:
        return description

    def __len__(self) -> int:  # pragma: no cover - length comes from the sampler
        return 0


class DistortedMNIST(L.LightningDataModule):
    """MNIST digits held in memory as uint8, distorted per batch; val/test fixed per seed and cached."""

    def __init__(
        self,
        distortion: Distortion,
        root: str = "data",
        cache_dir: str = ".cache/stnbench",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        num_val: int = 10000,
        seed: int = 0,
        train_mode: str = "fresh",
        download: bool = True,
        name: str | None = None,
        overfit_batches: int = 0,
        verify_checksums: bool = True,
        train_size: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0 or eval_batch_size <= 0:
            raise ConfigError(f"batch sizes must be positive, got batch_size={batch_size}, "
                              f"eval_batch_size={eval_batch_size}")
        if not 0 < num_val < 60000:
            raise ConfigError(f"num_val must be between 1 and 59999 (held out of the 60k train set), got {num_val}")
        if overfit_batches < 0:
            raise ConfigError(f"data.overfit_batches must be >= 0 (0 = off), got {overfit_batches}")
        if train_mode not in TRAIN_MODES:
            raise ConfigError(f"train_mode must be one of {TRAIN_MODES}, got '{train_mode}'")
        if train_size is not None and (train_mode != "fixed" or train_size < 1):
            raise ConfigError(f"data.train_size={train_size} needs data.train_mode=fixed and a positive size "
                              "(the number of images of the one fixed training set; null: one per training digit)")
        self.distortion = distortion
        self.name = name or distortion.name
        self.root, self.cache_dir = str(root), str(cache_dir)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_val, self.seed, self.train_mode, self.download = num_val, seed, train_mode, download
        self.overfit_batches, self.verify_checksums = overfit_batches, verify_checksums
        self.train_size = train_size
        self.mnist_md5: dict[str, str] = {}  # the raw files' checksums: part of the eval-set cache key
        # The test sets, in loader order: "test" (the test images, distortion.for_split("test")), and where those
        # are drawn differently from the training images, the test digits drawn as the training ones too.
        differs = distortion.for_split("test") is not distortion
        self.test_splits: tuple[str, ...] = ("test", TRAIN_COUNTS_TEST) if differs else ("test",)
        self.pools: dict[str, DigitSplit] = {}  # clean digits per split (train/val/test)
        self.fixed: dict[str, DigitSplit] = {}  # pre-rendered images per split (val/test, train if fixed)
        self.homographies: dict[str, torch.Tensor] = {}  # per fixed image its digit's warp (source_warp data)
        self._on_device: dict[tuple[str, str, str], DigitSplit] = {}
        self._homographies_on_device: dict[tuple[str, str], torch.Tensor] = {}

    # ---- description of the generated data, read by models and the cache -------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.distortion.channels, self.distortion.image_size, self.distortion.image_size)

    def dataset_description(self, split: str) -> dict:
        """Everything a fixed eval set depends on: the generator (and its code version), its parameters (all
        of them: a test-only one such as the test digit count too), the seed and split (which decides the split's
        generator, ``generator_of``), and the MNIST files' content. The cache key is a hash of exactly this."""
        description = {"distortion": type(self.distortion).__name__,
                       "version": getattr(self.distortion, "version", 1), "params": vars(self.distortion),
                       "seed": self.seed, "split": split, "num_val": self.num_val, "mnist_md5": self.mnist_md5}
        if split == "train" and self.train_size is not None:
            description["train_size"] = self.train_size
        return description

    # ---- setup ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        root = ensure_mnist(self.root, download=self.download)  # download only; setup() reads the files once
        self.mnist_md5 = verify_mnist(root, check_known=self.verify_checksums, memo_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.pools:
            return
        if not self.mnist_md5:
            self.prepare_data()  # the cache key needs the files' checksums
        train_full = load_mnist(self.root, train=True, download=self.download)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "train/val split"))
        order = torch.randperm(len(train_full), generator=generator)
        self.pools = {
            "train": train_full.subset(order[self.num_val:]),
            "val": train_full.subset(order[:self.num_val]),
            "test": load_mnist(self.root, train=False, download=self.download),
        }
        for split in ("val", *self.test_splits) + (("train",) if self.train_mode == "fixed" else ()):
            self.fixed[split] = self._fixed_set(split)

    def generator_of(self, split: str) -> tuple[str, Distortion]:
        """(the pool its digits come from, the generator that draws its images) of a split: its own digits and
        ``distortion.for_split(split)``; the training counts' test set: the test digits, drawn as training images."""
        if split == TRAIN_COUNTS_TEST:
            return "test", self.distortion.for_split("train")
        return split, self.distortion.for_split(split)

    def render_split(self, split: str, seed: int) -> dict[str, torch.Tensor]:
        """Render ``split`` once, in chunks, from one CPU generator (device-independent): one image per digit,
        or ``train_size`` images for the training split (image i is digit i mod pool size). ``images`` uint8,
        ``labels``, and for data with ``source_warp`` each image's ``homography`` (:meth:`source_of`)."""
        source, distortion = self.generator_of(split)
        pool = self.pools[source]
        count = self.train_size if split == "train" and self.train_size else len(pool)
        generator = torch.Generator().manual_seed(seed)
        parts: dict[str, list[torch.Tensor]] = {"images": [], "labels": [], "homography": []}
        for start in range(0, count, RENDER_CHUNK):
            index = torch.arange(start, min(start + RENDER_CHUNK, count)) % len(pool)
            rendered = distortion.render(pool, index, generator)
            parts["images"].append(quantize(rendered.images))
            parts["labels"].append(rendered.targets)
            if rendered.source_homography is not None:
                parts["homography"].append(rendered.source_homography.float())
        return {name: torch.cat(tensors) for name, tensors in parts.items() if tensors}

    def _fixed_set(self, split: str) -> DigitSplit:
        seed = derive_seed(self.seed, split, "fixed")
        tensors = cached(self.cache_dir, f"{self.name}-{split}", self.dataset_description(split),
                         lambda: self.render_split(split, seed))
        if "homography" in tensors:
            self.homographies[split] = tensors["homography"]
        return DigitSplit(tensors["images"], tensors["labels"])

    def source_of(self, split: str, index: torch.Tensor, homography: torch.Tensor) -> Source:
        """The clean digits of items ``index`` of ``split`` (item i is digit i mod pool size) and their warps."""
        pool = self._device_copy("pool", self.generator_of(split)[0], index.device)
        return Source(digits_as_float(pool, index % len(pool)), homography)

    # ---- loaders ----------------------------------------------------------------------------------
    def _sampler(self, split: str, batch_size: int, shuffle: bool) -> IndexBatches:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return IndexBatches(split, self._size(split), batch_size, shuffle, self.seed, drop_last=shuffle, rank=rank,
                            world_size=world)

    def images_in(self, split: str, batches: int) -> int:
        """Images of an evaluation split that ``batches`` batches cover (a cut test set counts fewer)."""
        return min(batches * self.eval_batch_size, self._size(split))

    def _size(self, split: str) -> int:
        """Items a loader draws from: the fixed set's images, else the split's digits."""
        return len(self.fixed[split]) if split in self.fixed else len(self.pools[split])

    def train_dataloader(self) -> DataLoader:
        if self.overfit_batches:
            sampler = FixedBatches("train", self._size("train"), self.batch_size, self.seed, self.overfit_batches)
        else:
            sampler = self._sampler("train", self.batch_size, shuffle=True)
        return ResumableLoader(sampler, self._batches_done, self._epoch if self.trainer is not None else None)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(_PassThrough(), sampler=self._sampler(split, self.eval_batch_size, False), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._eval_loader(split) for split in self.test_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def _epoch(self) -> int:
        """The epoch the trainer is in (Lightning's own count, restored from a checkpoint)."""
        return self.trainer.current_epoch

    def _batches_done(self) -> int:
        """Batches of the current epoch already trained on: 0 when an epoch starts, k when a run resumes
        inside an epoch after k batches (Lightning's restored loop progress)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return done if done < trainer.num_training_batches else 0

    # ---- indices -> images, on the training device ------------------------------------------------
    def _device_copy(self, kind: str, split: str, device: torch.device) -> DigitSplit:
        key = (kind, split, str(device))
        if key not in self._on_device:
            source = self.pools[split] if kind == "pool" else self.fixed[split]
            self._on_device[key] = DigitSplit(source.images.to(device), source.labels.to(device))
        return self._on_device[key]

    def _device_homographies(self, split: str, device: torch.device) -> torch.Tensor:
        """A fixed split's homographies on ``device``, moved there once (as ``_device_copy`` does the images)."""
        key = (split, str(device))
        if key not in self._homographies_on_device:
            self._homographies_on_device[key] = self.homographies[split].to(device)
        return self._homographies_on_device[key]

    def materialize(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """Batch description -> (float images [B, C, H, W] in [0, 1], targets), and a third item, the batch's
        :class:`~stnbench.source.Source`, for data with ``source_warp``."""
        split, index = batch["split"], batch["index"]
        device = index.device
        if split in self.fixed:
            stored = self._device_copy("fixed", split, device)
            images, targets = stored.images[index].float().div_(255.0), stored.labels[index]
            if split not in self.homographies:
                return images, targets
            return images, targets, self.source_of(split, index, self._device_homographies(split, device)[index])
        generator = torch.Generator(device=device).manual_seed(int(batch["seed"]))
        source, distortion = self.generator_of(split)
        rendered = distortion.render(self._device_copy("pool", source, device), index, generator)
        images = quantize(rendered.images).float().div_(255.0)
        if rendered.source_homography is None:
            return images, rendered.targets
        return images, rendered.targets, self.source_of(split, index, rendered.source_homography)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "index" in batch:
            return self.materialize(batch)
        return batch

    def preview(self, split: str = "val", count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """A fixed handful of evaluation images, e.g. for the TensorBoard image grid."""
        stored = self.fixed[split]
        return stored.images[:count].float().div(255.0), stored.labels[:count]

    def preview_source(self, split: str = "val", count: int = 16) -> Source | None:
        """The :class:`~stnbench.source.Source` of :meth:`preview`'s images, or None (data without ``source_warp``)."""
        if split not in self.homographies:
            return None
        index = torch.arange(min(count, len(self.fixed[split])))
        return self.source_of(split, index, self.homographies[split][index])
