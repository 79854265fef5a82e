"""The backtest engine (``vectorised``) and the bar-by-bar paper replay (``paper``); figures
and MLflow logging of a backtest. Costs, execution and statistics live in :mod:`quantml.market`.
"""
