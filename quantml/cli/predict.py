"""``quantml-predict model=models:/NAME@champion data=<config or file> [output=...] [key=value ...]``.

Writes the prediction contract as parquet and prints a preview. Options are the keys of
``conf/predict.yaml`` plus any ``data.*`` override (e.g. ``data.n_bars=500``).
Exit codes: 0 written; 2 bad input (unknown model/alias, a panel that does not match
the model's feature contract, unreadable data ...).
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from quantml.cli.common import CONFIG_DIR
    from quantml.serving import data_overrides

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return compose(config_name="predict", overrides=data_overrides(overrides))
    finally:
        GlobalHydra.instance().clear()


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from hydra.errors import HydraException
    from mlflow.exceptions import MlflowException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from quantml.contracts import QuantmlInputError
    from quantml.serving import run_predict

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = compose_config(argv)
        if OmegaConf.is_missing(cfg, "model") or not cfg.model:
            raise QuantmlInputError("model=... is required, e.g. model=models:/NAME@champion")
        result = run_predict(cfg)
    except QuantmlInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MlflowException as exc:  # e.g. the tracking server is unreachable
        print(f"error: MLflow: {exc.message}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"error: {exc}\n(options: model=, data=, output=, last_only=, preview=, data.*=)", file=sys.stderr)
        return 2
    r = result.resolved
    source = f"{r.name} v{r.version}" if r.name else r.load_uri
    tuned = " with its tuned quantml.signal thresholds" if r.signal is not None else ""
    print(f"{len(result.frame)} predictions from {source}{tuned} -> {result.output}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(result.frame.head(int(cfg.preview)).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
