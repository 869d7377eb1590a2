"""A run's folder: which one a run may use, what it holds, and the record a run leaves there.

Rules (each tested):
* A new run claims its folder exclusively; two runs started in the same second get ``<name>`` and
  ``<name>-2``, never one shared folder.
* A folder that already holds a run (a sweep re-run, or ``ckpt_path=<run>/checkpoints/...``) is only
  reused by the same configuration: the whole computed config is compared with the stored one and any
  difference outside paths/logging/device keys is refused, naming the keys, before anything is written.
* ``.hydra/config.yaml`` (the resolved config), ``hydra.yaml`` and ``overrides.yaml`` are written by us,
  after those checks, so a rejected command never overwrites a run's record (Hydra's own writing is off).
* While a run trains it holds an exclusive lock on ``<run>/.lock``: a second process cannot resume it.
* ``results.json`` is strict JSON: non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from stnbench.errors import CheckpointError, RunFolderTaken, StorageError

log = logging.getLogger("stnbench")

# Keys that say where things are written, how they are logged or named, or which device runs them: they
# may differ between a run and its resumption. Everything else is what the run computes.
NOT_COMPUTED = ("paths", "ckpt_path", "run_name", "sweep_name", "hydra", "logger", "callbacks", "skip_finished",
                "task_name", "test_after_fit", "optuna_trials", "checkpoint_minutes")
NOT_COMPUTED_DATA = ("root", "cache_dir")
NOT_COMPUTED_TRAINER = ("accelerator", "devices", "num_nodes", "strategy", "default_root_dir", "logger",
                        "callbacks", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                        "deterministic", "benchmark", "profiler")
MAX_SUFFIX = 100


def computed_config(config: DictConfig | dict) -> dict:
    """The resolved config without the keys that do not change what a run computes (see NOT_COMPUTED)."""
    content = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else dict(config)
    content = json.loads(json.dumps(content, default=str))  # a deep copy with plain values
    for key in NOT_COMPUTED:
        content.pop(key, None)
    for key in NOT_COMPUTED_DATA:
        (content.get("data") or {}).pop(key, None)
        ((content.get("data") or {}).get("distortion") or {}).pop(key, None)  # a generator reading MNIST itself
    for key in NOT_COMPUTED_TRAINER:
        (content.get("trainer") or {}).pop(key, None)
    return content


def config_hash(config: DictConfig | dict, without: tuple[str, ...] = ()) -> str:
    """A short hash of what a run computes (``without=("seed",)``: of its configuration across seeds)."""
    content = computed_config(config)
    for key in without:
        content.pop(key, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def flatten(content: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(content, dict):
        return {prefix: content}
    flat: dict[str, Any] = {}
    for key, value in content.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return flat


def config_drift(stored: dict, current: DictConfig | dict) -> list[str]:
    """``key: stored -> current`` for every computed key whose value differs."""
    old, new = flatten(computed_config(stored)), flatten(computed_config(current))
    return [f"{key}: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
            for key in sorted(set(old) | set(new))
            if old.get(key, "<absent>") != new.get(key, "<absent>") and not _interpolation(old.get(key))]


def _interpolation(value: Any) -> bool:
    """Folders written before stnbench stored resolved configs hold ``${...}``: not comparable, not drift."""
    return isinstance(value, str) and "${" in value


def unwritable(what: str, error: OSError) -> StorageError:
    """The one message for an output folder that cannot be written: what failed, why, and what to set."""
    return StorageError(f"cannot write {what} ({error.strerror or error}); set STNBENCH_OUTPUT_DIR "
                        "(or paths.output_dir=...) to a writable folder")


def strict_json(payload: Any) -> Any:
    """NaN and infinities become None: results.json must parse as standard JSON everywhere."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {str(k): strict_json(v) for k, v in payload.items()}
    if isinstance(payload, list | tuple):
        return [strict_json(v) for v in payload]
    return payload


def write_json(path: Path, payload: dict) -> None:
    """Write atomically (a reader never sees half a file), as strict JSON."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(strict_json(payload), indent=2, sort_keys=True, default=str,
                                  allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as error:
        raise unwritable(f"'{path}'", error) from None


def read_results(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def stored_config(run_dir: Path) -> dict | None:
    """The resolved config a run folder was started with, or None for a folder no run has claimed."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged record must not be mistaken for a free folder
        return {"<unreadable .hydra/config.yaml>": str(path)}


@dataclass
class RunFolder:
    """The folder a run writes to, with what it found there; ``lock`` is held until the process ends."""

    path: Path
    recorded: bool = False  # the folder already holds this run's .hydra/ record (a resume or a sweep re-run)
    finished: dict | None = None  # results of a finished run of this config (a sweep re-run skips it)
    resume_from: str | None = None
    lock: Any = field(default=None, repr=False)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _lock(folder: Path) -> Any | None:
    """An exclusive lock on ``<folder>/.lock`` (released by the OS if the process dies), or None if taken."""
    handle = open(folder / ".lock", "a")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(f"run folder '{folder}'", error) from None


def _checkpoint_config(path: str) -> dict:
    from stnbench.build import load_checkpoint
    from stnbench.module import CONFIG_KEY

    return load_checkpoint(path)[CONFIG_KEY] or {}


def _refuse_drift(stored: dict, cfg: DictConfig, what: str, error: type[Exception]) -> None:
    drift = config_drift(stored, cfg)
    if drift:
        shown = "; ".join(drift[:8]) + (f"; ... ({len(drift)} keys)" if len(drift) > 8 else "")
        raise error(f"{what} was made with another configuration ({shown}). Resume with the run's own "
                    "overrides (its .hydra/overrides.yaml), or start a new run / pick a new sweep_name.")


def open_run_folder(cfg: DictConfig, *, new_run: bool) -> RunFolder:
    """Decide, check and lock the folder of this run; see the module docstring for the rules.

    ``new_run``: a single run without ``ckpt_path`` (its timestamped folder must be fresh). Otherwise the
    folder is a sweep's deterministic one or the folder of the checkpoint being resumed.
    """
    base = Path(cfg.paths.run_dir)
    explicit = cfg.get("ckpt_path")
    if explicit:
        _refuse_drift(_checkpoint_config(explicit), cfg, f"checkpoint '{explicit}'", CheckpointError)
    candidates = [base] + ([base.with_name(f"{base.name}-{i}") for i in range(2, MAX_SUFFIX)] if new_run else [])
    for folder in candidates:
        stored = stored_config(folder)
        if stored is not None and new_run:
            continue  # another run's folder (started in the same second with the same name)
        if stored is not None:
            _refuse_drift(stored, cfg, f"run folder '{folder}'", RunFolderTaken)
        _make_folder(folder)
        lock = _lock(folder)
        if lock is None:
            if new_run:
                continue
            raise RunFolderTaken(f"run folder '{folder}' is in use by another stnbench process; wait for it "
                                 "to end or pick a new sweep_name")
        if new_run and stored_config(folder) is not None:  # claimed between our look and our lock
            lock.close()
            continue
        run = RunFolder(folder, recorded=stored is not None, lock=lock)
        if not explicit and cfg.get("skip_finished", True):
            results = read_results(folder)
            if results and results.get("status") == "finished":
                run.finished = {**results, "skipped": True}
            elif (folder / "checkpoints" / "last.ckpt").is_file():
                last = str(folder / "checkpoints" / "last.ckpt")
                try:
                    _refuse_drift(_checkpoint_config(last), cfg, f"checkpoint '{last}'", RunFolderTaken)
                except Exception:
                    run.release()
                    raise
                run.resume_from = last
        return run
    raise RunFolderTaken(f"no free run folder next to '{base}' after {MAX_SUFFIX} tries")


def point_run_at(cfg: DictConfig, run: RunFolder) -> None:
    """Make the config (and the log file) use the folder actually claimed, and the checkpoint to resume."""
    with open_dict(cfg):
        if str(run.path) != str(cfg.paths.run_dir):
            cfg.paths.run_dir = str(run.path)
        if run.resume_from:
            cfg.ckpt_path = run.resume_from
    for handler in logging.getLogger().handlers:  # Hydra's file handler opens its file lazily (delay: true)
        if isinstance(handler, logging.FileHandler):
            name = Path(handler.baseFilename).name
            if Path(handler.baseFilename).parent != run.path and handler.stream is None:
                handler.baseFilename = str(run.path / name)


def save_run_record(cfg: DictConfig) -> None:
    """``.hydra/``: the resolved config, Hydra's own config and the command-line overrides of this run."""
    from hydra.core.hydra_config import HydraConfig

    folder = Path(cfg.paths.run_dir) / ".hydra"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), folder / "config.yaml")
        if HydraConfig.initialized():
            hydra_cfg = HydraConfig.get()
            OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}),
                           folder / "hydra.yaml")
            OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")
    except OSError as error:
        raise unwritable(f"'{folder}'", error) from None


def remove_if_empty(folder: str | Path) -> None:
    """A run rejected before it started leaves no empty folder behind (Hydra creates it before the checks)."""
    try:
        Path(folder).rmdir()  # only succeeds on an empty folder
    except OSError:
        pass


try:  # Hydra callbacks are optional at import time
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[misc,assignment]


class CheckOutputDir(_HydraCallback):
    """Before Hydra creates any run folder: the output folder must be writable, or the user hears which
    variable to set (instead of Hydra's traceback from deep inside its launcher)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        paths = config.get("paths")
        if not paths or not paths.get("output_dir"):
            return
        folder = Path(str(paths.output_dir)).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            message = unwritable(f"to the output folder '{folder}'", error)
            raise SystemExit(f"stnbench-{config.get('task_name', 'train')}: error: {message}") from None
