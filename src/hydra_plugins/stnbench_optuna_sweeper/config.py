"""The sweeper's config schema, registered as ``hydra/sweeper=stnbench_optuna`` when Hydra scans its plugins."""

# No `from __future__ import annotations`: Hydra loads plugin modules outside sys.modules, where dataclasses
# cannot resolve string annotations.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class StnbenchOptunaSweeperConf:
    _target_: str = "hydra_plugins.stnbench_optuna_sweeper.sweeper.StnbenchOptunaSweeper"
    # The sampler is built by the sweeper (its seed moves on with the study), not by Hydra beforehand.
    _recursive_: bool = False
    direction: str = "minimize"
    study_name: str = "study"
    # A journal file that parallel workers share safely, or an RDB URL (sqlite:///..., postgresql://...).
    storage: str = "${hydra.sweep.dir}/optuna.journal"
    n_trials: int = 20  # total trials of the study, counting those of earlier invocations
    n_jobs: int = 1  # trials asked per batch; a parallel launcher runs a batch at once
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # One search space per model family: the first family whose `requires` keys all exist in the run's
    # config is searched, e.g. {stn: {requires: [model.loc_lr_multiplier], params: {...}}, any: {params: ...}}.
    search_spaces: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)  # added to (and overriding) the family's space


ConfigStore.instance().store(group="hydra/sweeper", name="stnbench_optuna", node=StnbenchOptunaSweeperConf,
                             provider="stnbench")
