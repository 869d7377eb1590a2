"""A run's folder: which one a run may use, and what an attempt in it may touch.

Rules (each tested):
* A new run claims its folder exclusively; two runs started in the same second get ``<name>`` and
  ``<name>-2``, never one shared folder.
* A folder that already holds a run (a sweep re-run, or ``ckpt_path=<run>/checkpoints/...``) is only
  reused by the same run: :func:`stnbench.identity.differences` between the stored run and this one must be
  empty, or the command is refused, naming the keys, before anything is written.
* ``.hydra/config.yaml`` (the resolved config), ``hydra.yaml`` and ``overrides.yaml`` are written by us,
  after those checks, so a rejected command never overwrites a run's record (Hydra's own writing is off).
* While a run trains it holds an exclusive lock on ``<run>/.lock``: a second process cannot resume it.
* A finished result is only replaced by an attempt that finishes again: its checkpoints are kept aside
  while another attempt runs in its folder and put back if that attempt does not finish (results.json is
  guarded by :func:`stnbench.records.write_results`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from stnbench.errors import CheckpointError, RunFolderTaken
from stnbench.identity import Run, differences, set_keys
from stnbench.records import (
    CONFIG_KEY,
    checkpoint_dir,
    is_finished,
    last_checkpoint,
    load_checkpoint,
    read_results,
    run_dir_of,
    stored_command,
    stored_config,
    unwritable,
)

log = logging.getLogger("stnbench")
MAX_SUFFIX = 100
LOCK = ".lock"
KEPT = ".finished"  # a finished run's checkpoints while another attempt runs in its folder


# ---- the runs being compared -----------------------------------------------------------------------------
def current_run(cfg: DictConfig) -> Run:
    """This run: its resolved config and the keys its command line set (from Hydra; unknown without it)."""
    from hydra.core.hydra_config import HydraConfig

    keys = None
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        keys = set_keys(hydra.overrides.task, hydra.runtime.choices)
    return Run(OmegaConf.to_container(cfg, resolve=True), keys)


def stored_run(run_dir: Path, config: dict | None = None) -> Run:
    """A run made earlier in ``run_dir`` (``config``: the one its checkpoint carries, else its .hydra/)."""
    command = stored_command(run_dir)
    return Run(config if config is not None else stored_config(run_dir) or {},
               None if command is None else set_keys(*command))


def checkpoint_run(path: str | Path) -> Run:
    folder = run_dir_of(path)
    config = load_checkpoint(path)[CONFIG_KEY] or {}
    return stored_run(folder, config) if folder is not None else Run(config, None)


def refuse_differences(old: Run, new: Run, what: str, error: type[Exception]) -> None:
    drift = differences(old, new)
    if drift:
        shown = "; ".join(drift[:8]) + (f"; ... ({len(drift)} keys)" if len(drift) > 8 else "")
        raise error(f"{what} was made with another configuration ({shown}). Resume with the run's own "
                    "overrides (its .hydra/overrides.yaml), or start a new run / pick a new sweep_name.")


# ---- claiming a folder -----------------------------------------------------------------------------------
@dataclass
class RunFolder:
    """The folder a run writes to, with what it found there; ``lock`` is held until the process ends."""

    path: Path
    recorded: bool = False  # the folder already holds this run's .hydra/ record (a resume or a sweep re-run)
    created: bool = False  # this command made the folder (a new run): nothing of an earlier run is in it
    finished: dict | None = None  # results of a finished run of this config (a sweep re-run skips it)
    resume_from: str | None = None
    lock: Any = field(default=None, repr=False)

    def release(self) -> None:
        if self.lock is not None:
            (self.path / LOCK).unlink(missing_ok=True)  # removed while held; see _lock for the race
            self.lock.close()
            self.lock = None

    # ---- a finished result is only replaced by an attempt that finishes ---------------------------------
    def keep_finished(self) -> None:
        """Before an attempt trains in a folder holding a finished result: keep its checkpoints aside."""
        if not is_finished(read_results(self.path)) or not checkpoint_dir(self.path).is_dir():
            return
        kept = self.path / KEPT
        shutil.rmtree(kept, ignore_errors=True)
        try:
            shutil.copytree(checkpoint_dir(self.path), kept / checkpoint_dir(self.path).name)
        except OSError as error:
            raise unwritable(f"a copy of the finished run's checkpoints in '{kept}'", error) from None

    def settle(self, finished: bool) -> None:
        """After the attempt: drop the kept checkpoints if it finished, else put them back."""
        kept = self.path / KEPT
        if not kept.is_dir():
            return
        if not finished:
            restore_finished(self.path)
        shutil.rmtree(kept, ignore_errors=True)


def restore_finished(folder: Path) -> None:
    """Put a finished run's kept checkpoints back (an attempt over it did not finish, or died)."""
    kept = folder / KEPT / checkpoint_dir(folder).name
    if not kept.is_dir():
        return
    shutil.rmtree(checkpoint_dir(folder), ignore_errors=True)
    shutil.copytree(kept, checkpoint_dir(folder))
    shutil.rmtree(folder / KEPT, ignore_errors=True)
    log.warning("Restored the finished run's checkpoints in %s (an attempt over it did not finish)", folder)


def is_training(folder: Path) -> bool:
    """Whether a process holds ``folder``'s run lock now, so it is training (or resuming) there. Only reads:
    no lock file is made where there is none, and the lock is let go at once."""
    try:
        handle = open(folder / LOCK, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _lock(folder: Path) -> Any | None:
    """An exclusive lock on ``<folder>/.lock`` (released by the OS if the process dies), or None if taken.

    The holder deletes the file when it is done, so a lock is only ours if the file we locked is still the
    one at that path (another process may have opened it just before it was deleted)."""
    for _ in range(3):
        handle = open(folder / LOCK, "a")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(folder / LOCK).st_ino:
                return handle
        except FileNotFoundError:
            pass
        handle.close()  # we locked a file its holder had just deleted: try the new one
    return None


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise unwritable(f"run folder '{folder}'", error) from None


def open_run_folder(cfg: DictConfig, *, new_run: bool) -> RunFolder:
    """Decide, check and lock the folder of this run; see the module docstring for the rules.

    ``new_run``: a single run without ``ckpt_path`` (its timestamped folder must be fresh). Otherwise the
    folder is a sweep's deterministic one or the folder of the checkpoint being resumed.
    """
    base = Path(cfg.paths.run_dir)
    explicit = cfg.get("ckpt_path")
    this = current_run(cfg)
    if explicit:
        refuse_differences(checkpoint_run(explicit), this, f"checkpoint '{explicit}'", CheckpointError)
    candidates = [base] + ([base.with_name(f"{base.name}-{i}") for i in range(2, MAX_SUFFIX)] if new_run else [])
    for folder in candidates:
        stored = stored_config(folder)
        if stored is not None and new_run:
            continue  # another run's folder (started in the same second with the same name)
        if stored is not None:
            refuse_differences(stored_run(folder, stored), this, f"run folder '{folder}'", RunFolderTaken)
        fresh = not folder.exists() or not any(folder.iterdir())  # Hydra may have made it, empty
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
        run = RunFolder(folder, recorded=stored is not None, created=fresh and new_run, lock=lock)
        try:
            restore_finished(folder)  # an earlier attempt over a finished result died before putting it back
            _find_previous(cfg, run, this, explicit)
        except BaseException:
            run.release()
            raise
        return run
    raise RunFolderTaken(f"no free run folder next to '{base}' after {MAX_SUFFIX} tries")


def _find_previous(cfg: DictConfig, run: RunFolder, this: Run, explicit: str | None) -> None:
    """A re-run of a sweep: skip the run if it finished (and was tested, when this run tests) or was pruned by
    an Optuna search, else resume it from its last checkpoint (``skip_finished=false``: neither)."""
    if explicit or not cfg.get("skip_finished", True):
        return
    results = read_results(run.path)
    tested = not cfg.get("test_after_fit") or any(key.startswith("test/") for key in results or {})
    if (is_finished(results) and tested) or (results or {}).get("status") == "pruned":
        run.finished = {**results, "skipped": True}
        return
    last = last_checkpoint(run.path)
    if last.is_file():
        refuse_differences(checkpoint_run(last), this, f"checkpoint '{last}'", RunFolderTaken)
        run.resume_from = str(last)


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


def remove_new_folder(run: RunFolder) -> None:
    """A new run refused for bad input leaves nothing behind, unless it had already trained (a checkpoint)."""
    if run.created and not checkpoint_dir(run.path).exists():
        run.release()
        shutil.rmtree(run.path, ignore_errors=True)


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
