"""TensorBoard as people compare baselines in it: runs named by their run folder, no placeholder points,
and one Custom Scalars page per sweep that puts every model of a dataset on one chart.

* :class:`RunLogger` (``logger=tensorboard``) writes a run's events straight into its run folder, so
  ``tensorboard --logdir <sweep>`` names each run by its folder (``rotated-cnn-s1``), not
  ``<folder>/tensorboard``; drops Lightning's ``epoch`` counter series; and mirrors ``val/err`` and
  ``train/loss_epoch`` as ``compare/<dataset>/...`` so a chart per dataset can gather every model's line.
* :func:`log_hparams` fills the HParams tab (choices, parameter count, provenance) and declares the real
  ``val/err_best`` and ``test/err`` series as its metrics: no fake ``hp/*`` value at step 0.
* :func:`write_sweep_layout` writes the sweep's Custom Scalars layout (one ``val/err`` chart per dataset,
  one ``train/loss`` chart) into ``<sweep>/tensorboard_layout/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

COMPARED = ("val/err", "train/loss_epoch")  # mirrored per dataset for the sweep's comparison charts
HPARAM_METRICS = ("val/err_best", "test/err", "val/err")  # series the HParams tab shows per run
LAYOUT_DIR = "tensorboard_layout"


def compare_tag(dataset: str, tag: str) -> str:
    return f"compare/{dataset}/{tag}"


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger whose events live in ``save_dir`` itself (the run folder names the run)."""

    def __init__(self, save_dir: str, dataset: str | None = None, name: str = "", version: str = "",
                 **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)
        self.dataset = dataset

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}  # the x axis is the step already
        if self.dataset:
            metrics.update({compare_tag(self.dataset, k): v for k, v in list(metrics.items()) if k in COMPARED})
        if metrics:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None, step: int | None = None) -> None:
        """Without placeholder metrics: Lightning would write them as real points at step 0."""
        super().log_hyperparams(params, metrics=None, step=step)
        if metrics:
            write_hparams(self, dict(params), metrics)


def _hparam_value(value: Any) -> str | int | float:
    """Numbers stay numbers (sortable columns); anything else, bools and None included, becomes text
    (torch's summary would turn a bool into 1/0)."""
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else str(value)


def write_hparams(logger: TensorBoardLogger, params: Mapping[str, Any], metric_tags: Iterable[str]) -> None:
    """HParams summaries only (experiment, session start/end): the metric values come from the run's own
    series of the same tags, so nothing is written into the time series."""
    from torch.utils.tensorboard.summary import hparams

    clean = {key: _hparam_value(value) for key, value in params.items()}
    experiment, start, end = hparams(clean, {tag: 0.0 for tag in metric_tags})
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


def log_hparams(logger: Any, choices: Mapping[str, Any], parameters: int,
                extra: Mapping[str, Any] | None = None) -> None:
    """The run's row in the HParams tab: its choices, parameter count and ``extra`` (e.g. provenance).

    Other loggers (CSV, ...) just record the same values as hyper-parameters."""
    params = {**choices, "parameters": parameters, **(extra or {})}
    if isinstance(logger, TensorBoardLogger):
        TensorBoardLogger.log_hyperparams(logger, params, metrics=None)  # hparams.yaml, no placeholders
        write_hparams(logger, params, HPARAM_METRICS)
    else:
        logger.log_hyperparams(params)


def sweep_datasets(sweep_dir: str | Path) -> list[str]:
    """Datasets of a sweep's runs, from their results.json (``choice/data``)."""
    found = set()
    for path in Path(sweep_dir).glob("*/results.json"):
        try:
            data = json.loads(path.read_text()).get("choice/data")
        except (OSError, ValueError):
            continue
        if data:
            found.add(str(data))
    return sorted(found)


def write_sweep_layout(sweep_dir: str | Path, datasets: Iterable[str] | None = None) -> Path:
    """Write the sweep's Custom Scalars layout: per dataset one chart with every run's ``val/err`` (and
    one with ``train/loss``), plus one chart of every run's ``train/loss``. Rewritten on each call, so a
    re-run of the sweep that adds a dataset gets a complete layout. Returns the layout's folder."""
    from torch.utils.tensorboard import SummaryWriter

    sweep_dir = Path(sweep_dir)
    datasets = sorted(set(datasets)) if datasets is not None else sweep_datasets(sweep_dir)
    layout: dict[str, dict[str, list]] = {"stnbench: models side by side": {}}
    charts = layout["stnbench: models side by side"]
    for dataset in datasets:
        charts[f"val/err on {dataset}"] = ["Multiline", [f"^{re.escape(compare_tag(dataset, 'val/err'))}$"]]
    charts["train/loss (every run)"] = ["Multiline", [r"^train/loss_epoch$"]]
    for dataset in datasets:
        charts[f"train/loss on {dataset}"] = ["Multiline",
                                              [f"^{re.escape(compare_tag(dataset, 'train/loss_epoch'))}$"]]
    folder = sweep_dir / LAYOUT_DIR
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()  # one layout per sweep: TensorBoard would merge (and repeat) the charts of several
    writer = SummaryWriter(log_dir=str(folder))
    writer.add_custom_scalars(layout)
    writer.close()
    return folder
