"""stnbench's Hydra sweeper for Optuna >= 4, on a toy Hydra app (seconds, no training).

The app reports to its trial exactly as stnbench's OptunaPruning callback does (``current_trial``) and, with
``record=true`` or ``mode=script``, records its outcome as stnbench-train does (``record_outcome``), so these
tests check what the search relies on: each job finds its own trial, pruned trials end PRUNED, failing or
None-returning jobs end FAIL without stopping the search, a re-run tops the study up, parallel workers
share the journal, a trial killed mid-run is asked again, an interrupted batch keeps the outcomes of its
ended jobs and resumes the rest, a sampler that runs out of points ends the search, the best trial's run
folder is named, and each model family gets its own space.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.stnbench_optuna_sweeper.sweeper import INTERRUPTED, finished, stop_recording, verdict
from stnbench.optuna_trial import STORAGE_ENV, STUDY_ENV, TRIAL_ENV, open_storage, record_outcome

APP = '''
import os
import signal
import time
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from stnbench.optuna_trial import TRIAL_ENV, current_trial, record_outcome

SCRIPT = {0: "ok", 1: "prune", 2: "fail"}  # mode=script: what each trial does; later ones: cfg.interrupt, once


def objective(cfg, mode):
    if mode == "fail":
        raise RuntimeError("this run crashed")
    if mode == "none":
        return None  # what stnbench-train returns for a run that failed or diverged
    trial = current_trial(optuna.pruners.ThresholdPruner(upper=50.0))
    trial.set_user_attr("pid", os.getpid())
    value = 100.0 if mode == "prune" else (cfg.x - 2.0) ** 2
    for step in range(3):
        trial.report(value, step)
        if trial.should_prune():
            trial.set_user_attr("pruned", True)  # what OptunaPruning does
            return value
    return value


def wait_for_outcomes(numbers):
    """In a parallel batch, interrupt only once the other jobs have recorded how they ended (a test that
    does not depend on timing)."""
    study, deadline = current_trial().study, time.monotonic() + 60
    while time.monotonic() < deadline:
        if all("outcome" in t.user_attrs for t in study.get_trials() if t.number in numbers):
            return
        time.sleep(0.05)


def scripted(cfg, run_dir):
    """Trials that end as stnbench-train's do in a sweep, each recording its outcome; one is interrupted."""
    mode = SCRIPT.get(int(os.environ[TRIAL_ENV]), "ok" if Path("interrupted_once").exists() else cfg.interrupt)
    if mode == "fail":  # stnbench-train records a failed run and returns no objective
        record_outcome("failed", None, run_dir)
        return None
    if mode == "sigterm":  # stnbench-train saved its checkpoint and stops the sweep
        wait_for_outcomes(SCRIPT)
        Path("interrupted_once").touch()
        record_outcome("interrupted", None, run_dir)
        raise SystemExit(143)
    if mode == "ctrl_c":  # Ctrl-C before the job could record anything
        Path("interrupted_once").touch()
        signal.raise_signal(signal.SIGINT)  # delivered to this (the main) thread now: no wait, not timing-bound
        time.sleep(10)
    value = objective(cfg, mode)
    record_outcome("pruned" if mode == "prune" else "finished", value, run_dir)
    return value


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    run_dir = HydraConfig.get().runtime.output_dir
    if cfg.mode == "script":
        return scripted(cfg, run_dir)
    value = objective(cfg, cfg.mode)
    if cfg.record:
        record_outcome("finished", value, run_dir)
    return value

if __name__ == "__main__":
    main()
'''

CONFIG = '''
defaults:
  - override hydra/sweeper: stnbench_optuna
  - _self_
x: 0.0
mode: ok
record: false  # record the outcome in the trial, as stnbench-train does
interrupt: sigterm  # how mode=script interrupts its fourth trial: sigterm or ctrl_c
hydra:
  sweep:
    dir: {sweep_dir}
    subdir: ${{hydra.job.override_dirname}}  # a folder per parameter set, as stnbench-train's
  sweeper:
    study_name: toy
    n_trials: 4
    sampler:
      _target_: optuna.samplers.RandomSampler
      seed: 0
'''


def default_sigint() -> None:
    """The app's Ctrl-C acts as in a terminal, however pytest was started: a shell without job control starts
    background commands with SIGINT ignored, and a child inherits that (Python then installs no handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_app(tmp_path: Path, *args: str, returncode: int = 0) -> subprocess.CompletedProcess:
    app_dir = tmp_path / "app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "app.py").write_text(APP)
    (app_dir / "config.yaml").write_text(textwrap.dedent(CONFIG).format(sweep_dir=tmp_path / "sweep"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run([sys.executable, str(app_dir / "app.py"), "-m", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240, preexec_fn=default_sigint)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def load(tmp_path: Path, name: str = "toy") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / "sweep" / "optuna.journal")))


def test_trials_end_complete_pruned_or_failed_and_the_search_goes_on(tmp_path):
    grid = "{_target_: optuna.samplers.GridSampler, search_space: {mode: [ok, prune, fail, none]}, seed: 0}"
    run_app(tmp_path, "mode=choice(ok,prune,fail,none)", f"++hydra.sweeper.sampler={grid}")
    states = {t.params["mode"]: t.state for t in load(tmp_path).trials}
    assert states == {"ok": TrialState.COMPLETE, "prune": TrialState.PRUNED, "fail": TrialState.FAIL,
                      "none": TrialState.FAIL}
    pruned = next(t for t in load(tmp_path).trials if t.state == TrialState.PRUNED)
    assert pruned.intermediate_values == {0: 100.0}  # stopped at its first report: the job found its trial
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert best.best_params == {"mode": "ok"} and best.best_value == 4.0
    assert "best_run_dir" not in best  # the toy app recorded no run folder


def test_rerun_tops_the_study_up_to_n_trials(tmp_path):
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=2")
    first = [t.params["x"] for t in load(tmp_path).trials]
    result = run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=3")  # a total, not 3 more
    trials = load(tmp_path).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert [t.params["x"] for t in trials[:2]] == first and trials[2].params["x"] not in first
    assert "2 trials done, 1 to run" in result.stderr + result.stdout
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=3")
    assert len(load(tmp_path).trials) == 3  # nothing left to do


def test_parallel_workers_share_one_study(tmp_path):
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "hydra.sweeper.n_jobs=2")
    trials = load(tmp_path).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(len(t.intermediate_values) == 3 for t in trials)  # every worker wrote to the journal
    assert len({t.user_attrs["pid"] for t in trials}) >= 2  # ran in more than one process
    assert len({t.user_attrs["worker"] for t in trials}) == 1  # asked by one sweeper


def test_a_trial_left_running_by_a_killed_sweeper_runs_again(tmp_path):
    storage = open_storage(str(tmp_path / "sweep" / "optuna.journal"))
    study = optuna.create_study(study_name="toy", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    trial = study.ask({"x": optuna.distributions.FloatDistribution(-5.0, 5.0)})
    trial.set_user_attr("worker", f"{os.uname().nodename}:{dead.pid}")
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=2")
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["interrupted"] is True
    assert trials[1].params == trials[0].params and trials[1].user_attrs["resumes_trial"] == 0
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2  # the interrupted one does not count


def test_a_trial_left_running_keeps_the_outcome_its_job_recorded(tmp_path):
    storage = open_storage(str(tmp_path / "sweep" / "optuna.journal"))
    study = optuna.create_study(study_name="toy", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(-5.0, 5.0)})
    trial.set_user_attr("worker", f"{os.uname().nodename}:{dead.pid}")
    for key, value in {"objective": 1.5, "run_dir": str(tmp_path / "run"), "outcome": "finished"}.items():
        trial.set_user_attr(key, value)  # its job ended and recorded so; then the sweeper was killed
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=2")
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == 1.5
    assert "interrupted" not in trials[0].user_attrs
    assert len(trials) == 2 and "resumes_trial" not in trials[1].user_attrs  # nothing was asked again


@pytest.mark.parametrize(("interrupt", "launcher", "returncode"), [
    ("sigterm", "basic", 143),  # stnbench-train raises SystemExit(128 + SIGTERM) from the job
    ("ctrl_c", "basic", -signal.SIGINT),  # KeyboardInterrupt before the job recorded anything
    ("sigterm", "joblib", 143),  # a parallel batch: the other jobs ended in other processes
])
def test_an_interrupted_batch_keeps_ended_trials_and_resumes_the_interrupted_one(tmp_path, interrupt, launcher,
                                                                                 returncode):
    args = ["mode=script", f"interrupt={interrupt}", "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=5",
            "hydra.sweeper.n_jobs=4", f"hydra/launcher={launcher}",
            *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else [])]
    run_app(tmp_path, *args, returncode=returncode)  # trials 0-3 in one batch; trial 3 is interrupted
    ok, pruned, failed, stopped, waiting = load(tmp_path).trials
    assert ok.state == TrialState.COMPLETE and ok.value == pytest.approx((ok.params["x"] - 2.0) ** 2)
    assert pruned.state == TrialState.PRUNED and failed.state == TrialState.FAIL
    assert not any("interrupted" in t.user_attrs for t in (ok, pruned, failed))
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    assert waiting.state == TrialState.WAITING and waiting.user_attrs == {"resumes_trial": 3}
    assert finished(load(tmp_path)) == 3  # the interrupted trial does not count
    assert OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").best_trial == 0

    result = run_app(tmp_path, *args)  # the same command
    assert "3 trials done, 2 to run" in result.stderr + result.stdout
    trials = load(tmp_path).trials
    resumed = trials[4]
    assert resumed.params == stopped.params and resumed.user_attrs["resumes_trial"] == 3
    assert resumed.state == TrialState.COMPLETE and trials[5].state == TrialState.COMPLETE
    assert len(trials) == 6 and finished(load(tmp_path)) == 5
    run_dirs = [path for path in (tmp_path / "sweep").iterdir() if path.is_dir()]
    assert len(run_dirs) == 5  # the resumed trial ran in the interrupted one's folder
    if interrupt == "sigterm":
        assert resumed.user_attrs["run_dir"] == stopped.user_attrs["run_dir"]


def _job(status: JobStatus, value: object = None) -> JobReturn:
    job = JobReturn(status=status)
    job.return_value = value
    return job


@pytest.mark.parametrize(("attrs", "result", "state", "value"), [
    ({"outcome": "finished", "objective": 0.25}, None, "COMPLETE", 0.25),
    ({"outcome": "finished", "objective": None}, _job(JobStatus.COMPLETED, 0.25), "FAIL", None),  # recorded wins
    ({"outcome": "diverged", "objective": None}, _job(JobStatus.COMPLETED), "FAIL", None),
    ({"outcome": "no_training"}, None, "FAIL", None),
    ({"outcome": "failed"}, None, "FAIL", None),
    ({"outcome": "pruned"}, None, "PRUNED", None),
    ({"outcome": "interrupted", "pruned": True}, None, "PRUNED", None),  # the pruner had decided
    ({"outcome": "interrupted"}, _job(JobStatus.FAILED, SystemExit(143)), INTERRUPTED, None),
    ({}, None, INTERRUPTED, None),  # interrupted batch, nothing recorded: the job had not ended
    ({}, _job(JobStatus.COMPLETED, 0.5), "COMPLETE", 0.5),
    ({"pruned": True}, _job(JobStatus.COMPLETED, 100.0), "PRUNED", None),
    ({}, _job(JobStatus.COMPLETED, float("nan")), "FAIL", None),
    ({}, _job(JobStatus.FAILED, RuntimeError("crash")), "FAIL", None),
])
def test_the_recorded_outcome_decides_the_trial_state(attrs, result, state, value):
    ended = verdict(attrs, result)
    assert (ended.state, ended.value) == (state, value)


def test_record_outcome_writes_the_trials_attrs_and_never_raises(tmp_path, monkeypatch, caplog):
    journal = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="s", storage=open_storage(journal))
    trial = study.ask()
    for key, value in {TRIAL_ENV: str(trial.number), STUDY_ENV: "s", STORAGE_ENV: journal}.items():
        monkeypatch.setenv(key, value)
    record_outcome("diverged", float("nan"), str(tmp_path / "run"))
    attrs = optuna.load_study(study_name="s", storage=open_storage(journal)).trials[0].user_attrs
    assert attrs == {"outcome": "diverged", "objective": None, "run_dir": str(tmp_path / "run")}
    study.tell(trial, 1.0)
    record_outcome("finished", 1.0, None)  # the trial is closed already: a warning, not an error
    assert "could not record" in caplog.text


def test_record_outcome_outside_a_search_does_nothing_and_imports_no_optuna():
    code = ("import sys; from stnbench.optuna_trial import record_outcome; record_outcome('finished', 1.0, '/x'); "
            "print('optuna' in sys.modules)")
    env = {key: value for key, value in os.environ.items() if not key.startswith("STNBENCH_OPTUNA_")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_sampler_asking_to_stop_is_heard_outside_optimize():
    space = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
    bare = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2]}, seed=0))
    for _ in range(2):
        trial = bare.ask(space)
        if trial.number == 1:
            with pytest.raises(RuntimeError):  # what a bare GridSampler does to an ask/tell loop
                bare.tell(trial, 0.0)
        else:
            bare.tell(trial, 0.0)

    sampler = stop_recording(optuna.samplers.GridSampler({"x": [1, 2]}, seed=0))
    assert isinstance(sampler, optuna.samplers.BaseSampler)
    study = optuna.create_study(sampler=sampler)
    seen = []
    for _ in range(2):
        assert not sampler.stop_requested
        trial = study.ask(space)
        seen.append(trial.params["x"])
        study.tell(trial, float(trial.params["x"]))
    assert sampler.stop_requested and sorted(seen) == [1, 2]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2


def test_a_grid_search_ends_cleanly_when_its_grid_is_exhausted(tmp_path):
    grid = "{_target_: optuna.samplers.GridSampler, search_space: {x: [1.0, 2.0]}, seed: 0}"
    result = run_app(tmp_path, "x=choice(1.0,2.0)", "hydra.sweeper.n_trials=5", f"++hydra.sweeper.sampler={grid}")
    trials = load(tmp_path).trials
    assert sorted(t.params["x"] for t in trials) == [1.0, 2.0]  # not five: the grid had two points
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert "the sampler has no new parameters" in result.stderr + result.stdout


def test_optimization_results_name_the_best_run_folder_and_checkpoint(tmp_path):
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=2", "record=true")
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    run_dir = Path(load(tmp_path).trials[best.best_trial].user_attrs["run_dir"])
    assert run_dir.parent == tmp_path / "sweep" and run_dir.is_dir()
    assert best.best_run_dir == str(run_dir)
    assert best.best_checkpoint == str(run_dir / "checkpoints" / "best.ckpt")


@pytest.mark.parametrize(("model", "family", "keys"), [
    ("cnn", "baseline", {"optimizer.lr"}),
    ("fcn", "baseline", {"optimizer.lr"}),
    ("st_cnn", "stn", {"optimizer.lr", "model.loc_lr_multiplier"}),
    ("rnn_stn", "stn", {"optimizer.lr", "model.loc_lr_multiplier"}),
])
def test_each_model_family_gets_its_own_search_space(model, family, keys):
    from conftest import compose_config
    from hydra_plugins.stnbench_optuna_sweeper.sweeper import StnbenchOptunaSweeper

    cfg = compose_config(["hparams_search=optuna", f"model={model}"])
    sweeper_cfg = cfg.hydra.sweeper
    sweeper = StnbenchOptunaSweeper(direction="minimize", study_name="s", storage="x", n_trials=1, n_jobs=1,
                                    sampler=None, search_spaces=sweeper_cfg.search_spaces, params={})
    sweeper.config = cfg
    name, params = sweeper.family_params()
    assert (name, set(params)) == (family, keys)


def test_an_rdb_url_works_as_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_app(tmp_path, "x=interval(-5.0,5.0)", "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={url}")
    trials = optuna.load_study(study_name="toy", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and all(t.intermediate_values for t in trials)
