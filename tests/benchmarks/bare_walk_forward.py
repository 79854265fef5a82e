"""The same LightGBM walk-forward as ``quantml-train``, done by a bare script: no Hydra app,
no MLflow, no calibration/report/figures. Used by ``test_bench_tracking_overhead.py``.

    python tests/benchmarks/bare_walk_forward.py [--refit] override ...
"""

from __future__ import annotations

import sys

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from quantml.cli.common import CONFIG_DIR
from quantml.experiment.fitting import prediction_frame
from quantml.experiment.prepare import prepare_data
from quantml.validation import inner_validation_split, make_splitter


def main(argv: list[str]) -> None:
    refit = "--refit" in argv
    overrides = [a for a in argv if a != "--refit"]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=overrides)
    prep = prepare_data(cfg)
    t0, t1 = prep.data.t0[prep.samples], prep.data.t1[prep.samples]
    splitter = make_splitter(cfg.validation)
    ics = []
    for fold in splitter.split(t0, t1):
        fit, valid = splitter.inner_split(fold, t0, t1)
        model = instantiate(cfg.backbone, horizons=prep.data.horizons, seed=cfg.seed)
        model.fit(prep.data.subset(prep.samples[fit]), prep.data.subset(prep.samples[valid]))
        frame = prediction_frame(model, prep.data.subset(prep.samples[fold.test]), prep.realised)
        ics.append(np.corrcoef(frame["expected_return"], frame["ret"])[0, 1])
    if refit:
        positions = np.arange(len(prep.samples))
        fit, valid = inner_validation_split(positions, t0, t1, splitter.valid_fraction, splitter.embargo)
        model = instantiate(cfg.backbone, horizons=prep.data.horizons, seed=cfg.seed)
        model.fit(prep.data.subset(prep.samples[fit]), prep.data.subset(prep.samples[valid]))
    print("pooled IC per fold:", np.round(ics, 4))


if __name__ == "__main__":
    main(sys.argv[1:])
