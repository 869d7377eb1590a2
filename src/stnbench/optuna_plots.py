"""An stnbench Optuna search's study, drawn with Optuna's own matplotlib plots as PNG files.

``stnbench-report <sweep>`` writes them beside the report whenever the sweep folder holds the study's journal
(``optuna.journal``, written by ``hparams_search=optuna``); ``stnbench-report --optuna <sweep>`` writes them
alone. The plots: ``optuna_optimization_history.png`` (the objective, ``val/err_best``, per trial, and the
best so far), ``optuna_intermediate_values.png`` (each trial's ``val/err`` per validation: pruned trials stop
early), ``optuna_parallel_coordinate.png`` and ``optuna_slice.png`` (objective against each parameter).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from stnbench.errors import ConfigError

JOURNAL = "optuna.journal"
PREFIX = "optuna_"
PLOTS = ("optimization_history", "intermediate_values", "parallel_coordinate", "slice")


class NoStudy(ConfigError):
    """The folder (or storage) holds no Optuna study to draw."""


def storage_of(source: str | Path) -> str:
    """The storage a source names: a sweep folder's journal, a journal file, or an RDB URL; NoStudy (one line)
    where a folder has no journal."""
    if "://" in str(source):
        return str(source)
    path = Path(source)
    if path.is_dir():
        path = path / JOURNAL
        if not path.is_file():
            raise NoStudy(f"no Optuna study in '{source}': it has no {JOURNAL} (a search, "
                          "stnbench-train -m hparams_search=optuna ..., writes one into its sweep folder)")
    elif not path.is_file():
        raise NoStudy(f"no Optuna study at '{source}': no such folder or journal file")
    return str(path)


def load_study(source: str | Path, study: str | None = None) -> Any:
    """The study in ``source`` (``study``: its name; default: the only one, or the one named like the folder)."""
    import optuna

    from stnbench.optuna_trial import open_storage

    storage_name = storage_of(source)
    storage = open_storage(storage_name)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if not names:
        raise NoStudy(f"no Optuna study in '{storage_name}': the journal holds none yet")
    if study is None:
        folder = Path(source).name if Path(source).is_dir() else Path(storage_name).parent.name
        study = names[0] if len(names) == 1 else folder if folder in names else None
    if study is None or study not in names:
        raise NoStudy(f"'{storage_name}' holds the studies {', '.join(names)}: name one (--study NAME)")
    return optuna.load_study(study_name=study, storage=storage)


def trial_lines(study: Any) -> list[str]:
    """One line per trial: number, state, objective and parameters."""
    return [f"trial {trial.number:3d} {trial.state.name:8s} value={trial.value} {trial.params}"
            for trial in study.trials]


def write_study_plots(study: Any, out_dir: str | Path, prefix: str = PREFIX) -> list[Path]:
    """Optuna's plots of ``study`` as ``<out_dir>/<prefix><plot>.png``; a plot with nothing to show (no
    finished trial, no intermediate value) is left out. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    drawable = {"optimization_history": bool(complete),
                "intermediate_values": any(t.intermediate_values for t in study.trials),
                "parallel_coordinate": bool(complete) and any(t.params for t in complete),
                "slice": bool(complete) and any(t.params for t in complete)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLOTS:
        if not drawable[name]:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = getattr(plots, f"plot_{name}")(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        path = out / f"{prefix}{name}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    """``python scripts/optuna_plots.py``: the same plots for any storage (a journal file, an RDB URL)."""
    parser = argparse.ArgumentParser(prog="optuna_plots", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a sweep folder holding optuna.journal, a journal file, or an RDB URL")
    parser.add_argument("--study", help="study name (default: the only study in the storage)")
    parser.add_argument("--out", help="folder for the PNGs (default: the sweep folder, or the journal's folder)")
    args = parser.parse_args(argv)
    try:
        study = load_study(args.source, args.study)
    except NoStudy as error:
        raise SystemExit(f"optuna_plots: error: {error}") from None
    source = Path(args.source)
    out = Path(args.out or (source if source.is_dir() else "." if "://" in args.source else source.parent))
    for line in trial_lines(study):
        print(line)
    for path in write_study_plots(study, out):
        print(f"wrote {path}")
