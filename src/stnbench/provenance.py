"""Which code made a result: the git commit of the stnbench source tree, package versions, the device.

results.json and TensorBoard's HParams tab carry this so a number can be traced to the code behind it.
Cheap (one ``git`` call per process, cached) and never an error: outside a git checkout (an installed
wheel) the commit is None.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

SOURCE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def git_state(path: Path = SOURCE_DIR) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``path``, or (None, None) when there is none. Dirty: a
    tracked file changed, or an untracked .py/.yaml file exists (a new config option or module the run may
    have used; other untracked files, such as notes, do not make a run's code differ from its commit)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"],
                                cwd=path, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    changed = [line for line in status.splitlines()
               if not line.startswith("??") or line.rstrip().endswith((".py", ".yaml"))]
    return commit or None, bool(changed)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def device_string(device: Any = None) -> str:
    """``cuda:NVIDIA H100 ...``, ``mps`` or ``cpu:<processor>``: the device a run trained on (default: the
    best one visible to torch)."""
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu:{platform.processor() or platform.machine()}"
    return device.type


def provenance(device: Any = None) -> dict[str, Any]:
    """Flat ``provenance/*`` keys for results.json and the HParams tab (all str/bool/None)."""
    commit, dirty = git_state()
    return {
        "provenance/git_commit": commit,
        "provenance/git_dirty": dirty,
        "provenance/stnbench": _version("stnbench"),
        "provenance/torch": _version("torch"),
        "provenance/lightning": _version("lightning"),
        "provenance/python": platform.python_version(),
        "provenance/device": device_string(device),
    }
