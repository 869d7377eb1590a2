"""stnbench's Hydra sweeper for Optuna >= 4, on a toy Hydra app (seconds, no training).

The app reports to its trial exactly as stnbench's OptunaPruning callback does (``current_trial``), so these
tests check what the search relies on: each job finds its own trial, pruned trials end PRUNED, failing or
None-returning jobs end FAIL without stopping the search, a re-run tops the study up, parallel workers
share the journal, a trial killed mid-run is asked again, and each model family gets its own space.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from stnbench.optuna_trial import open_storage

APP = '''
import os
import hydra
import optuna
from stnbench.optuna_trial import current_trial

@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    if cfg.mode == "fail":
        raise RuntimeError("this run crashed")
    if cfg.mode == "none":
        return None  # what stnbench-train returns for a run that failed or diverged
    trial = current_trial(optuna.pruners.ThresholdPruner(upper=50.0))
    trial.set_user_attr("pid", os.getpid())
    value = 100.0 if cfg.mode == "prune" else (cfg.x - 2.0) ** 2
    for step in range(3):
        trial.report(value, step)
        if trial.should_prune():
            trial.set_user_attr("pruned", True)  # what OptunaPruning does
            return value
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
hydra:
  sweep:
    dir: {sweep_dir}
  sweeper:
    study_name: toy
    n_trials: 4
    sampler:
      _target_: optuna.samplers.RandomSampler
      seed: 0
'''


def run_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    app_dir = tmp_path / "app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "app.py").write_text(APP)
    (app_dir / "config.yaml").write_text(textwrap.dedent(CONFIG).format(sweep_dir=tmp_path / "sweep"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run([sys.executable, str(app_dir / "app.py"), "-m", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
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
