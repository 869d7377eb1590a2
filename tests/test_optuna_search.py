"""`stnbench-train -m hparams_search=optuna` end to end on real MNIST: every model family can be tuned,
trials are real Optuna trials (reported to, PRUNED when the pruner says so), a re-run tops the study up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import data_root
from stnbench.optuna_trial import open_storage

TINY = ["data=rotated", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "data.num_val=500", "callbacks.model_summary=null"]


def stnbench_train(args: list[str], out: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STNBENCH_DATA_DIR": str(data_root()), "STNBENCH_OUTPUT_DIR": str(out),
           "STNBENCH_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    command = [sys.executable, "-c", "from stnbench.train import main; main()", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(out / "multirun" / name / "optuna.journal")))


def test_a_baseline_cnn_can_be_tuned(tmp_path, cache_dir):
    stnbench_train(["-m", "hparams_search=optuna", "model=cnn", "optuna_trials=2", *TINY], tmp_path, cache_dir)
    trials = study(tmp_path, "optuna_rotated_cnn").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(set(t.params) == {"optimizer.lr"} for t in trials)  # no loc-net multiplier without a loc net
    assert all(t.intermediate_values for t in trials)  # the pruning callback found and reported to its trial
    results = [json.loads(p.read_text()) for p in (tmp_path / "multirun" / "optuna_rotated_cnn").glob("*/results.json")]
    assert sorted(r["val/err_best"] for r in results) == sorted(t.value for t in trials)


@pytest.mark.slow
def test_two_workers_share_a_study_prune_and_a_rerun_tops_it_up(tmp_path, cache_dir):
    search = ["-m", "hparams_search=optuna", "model=st_cnn", "hydra/launcher=local", "hydra.launcher.n_jobs=2",
              *TINY, "trainer.max_epochs=3", "callbacks.optuna_pruning.pruner.n_startup_trials=1"]
    stnbench_train([*search, "optuna_trials=4"], tmp_path, cache_dir)
    assert len(study(tmp_path, "optuna_rotated_st_cnn").trials) == 4
    second = stnbench_train([*search, "optuna_trials=6"], tmp_path, cache_dir)
    assert "4 trials done, 2 to run" in second.stdout + second.stderr
    trials = study(tmp_path, "optuna_rotated_st_cnn").trials
    assert len(trials) == 6 and all(set(t.params) == {"optimizer.lr", "model.loc_lr_multiplier"} for t in trials)
    assert {t.user_attrs["worker"] for t in trials[:4]} != {t.user_attrs["worker"] for t in trials[4:]}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state, t.intermediate_values) for t in trials]  # 3 epochs: a poor trial stops early
    assert all(len(t.intermediate_values) < 3 for t in pruned)
