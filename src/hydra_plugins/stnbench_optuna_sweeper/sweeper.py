"""A Hydra sweeper that drives Optuna (>= 4) through its ask/tell API.

Why our own: Hydra's Optuna sweeper stops at optuna < 3, runs trials as jobs that never see their trial (so
nothing can be PRUNED) and keeps the study in SQLite, which parallel workers cannot share safely.
Here each job is told its trial number (env ``STNBENCH_OPTUNA_TRIAL``, with the study's storage and name),
so :class:`stnbench.optuna_pruning.OptunaPruning` reports to that very trial and flags it pruned, and
stnbench-train records how its run ended in the trial (``stnbench.optuna_trial.record_outcome``: user attrs
``outcome``, ``objective``, ``run_dir``). The sweeper decides each trial's state from that recorded outcome
(the job's return value and the ``pruned`` flag when there is none): PRUNED, COMPLETE with a finite
objective, FAIL for a run that failed, diverged, made no step or returned no objective.

Interrupted trials are resumed, not lost. When a batch is interrupted (SIGTERM or Ctrl-C: ``launcher.launch``
raises, so no job's return value comes back), its jobs that had ended keep their recorded outcome; the
others, and any trial whose run recorded ``interrupted``, are flagged ``interrupted``, closed as FAIL, do not
count towards ``n_trials``, and their exact parameters are enqueued (user attr ``resumes_trial``), so the
next invocation of the same command asks them first, into the same run folder, which resumes from its last
checkpoint. A trial left RUNNING by a killed sweeper on this host is settled the same way. A re-run tops the
study up to ``n_trials``. The study lives in a journal file by default. ``optimization_results.yaml`` names
the best trial, its value, parameters, run folder and checkpoint.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
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


# ---- how a trial ended ----------------------------------------------------------------------------
INTERRUPTED = "INTERRUPTED"  # not an Optuna state: closed as FAIL, flagged, not counted, its parameters asked again


class Verdict(NamedTuple):
    """The state to tell Optuna (COMPLETE, PRUNED, FAIL or INTERRUPTED), the objective, and why, for the log."""

    state: str
    value: float | None = None
    why: str = ""


def verdict(attrs: Mapping[str, Any], result: JobReturn | None) -> Verdict:
    """How a trial ended: from the outcome its job recorded (``record_outcome``) when there is one, else from
    its JobReturn; ``result`` is None when the batch was interrupted, so a job that recorded nothing had not
    ended (or died before it could say) and its trial runs again."""
    from stnbench.optuna_trial import finite

    outcome = attrs.get("outcome")
    if attrs.get("pruned") or outcome == "pruned":  # the pruner's decision is final, even if the run was stopped
        return Verdict("PRUNED", why="stopped by the pruner")
    if outcome == "finished":
        value = finite(attrs.get("objective"))
        return Verdict("COMPLETE", value) if value is not None else Verdict(
            "FAIL", why=f"finished without a finite objective ({attrs.get('objective')!r})")
    if outcome == "interrupted":
        return Verdict(INTERRUPTED, why="its run was interrupted")
    if outcome is not None:
        return Verdict("FAIL", why=f"run {outcome}")
    if result is None:
        return Verdict(INTERRUPTED, why="its batch was interrupted before the job recorded an outcome")
    if result.status != JobStatus.COMPLETED:
        return Verdict("FAIL", why=f"the job raised {getattr(result, '_return_value', None)!r}")
    value = finite(result.return_value)
    return Verdict("COMPLETE", value) if value is not None else Verdict(
        "FAIL", why=f"objective {result.return_value!r}")


# ---- samplers that ask to stop ----------------------------------------------------------------------
class StopRequest:
    """The study as a wrapped sampler's ``after_trial`` sees it: ``stop()`` only records the request.

    GridSampler and BruteForceSampler call ``study.stop()`` when they run out of points, which Optuna allows
    inside ``study.optimize`` only; in an ask/tell loop it raises. Every other attribute is the real study's."""

    def __init__(self, study: Any, sampler: Any) -> None:
        self._stnbench_study, self._stnbench_sampler = study, sampler

    def stop(self) -> None:
        self._stnbench_sampler.stop_requested = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stnbench_study, name)


def stop_recording(sampler: Any) -> Any:
    """``sampler`` wrapped so that its ``study.stop()`` sets ``.stop_requested``, which the sweep loop reads."""
    return _stop_recording_class()(sampler)


@functools.cache
def _stop_recording_class() -> type:
    """Built on first use: Hydra imports every plugin module on every run, and Optuna is slow to import."""
    from optuna.samplers import BaseSampler

    class StopRecordingSampler(BaseSampler):
        """Delegates everything to ``inner``; only ``after_trial`` sees a :class:`StopRequest` for the study."""

        def __init__(self, inner: BaseSampler) -> None:
            self.inner, self.stop_requested = inner, False

        def __str__(self) -> str:
            return str(self.inner)

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner.before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Sequence[float] | None) -> None:
            self.inner.after_trial(StopRequest(study, self), trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return StopRecordingSampler


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
        """Settle trials left RUNNING by a dead sweeper on this host: by the outcome their job recorded, else
        as interrupted (their parameters are asked again)."""
        from optuna.trial import TrialState

        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get("worker", ""))
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            log.info("Optuna: trial %d was left running by a sweeper that is gone", trial.number)
            self.settle(study, storage, trial, None)

    def resume_later(self, study: Any, storage: Any, trial: Any) -> None:
        """Close an interrupted trial (not counted towards n_trials) and enqueue its exact parameters, so the
        next ask runs them again in the same run folder, which resumes from its last checkpoint."""
        from optuna.trial import TrialState

        storage.set_trial_user_attr(self.trial_id(storage, trial.number), "interrupted", True)
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        study.enqueue_trial(trial.params, user_attrs={"resumes_trial": trial.number})

    def settle(self, study: Any, storage: Any, trial: Any, result: JobReturn | None) -> bool:
        """Tell Optuna how ``trial`` ended (``result`` None: its batch was interrupted); True if it counts."""
        from optuna.trial import TrialState

        attrs = storage.get_trial(self.trial_id(storage, trial.number)).user_attrs  # what the job recorded
        ended = verdict(attrs, result)
        if ended.state == INTERRUPTED:
            self.resume_later(study, storage, trial)
            log.info("Optuna trial %d %s: interrupted (%s); the same command runs it again first", trial.number,
                     trial.params, ended.why)
            return False
        if ended.state == "COMPLETE":
            study.tell(trial.number, ended.value, skip_if_finished=True)
            log.info("Optuna trial %d %s: COMPLETE (%.4g)", trial.number, trial.params, ended.value)
        else:
            study.tell(trial.number, state=TrialState[ended.state], skip_if_finished=True)
            (log.info if ended.state == "PRUNED" else log.warning)(
                "Optuna trial %d %s: %s (%s)", trial.number, trial.params, ended.state, ended.why)
        return True

    def settle_interrupted(self, study: Any, storage: Any, trials: list[Any], sweep_dir: Path,
                           error: BaseException) -> None:
        """Settle a batch whose ``launch`` raised: each trial by the outcome its job recorded, else as
        interrupted. Never raises, so the sweep still exits with the interrupt's code; a trial it could not
        settle stays RUNNING, and the next invocation settles it (its sweeper is gone by then)."""
        log.warning("Optuna: the batch of trials %s was interrupted (%r); each keeps the outcome its job recorded, "
                    "the others run again", [trial.number for trial in trials], error)
        try:
            for trial in trials:
                self.settle(study, storage, trial, None)
            self.write_best(study, sweep_dir)
        except Exception:  # see the docstring
            log.exception("Optuna: could not settle the interrupted batch; the next invocation will")

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
        sampler = stop_recording(self.make_sampler(len(study.get_trials(deepcopy=False))) or study.sampler)
        study.sampler = sampler
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
            except BaseException as error:  # SIGTERM (SystemExit from the job), Ctrl-C: no JobReturn comes back
                self.settle_interrupted(study, storage, trials, sweep_dir, error)
                raise
            left -= sum(self.settle(study, storage, trial, result)
                        for trial, result in zip(trials, results, strict=True))
            returns.append(results)
            job_idx += len(trials)
            if sampler.stop_requested:
                log.info("Optuna: the sampler has no new parameters to try (e.g. a GridSampler's grid is done)")
                break
        self.write_best(study, sweep_dir)
        return returns

    def write_best(self, study: Any, sweep_dir: Path) -> None:
        """``optimization_results.yaml``: the best trial, and its run folder and checkpoint if its job named them."""
        from optuna.trial import TrialState

        from stnbench.records import best_checkpoint

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            log.warning("Optuna study '%s' has no complete trial yet", self.study_name)
            return
        best = study.best_trial
        summary = {"name": "optuna", "study_name": self.study_name, "storage": self.storage,
                   "best_trial": best.number, "best_value": best.value, "best_params": best.params}
        run_dir = best.user_attrs.get("run_dir")
        if run_dir:
            summary.update(best_run_dir=str(run_dir), best_checkpoint=str(best_checkpoint(run_dir)))
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / "optimization_results.yaml")
        log.info("Best trial %d: %s = %.4g%s", best.number, best.params, best.value,
                 f" ({run_dir})" if run_dir else "")
