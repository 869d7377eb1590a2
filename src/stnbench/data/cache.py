"""Fixed evaluation sets, generated once per (dataset config, seed, split) and cached on disk.

The cache key is a hash of exactly what determines the images, so a changed config can never read a
stale file. Each file also stores a checksum of its tensors: a truncated or damaged file is detected on
load and rebuilt instead of silently feeding wrong images to an evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from stnbench.errors import StorageError

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def cache_key(description: dict) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **description}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _load_verified(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        tensors, ok = stored["tensors"], stored["key"] == key
        ok = ok and stored["checksum"] == tensor_checksum(tensors)
    except Exception as error:  # truncated, not a torch file, missing fields ...
        log.warning("Cache file %s is unreadable (%s); rebuilding it.", path, error)
        return None
    if not ok:
        log.warning("Cache file %s failed its checksum; rebuilding it.", path)
        return None
    return tensors


def cached(
    cache_dir: str | Path, name: str, description: dict, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Return the tensors for ``description``, building and saving them on a miss or a damaged file."""
    key = cache_key(description)
    path = Path(cache_dir).expanduser() / f"{name}-{key}.pt"
    if path.exists():
        tensors = _load_verified(path, key)
        if tensors is not None:
            return tensors
    tensors = build()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "description": description, "checksum": tensor_checksum(tensors),
                    "tensors": tensors}, tmp)
        os.replace(tmp, path)  # atomic: concurrent runs of a sweep never see a half-written file
    except OSError as error:
        raise StorageError(f"cannot write the evaluation-set cache '{path.parent}' ({error.strerror or error}); "
                           "set STNBENCH_CACHE_DIR (or paths.cache_dir=...) to a writable folder") from None
    return tensors
