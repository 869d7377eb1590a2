"""A run's identity: what a run computes, defined once.

The identity is the resolved config minus what cannot change a result: where things are written, how a run
is logged or shown, when a resumable checkpoint is taken, which kind of hardware runs the same computation.
Everything that can change a number stays in, callbacks included: ``model_checkpoint.monitor`` picks the
checkpoint that is tested, ``early_stopping`` and gradient clipping change training, and ``trainer.devices`` /
``num_nodes`` set the effective batch (every rank draws a full batch).

Every user of the concept asks this module and nothing else:

* run folder names: :func:`folder_tag` names a sweep's run by each override that is part of the identity;
* resume and sweep re-run checks: :func:`differences` between a stored run and the one about to start;
* the report's rows: :func:`configuration` (the identity without the seed) and :func:`differences`;
* the glimpse pictures: :func:`test_images` (the part of the identity the fixed test images depend on).

A key added to stnbench after a run was made is absent from that run's stored config. Where its default
changed what runs compute (``BEFORE_ADDED``: e.g. the RTS/TC layout of the ST models), the stored config is
compared as if it held the value that reproduces the older code. Any other such key is not a difference
when the other run has it at its default, that is, when neither command line set it: the shipped default
then stands for the behaviour of the code before the key existed. A key that either command
line set (``+trainer.foo=1``, or ``callbacks.model_checkpoint=null``, which removes keys) and that only one
side has is a difference; so is any such key when a run's command line is not known, and so is a whole callback
that only one run has (``callbacks/weight_averaging=ema``: the test scores other weights).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Top-level keys that say where things go, how they are shown, or when a resumable checkpoint is written
# (resuming from any checkpoint ends with the same weights), and whether the run is tested at the end.
OUTSIDE = frozenset({"paths", "hydra", "logger", "run_name", "sweep_name", "task_name", "skip_finished",
                     "ckpt_path", "optuna_trials", "checkpoint_minutes", "test_after_fit"})
# Keys of a section that do not change what it computes.
OUTSIDE_IN = {
    "data": frozenset({"root", "cache_dir", "download", "verify_checksums"}),
    "data.distortion": frozenset({"root"}),  # a generator that reads MNIST itself (Sønderby's distractor bank)
    # The same computation on another kind of hardware, or logged and shown differently; the device *count*
    # (devices, num_nodes) is not here: it changes the effective batch.
    "trainer": frozenset({"default_root_dir", "logger", "callbacks", "enable_progress_bar", "enable_model_summary",
                          "log_every_n_steps", "profiler", "accelerator", "strategy", "deterministic", "benchmark"}),
}
# Callbacks that only observe a run (their whole entry is outside the identity), by class name in Lightning
# (any module path) or by full target.
OBSERVING_CALLBACKS = frozenset({"LearningRateMonitor", "ModelSummary", "RichModelSummary", "RichProgressBar",
                                 "TQDMProgressBar", "DeviceStatsMonitor", "stnbench.callbacks.EpochSummary"})
# Callback targets that compute exactly what another does (a subclass that only mends a resume): one identity.
SAME_COMPUTATION = {"stnbench.callbacks.EarlyStopping": "lightning.pytorch.callbacks.EarlyStopping"}
# ModelCheckpoint's keys that say where and how files are written; monitor, mode, save_top_k and the
# checkpointing interval decide which weights are tested, so they stay in.
CHECKPOINT_FILE_KEYS = frozenset({"dirpath", "filename", "save_last", "verbose", "auto_insert_metric_name",
                                  "enable_version_counter"})
SEED_KEYS = ("seed", "data.seed")  # what tells the runs of one configuration apart
# Keys stnbench gained after runs were made, whose default computes something else than the code before them
# did: a config without one is compared as if it held this value (what the older code did). Add a key here
# whenever a new key's default changes a result.
BEFORE_ADDED: dict[str, Any] = {
    "model.output_pool": 1,                # issue 21: ST models on RTS/TC pool the transformer's output by 2
    "model.classifier.ceil_mode": False,   # ... and their CNN's max-pools round up
    "model.from_source": False,            # issue 25: IC-STN starts from the perturbation, on the clean digit
}
# Overrides already shown in a run's folder name (run_name), or by its sweep's folder (sweep_name).
NAMED = frozenset({"data", "model", "model/transform", "seed", "experiment", "hparams_search", "sweep_name"})
# Config groups whose options only change logging, launching or paths.
OUTSIDE_GROUPS = ("logger", "hydra", "paths")
MAX_TAG = 120  # folder names stay far below the file system's 255 bytes
ABSENT = "<absent>"


def _is_lightning(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(("lightning.", "pytorch_lightning."))


def observes(callback: Any) -> bool:
    """A callback config that cannot change a result (or an entry switched off with ``null``)."""
    if not isinstance(callback, Mapping):
        return True  # null: no callback at all
    target = callback.get("_target_")
    name = str(target).rpartition(".")[2]
    return target in OBSERVING_CALLBACKS or (_is_lightning(target) and name in OBSERVING_CALLBACKS)


def _is_checkpoint(callback: Mapping) -> bool:
    return str(callback.get("_target_", "")).rpartition(".")[2] == "ModelCheckpoint"


def identity(config: Mapping) -> dict:
    """The resolved config (a plain dict) without the keys that cannot change what a run computes."""
    content = json.loads(json.dumps(dict(config), default=str))  # a deep copy with plain values
    for key in OUTSIDE:
        content.pop(key, None)
    for path, keys in OUTSIDE_IN.items():
        node = _node(content, path)
        for key in keys:
            node.pop(key, None)
    callbacks = content.get("callbacks")
    if isinstance(callbacks, dict):
        content["callbacks"] = {
            name: {k: SAME_COMPUTATION.get(v, v) if k == "_target_" else v for k, v in entry.items()
                   if not (_is_checkpoint(entry) and k in CHECKPOINT_FILE_KEYS)}
            for name, entry in callbacks.items() if not observes(entry)}
    return content


def _node(content: dict, path: str) -> dict:
    node: Any = content
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def configuration(config: Mapping) -> dict:
    """The identity without the seed: what the runs of one report row share."""
    flat = flatten(identity(config))
    return {key: value for key, value in flat.items() if key not in SEED_KEYS}


def comparable(config: Mapping, *, across_seeds: bool = False) -> dict[str, Any]:
    """The flat identity (``across_seeds``: the configuration) as two runs are compared: keys of
    ``BEFORE_ADDED`` that a config lacks hold the value the code had before them."""
    flat = configuration(config) if across_seeds else flatten(identity(config))
    return {**BEFORE_ADDED, **flat}


def identity_hash(config: Mapping, *, across_seeds: bool = False) -> str:
    """A short hash of the identity (``across_seeds``: of the configuration). Equal hashes mean the same run;
    runs made by different stnbench versions can differ in hash and still be the same (see the module)."""
    content = configuration(config) if across_seeds else flatten(identity(config))
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_images(config: Mapping) -> dict:
    """The part of the identity a run's fixed test images depend on besides the seed: the generator and its
    parameters, and the validation split size (``DistortedMNIST.dataset_description`` keys its cache by
    these plus the seed, the split and the MNIST files). How training batches are drawn is not in it."""
    data = identity(config).get("data") or {}
    return {"distortion": data.get("distortion"), "num_val": data.get("num_val")}


def flatten(content: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values, an empty dict is a value."""
    if not isinstance(content, dict):
        return {prefix: content}
    flat: dict[str, Any] = {}
    for key, value in content.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return flat


# ---- comparing two runs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """A run's resolved config and the keys its command line set by value (``None``: not known)."""

    config: Mapping
    set_keys: frozenset[str] | None = field(default=frozenset())


def set_keys(overrides: Iterable[str], choices: Iterable[str]) -> frozenset[str]:
    """The config keys a command line set by value (``optimizer.lr=0.1``, ``+foo.bar=1``), not by choosing a
    config group option (``model=cnn``: ``choices`` are the group names, e.g. Hydra's runtime.choices)."""
    groups = set(choices)
    keys = set()
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        if key and key not in groups and not key.startswith("hydra."):
            keys.add(key.replace("/", "."))
    return frozenset(keys)


def _was_set(key: str, keys: frozenset[str] | None) -> bool:
    if keys is None:
        return True  # unknown command line: a key only one side has is a difference
    return any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)


def differences(old: Run, new: Run, *, across_seeds: bool = False) -> list[str]:
    """``key: old -> new`` for every key of the identity in which two runs differ (see the module docstring
    for keys only one of them has); ``across_seeds``: of their configurations (the seed does not count)."""
    a, b = comparable(old.config, across_seeds=across_seeds), comparable(new.config, across_seeds=across_seeds)
    shown = []
    for key in sorted(set(a) | set(b)):
        if key in a and key in b:
            if a[key] != b[key] and not _legacy(a[key]):
                shown.append(f"{key}: {a[key]!r} -> {b[key]!r}")
        elif (_was_set(key, old.set_keys) or _was_set(key, new.set_keys)  # e.g. callbacks.x=null removes x
              or _whole_callback(key, b if key in a else a)):
            shown.append(f"{key}: {a.get(key, ABSENT)!r} -> {b.get(key, ABSENT)!r}")
    return shown


def _whole_callback(key: str, other: Mapping[str, Any]) -> bool:
    """A key of a callback the other run has no entry of at all: a callback one run has and the other lacks
    (``callbacks/weight_averaging=ema``, a group option, which ``set_keys`` does not count), not a key a newer
    stnbench added to a callback both have."""
    parts = key.split(".")
    if parts[0] != "callbacks" or len(parts) < 2:
        return False
    entry = f"callbacks.{parts[1]}"
    return not any(k == entry or k.startswith(entry + ".") for k in other)


def _legacy(value: Any) -> bool:
    """Folders written before stnbench stored resolved configs hold ``${...}``: not comparable, not drift."""
    return isinstance(value, str) and "${" in value


# ---- folder names ----------------------------------------------------------------------------------------
def in_identity(key: str, config: Mapping | None = None) -> bool:
    """Whether an override of ``key`` (``trainer.max_epochs``, a group such as ``logger``) can change what a
    run computes. Callback entries are judged by their target in ``config`` (unknown: they can)."""
    key = key.lstrip("+~")
    parts = key.replace("/", ".").split(".")
    if parts[0] in OUTSIDE or parts[0] in OUTSIDE_GROUPS:
        return False
    for path, keys in OUTSIDE_IN.items():
        depth = path.count(".") + 1
        if ".".join(parts[:depth]) == path and len(parts) > depth and parts[depth] in keys:
            return False
    if parts[0] == "callbacks" and len(parts) > 1:
        entry = ((config or {}).get("callbacks") or {}).get(parts[1], {}) if isinstance(config, Mapping) else {}
        if isinstance(entry, Mapping) and entry and observes(entry):
            return False
        if isinstance(entry, Mapping) and _is_checkpoint(entry) and len(parts) > 2 and parts[2] in CHECKPOINT_FILE_KEYS:
            return False
    return True


def folder_tag(overrides: Iterable[str], config: Mapping | None = None) -> str:
    """``_key=value,...`` of a run's overrides that are part of its identity and not already in its name, so
    two configurations of one sweep never share a folder and a re-run of the same command finds its folders.
    Readable; a tag longer than MAX_TAG keeps its start and ends in a hash of the whole."""
    parts = []
    for override in overrides:
        key, _, value = override.partition("=")
        bare = key.lstrip("+~")
        if bare in NAMED or not in_identity(bare, config):
            continue
        parts.append(f"{bare}={value}")
    if not parts:
        return ""
    tag = re.sub(r"[^\w.=,+-]", "_", ",".join(sorted(parts)))
    if len(tag) <= MAX_TAG:
        return f"_{tag}"
    digest = hashlib.sha256(tag.encode()).hexdigest()[:8]
    return f"_{tag[:MAX_TAG - 10]}..{digest}"
