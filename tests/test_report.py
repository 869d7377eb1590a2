"""stnbench-report on a folder of small real runs: right means, counts, failures, files and curves."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from stnbench import report as report_module
from stnbench.published import lookup
from test_sweeps import TINY, stnbench_train


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, cache_dir):
    """Two real fcn runs (seeds 1, 2) and two that fail (num_val=0), all in one multirun."""
    out = tmp_path_factory.mktemp("report")
    result = stnbench_train(["-m", "model=fcn", "seed=1,2", "sweep_name=small", *TINY, "data.num_val=500,0"],
                            out, cache_dir)
    assert result.returncode == 1, result.stderr[-3000:]  # the failures did not stop the sweep, but it says so
    return out / "multirun" / "small"


def test_report_gives_means_counts_and_failures(sweep_dir):
    finished = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    errors = [r["test/err"] for r in finished if r["status"] == "finished"]
    assert len(errors) == 2 and len(finished) == 4

    result = report_module.report(sweep_dir)
    table = result["table"]
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["data"], row["model"], row["runs"], row["seeds"], row["repeats"]) == ("rotated", "fcn", 2, 2, "")
    assert row["test_err_mean"] == pytest.approx(statistics.mean(errors), abs=0.01)
    assert row["test_err_std"] == pytest.approx(statistics.stdev(errors), abs=0.01)
    # multi-digit runs: the per-digit error gets its spread over seeds too (issue 13's table)
    runs = report_module.collect(sweep_dir)
    runs["digit_err"] = [1.0 + 2.0 * i for i in range(len(runs))]
    digit_errors = runs.loc[runs["status"] == "finished", "digit_err"].tolist()
    multi = report_module.summarise(runs)
    assert multi.iloc[0]["digit_err_std"] == pytest.approx(statistics.stdev(digit_errors), abs=0.01)
    shown = report_module.display_table(multi).iloc[0]["digit err %"]
    assert shown == f"{statistics.mean(digit_errors):.2f} ± {statistics.stdev(digit_errors):.2f}"
    # one test batch of 1,000 images: never set beside the paper's 10,000 (issue 20)
    assert lookup("rotated", "fcn", None) is not None and row["published_err"] is None
    assert row["comparable"] == "not comparable: tested on 1,000 of the 10,000 test images"
    assert row["test_images"] == 1000 and row["images_seen"] == 3 * 128
    assert row["parameters"] > 0 and row["steps"] == 3

    failed = result["failed"]
    assert len(failed) == 2 and all("num_val" in error for error in failed["error"])
    for name in ("report.md", "report.csv", "test_error.png", "val_error.png", "val_error_time.png"):
        assert (sweep_dir / name).stat().st_size > 0
    markdown = (sweep_dir / "report.md").read_text()
    assert "fcn" in markdown and "num_val must be between" in markdown


def test_validation_curves_come_from_tensorboard(sweep_dir):
    runs = report_module.collect(sweep_dir)
    curves = [report_module.validation_curve(d) for d in runs[runs["status"] == "finished"]["run_dir"]]
    assert len(curves) == 2  # one validation per run (1 epoch), logged near its last step (3)
    assert all(len(curve) == 1 and 2 <= curve[0][0] <= 3 and 0 <= curve[0][2] <= 100 for curve in curves)
    assert all(0 < curve[0][1] < 600 for curve in curves)
    # the seconds are the run's own fit clock (time/fit_seconds, carried across resumes), not event times
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run_dir, curve in zip(runs[runs["status"] == "finished"]["run_dir"], curves, strict=True):
        clock = {}
        for events in Path(run_dir).glob("**/events.out.tfevents.*"):
            accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
            accumulator.Reload()
            if "time/fit_seconds" in accumulator.Tags()["scalars"]:
                clock.update({e.step: e.value for e in accumulator.Scalars("time/fit_seconds")})
        assert curve[0][1] == clock[curve[0][0]]


def test_cli_prints_the_table(sweep_dir, capsys):
    report_module.main([str(sweep_dir), "--no-plots"])
    printed = capsys.readouterr().out
    assert "fcn" in printed and "failed" in printed


def test_cli_rejects_a_folder_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no runs under"):
        report_module.main([str(tmp_path)])


def test_only_training_runs_count_as_unfinished(tmp_path):
    """Eval and gallery folders (e.g. <run>/eval/<time>/) have a .hydra config but are not runs."""
    for name, task in (("run-a", "train"), ("run-a/eval/t1", "eval"), ("gallery-x", "gallery")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"task_name: {task}\n")
        (tmp_path / name / "train.log").write_text("started\n")
    runs = report_module.collect(tmp_path)
    assert list(runs["run_dir"]) == [str(tmp_path / "run-a")]
    assert list(runs["status"]) == ["unfinished"]


def test_a_run_training_now_shows_as_running_not_as_its_last_failed_attempt(tmp_path):
    """A resumed run keeps its earlier attempt's results.json until it ends; while it holds the run lock, the
    report says it is training, and the lock is only looked at (nothing is created in a finished folder)."""
    from stnbench.run_folder import LOCK, _lock

    for name in ("resuming", "finished"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("task_name: train\n")
    (tmp_path / "resuming" / "results.json").write_text(json.dumps({"status": "failed", "error": "an old attempt"}))
    (tmp_path / "finished" / "results.json").write_text(json.dumps({"status": "finished", "test/err": 1.0}))
    held = _lock(tmp_path / "resuming")
    try:
        runs = report_module.collect(tmp_path).set_index("run_dir")
        assert runs.loc[str(tmp_path / "resuming"), "status"] == "running"
        assert "training now" in runs.loc[str(tmp_path / "resuming"), "error"]
        assert runs.loc[str(tmp_path / "finished"), "status"] == "finished"
        assert not (tmp_path / "finished" / LOCK).exists()
    finally:
        held.close()
    assert report_module.collect(tmp_path).set_index("run_dir").loc[str(tmp_path / "resuming"), "status"] == "failed"
