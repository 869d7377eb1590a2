"""Sweeps: every run's outcome is recorded, the sweep goes on past failures, and its exit code tells.

A sweep's run folders are named by the runs' choices (``configs/hydra/default.yaml``), so running the
same sweep command again finds the same folders; ``stnbench.run_folder`` decides per folder whether the
run is skipped (finished), resumed (``checkpoints/last.ckpt``), trained from scratch, or refused (the
folder holds another configuration's run). Each job appends its outcome to ``<sweep>/runs.jsonl``
tagged with the invocation, so the summary at the end of a multirun counts exactly this invocation's
runs, including refused ones that could not write into their folder. Any run that did not finish makes
the multirun exit with status 1, after all the others ran; SIGTERM/SIGINT stop the sweep at once (the
current run saves a resumable checkpoint) with exit status 128 + signal.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from stnbench.records import write_results

log = logging.getLogger("stnbench")

INVOCATION_ENV = "STNBENCH_SWEEP_INVOCATION"
JOURNAL = "runs.jsonl"


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def failure(cfg: DictConfig, error: BaseException) -> dict[str, Any]:
    """The outcome of a run that failed: its folder, the error, and its choices when the config gives them."""
    from stnbench.build import key_choices

    results: dict[str, Any] = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                               "run_dir": str(cfg.paths.run_dir)}
    try:
        results.update({f"choice/{key}": value for key, value in key_choices(cfg).items()})
    except Exception:  # noqa: BLE001 - a broken config may not even give its choices
        pass
    return results


def record_failure(cfg: DictConfig, error: BaseException) -> dict[str, Any]:
    """Write ``status: failed`` into the run's own results.json (or, beside a finished result, into its
    attempts.jsonl), and the traceback beside it as error.log."""
    results = failure(cfg, error)
    run_dir = Path(cfg.paths.run_dir)
    written = write_results(run_dir, results)
    (run_dir / "error.log").write_text("".join(traceback.format_exception(error)))
    log.error("Run failed (recorded in %s): %s", written, results["error"])
    return results


def _sweep_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir)


def journal(cfg: DictConfig, results: dict) -> None:
    """Append this job's outcome to the sweep's runs.jsonl (one short line: appends do not interleave)."""
    entry = {"invocation": os.environ.get(INVOCATION_ENV, "unknown"), "run_dir": str(cfg.paths.run_dir),
             "status": results.get("status", "unknown"), "error": results.get("error")}
    path = _sweep_dir() / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def outcomes(sweep_dir: Path, invocation: str | None = None) -> list[dict]:
    """The journal's entries (of one invocation), the last one per run folder."""
    path = Path(sweep_dir) / JOURNAL
    latest: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if invocation is None or entry.get("invocation") == invocation:
                latest[entry.get("run_dir", "")] = entry
    return list(latest.values())


def sweep_summary(sweep_dir: Path | None = None, stopped_by: str | None = None) -> int:
    """Log this invocation's runs that did not finish; returns how many."""
    sweep_dir = sweep_dir or _sweep_dir()
    entries = outcomes(sweep_dir, os.environ.get(INVOCATION_ENV))
    bad = [e for e in entries if e.get("status") not in ("finished", "pruned", None)]  # pruned: a search's outcome
    for entry in bad:
        log.error("%s %s: %s", entry["status"].upper(), entry["run_dir"], entry.get("error"))
    if stopped_by:
        log.error("Sweep %s stopped (%s) after %d run(s); run the same command again to resume it",
                  sweep_dir, stopped_by, len(entries))
    log.info("Sweep %s: %d run(s), %d did not finish. Summarise it with: stnbench-report %s",
             sweep_dir, len(entries), len(bad), sweep_dir)
    return len(bad)


try:  # Hydra callbacks are optional at import time (the report uses this module without Hydra running)
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class SweepSummary(Callback):
    """Tags the jobs of this multirun invocation; at its end lists the runs that did not finish and makes
    the process exit with status 1 if there were any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ[INVOCATION_ENV] = uuid.uuid4().hex  # inherited by launcher workers started after this

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:  # TensorBoard's Custom Scalars page: every model of a dataset on one chart
            from stnbench.tensorboard import write_sweep_layout

            write_sweep_layout(sweep_dir)
        except OSError as error:
            log.warning("Could not write the TensorBoard layout of %s: %s", sweep_dir, error)
        if sweep_summary(sweep_dir):
            raise SystemExit(1)
