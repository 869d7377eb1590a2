"""A Hydra sweeper that drives Optuna (>= 4) through its ask/tell API.

Why our own: Hydra's Optuna sweeper stops at optuna < 3, runs trials as jobs that never see their trial (so
nothing can be PRUNED) and keeps the study in SQLite, which parallel workers cannot share safely.
Here each job is told its trial number (env ``STNBENCH_OPTUNA_TRIAL``, with the study's storage and name),
so :class:`stnbench.optuna_pruning.OptunaPruning` reports to that very trial and flags it pruned; the
sweeper then tells Optuna COMPLETE, PRUNED or FAIL (a job that raised, returned None or a non-finite
value). The study lives in a journal file by default. A re-run tops the study up to ``n_trials``; a trial
left RUNNING by a killed sweeper on this host is closed as FAIL and its parameters are asked again, so its
run folder resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_ABSENT = object()
_PLAIN = re.compile(r"^[\w./:-]+$")


def distribution(override: Override) -> Any:
    """An Optuna distribution from Hydra's sweep syntax: choice(...), a,b,c, range(...), [tag(log,] interval(...))."""
    import optuna.distributions as d

    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        return d.CategoricalDistribution(list(value.list))
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(x, int) for x in (start, stop, step)) and step > 0 and stop > start:
            return d.IntDistribution(start, start + (stop - start - 1) // step * step, step=step)
        return d.CategoricalDistribution(list(value.range()))
    if isinstance(value, IntervalSweep):
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return d.IntDistribution(value.start, value.end, log=log_scale)
        return d.FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise ValueError(f"hydra.sweeper: cannot search '{key}={value}'; use choice(...), range(...) or "
                     "interval(...), optionally tag(log, interval(...))")


def override_value(value: Any) -> str:
    """A parameter value as a command-line override value."""
    if isinstance(value, str) and not _PLAIN.match(value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def finished(study: Any) -> int:
    """Trials that ended and count towards ``n_trials`` (a trial closed after an interrupt does not)."""
    from optuna.trial import TrialState

    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
               and not t.user_attrs.get("interrupted") for t in study.get_trials(deepcopy=False))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def stoppable(study: Any) -> Iterator[None]:
    """Let samplers call ``study.stop()`` from ``tell`` (GridSampler and BruteForceSampler do when they run
    out of points), as they may inside ``study.optimize``; the sweep loop then reads the stop flag.
    Optuna has no public switch for ask/tell loops, so this sets the flag its own optimize loop sets."""
    local = getattr(study, "_thread_local", None)
    before = getattr(local, "in_optimize_loop", None)
    if local is not None:
        local.in_optimize_loop = True
    try:
        yield
    finally:
        if local is not None:
            local.in_optimize_loop = before


class StnbenchOptunaSweeper(Sweeper):
    def __init__(self, direction: str, study_name: str, storage: str, n_trials: int, n_jobs: int,
                 sampler: DictConfig | None, search_spaces: DictConfig | dict, params: DictConfig | dict) -> None:
        self.direction, self.study_name, self.storage = direction, study_name, str(storage)
        self.n_trials, self.n_jobs = int(n_trials), max(1, int(n_jobs))
        self.sampler_cfg, self.search_spaces, self.params = sampler, search_spaces or {}, params or {}
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- search space -----------------------------------------------------------------------------
    def family_params(self) -> tuple[str | None, dict[str, str]]:
        """The search space of the first family whose ``requires`` keys all exist in the run's config."""
        for name, space in self.search_spaces.items():
            required = list(space.get("requires") or [])
            if all(OmegaConf.select(self.config, key, default=_ABSENT) is not _ABSENT for key in required):
                return name, dict(space.get("params") or {})
        if self.search_spaces:
            raise ValueError(f"hydra.sweeper.search_spaces: no family fits this config (families: "
                             f"{', '.join(self.search_spaces)}); add one without `requires`")
        return None, {}

    def search_space(self, arguments: list[str]) -> tuple[list[str], dict[str, Any]]:
        """Fixed overrides for every job, and the distributions to search (config spaces + sweep arguments)."""
        family, params = self.family_params()
        params.update(dict(self.params))
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space_overrides = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
        fixed, distributions = [], {}
        for override in [*space_overrides, *parser.parse_overrides(arguments)]:
            if override.is_sweep_override():
                distributions[override.get_key_element()] = distribution(override)
            elif override.input_line in arguments:
                fixed.append(override.input_line)
            else:
                raise ValueError(f"hydra.sweeper.params: '{override.input_line}' is not a search space; use "
                                 "choice(...), range(...) or interval(...)")
        log.info("Optuna search space%s: %s", f" ({family} models)" if family else "",
                 {key: str(dist) for key, dist in distributions.items()})
        return fixed, distributions

    # ---- study ------------------------------------------------------------------------------------
    def trial_id(self, storage: Any, number: int) -> int:
        return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(self.study_name),
                                                               number)

    def recover_interrupted(self, study: Any, storage: Any) -> None:
        """Close trials left RUNNING by a dead sweeper on this host, and ask their parameters again."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get("worker", ""))
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            storage.set_trial_user_attr(self.trial_id(storage, trial.number), "interrupted", True)
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            study.enqueue_trial(trial.params, user_attrs={"resumes_trial": trial.number})
            log.info("Optuna: trial %d was interrupted; its parameters run again", trial.number)

    def make_sampler(self, done: int) -> Any:
        if not self.sampler_cfg:
            return None
        cfg = OmegaConf.to_container(self.sampler_cfg, resolve=True)
        if cfg.get("seed") is not None:  # a re-run must not propose the first run's random start-up trials again
            cfg["seed"] = int(cfg["seed"]) + 1009 * done
        return instantiate(cfg)

    def sweep(self, arguments: list[str]) -> Any:
        import optuna

        from stnbench.optuna_trial import STORAGE_ENV, STUDY_ENV, TRIAL_ENV, open_storage

        assert self.config is not None and self.launcher is not None
        fixed, distributions = self.search_space(arguments)
        storage = open_storage(self.storage)
        study = optuna.create_study(study_name=self.study_name, storage=storage, direction=self.direction,
                                    load_if_exists=True)
        self.recover_interrupted(study, storage)
        done = finished(study)
        study.sampler = self.make_sampler(len(study.get_trials(deepcopy=False))) or study.sampler
        left = max(0, self.n_trials - done)
        log.info("Optuna study '%s' in %s: %d trials done, %d to run (n_trials=%d)", self.study_name,
                 self.storage, done, left, self.n_trials)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        env = [f"++hydra.job.env_set.{STORAGE_ENV}={override_value(self.storage)}",
               f"++hydra.job.env_set.{STUDY_ENV}={override_value(self.study_name)}"]
        returns, job_idx = [], len(study.get_trials(deepcopy=False))
        while left > 0:
            trials = [study.ask(distributions) for _ in range(min(self.n_jobs, left))]
            batch = []
            for trial in trials:
                trial.set_user_attr("worker", self.worker)
                params = [f"{key}={override_value(value)}" for key, value in trial.params.items()]
                batch.append([*fixed, *params, *env, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"])
            try:
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=job_idx)
            except BaseException:
                for trial in trials:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                raise
            with stoppable(study):
                for trial, result in zip(trials, results, strict=True):
                    self.tell(study, storage, trial, result)
            returns.append(results)
            job_idx += len(trials)
            left -= len(trials)
            if getattr(study, "_stop_flag", False):
                log.info("Optuna: the sampler has no new parameters to try (e.g. a GridSampler's grid is done)")
                break
        self.write_best(study, sweep_dir)
        return returns

    def tell(self, study: Any, storage: Any, trial: Any, result: Any) -> None:
        from optuna.trial import TrialState

        value = None
        if result.status == JobStatus.COMPLETED:
            value = result.return_value
        else:
            log.warning("Optuna trial %d failed: %r", trial.number, getattr(result, "_return_value", None))
        # the job's OptunaPruning callback flags a pruned trial
        pruned = storage.get_trial(self.trial_id(storage, trial.number)).user_attrs.get("pruned", False)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            state = "PRUNED"
        elif isinstance(value, (int, float)) and math.isfinite(value):
            study.tell(trial, float(value))
            state = f"COMPLETE ({float(value):.4g})"
        else:
            study.tell(trial, state=TrialState.FAIL)
            state = f"FAIL (objective {value!r})"
        log.info("Optuna trial %d %s: %s", trial.number, trial.params, state)

    def write_best(self, study: Any, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("Optuna study '%s' has no complete trial yet", self.study_name)
            return
        best = study.best_trial
        summary = {"name": "optuna", "study_name": self.study_name, "storage": self.storage,
                   "best_trial": best.number, "best_value": best.value, "best_params": best.params}
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d: %s = %.4g", best.number, best.params, best.value)
