"""Plot an stnbench Optuna study with Optuna's own matplotlib plots, written as PNG files.

    python scripts/optuna_plots.py outputs/multirun/optuna_rts_st_cnn            # a sweep folder
    python scripts/optuna_plots.py path/to/optuna.journal --study optuna_rts_st_cnn --out plots/

Writes optimization_history.png, intermediate_values.png (the pruned trials stop early), parallel_coordinate.png
and slice.png, and prints one line per trial (number, state, value, parameters).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.visualization import matplotlib as plots  # noqa: E402

from stnbench.optuna_trial import open_storage  # noqa: E402

PLOTS = {"optimization_history": plots.plot_optimization_history,
         "intermediate_values": plots.plot_intermediate_values,
         "parallel_coordinate": plots.plot_parallel_coordinate,
         "slice": plots.plot_slice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a sweep folder holding optuna.journal, a journal file, or an RDB URL")
    parser.add_argument("--study", help="study name (default: the only study in the storage)")
    parser.add_argument("--out", help="folder for the PNGs (default: <sweep folder>/optuna_plots)")
    args = parser.parse_args()
    source = Path(args.source)
    storage_name = str(source / "optuna.journal") if source.is_dir() else args.source
    storage = open_storage(storage_name)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        raise SystemExit(f"optuna_plots: error: no study in {storage_name}")
    name = args.study or (names[0] if len(names) == 1 else None)
    if name is None:
        raise SystemExit(f"optuna_plots: error: several studies in {storage_name}: pass --study ({', '.join(names)})")
    study = optuna.load_study(study_name=name, storage=storage)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "optuna_plots"
    out.mkdir(parents=True, exist_ok=True)
    for trial in study.trials:
        print(f"trial {trial.number:3d} {trial.state.name:8s} value={trial.value} {trial.params}")
    for file_name, plot in PLOTS.items():
        axes = plot(study)
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        figure.savefig(out / f"{file_name}.png", dpi=90)
        plt.close(figure)
        print(f"wrote {out / f'{file_name}.png'}")


if __name__ == "__main__":
    main()
