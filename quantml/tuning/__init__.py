"""Optuna tuning: signal thresholds on a run's OOS predictions (``quantml tune``) and
backbone hyper-parameters (``quantml train -m hparams_search=<name>``)."""
