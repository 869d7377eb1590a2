"""OmegaConf resolvers used by the configs (registered on import of ``stnbench``).

Why resolvers: run and sweep folders must be named by a run's *choices* (so re-running a sweep finds the
same folders, and TensorBoard lines runs up by name), a resumed run must find its own folder, and these
depend on things plain interpolation cannot express (an optional ``model/transform`` choice, the
checkpoint being resumed). Each computes a value from values; none reads or writes files.
"""

from __future__ import annotations

from omegaconf import OmegaConf


def _choices() -> dict:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return dict(HydraConfig.get().runtime.choices)


def transform_tag() -> str:
    """``-<transform>`` for models that have a ``model/transform`` choice, else empty."""
    transform = _choices().get("model/transform")
    return f"-{transform}" if transform else ""


def override_tag(*, _root_=None) -> str:
    """``_key=value,...`` for the run's overrides that run_name does not already show (e.g. a swept lr) and
    that can change what it computes (stnbench.identity.folder_tag decides): sweep folders are named by the
    run's command so that a re-run finds them, and two configurations must never share one."""
    from hydra.core.hydra_config import HydraConfig

    from stnbench.identity import folder_tag

    if not HydraConfig.initialized():
        return ""
    config = OmegaConf.to_container(_root_, resolve=False) if _root_ is not None else None
    return folder_tag(HydraConfig.get().overrides.task, config)


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
    from stnbench.records import run_dir_of

    folder = run_dir_of(ckpt_path) if ckpt_path else None
    if folder is not None:
        return str(folder)
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


def centred_row(canvas_size: int, num_digits: int, spacing: int) -> list[int]:
    """Sønderby et al.'s x range of a row's first digit: the row centred, then moved by up to the margin either
    way (their ``create_mnist_sequence.py``: ``c = (W - n * 28) // 2``, ``x = c + choice(range(-c, c))``)."""
    from stnbench.errors import ConfigError

    margin = (int(canvas_size) - ((int(num_digits) - 1) * int(spacing) + 28)) // 2
    if margin < 0:
        raise ConfigError(f"canvas_size={canvas_size} cannot hold {num_digits} digits {spacing} px apart; raise "
                          "data.distortion.canvas_size or lower num_digits/spacing")
    return [0, max(0, 2 * margin - 1)]


def register() -> None:
    resolvers = {"stnbench.resume_dir": resume_dir, "stnbench.transform_tag": transform_tag,
                 "stnbench.override_tag": override_tag, "stnbench.choice": choice,
                 "stnbench.budget_steps": budget_steps, "stnbench.centred_row": centred_row}
    for name, function in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=False)
