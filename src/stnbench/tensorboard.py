"""TensorBoard as people compare baselines in it: one run per run folder and nothing else, every series once,
steps that agree with results.json, and a Custom Scalars page with every run's curves on one chart.

* :class:`RunLogger` (``logger=tensorboard``) writes a run's events straight into its run folder, so
  ``tensorboard --logdir <sweep>`` names each run by its folder (``rotated-cnn-s1``) and lists nothing else;
  drops Lightning's ``epoch`` counter series; while fitting, puts each point at the number of optimiser steps
  done (results.json's ``global_step``, the step of the ``val/transformer`` picture and of the console's epoch
  line) rather than Lightning's zero-based index; and carries the Custom Scalars layout (:data:`LAYOUT`) in the
  run's own events. The layout is the same in every run and points at the runs' own ``val/err`` and
  ``train/loss_epoch`` tags, so TensorBoard merges it into one page, with no layout folder in the run list and
  no copies of the series.
* :func:`log_hparams` fills the HParams tab: the run's choices that apply to it (no ``'None'`` transform for a
  CNN), the overrides that define the run (what its folder tag shows, from its ``.hydra/``), parameter count
  and provenance. No placeholder values: TensorBoard takes the metric columns from the runs' own series.
* :func:`write_sweep_layout`, for sweeps made by older stnbench versions: removes their
  ``<sweep>/tensorboard_layout/`` folder (which TensorBoard listed as a run) and adds the layout to the run
  folders whose events lack it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

LAYOUT_DIR = "tensorboard_layout"  # where stnbench < issue 24 wrote the layout: a run of its own in TensorBoard
LAYOUT_TAG = "custom_scalars__config__"  # the Custom Scalars plugin's tag for a layout
LAYOUT_CATEGORY = "stnbench: every run on one chart (filter runs by data with the run regex, e.g. ^rts-)"
# (chart title, tag regex): the runs' own series, one line per run
LAYOUT_CHARTS = (("val/err", r"^val/err$"), ("val/err_best", r"^val/err_best$"),
                 ("train/loss_epoch", r"^train/loss_epoch$"))
# Choices (stnbench.build.key_choices) that already show a config key as an HParams column: an override of the
# key is not repeated under its own name.
CHOICE_COLUMNS = {"optimizer": "optimizer", "scheduler": "scheduler", "optimizer.lr": "lr",
                  "data.batch_size": "batch_size", "trainer.max_epochs": "max_epochs",
                  "model.loc_lr_multiplier": "loc_lr_multiplier"}


def layout() -> dict[str, dict[str, list]]:
    """The Custom Scalars layout every run carries (``SummaryWriter.add_custom_scalars``)."""
    return {LAYOUT_CATEGORY: {title: ["Multiline", [regex]] for title, regex in LAYOUT_CHARTS}}


class RunLogger(TensorBoardLogger):
    """TensorBoardLogger whose events live in ``save_dir`` itself (the run folder names the run).

    ``dataset`` is accepted for configs that pass it (older stnbench mirrored series per dataset) and unused."""

    def __init__(self, save_dir: str, dataset: str | None = None, name: str = "", version: str = "",
                 **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)
        self.dataset = dataset
        self.step_offset = 0  # 1 while fitting: see fit_steps

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        fresh = self._experiment is None
        writer = super().experiment
        if fresh:  # every events file of the run starts with the layout (the same in every run: merged)
            writer.add_custom_scalars(layout())
        return writer

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}  # the x axis is the step already
        if metrics:
            super().log_metrics(metrics, None if step is None else step + self.step_offset)

    @rank_zero_only
    def log_hyperparams(self, params: Any, metrics: Any = None, step: int | None = None) -> None:
        """Without placeholder metrics: Lightning would write them as real points at step 0."""
        super().log_hyperparams(params, metrics=None, step=step)
        if metrics:
            write_hparams(self, dict(params))


def fit_steps(loggers: Iterable[Any], fitting: bool) -> None:
    """Called by the LightningModule when fitting starts and ends. While fitting, Lightning logs a point at the
    zero-based index of the step that made it (the validation after 5 steps at 4); RunLogger shifts it to the
    steps done (5), where results.json, the console and the transformer picture put it. Tests after fitting
    are logged at the steps done already, unshifted."""
    for logger in loggers:
        if isinstance(logger, RunLogger):
            logger.step_offset = 1 if fitting else 0


def _hparam_value(value: Any) -> str | int | float:
    """Numbers stay numbers (sortable columns); anything else, bools included, becomes text (torch's summary
    would turn a bool into 1/0); an override to null reads ``null``."""
    if value is None:
        return "null"
    return value if isinstance(value, (str, int, float)) and not isinstance(value, bool) else str(value)


def write_hparams(logger: TensorBoardLogger, params: Mapping[str, Any]) -> None:
    """The run's HParams session (start and end): its values only. No experiment summary, so TensorBoard builds
    the columns from every run's values (a column that only some runs have, such as ``loc_lr_multiplier``,
    stays) and the metric columns from the runs' own series; nothing is written into the time series."""
    from torch.utils.tensorboard.summary import hparams

    clean = {key: _hparam_value(value) for key, value in params.items()}
    _, start, end = hparams(clean, {})
    writer = logger.experiment._get_file_writer()
    for summary in (start, end):
        writer.add_summary(summary)
    writer.flush()


def run_overrides(run_dir: str | Path) -> dict[str, Any]:
    """The overrides that define a run, as HParams columns: those its folder tag shows
    (``stnbench.identity.folder_tag``: part of its identity, not already in its name), from the command and
    config in ``<run>/.hydra/``; ``{}`` where there is none. Keys already shown by a choice column are left out."""
    from omegaconf import OmegaConf

    from stnbench.identity import NAMED, in_identity
    from stnbench.records import stored_command, stored_config

    command, config = stored_command(run_dir), stored_config(run_dir)
    if command is None or config is None:
        return {}
    overrides, groups = command
    values: dict[str, Any] = {}
    for override in overrides:
        key, _, raw = override.partition("=")
        bare = key.lstrip("+~")
        if bare in NAMED or bare in CHOICE_COLUMNS or not in_identity(bare, config):
            continue
        if bare in groups:  # a config group option: schedule=paper
            values[bare] = raw
            continue
        value = OmegaConf.select(OmegaConf.create(config), bare.replace("/", "."), default=None)
        values[bare] = value if value is None or isinstance(value, (str, int, float, bool)) else raw
    return values


def log_hparams(logger: Any, choices: Mapping[str, Any], parameters: int,
                extra: Mapping[str, Any] | None = None) -> None:
    """The run's row in the HParams tab: its choices that apply to it (a CNN has no transform), the overrides
    that define it (``run_overrides`` of the logger's folder), its parameter count and ``extra`` (e.g.
    provenance). Other loggers (CSV, ...) just record the same values as hyper-parameters."""
    run_dir = getattr(logger, "save_dir", None)
    params = {**{key: value for key, value in choices.items() if value is not None},
              **(run_overrides(run_dir) if run_dir else {}), "parameters": parameters,
              **{key: value for key, value in (extra or {}).items() if value is not None}}
    if isinstance(logger, TensorBoardLogger):
        TensorBoardLogger.log_hyperparams(logger, params, metrics=None)  # hparams.yaml, no placeholders
        write_hparams(logger, params)
    else:
        logger.log_hyperparams(params)


def has_layout(folder: Path, events_checked: int = 50) -> bool:
    """Whether a run folder's events carry the layout (RunLogger writes it first in each events file)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    for path in sorted(folder.glob("events.out.tfevents.*")):
        try:
            for number, event in enumerate(EventFileLoader(str(path)).Load()):
                if any(value.tag == LAYOUT_TAG for value in event.summary.value):
                    return True
                if number >= events_checked:
                    break
        except Exception:  # noqa: BLE001 - a damaged or half-written events file: no layout found in it
            continue
    return False


def write_sweep_layout(sweep_dir: str | Path) -> list[Path]:
    """Bring a sweep made by an older stnbench to this one's TensorBoard: remove ``<sweep>/tensorboard_layout/``
    (TensorBoard listed it as a run) and add the layout to every run folder whose events lack it (a small
    events file of its own, ``*.layout``). Runs made now carry it already: nothing is written for them.
    Returns the folders it wrote into."""
    from torch.utils.tensorboard import SummaryWriter

    sweep_dir = Path(sweep_dir)
    legacy = sweep_dir / LAYOUT_DIR
    if legacy.is_dir() and all(p.name.startswith("events.out.tfevents.") for p in legacy.iterdir()):
        shutil.rmtree(legacy)
    written = []
    folders = sorted({path.parent for path in sweep_dir.rglob("events.out.tfevents.*")})
    for folder in folders:
        if has_layout(folder):
            continue
        writer = SummaryWriter(log_dir=str(folder), filename_suffix=".layout")
        writer.add_custom_scalars(layout())
        writer.close()
        written.append(folder)
    return written
