"""TensorBoard: runs named by their folder, no placeholder points or epoch counter, HParams rows that point
at the real series, and a Custom Scalars layout per sweep with one val/err chart per dataset."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import compose_config
from stnbench.tensorboard import LAYOUT_DIR, RunLogger, log_hparams, write_sweep_layout
from stnbench.train import train

TINY = ["data=rotated", "model=cnn", "logger=tensorboard", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "data.num_val=500", "data.eval_batch_size=500",
        "trainer.log_every_n_steps=1", "callbacks.model_summary=null"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("sweep") / "rotated-cnn-s1"
    train(compose_config(TINY, run_dir=run_dir, cache=cache_dir))
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return run_dir, events


def test_events_live_in_the_run_folder_itself(run):
    run_dir, events = run
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard would name the run <folder>/<subfolder>"
    assert not (run_dir / "tensorboard").exists()


def test_no_placeholder_points_and_no_epoch_series(run):
    _, events = run
    tags = set(events.Tags()["scalars"])
    assert "epoch" not in tags and "hp_metric" not in tags
    for tag in tags:
        first = events.Scalars(tag)[0]
        assert not (first.step == 0 and first.value == 100.0), f"{tag} starts with a placeholder 100 at step 0"
    assert {"val/err", "train/loss_epoch", "compare/rotated/val/err", "compare/rotated/train/loss_epoch"} <= tags
    assert [s.value for s in events.Scalars("compare/rotated/val/err")] == \
        [s.value for s in events.Scalars("val/err")]


def test_hparams_row_points_at_the_real_series(run, tmp_path):
    run_dir, _ = run
    logger = RunLogger(save_dir=str(tmp_path), dataset="rotated")
    log_hparams(logger, {"model": "cnn", "lr": 0.001, "transform": None}, 1234,
                extra={"provenance/git_commit": "abc", "provenance/git_dirty": True})
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/err_best", "test/err", "val/err"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["model"].string_value == "cnn" and hparams["parameters"].number_value == 1234
    assert hparams["transform"].string_value == "None" and hparams["provenance/git_dirty"].string_value == "True"
    assert not events.Tags()["scalars"]  # declaring metrics wrote no values


def test_sweep_layout_has_one_val_err_chart_per_dataset(tmp_path):
    for run_name, data in [("rotated-cnn-s1", "rotated"), ("rotated-st_cnn-s1", "rotated"), ("rts-cnn-s1", "rts")]:
        (tmp_path / run_name).mkdir()
        (tmp_path / run_name / "results.json").write_text(json.dumps({"choice/data": data}))
    write_sweep_layout(tmp_path)
    write_sweep_layout(tmp_path)  # rewritten, not repeated
    files = list((tmp_path / LAYOUT_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = EventAccumulator(str(tmp_path / LAYOUT_DIR), size_guidance={"tensors": 0})
    events.Reload()
    [tensor] = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts["val/err on rotated"] == [r"^compare/rotated/val/err$"]
    assert charts["val/err on rts"] == [r"^compare/rts/val/err$"]
    assert charts["train/loss (every run)"] == [r"^train/loss_epoch$"]
