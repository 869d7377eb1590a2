"""Fixed evaluation sets of the suite: bit-identical across processes for a seed, different across seeds,
cached once, and rebuilt when the cache file is damaged."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stnbench.data.cache import cache_key
from stnbench.data.datamodule import DistortedMNIST
from test_data_suite import SUITE, distortion_from_config

NUM_VAL = 500  # the same as the end-to-end training tests, so they share the session cache


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    return digest.hexdigest()


def stamp(path: Path) -> tuple[int, int]:
    """Changes whenever the file is written again (in place or replaced)."""
    return path.stat().st_mtime_ns, path.stat().st_ino


def build(name: str, root, cache, seed: int = 1) -> DistortedMNIST:
    distortion, _ = distortion_from_config(name)
    datamodule = DistortedMNIST(distortion, root=str(root), cache_dir=str(cache), num_val=NUM_VAL, seed=seed,
                                download=False, name=name)
    datamodule.setup("fit")
    return datamodule


# One separate Python process renders every dataset's val/test sets for seeds 1 and 2 into its own cache.
CHILD = """
import json, sys, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_data_cache import SUITE, build, fingerprint
out = {{}}
for name in SUITE:
    for seed in (1, 2):
        dm = build(name, {root!r}, {cache!r}, seed)
        out[f"{{name}}/{{seed}}"] = {{s: fingerprint(dm.fixed[s].images, dm.fixed[s].labels)
                                     for s in ("val", "test")}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def other_process(mnist_root, tmp_path_factory) -> tuple[dict, Path]:
    cache = tmp_path_factory.mktemp("child-cache")
    code = CHILD.format(tests=str(Path(__file__).parent), root=str(mnist_root), cache=str(cache))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STNBENCH_DATA_DIR": str(mnist_root)})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), cache


@pytest.mark.parametrize("name", SUITE)
def test_a_seed_fixes_val_and_test_bit_for_bit_across_processes(name, mnist_root, cache_dir, other_process):
    child, child_cache = other_process
    here = build(name, mnist_root, cache_dir, seed=1)
    for split in ("val", "test"):
        assert fingerprint(here.fixed[split].images, here.fixed[split].labels) == child[f"{name}/1"][split]
        assert child[f"{name}/1"][split] != child[f"{name}/2"][split], "another seed, other images"
    # The cache key is a pure function of the config (no object ids or memory addresses in it).
    ours = {path.name for path in Path(cache_dir).glob(f"{name}-*.pt")}
    theirs = {path.name for path in child_cache.glob(f"{name}-*.pt")}
    assert len(theirs) == 4 and len(theirs & ours) == 2, "seed 1 maps to the same val and test cache files"


@pytest.mark.parametrize("name", SUITE)
def test_the_cache_is_reused_and_a_damaged_file_is_rebuilt(name, mnist_root, cache_dir, monkeypatch):
    first = build(name, mnist_root, cache_dir)  # usually already cached by the test above
    key = {split: first.dataset_description(split) for split in ("val", "test")}
    files = {split: Path(cache_dir) / f"{name}-{split}-{cache_key(key[split])}.pt" for split in key}
    stamps = {split: stamp(path) for split, path in files.items()}
    rendered = []
    original = DistortedMNIST.render_split

    def counting(self, split, seed):
        rendered.append(split)
        return original(self, split, seed)

    monkeypatch.setattr(DistortedMNIST, "render_split", counting)
    again = build(name, mnist_root, cache_dir)
    assert rendered == [], "a cached set was rendered again"
    assert all(stamp(p) == stamps[s] for s, p in files.items()), "a cache file was rewritten"
    assert torch.equal(again.fixed["test"].images, first.fixed["test"].images)

    intact = files["val"].read_bytes()
    files["val"].write_bytes(intact[: len(intact) // 2])  # a truncated write
    rebuilt = build(name, mnist_root, cache_dir)
    assert rendered == ["val"], "only the damaged set is rendered again"
    assert files["val"].read_bytes() == intact, "the damaged file was rebuilt, bit for bit"
    assert torch.equal(rebuilt.fixed["val"].images, first.fixed["val"].images)
    assert stamp(files["test"]) == stamps["test"], "the intact file is kept"
