"""quantml predict model=models:/NAME@active data=<config or file> [output=...] [key=value ...].

Writes the prediction contract as parquet and prints a preview; with log_dir=DIR it also appends
the rows to DIR/predictions, the keyed prediction log `quantml paper` writes (source="predict";
a row already logged, same model, version, symbol, timestamp and horizon, is not written again). Settings are Hydra
key=value overrides of the packaged conf/predict.yaml (model=, data=, output=,
last_only=, log_dir=, preview=, seed=, tracking.uri=, text.path=) plus any data.* override (e.g. data.n_bars=500).
A model trained on a raw text stream reads its posts from text.path=<parquet/CSV file or directory>, else
from the data config (data=model: the version's own text stream); without one it is served without text.
Exit codes: 0 written; 2 bad input (unknown model/alias, a panel that does not match
the model's feature contract, unreadable data ...).
"""

from __future__ import annotations

import sys

USAGE = "quantml predict model=models:/NAME@active data=<config or file> [output=PATH] [key=value ...]"
SETTINGS = "model=, data=, output=, last_only=, log_dir=, preview=, seed=, tracking.uri=, text.path=, data.*="


def compose_config(overrides: list[str]):
    from omegaconf import open_dict

    from quantml.cli.common import compose, tracking_uri
    from quantml.serving import data_overrides

    cfg = compose("predict", data_overrides(overrides))
    with open_dict(cfg):  # the library reads the resolved URI (cfg.tracking.uri is the one setting)
        cfg.tracking_uri = tracking_uri(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from omegaconf import OmegaConf

    from quantml.cli.common import error_exit, refuse_non_settings
    from quantml.contracts import QuantmlInputError
    from quantml.serving import run_predict

    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        refuse_non_settings(argv, USAGE)
        cfg = compose_config(argv)
        if OmegaConf.is_missing(cfg, "model") or not cfg.model:
            raise QuantmlInputError("model=... is required, e.g. model=models:/NAME@active")
        result = run_predict(cfg)
    except Exception as exc:  # noqa: BLE001 - error_exit re-raises what is not bad input
        return error_exit(exc, SETTINGS)
    r = result.resolved
    source = f"{r.name} v{r.version}" if r.name else r.load_uri
    tuned = " with its tuned quantml.signal thresholds" if r.signal is not None else ""
    print(f"{len(result.frame)} predictions from {source}{tuned} -> {result.output}")
    if result.log_dir is not None:
        print(f"{result.logged} new row(s) appended to the prediction log {result.log_dir / 'predictions'}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(result.frame.head(int(cfg.preview)).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
