"""stnbench's Hydra sweeper for Optuna >= 4 (ask/tell, PRUNED trials, journal storage)."""
