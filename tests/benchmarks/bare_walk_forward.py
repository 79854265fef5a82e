"""The same LightGBM fits as ``quantml-train``, done by a bare script: no Hydra app, no MLflow, no
calibration, scoring, report or figures. Used by ``test_bench_tracking_overhead.py``.

    python tests/benchmarks/bare_walk_forward.py [--refit] override ...

Its last line is JSON, ``{"refit_seconds": ...}``: how long the final model's fits took (0 without ``--refit``).

Per fold it fits the backbone on the fold's fit rows, early-stopped on the same early-stopping part
``quantml train`` uses (the first part of the inner validation slice), and predicts the test block.
``--refit`` adds the fits of the final model ``quantml train`` logs: the ``validation.crossfit_folds``
out-of-fold models (each predicting its block) and the model on every development sample, each grown
to the fold models' row-scaled median capacity without early stopping. The heads, rows and trees are
those of ``quantml train``; what it adds around them is what the benchmark measures.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from quantml.cli.common import CONFIG_DIR
from quantml.experiment.fitting import calibration_split, prediction_frame
from quantml.experiment.lockbox import resolve_lockbox
from quantml.experiment.prepare import prepare_data, reserve_lockbox
from quantml.models.base import scaled_median_capacity
from quantml.validation import crossfit, make_splitter


def main(argv: list[str]) -> None:
    refit = "--refit" in argv
    overrides = [a for a in argv if a != "--refit"]
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose("config", overrides=overrides)
    prep = prepare_data(cfg)
    splitter = make_splitter(cfg.validation)
    prep = reserve_lockbox(prep, resolve_lockbox(cfg.validation, prep, None), splitter.embargo)
    data, samples = prep.data, prep.samples
    t0, t1 = data.t0[samples], data.t1[samples]

    def backbone():
        return instantiate(cfg.backbone, horizons=data.horizons, seed=int(cfg.seed))

    ics, capacities, n_fit = [], [], []
    for fold in splitter.split(t0, t1, calendar=prep.calendar):
        fit, valid = splitter.inner_split(fold, t0, t1)
        fit_rows, valid_rows = samples[fit], samples[valid]
        stop_rows, _ = calibration_split(valid_rows, data.t0, data.t1, splitter.embargo)
        model = backbone().fit(data.subset(fit_rows), data.subset(stop_rows))
        frame = prediction_frame(model, data.subset(samples[fold.test]), prep.realised)
        ics.append(np.corrcoef(frame["expected_return"], frame["ret"])[0, 1])
        capacities.append(dict(model.capacity_))
        n_fit.append(len(fit_rows))
    refit_start = time.perf_counter()
    if refit:
        template = backbone()

        def fit_on(rows: np.ndarray):
            capacity = scaled_median_capacity(capacities, n_fit, len(rows), template.capacity_grows_with_rows)
            return template.with_capacity(capacity).fit(data.subset(rows), None)

        def fit_predict(fit_rows: np.ndarray, predict_rows: np.ndarray):
            return prediction_frame(fit_on(fit_rows), data.subset(predict_rows), prep.realised)

        crossfit(samples, data.t0, data.t1, fit_predict, splitter.crossfit_folds, splitter.embargo)
        fit_on(samples)
    print("pooled IC per fold:", np.round(ics, 4))
    # the benchmark reads this line: the final model's fits, so one --refit run also gives the folds-only time
    print(json.dumps({"refit_seconds": time.perf_counter() - refit_start if refit else 0.0}))


if __name__ == "__main__":
    main(sys.argv[1:])
