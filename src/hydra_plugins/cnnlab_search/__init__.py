"""cnnlab's Hydra sweeper for hyper-parameter search on Optuna (``hydra/sweeper=optuna_search``)."""
