"""One definition of a run (issue 20): folder names, resume checks, report rows and pictures agree on what a run
computes; a finished result is only replaced by a run that finishes again; a published number sits only beside
the paper's own setting; and the smaller holes (signals while writing, raw errors) are closed."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from stnbench import report as report_module
from stnbench.errors import CheckpointError, ConfigError, MNISTNotFoundError, Pruned, RunFolderTaken, RunInterrupted
from stnbench.identity import Run, differences, folder_tag, identity
from stnbench.records import ATTEMPTS, best_checkpoint, last_checkpoint, write_json
from stnbench.run_folder import open_run_folder
from stnbench.train import train
from test_sweeps import TINY as SWEEP_TINY
from test_sweeps import stnbench_train

TINY = ["data=rotated", "model=cnn", "logger=csv", "trainer.max_epochs=1", "trainer.limit_train_batches=4",
        "data.num_val=1000", "data.eval_batch_size=500", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
        "callbacks.model_summary=null"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".csv" and "events" not in p.name}


@pytest.fixture
def finished_run(tmp_path, cache_dir) -> tuple[Path, list[str]]:
    run_dir = tmp_path / "run"
    results = train(compose_config(TINY, run_dir=run_dir, cache=cache_dir))
    assert results["status"] == "finished"
    return run_dir, TINY


# ---- 1. one identity: folder names, drift, report rows ---------------------------------------------------------
def test_two_checkpoint_criteria_of_a_sweep_get_two_folders_and_two_rows(tmp_path, cache_dir):
    """The issue's probe: the checkpoint that is tested is part of what a run computes."""
    run = stnbench_train(["-m", "model=cnn", "callbacks.model_checkpoint.monitor=val/err,train/loss", "seed=1",
                          "sweep_name=monitor", *SWEEP_TINY], tmp_path, cache_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    sweep = tmp_path / "multirun" / "monitor"
    folders = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert len(folders) == 2 and any("monitor=train_loss" in f for f in folders), folders
    assert "Skipping" not in run.stdout + run.stderr
    table = report_module.report(sweep, plots=False)["table"]
    assert sorted(table["configuration"]) == ["callbacks.model_checkpoint.monitor=train/loss",
                                              "callbacks.model_checkpoint.monitor=val/err"]


@pytest.mark.parametrize("override", ["callbacks.model_checkpoint.monitor=train/loss", "trainer.devices=2",
                                      "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
                                      "trainer.gradient_clip_val=1.0", "data.batch_size=64", "data.train_mode=fixed",
                                      "callbacks.model_checkpoint=null", "+trainer.num_nodes=2"])
def test_whatever_changes_a_result_changes_the_identity_and_the_folder_name(override):
    base, changed = compose_config(["model=cnn"]), compose_config(["model=cnn", override])
    keys = frozenset({override.partition("=")[0].lstrip("+")})
    assert differences(Run(OmegaConf.to_container(base)), Run(OmegaConf.to_container(changed), keys))
    assert folder_tag([override], OmegaConf.to_container(changed))


@pytest.mark.parametrize("override", ["logger=csv", "trainer.log_every_n_steps=1", "trainer.accelerator=gpu",
                                      "callbacks.lr_monitor.logging_interval=epoch", "checkpoint_minutes=3",
                                      "data.root=/elsewhere", "callbacks.model_checkpoint.dirpath=/x",
                                      "+trainer.enable_progress_bar=false", "paths.output_dir=/x"])
def test_what_cannot_change_a_result_is_outside_the_identity_and_the_folder_name(override):
    base, changed = compose_config(["model=cnn"]), compose_config(["model=cnn", override])
    keys = frozenset({override.partition("=")[0].lstrip("+")})
    assert not differences(Run(OmegaConf.to_container(base)), Run(OmegaConf.to_container(changed), keys))
    assert folder_tag([override], OmegaConf.to_container(changed)) == ""


def test_a_resume_on_another_device_count_is_refused(finished_run, cache_dir):
    run_dir, overrides = finished_run
    checkpoint = torch.load(last_checkpoint(run_dir), weights_only=False)
    assert checkpoint["stnbench_world_size"] == 1
    checkpoint["stnbench_world_size"] = 2  # as if trained on two devices (trainer.devices=auto on 2 GPUs)
    torch.save(checkpoint, last_checkpoint(run_dir))
    before = _snapshot(run_dir)
    cfg = compose_config(overrides + [f"ckpt_path={last_checkpoint(run_dir)}"], run_dir=run_dir, cache=cache_dir)
    with pytest.raises(CheckpointError, match=r"trained on 2 device\(s\) and this run has 1"):
        train(cfg)
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"
    assert _snapshot(run_dir)["results.json"] == before["results.json"]


# ---- 2. a finished result is only replaced by a run that finishes --------------------------------------------
def test_a_failed_resume_keeps_the_finished_result(finished_run, cache_dir, tmp_path):
    """The issue's probe: resume a finished run with a data root that holds no MNIST."""
    run_dir, overrides = finished_run
    before = _snapshot(run_dir)
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    cfg = compose_config(overrides + [f"data.root={empty}", "data.download=false",
                                      f"ckpt_path={last_checkpoint(run_dir)}"], run_dir=run_dir, cache=cache_dir)
    with pytest.raises(MNISTNotFoundError):
        train(cfg)
    after = _snapshot(run_dir)
    assert after["results.json"] == before["results.json"]  # still finished, its test numbers intact
    assert after["checkpoints/best.ckpt"] == before["checkpoints/best.ckpt"]
    attempt = json.loads((run_dir / ATTEMPTS).read_text().splitlines()[-1])
    assert attempt["status"] == "failed" and "MNIST" in attempt["error"]
    assert not (empty / "MNIST").exists()


def test_a_re_run_that_fails_midway_puts_the_finished_checkpoints_back(finished_run, cache_dir, monkeypatch):
    """skip_finished=false trains again over a finished run; a crash midway must not cost its checkpoints."""
    from stnbench.module import STNBenchModule

    run_dir, overrides = finished_run
    before = _snapshot(run_dir)
    step = STNBenchModule.training_step

    def crash_at_step_3(self, batch, batch_idx):
        if self.global_step == 3:
            raise RuntimeError("a crash in the middle of training")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(STNBenchModule, "training_step", crash_at_step_3)
    monkeypatch.setattr("stnbench.train.is_multirun", lambda: True)  # a sweep re-run, as `-m skip_finished=false`
    with pytest.raises(RuntimeError, match="a crash in the middle"):
        train(compose_config(overrides + ["skip_finished=false", "checkpoint_minutes=0"], run_dir=run_dir,
                             cache=cache_dir))
    after = _snapshot(run_dir)
    for name in ("results.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"):
        assert after[name] == before[name], name
    assert not (run_dir / ".finished").exists() and not (run_dir / ".lock").exists()
    assert json.loads((run_dir / ATTEMPTS).read_text())["status"] == "failed"


def test_a_signal_while_a_resume_is_built_keeps_the_finished_result(finished_run, cache_dir, monkeypatch):
    run_dir, overrides = finished_run
    before = _snapshot(run_dir)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr("stnbench.build.build_datamodule", interrupted)
    cfg = compose_config(overrides + [f"ckpt_path={last_checkpoint(run_dir)}"], run_dir=run_dir, cache=cache_dir)
    with pytest.raises(RunInterrupted, match="SIGINT"):
        train(cfg)
    assert _snapshot(run_dir)["results.json"] == before["results.json"]
    assert json.loads((run_dir / ATTEMPTS).read_text())["status"] == "interrupted"


def test_a_signal_while_results_are_written_waits_until_they_are(tmp_path, cache_dir, monkeypatch):
    """A SIGTERM right as a finished run writes results.json is held until the file is on disk, then delivered
    to the handler that was in place before the run."""
    from stnbench import records

    write = records.write_results

    def write_under_fire(run_dir, results):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the outcome is being written
        return write(run_dir, results)

    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        monkeypatch.setattr("stnbench.train.write_results", write_under_fire)
        results = train(compose_config(TINY, run_dir=tmp_path / "run", cache=cache_dir))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert results["status"] == "finished" and received == [signal.SIGTERM]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "finished"


# ---- 3. a key added later is not drift -----------------------------------------------------------------------------
def _as_made_before(run_dir: Path, *keys: str) -> None:
    """Remove keys from a run's stored configs, as if stnbench had not had them when the run was made."""
    path = run_dir / ".hydra" / "config.yaml"
    config = OmegaConf.to_container(OmegaConf.load(path))
    checkpoint = torch.load(last_checkpoint(run_dir), weights_only=False)
    for key in keys:
        config.pop(key)
        checkpoint["stnbench_config"].pop(key)
    OmegaConf.save(OmegaConf.create(config), path)
    torch.save(checkpoint, last_checkpoint(run_dir))


def test_a_key_added_after_a_sweep_ran_does_not_lock_its_finished_runs(finished_run, cache_dir):
    run_dir, overrides = finished_run
    _as_made_before(run_dir, "channels_last", "divergence")
    run = open_run_folder(compose_config(overrides, run_dir=run_dir, cache=cache_dir), new_run=False)
    run.release()
    assert run.finished is not None and run.finished["status"] == "finished"
    (run_dir / "results.json").unlink()  # an unfinished run of that sweep resumes too
    run = open_run_folder(compose_config(overrides, run_dir=run_dir, cache=cache_dir), new_run=False)
    run.release()
    assert run.resume_from == str(last_checkpoint(run_dir))
    # ... but a command that sets the new key to something else is another configuration
    with pytest.raises(RunFolderTaken, match=r"channels_last: '<absent>' -> False"):
        open_run_folder(compose_config(overrides + ["channels_last=false"], run_dir=run_dir, cache=cache_dir),
                        new_run=False)


# ---- 4. a published number only beside the paper's own setting ------------------------------------------------
def _fake_run(root: Path, name: str, option: str, label: str, transform: str | None, *, test_err: float = 2.0,
              digit_err: float | None = None, seed: int = 1, test_images: int = 10_000, steps: int = 600,
              **config: dict) -> None:
    write_json(root / name / "results.json", {
        "status": "finished", "choice/data": option, "choice/model": label, "choice/transform": transform,
        "choice/seed": seed, "choice/batch_size": 100, "test/err": test_err, "test/digit_err": digit_err,
        "test_images": test_images, "parameters": 10, "fit_seconds": 1.0, "global_step": steps,
        "config": {"seed": seed, **config}})


def test_sonderby_numbers_only_beside_sonderby_models_in_their_setting(tmp_path):
    distortion = OmegaConf.to_container(compose_config(["data=multi_digit"]).data.distortion, resolve=False)
    distortion = {**distortion, "x_offset": [0, 15], "root": "data"}
    paper_data = {"distortion": distortion, "train_mode": "fixed", "train_size": 60_000}
    _fake_run(tmp_path, "cnn", "multi_digit", "cnn", None, digit_err=3.0, data=paper_data, model={"_target_": "c"})
    _fake_run(tmp_path, "rnn", "multi_digit", "sonderby_rnn_spn", "affine", digit_err=1.7, data=paper_data,
              model={"_target_": "r", "downsample": 3})
    _fake_run(tmp_path, "rnn-d2", "multi_digit", "sonderby_rnn_spn", "affine", digit_err=1.9, data=paper_data,
              model={"_target_": "r", "downsample": 2})
    _fake_run(tmp_path, "rnn-fresh", "multi_digit", "sonderby_rnn_spn", "affine", digit_err=1.8,
              data={**paper_data, "train_mode": "fresh", "train_size": None}, model={"_target_": "r", "downsample": 3})
    result = report_module.report(tmp_path, plots=False)
    table = result["table"].set_index(["model", "configuration"])
    assert table.loc[("cnn", ""), "comparable"] == ""  # stnbench's CNN is not Sønderby's: no published number
    paper = table.loc[("sonderby_rnn_spn-affine", "data.train_mode=fixed, data.train_size=60000, "
                                                  "model.downsample=3")]
    assert paper["published_err"] == 1.5 and paper["diff"] == pytest.approx(0.2)
    assert paper["images_seen"] == 60_000 and paper["paper_images"] == 300 * 60_000
    reasons = sorted(row["comparable"] for key, row in table.iterrows()
                     if key[0] == "sonderby_rnn_spn-affine" and row["comparable"] != "yes")
    assert reasons == ["not comparable: data.train_mode=fresh (paper: fixed); data.train_size=None (paper: 60000)",
                       "not comparable: model.downsample=2 (paper: 3)"]
    shown = report_module.display_table(result["table"])
    assert "0.33 % of the paper's" in " ".join(shown["trained on"])  # the budget beside the difference
    assert all(len(cell) <= 12 for cell in shown["diff"])  # a marker in the cell, the reasons in the notes
    markdown = (tmp_path / "report.md").read_text()
    assert "model.downsample=2 (paper: 3)" in markdown and "n/c [" in markdown


def test_a_cut_test_set_is_not_the_paper_s(tmp_path):
    data = {"distortion": {"_target_": "stnbench.data.distortions.Rotated", "max_angle": 90, "canvas_size": 28}}
    _fake_run(tmp_path, "cut", "rotated", "cnn", None, test_images=2_000, data=data)
    row = report_module.report(tmp_path, plots=False)["table"].iloc[0]
    assert row["comparable"] == "not comparable: tested on 2,000 of the 10,000 test images"
    assert row["test_images"] == 2_000


# ---- 5. pruned runs are outcomes, not results -------------------------------------------------------------------
class PrunedAtOnce(__import__("lightning").Callback):
    """What OptunaPruning does when the pruner says stop: flag the run and stop training."""

    pruned = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.pruned = trainer.should_stop = True


def test_a_pruned_run_gets_its_own_status_and_report_line(tmp_path, cache_dir):
    cfg = compose_config(TINY + ["+callbacks.prune._target_=test_identity.PrunedAtOnce"], run_dir=tmp_path / "run",
                         cache=cache_dir)
    with pytest.raises(Pruned, match=r"pruner stopped the run at step \d+") as stopped:
        train(cfg)
    assert stopped.value.exit_code == 5
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "pruned" and "test/err" not in results
    result = report_module.report(tmp_path, plots=False)
    assert result["table"].empty and result["failed"].empty
    assert "## Pruned trials" in (tmp_path / "report.md").read_text()


# ---- 6. the report without MNIST, pictures that never overwrite each other ---------------------------------------
def test_the_report_works_without_mnist_and_names_pictures_by_path(tmp_path, cache_dir, monkeypatch):
    for sweep in ("a", "b"):  # the same run name in two sweeps
        train(compose_config(TINY + ["model=st_cnn"], run_dir=tmp_path / sweep / "rotated-st_cnn-s1", cache=cache_dir))
    written = report_module.report(tmp_path)["written"]
    pictures = sorted(p.name for p in written if p.parent.name == "glimpses")
    assert pictures == ["a__rotated-st_cnn-s1.png", "b__rotated-st_cnn-s1.png"]
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    monkeypatch.setenv("STNBENCH_DATA_DIR", str(empty))
    result = report_module.report(tmp_path / "a")
    assert not any(p.parent.name == "glimpses" for p in result["written"][5:])
    markdown = (tmp_path / "a" / "report.md").read_text()
    assert "Glimpse pictures skipped: " in markdown and "MNIST" in markdown
    assert not (empty / "MNIST").exists()  # never downloaded


# ---- 7. one-line errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("checkpoint_minutes=-1", "checkpoint_minutes=-1 must be a number of minutes >= 0"),
    ("divergence.factor=0.5", "divergence.factor=0.5 must be a number > 1"),
    ("divergence.window=0", "divergence.window=0 must be a whole number of steps >= 1"),
    ("trainer.max_epochs=2.5", "trainer.max_epochs=2.5 has the wrong type: expected an integer"),
    ("callbacks.model_checkpoint.dirpath=/tmp/elsewhere", "must be the run's checkpoints folder"),
])
def test_bad_values_get_one_line_before_anything_runs(tmp_path, override, message):
    from stnbench.config_checks import check_config

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(compose_config([override], run_dir=tmp_path))


def test_a_bad_input_found_after_the_folder_is_claimed_leaves_no_folder(tmp_path, cache_dir):
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    result = stnbench_train(["data=rotated", f"data.root={empty}", "data.download=false",
                             f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache_dir)
    assert result.returncode == 1
    assert "stnbench-train: error: MNIST" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_predict_names_a_file_that_is_not_an_image(tmp_path):
    from stnbench.predict import read_inputs

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(ConfigError, match=r"input '.*notes.png' is not a readable image"):
        read_inputs(notes, (1, 28, 28))


# ---- 8. the smaller holes -------------------------------------------------------------------------------------------
def test_finished_runs_without_a_test_result_are_listed(tmp_path):
    write_json(tmp_path / "untested" / "results.json", {"status": "finished", "choice/data": "rotated",
                                                        "choice/model": "cnn", "global_step": 5})
    result = report_module.report(tmp_path, plots=False)
    assert result["table"].empty
    assert "## Finished without a test result" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize(("digits", "expected"), [(1, [0, 71]), (2, [0, 43]), (3, [0, 15])])
def test_sonderby_rows_are_centred_for_any_digit_count(digits, expected):
    """The reference: x = (W - n * 28) // 2 + choice(range(-c, c)), i.e. [0, 2c - 1]."""
    cfg = compose_config(["data=multi_digit", f"data.distortion.num_digits={digits}"])
    assert list(cfg.data.distortion.x_offset) == expected


def test_identity_of_a_config_keeps_what_is_computed(finished_run):
    run_dir, _ = finished_run
    stored = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    kept = identity(stored)
    assert kept["callbacks"] == {"model_checkpoint": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                      "monitor": "val/err", "mode": "min", "save_top_k": 1}}
    assert kept["trainer"]["devices"] == 1 and "accelerator" not in kept["trainer"] and "paths" not in kept
    assert json.loads((run_dir / "results.json").read_text())["config"] == kept
    assert best_checkpoint(run_dir).is_file() and not (run_dir / ".lock").exists()


def test_a_callback_only_one_run_has_is_a_difference_also_when_a_group_option_added_it():
    """callbacks/weight_averaging=ema is a group option, so its keys are not "set by value" on the command line;
    the averaged run still computes another test number, and the report must not merge it with the plain run."""
    from stnbench.identity import set_keys

    checkpoint = {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint", "monitor": "val/err", "mode": "min"}
    plain = {"seed": 1, "callbacks": {"model_checkpoint": checkpoint}}
    averaged = {"seed": 2, "callbacks": {"model_checkpoint": checkpoint,
                                         "weight_averaging": {"_target_": "stnbench.callbacks.EMAWeightAveraging",
                                                              "decay": 0.999}}}
    command = set_keys(["callbacks/weight_averaging=ema", "seed=2"], ["callbacks/weight_averaging", "model"])
    assert "callbacks.weight_averaging.decay" not in command  # the case: a group option, not a value
    shown = differences(Run(plain, frozenset()), Run(averaged, command), across_seeds=True)
    assert shown == ["callbacks.weight_averaging._target_: '<absent>' -> 'stnbench.callbacks.EMAWeightAveraging'",
                     "callbacks.weight_averaging.decay: '<absent>' -> 0.999"]
    # a key a newer stnbench gave a callback both runs have stays no difference (the older code's behaviour)
    newer = {"seed": 1, "callbacks": {"model_checkpoint": {**checkpoint, "save_on_exception": False}}}
    assert differences(Run(plain, frozenset()), Run(newer, frozenset())) == []
