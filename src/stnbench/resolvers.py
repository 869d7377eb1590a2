"""OmegaConf resolvers used by the configs (registered on import of ``stnbench``).

Why resolvers: run and sweep folders must be named by a run's *choices* (so re-running a sweep finds the
same folders, and TensorBoard lines runs up by name), a resumed run must find its own folder, and these
depend on things plain interpolation cannot express (an optional ``model/transform`` choice, the
checkpoint being resumed).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

# Overrides already spelled out by run_name, or that do not change what a run computes. Anything else
# (schedule=paper, debug=limit, optimizer.lr=...) is appended, so it can never reuse another run's folder.
NAMED_KEYS = {"data", "model", "model/transform", "seed", "experiment", "sweep_name", "hparams_search",
              "optuna_trials", "logger", "callbacks", "trainer", "hydra/launcher", "run_name",
              "skip_finished", "checkpoint_minutes"}
MAX_TAG = 48
IGNORED_PREFIXES = ("hydra.", "hydra/", "paths.", "+paths.", "logger.", "callbacks.")


def _choices() -> dict:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


def transform_tag() -> str:
    """``-<transform>`` for models that have a ``model/transform`` choice, else empty."""
    transform = _choices().get("model/transform")
    return f"-{transform}" if transform else ""


def override_tag() -> str:
    """``_key=value,...`` for the run's overrides that run_name does not already show (e.g. a swept lr).

    Sweep folders are named by the run's choices so that a re-run finds them; any other override has to be
    part of the name too, or two different runs of one sweep would share a folder.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    parts = []
    for override in HydraConfig.get().overrides.task:
        key, _, value = override.partition("=")
        bare = key.lstrip("+~")
        if bare in NAMED_KEYS or bare.startswith(IGNORED_PREFIXES):
            continue
        parts.append(f"{bare}={value}")
    if not parts:
        return ""
    tag = re.sub(r"[^\w.=,+-]", "_", ",".join(sorted(parts)))
    # Long lists (budget overrides of a test command, ...) become a short stable hash of themselves.
    return f"_{tag}" if len(tag) <= MAX_TAG else "_" + hashlib.sha256(tag.encode()).hexdigest()[:8]


def choice(group: str, *, _root_) -> str:
    """The option chosen for ``group``; works where ``${hydra:runtime.choices...}`` does not yet (when
    Hydra instantiates the sweeper, before it sets up HydraConfig)."""
    hydra_node = _root_.get("hydra") if hasattr(_root_, "get") else None
    if hydra_node is not None:
        return str(hydra_node.runtime.choices.get(group))
    return str(_choices().get(group))


def resume_dir(ckpt_path: str | None, default: str) -> str:
    """Run folder for a run: the folder of the checkpoint being resumed (``<run>/checkpoints/x.ckpt``),
    so a resumed run continues its own logs, checkpoints and best-model tracking; else ``default``."""
    if ckpt_path:
        checkpoint = Path(str(ckpt_path)).expanduser()
        if checkpoint.parent.name == "checkpoints":
            return str(checkpoint.parent.parent)
    return default


def budget_steps(minutes: float, seconds_per_step, model: str) -> int:
    """Training steps that fill ``minutes`` for ``model``, from its measured seconds per step.

    An equal wall-clock budget per model (experiment=seed_hypothesis) as a fixed step count: the cosine
    schedule needs its length in steps, and a rerun on any machine takes the same steps.
    """
    from stnbench.errors import ConfigError

    if model not in seconds_per_step:
        raise ConfigError(f"budget.seconds_per_step has no entry for model={model} (it has "
                          f"{', '.join(seconds_per_step)}); measure it with scripts/bench_seed_hypothesis.py and "
                          f"add it, or give the run a step budget with trainer.max_steps=N")
    seconds = float(seconds_per_step[model])
    if not (minutes > 0 and seconds > 0):
        raise ConfigError(f"budget.minutes={minutes} and budget.seconds_per_step.{model}={seconds} must be > 0")
    return max(1, round(minutes * 60 / seconds))


def register() -> None:
    resolvers = {"stnbench.resume_dir": resume_dir, "stnbench.transform_tag": transform_tag,
                 "stnbench.override_tag": override_tag, "stnbench.choice": choice,
                 "stnbench.budget_steps": budget_steps}
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=False)
