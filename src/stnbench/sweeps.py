"""Resumable sweeps: skip finished runs, resume interrupted ones, record failures without stopping a sweep.

A sweep's run folders are named by the runs' choices (``configs/hydra/default.yaml``), so running the same
sweep command again finds the same folders. What each folder holds decides what happens:

* ``results.json`` with ``status: finished`` and the same config  -> skipped (its results are returned);
* ``checkpoints/last.ckpt`` but no finished results                -> resumed from that checkpoint;
* nothing                                                          -> trained from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from stnbench.build import key_choices, write_json
from stnbench.data.distortions import ConfigError

log = logging.getLogger("stnbench")

# Keys that say where things are written or how a run is named, not what it computes.
_UNHASHED = ("paths", "ckpt_path", "run_name", "sweep_name", "hydra", "logger", "callbacks")


class RunFolderTaken(ConfigError):
    """Two different configs map to one run folder: the older results must not be overwritten."""


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def config_hash(cfg: DictConfig) -> str:
    """A short hash of what the run computes, to tell a re-run of the same run from a name clash."""
    content = OmegaConf.to_container(cfg, resolve=True)
    for key in _UNHASHED:
        content.pop(key, None)
    for key in ("root", "cache_dir"):
        content.get("data", {}).pop(key, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_results(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "results.json").read_text())
    except (OSError, ValueError):
        return None


def finished_results(cfg: DictConfig) -> dict | None:
    """The stored results if this exact run already finished in its folder, else None.

    Only when no ``ckpt_path`` was given: asking to continue from a checkpoint means "train more"."""
    if not cfg.get("skip_finished", True) or cfg.get("ckpt_path"):
        return None
    run_dir = Path(cfg.paths.run_dir)
    stored = read_results(run_dir)
    if not stored or stored.get("status") != "finished":
        return None
    if stored.get("config_hash") not in (None, config_hash(cfg)):
        raise RunFolderTaken(
            f"run folder '{run_dir}' already holds a finished run with a different configuration. "
            "Runs of one sweep are named by their choices (run_name) plus their other overrides; "
            "pick a new sweep_name=..., delete the folder, or add the differing key to run_name.")
    log.info("Skipping finished run %s (delete its results.json to run it again)", run_dir)
    return {**stored, "skipped": True}


def with_resume_checkpoint(cfg: DictConfig) -> DictConfig:
    """Point ``ckpt_path`` at the folder's ``last.ckpt`` when an earlier attempt was interrupted."""
    if not cfg.get("skip_finished", True) or cfg.get("ckpt_path"):
        return cfg
    last = Path(cfg.paths.run_dir) / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.info("Resuming unfinished run from %s", last)
        with open_dict(cfg):
            cfg.ckpt_path = str(last)
    return cfg


def record_failure(cfg: DictConfig, error: BaseException) -> dict:
    """Write ``status: failed`` and the error into the run's results.json (and the traceback beside it)."""
    run_dir = Path(cfg.paths.run_dir)
    message = f"{type(error).__name__}: {error}"
    results: dict[str, Any] = {"status": "failed", "error": message, "run_dir": str(run_dir)}
    try:
        results.update({f"choice/{key}": value for key, value in key_choices(cfg).items()})
    except Exception:  # a broken config may not even give its choices
        pass
    if isinstance(error, RunFolderTaken):  # never overwrite the other run's results
        log.error("Run failed: %s", message)
        return results
    write_json(run_dir / "results.json", results)
    (run_dir / "error.log").write_text("".join(traceback.format_exception(error)))
    log.error("Run failed (recorded in %s, the sweep goes on): %s", run_dir / "results.json", message)
    return results


def failed_runs(sweep_dir: Path) -> list[tuple[Path, str]]:
    return [(path.parent, results.get("error", "?")) for path in sorted(Path(sweep_dir).rglob("results.json"))
            if (results := read_results(path.parent)) and results.get("status") == "failed"]


try:  # Hydra callbacks are optional at import time (the report uses this module without Hydra running)
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class SweepSummary(Callback):
    """At the end of a multirun, list the runs that failed (each is recorded in its results.json)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failures = failed_runs(sweep_dir)
        for run_dir, error in failures:
            log.error("FAILED %s: %s", run_dir, error)
        log.info("Sweep %s: %d failed run(s). Summarise it with: stnbench-report %s",
                 sweep_dir, len(failures), sweep_dir)
