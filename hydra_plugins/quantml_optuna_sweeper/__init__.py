"""Hydra sweeper that drives ``-m`` runs with Optuna 5 (``hydra/sweeper=quantml_optuna``).

Found by Hydra's plugin discovery of the ``hydra_plugins`` namespace package; the
``hparams_search/*`` presets select it. See ``quantml/tuning/hparams.py`` for the logic.
"""
