"""TensorBoard: runs named by their folder and nothing else in the run list, no placeholder points, no epoch
counter and no copied series, HParams rows of the values that apply and the overrides that define a run,
steps that agree with results.json, a labelled transformer grid, and one Custom Scalars page carried by the
runs themselves (issue 24)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import compose_config
from stnbench.tensorboard import (
    LAYOUT_CHARTS,
    LAYOUT_DIR,
    LAYOUT_TAG,
    RunLogger,
    has_layout,
    log_hparams,
    write_sweep_layout,
)
from stnbench.train import train
from test_sweeps import TINY as SWEEP_TINY
from test_sweeps import stnbench_train

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


def test_no_placeholder_points_no_epoch_series_and_no_copies(run):
    _, events = run
    tags = set(events.Tags()["scalars"])
    assert "epoch" not in tags and "hp_metric" not in tags
    for tag in tags:
        first = events.Scalars(tag)[0]
        assert not (first.step == 0 and first.value == 100.0), f"{tag} starts with a placeholder 100 at step 0"
    assert {"val/err", "train/loss_epoch"} <= tags
    assert not [tag for tag in tags if tag.startswith("compare/")], "every series once: no compare/<data>/ copies"


def _hparams_of(folder) -> dict:
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return dict(start.session_start_info.hparams), content, events


def test_hparams_row_holds_the_values_that_apply_and_no_placeholders(tmp_path):
    logger = RunLogger(save_dir=str(tmp_path))
    log_hparams(logger, {"model": "cnn", "lr": 0.001, "transform": None, "loc_lr_multiplier": None}, 1234,
                extra={"provenance/git_commit": "abc", "provenance/git_dirty": True})
    logger.experiment.flush()
    hparams, content, events = _hparams_of(tmp_path)
    assert hparams["model"].string_value == "cnn" and hparams["parameters"].number_value == 1234
    assert hparams["lr"].number_value == 0.001 and hparams["provenance/git_dirty"].string_value == "True"
    assert "transform" not in hparams and "loc_lr_multiplier" not in hparams  # a CNN has neither: no 'None'
    # No experiment summary: TensorBoard builds the columns from every run's values (a column only the ST
    # runs have stays) and the metric columns from the runs' own series.
    assert "_hparams_/experiment" not in content
    assert not events.Tags()["scalars"]  # nothing written into the time series


def test_hparams_row_holds_the_overrides_that_define_the_run(run):
    run_dir, _ = run
    hparams, _, _ = _hparams_of(run_dir)
    # TINY's overrides that its folder tag would show (not data=, model=: those are choices) ...
    assert hparams["trainer.limit_train_batches"].number_value == 3
    assert hparams["data.num_val"].number_value == 500 and hparams["data.eval_batch_size"].number_value == 500
    # ... and none that cannot change a result, or that a choice column shows already
    assert "trainer.log_every_n_steps" not in hparams and "logger" not in hparams
    assert "trainer.max_epochs" not in hparams and hparams["max_epochs"].number_value == 2
    assert "transform" not in hparams and "loc_lr_multiplier" not in hparams


def test_layout_of_an_older_sweep_moves_into_its_runs(tmp_path):
    """Sweeps of older stnbench: their tensorboard_layout/ folder (a run in TensorBoard's list) goes, and each run
    whose events lack the layout gets it; runs made now carry it already and are left alone."""
    from torch.utils.tensorboard import SummaryWriter

    for name in ("rotated-cnn-s1", LAYOUT_DIR):
        writer = SummaryWriter(log_dir=str(tmp_path / name))
        writer.add_scalar("val/err", 50.0, 3)
        writer.close()
    new_run = RunLogger(save_dir=str(tmp_path / "rotated-st_cnn-s1"))
    new_run.log_metrics({"val/err": 40.0}, step=3)
    new_run.experiment.close()
    assert has_layout(tmp_path / "rotated-st_cnn-s1") and not has_layout(tmp_path / "rotated-cnn-s1")
    assert write_sweep_layout(tmp_path) == [tmp_path / "rotated-cnn-s1"]
    assert write_sweep_layout(tmp_path) == []  # once
    assert not (tmp_path / LAYOUT_DIR).exists()
    events = EventAccumulator(str(tmp_path / "rotated-cnn-s1"), size_guidance={"tensors": 0})
    events.Reload()
    [tensor] = events.Tensors(LAYOUT_TAG)
    layout = layout_pb2.Layout.FromString(tensor.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts == {title: [regex] for title, regex in LAYOUT_CHARTS}
    assert charts["val/err"] == [r"^val/err$"] and charts["train/loss_epoch"] == [r"^train/loss_epoch$"]


# ---- a tiny sweep as TensorBoard serves it ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, cache_dir):
    """Two real runs (cnn, st_cnn) of 3 steps each, with the shipped trainer.log_every_n_steps=50."""
    out = tmp_path_factory.mktemp("tiny")
    result = stnbench_train(["-m", "model=cnn,st_cnn", "seed=1", "sweep_name=tiny", *SWEEP_TINY], out, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = out / "multirun" / "tiny"
    runs = {json.loads(p.read_text())["choice/model"]: p.parent for p in sweep.glob("*/results.json")}
    assert set(runs) == {"cnn", "st_cnn"}, runs
    return sweep, runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tiny_sweep):
    """TensorBoard itself (the tensorboard package, as a subprocess on 127.0.0.1) serving the tiny sweep."""
    sweep, runs = tiny_sweep
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(sweep), "--host",
                               "127.0.0.1", "--port", str(port), "--load_fast", "false", "--reload_interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 120
        while True:  # until every run's scalars are loaded
            try:
                tags = _get(f"{base}/plugin/scalars/tags")
                if all("val/err" in tags.get(run.name, {}) for run in runs.values()):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not load the sweep within 120 s"
            time.sleep(0.5)
        yield base, runs
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_lists_exactly_the_sweep_s_runs_and_each_series_once(served):
    base, runs = served
    assert sorted(_get(f"{base}/runs")) == sorted(run.name for run in runs.values())  # no tensorboard_layout
    tags = _get(f"{base}/plugin/scalars/tags")
    assert not [tag for run in tags.values() for tag in run if tag.startswith("compare/")]
    # the Custom Scalars page: one category, each chart once, pointing at the runs' own tags
    layout = _get(f"{base}/plugin/custom_scalars/layout")
    [category] = layout["category"]
    charts = [(chart["title"], chart["multiline"]["tag"]) for chart in category["chart"]]
    assert charts == [(title, [regex]) for title, regex in LAYOUT_CHARTS]
    # HParams: columns from every run (the ST model's loc_lr_multiplier too), and the overrides defining the runs
    request = urllib.parse.quote(json.dumps({"experimentName": ""}))
    experiment = _get(f"{base}/plugin/hparams/experiment?request={request}")
    columns = {info["name"] for info in experiment["hparamInfos"]}
    assert {"model", "transform", "loc_lr_multiplier", "trainer.limit_train_batches", "data.num_val"} <= columns
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"val/err", "val/err_best", "test/err"} <= metrics


def test_steps_agree_and_short_runs_log_their_on_step_series(tiny_sweep):
    """The validation after 3 steps sits at step 3, like its picture, results.json and the console; an epoch of
    3 steps (< log_every_n_steps=50) still logs train/loss_step, lr-* and train/stn_scale_mean, at its end."""
    _, runs = tiny_sweep
    for model, run_dir in runs.items():
        results = json.loads((run_dir / "results.json").read_text())
        steps = results["global_step"]
        assert steps == 3
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        scalars = set(events.Tags()["scalars"])
        assert [e.step for e in events.Scalars("val/err")] == [steps]
        assert [e.step for e in events.Scalars("train/loss_epoch")] == [steps]
        assert [e.step for e in events.Scalars("time/fit_seconds")] == [steps]
        assert [e.step for e in events.Scalars("test/err")] == [steps]
        assert "train/loss_step" in scalars and [e.step for e in events.Scalars("train/loss_step")] == [steps]
        assert any(tag.startswith("lr-") for tag in scalars), scalars
        if model == "st_cnn":
            assert "train/stn_scale_mean" in scalars
            assert [image.step for image in events.Images("val/transformer")] == [steps]
        log = (run_dir / "train.log").read_text()
        assert f"step {steps} " in log


def test_the_transformer_picture_is_a_labelled_grid(tiny_sweep):
    from stnbench import viz

    _, runs = tiny_sweep
    events = EventAccumulator(str(runs["st_cnn"]), size_guidance={"images": 0})
    events.Reload()
    image = events.Images("val/transformer")[-1]
    # 16 validation images of 28x28, each as input | glimpse at 2x (118 px wide panels): not a 118 x 930 strip
    assert image.width >= 4 * 118 and image.height < 16 * 58 and image.width > image.height
    picture = Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB")
    # dark bands: the lines on top that say how to read it, and a caption over every row of images
    dark = [y for y in range(picture.height)
            if all(picture.getpixel((x, y)) == viz.CAPTION_BACKGROUND for x in range(0, 4 * 118))]
    assert len(dark) >= 5 and dark[0] == 0
