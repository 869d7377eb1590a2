"""Plot an stnbench Optuna study with Optuna's own matplotlib plots, written as PNG files.

A thin wrapper of ``stnbench.optuna_plots`` (installed with stnbench): for a sweep folder,
``stnbench-report --optuna <sweep>`` does the same. This script also takes a journal file or an RDB URL:

    python scripts/optuna_plots.py outputs/multirun/optuna_rts_st_cnn            # a sweep folder
    python scripts/optuna_plots.py path/to/optuna.journal --study optuna_rts_st_cnn --out plots/

Writes optuna_optimization_history.png, optuna_intermediate_values.png (the pruned trials stop early),
optuna_parallel_coordinate.png and optuna_slice.png (into the sweep folder unless --out is given), and prints
one line per trial (number, state, value, parameters).
"""

from __future__ import annotations

from stnbench.optuna_plots import main

if __name__ == "__main__":
    main()
