"""Numbers you can trust: no unearned results, one report row per configuration, resumes that refuse drift,
caches that follow their inputs (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import compose_config
from stnbench import report as report_module
from stnbench.build import key_choices
from stnbench.errors import CheckpointError, Diverged, NoTraining, RunFolderTaken
from stnbench.records import write_json
from stnbench.run_folder import open_run_folder
from stnbench.train import train
from test_sweeps import TINY as SWEEP_TINY
from test_sweeps import stnbench_train

TINY = ["data.num_val=1000", "data.eval_batch_size=500", "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1", "callbacks.model_summary=null"]


def strict_load(path: Path) -> dict:
    """json.loads that refuses NaN/Infinity, as most JSON readers do."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---- no unearned results ------------------------------------------------------------------------------------
def test_overfit_mode_memorises_its_batches(tmp_path, cache_dir):
    cfg = compose_config(TINY + ["debug=overfit", "data=rotated", "model=cnn", "logger=csv", "data.batch_size=32",
                                 "trainer.max_epochs=25"], run_dir=tmp_path, cache=cache_dir)
    results = train(cfg)
    assert results["status"] == "finished" and results["global_step"] == 4 * 25  # 4 batches every epoch
    losses = pd.read_csv(tmp_path / "csv" / "metrics.csv")["train/loss_epoch"].dropna().to_numpy()
    assert losses[0] > 1.0 and losses[-1] < 0.05, losses


@pytest.mark.parametrize(("optimizer", "rule"), [("sgd", "the loss is nan"), ("adam", "the mean loss of the last")])
def test_a_diverging_run_is_never_finished(tmp_path, cache_dir, optimizer, rule):
    cfg = compose_config(TINY + ["data=rotated", "model=cnn", f"optimizer={optimizer}", "optimizer.lr=1e6",
                                 "trainer.max_epochs=1", "trainer.limit_train_batches=30", "logger=csv"],
                         run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(Diverged, match=rf"training diverged at step \d+: {rule}.*lower optimizer.lr"):
        train(cfg)
    results = strict_load(tmp_path / "results.json")
    assert results["status"] == "diverged" and "diverged" in results["error"]
    assert results["global_step"] < 30 and "test/err" not in results


def test_a_run_without_optimiser_steps_reports_nothing(tmp_path, cache_dir):
    cfg = compose_config(TINY + ["data=rotated", "model=cnn", "trainer.max_epochs=1", "trainer.limit_train_batches=0",
                                 "logger=csv"], run_dir=tmp_path, cache=cache_dir)
    with pytest.raises(NoTraining, match="without a single optimiser step"):
        train(cfg)
    results = strict_load(tmp_path / "results.json")
    assert results["status"] == "no_training" and results["global_step"] == 0 and "test/err" not in results


def test_results_json_is_strict(tmp_path):
    write_json(tmp_path / "results.json", {"test/loss": float("nan"), "nested": [float("inf"), 1.5]})
    assert strict_load(tmp_path / "results.json") == {"test/loss": None, "nested": [None, 1.5]}


def test_a_model_given_by_target_is_recorded_by_its_target(tmp_path, cache_dir):
    cfg = compose_config(["data=rotated", "model=cnn", "model._target_=stnbench.models.classifiers.FCN"],
                         run_dir=tmp_path, cache=cache_dir)
    assert key_choices(cfg)["model"] == "stnbench.models.classifiers.FCN"
    assert key_choices(compose_config(["model=cnn"], run_dir=tmp_path, cache=cache_dir))["model"] == "cnn"


# ---- resumes refuse drift ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir) -> tuple[Path, list[str]]:
    run_dir = tmp_path_factory.mktemp("finished")
    overrides = TINY + ["data=rotated", "model=cnn", "logger=csv", "trainer.max_epochs=1",
                        "trainer.limit_train_batches=4"]
    train(compose_config(overrides, run_dir=run_dir, cache=cache_dir))
    return run_dir, overrides


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change", ["optimizer.lr=0.01", "data.num_val=2000", "data.batch_size=64",
                                    "scheduler=constant"])
def test_resuming_with_a_changed_config_is_refused_and_touches_nothing(finished_run, cache_dir, change):
    run_dir, overrides = finished_run
    before = _snapshot(run_dir)
    key = change.split("=")[0].replace("scheduler", "scheduler._target_")
    cfg = compose_config(overrides + [change, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
                         run_dir=run_dir, cache=cache_dir)
    with pytest.raises(CheckpointError, match=rf"another configuration \(.*{key}"):
        train(cfg)
    assert _snapshot(run_dir) == before  # not even .hydra/ was rewritten


def test_resuming_with_only_logging_or_device_changes_is_allowed(finished_run, cache_dir):
    run_dir, overrides = finished_run
    first = strict_load(run_dir / "results.json")
    (run_dir / "results.json").unlink()  # as if interrupted between training and writing results
    cfg = compose_config(overrides + ["trainer.log_every_n_steps=1", "trainer.accelerator=cpu",
                                      f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"],
                         run_dir=run_dir, cache=cache_dir)
    resumed = train(cfg)
    assert resumed["status"] == "finished"
    assert resumed["val/err_best"] == pytest.approx(first["val/err_best"])  # the persisted best, not None
    assert resumed["global_step"] == first["global_step"]


def test_a_sweep_folder_holding_another_config_is_refused_untouched(finished_run, cache_dir, monkeypatch):
    run_dir, overrides = finished_run
    before = _snapshot(run_dir)
    monkeypatch.setattr("stnbench.train.is_multirun", lambda: True)
    cfg = compose_config(overrides + ["optimizer.lr=0.5"], run_dir=run_dir, cache=cache_dir)
    with pytest.raises(RunFolderTaken, match=r"optimizer.lr: 0.001 -> 0.5"):
        train(cfg)
    assert _snapshot(run_dir) == before


def test_a_sweep_re_run_skips_the_same_finished_config(finished_run, cache_dir, monkeypatch):
    run_dir, overrides = finished_run
    cfg = compose_config(overrides + ["trainer.log_every_n_steps=7"], run_dir=run_dir, cache=cache_dir)
    run = open_run_folder(cfg, new_run=False)
    run.release()
    assert run.finished is not None and run.finished["skipped"] is True


# ---- the report: one row per configuration ---------------------------------------------------------------------
def _fake_run(root: Path, name: str, seed: int, err: float, **changes) -> None:
    config = {"seed": seed, "data": {"name": "rts", "seed": seed,
                                     "distortion": {"_target_": "stnbench.data.distortions.RTS", "canvas_size": 42,
                                                    "max_angle": 45, "min_scale": 0.7, "max_scale": 1.2}},
              "model": {"_target_": "stnbench.models.classifiers.CNN"}, "optimizer": {"lr": 0.001},
              "trainer": {"max_epochs": 3}}
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    write_json(root / name / "results.json", {
        "status": "finished", "choice/data": "rts", "choice/model": "cnn", "choice/transform": None,
        "choice/seed": seed, "test/err": err, "parameters": 10, "fit_seconds": 1.0, "global_step": 5,
        "config": config})


def test_report_has_one_row_per_configuration(tmp_path):
    _fake_run(tmp_path, "a1", 1, 10.0)
    _fake_run(tmp_path, "a2", 2, 12.0)
    _fake_run(tmp_path, "a1-again", 1, 11.0)              # seed 1 of the same configuration, run twice
    _fake_run(tmp_path, "b1", 1, 50.0, optimizer__lr=0.01)
    _fake_run(tmp_path, "c1", 1, 30.0, trainer__max_epochs=1, data__distortion__canvas_size=60)
    table = report_module.report(tmp_path, plots=False)["table"].set_index("configuration")
    assert len(table) == 3
    base = table.loc["data.distortion.canvas_size=42, optimizer.lr=0.001, trainer.max_epochs=3"]
    assert (base["runs"], base["seeds"], base["repeats"]) == (3, 2, "seed 1 x2")
    assert base["test_err_mean"] == pytest.approx(11.0)
    assert base["published_err"] == 0.8 and base["diff"] == pytest.approx(10.2) and base["comparable"] == "yes"
    other_lr = table.loc["data.distortion.canvas_size=42, optimizer.lr=0.01, trainer.max_epochs=3"]
    assert other_lr["runs"] == 1 and other_lr["test_err_mean"] == 50.0
    small = table.loc["data.distortion.canvas_size=60, optimizer.lr=0.001, trainer.max_epochs=1"]
    assert pd.isna(small["diff"]) and pd.isna(small["published_err"])
    assert small["comparable"] == "not comparable: data.distortion.canvas_size=60 (paper: 42)"
    markdown = (tmp_path / "report.md").read_text()
    assert "n/c [1]" in markdown and "seed 1 x2" in markdown  # a short marker in the cell, the reason in a note
    assert "1. cnn (data.distortion.canvas_size=60, optimizer.lr=0.001, trainer.max_epochs=1) on rts: " \
        "data.distortion.canvas_size=60 (paper: 42)" in markdown


def test_report_lists_unearned_runs_with_the_failures(tmp_path):
    _fake_run(tmp_path, "ok", 1, 10.0)
    write_json(tmp_path / "nan" / "results.json", {"status": "diverged", "error": "training diverged at step 3"})
    (tmp_path / "never-started" / ".hydra").mkdir(parents=True)  # a refused command's folder: not a run
    (tmp_path / "never-started" / ".hydra" / "config.yaml").write_text("task_name: train\n")
    result = report_module.report(tmp_path, plots=False)
    assert list(result["failed"]["status"]) == ["diverged"]
    assert len(result["table"]) == 1


def test_two_lrs_sweep_reports_two_named_rows(tmp_path, cache_dir):
    """The issue's command: a sweep over two learning rates gives two rows that name their lr."""
    run = stnbench_train(["-m", "data=rotated", "model=cnn", "optimizer.lr=0.001,0.003", "seed=1",
                          "sweep_name=two_lrs", *SWEEP_TINY[1:]], tmp_path, cache_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    table = report_module.report(tmp_path / "multirun" / "two_lrs", plots=False)["table"]
    assert sorted(table["configuration"]) == ["optimizer.lr=0.001", "optimizer.lr=0.003"]
    assert list(table["runs"]) == [1, 1]


# ---- caches follow their inputs --------------------------------------------------------------------------------
def test_eval_cache_key_covers_mnist_content_and_generator_version(mnist_root, cache_dir):
    from stnbench.data.cache import cache_key
    from stnbench.data.datamodule import DistortedMNIST
    from stnbench.data.distortions import Rotated

    datamodule = DistortedMNIST(Rotated(), root=str(mnist_root), cache_dir=str(cache_dir), num_val=1000)
    datamodule.prepare_data()
    description = datamodule.dataset_description("val")
    assert set(description["mnist_md5"]) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
    key = cache_key(description)
    assert cache_key({**description, "version": description["version"] + 1}) != key
    assert cache_key({**description, "mnist_md5": {**description["mnist_md5"], "t10k-labels-idx1-ubyte": "0"}}) != key


def test_hparams_search_composes_for_every_model():
    from hydra import compose, initialize_config_dir

    from conftest import CONFIG_DIR

    for model in sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if not p.stem.startswith("_")):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["hparams_search=optuna", f"model={model}"],
                          return_hydra_config=True)
        assert cfg.model is not None, model


def test_a_fixed_training_set_can_have_its_own_size(mnist_root, cache_dir):
    """Sønderby's reference trains on 60k sequences drawn from 50k training digits: data.train_size."""
    from stnbench.data.datamodule import DistortedMNIST
    from stnbench.data.distortions import Rotated
    from stnbench.errors import ConfigError

    datamodule = DistortedMNIST(Rotated(), root=str(mnist_root), cache_dir=str(cache_dir), num_val=59_900,
                                train_mode="fixed", train_size=250, batch_size=50)
    datamodule.setup("fit")
    assert len(datamodule.fixed["train"]) == 250 and len(datamodule.pools["train"]) == 100
    assert len(datamodule.train_dataloader()) == 5
    assert datamodule.dataset_description("train")["train_size"] == 250
    with pytest.raises(ConfigError, match="needs data.train_mode=fixed"):
        DistortedMNIST(Rotated(), root=str(mnist_root), train_size=250)
