"""What a run folder holds, read and written in one place.

* ``results.json``: strict JSON (non-finite numbers as ``null``), written atomically. A finished result is only
  ever replaced by a run that finishes again: the outcome of any other attempt in a folder holding a finished
  result (a resume that failed, a ``skip_finished=false`` re-run that was interrupted) is appended to
  ``attempts.jsonl`` beside it instead.
* ``.hydra/config.yaml`` (the resolved config) and ``overrides.yaml`` / ``hydra.yaml`` (the command line).
* ``checkpoints/best.ckpt`` and ``last.ckpt``: :func:`checkpoint_dir` is the one place that says where.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from stnbench.errors import CheckpointError, StorageError

log = logging.getLogger("stnbench")

RESULTS = "results.json"
ATTEMPTS = "attempts.jsonl"
CONFIG_KEY = "stnbench_config"  # where checkpoints keep the config that made them
LAST, BEST = "last.ckpt", "best.ckpt"


# ---- checkpoints -----------------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's checkpoints live: resume, skip, the report and the pictures all look here."""
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / LAST


def best_checkpoint(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / BEST


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run folder of ``<run>/checkpoints/<name>.ckpt``; None for a checkpoint kept anywhere else."""
    path = Path(str(checkpoint)).expanduser()
    return path.parent.parent if path.parent.name == checkpoint_dir(".").name else None


def load_checkpoint(path: str | Path) -> dict:
    """A stnbench checkpoint (weights and the config that made them), or one line saying what is wrong."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; pass ckpt_path=<run>/checkpoints/{LAST} "
                              f"or {BEST} of a finished run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"checkpoint '{path}' is unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"'{path}' is not a stnbench checkpoint (no stored config or weights)")
    return checkpoint


# ---- JSON ------------------------------------------------------------------------------------------------
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


# ---- results ---------------------------------------------------------------------------------------------
def read_results(run_dir: str | Path) -> dict | None:
    try:
        results = json.loads((Path(run_dir) / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def is_finished(results: dict | None) -> bool:
    return bool(results) and results.get("status") == "finished"


def write_results(run_dir: str | Path, results: dict) -> Path:
    """Write a run's ``results.json``, unless it would replace a finished result with one that is not: that
    outcome goes to ``attempts.jsonl`` beside it (one JSON line per attempt). Returns the file written."""
    run_dir = Path(run_dir)
    if results.get("status") != "finished" and is_finished(read_results(run_dir)):
        path = run_dir / ATTEMPTS
        try:
            with path.open("a") as handle:
                handle.write(json.dumps(strict_json(results), sort_keys=True, default=str, allow_nan=False) + "\n")
        except OSError as error:
            raise unwritable(f"'{path}'", error) from None
        log.warning("This attempt ended %s; the finished result in %s is kept (the attempt is recorded in %s)",
                    results.get("status"), run_dir / RESULTS, path)
        return path
    write_json(run_dir / RESULTS, results)
    return run_dir / RESULTS


# ---- the command line and config of a run ----------------------------------------------------------------
def stored_config(run_dir: str | Path) -> dict | None:
    """The resolved config a run folder was started with, or None for a folder no run has claimed."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged record must not be mistaken for a free folder
        return {"<unreadable .hydra/config.yaml>": str(path)}
    return config if isinstance(config, dict) else {"<unreadable .hydra/config.yaml>": str(path)}


def stored_command(run_dir: str | Path) -> tuple[list[str], list[str]] | None:
    """(overrides, config group names) of the command that made a run, from its ``.hydra/``; None if unknown."""
    folder = Path(run_dir) / ".hydra"
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(folder / "overrides.yaml"))
        hydra = OmegaConf.load(folder / "hydra.yaml")
        choices = list(OmegaConf.to_container(hydra.hydra.runtime.choices, resolve=False))
    except Exception:  # noqa: BLE001 - no or a damaged record: the command is unknown
        return None
    return [str(o) for o in overrides or []], choices
