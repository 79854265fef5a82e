"""Fit a backbone and its calibrator; forecasts in the long contract layout joined with what was realised.

A fold's purged inner validation slice is cut in time into two disjoint parts (purged
between them): the **early-stopping part** (the backbone's ``valid``) and the **calibration
part** (temperature, conformal shift, residual quantiles). The fold's scored ``val_*``
metrics are computed on the calibration part with the calibrator cross-fitted inside it, so
neither early stopping nor calibration has seen the rows it is scored on.

The final model grows the median capacity of the fold models (boosting rounds scaled by the
ratio of rows) on every development sample, without early stopping; its calibrator is fitted
on out-of-fold predictions of models grown the same way (:func:`quantml.validation.crossfit`),
never on rows a model was fitted on.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts.schema import FORECAST_FIELDS
from quantml.data.text_stream import text_config
from quantml.evaluation.calibration import Calibrator, fit_calibrator
from quantml.experiment.artifacts import ParquetAppender, read_staged_oos
from quantml.experiment.prepare import REALISED, PreparedData, RealisedTable
from quantml.experiment.resume import run_identity
from quantml.features.memory import trim
from quantml.features.text import text_settings
from quantml.models.base import Forecaster, PanelData, SampleSet, scaled_median_capacity
from quantml.models.fusion import wrap_fusion
from quantml.models.text_latents import TextLatentForecaster, has_text_side
from quantml.signals.core import ACTIONS
from quantml.validation import CROSSFIT_BLOCK, crossfit, crossfit_parts, purge
from quantml.validation.purging import parse_embargo, to_ns

# the columns of a prediction frame that fit_calibrator reads
CALIBRATOR_COLUMNS = frozenset(
    ("horizon", "prob_up", "prob_up_raw", "q10", "q50", "q90", "ret", "dir", "expected_return", "vol_forecast")
)
# share of the inner validation slice's timestamps (the latest ones) kept for calibration
CALIBRATION_SHARE = 0.5
_ROW = "_crossfit_row"
# where sequence backbones checkpoint a job's fits: $QUANTML_CHECKPOINT_DIR, else <tmp>/quantml-checkpoints
CHECKPOINT_DIR_ENV = "QUANTML_CHECKPOINT_DIR"


def build_model(
    cfg: DictConfig, horizons: list[str], warm_source: Forecaster | None = None, data: PanelData | None = None
) -> Forecaster:
    """The configured backbone, unfitted; with ``warm_source`` (``warm_start=``) its fits start
    from that fitted model (:mod:`quantml.experiment.warm_start`). When ``data`` carries the raw text
    towers, the backbone is wrapped in :class:`~quantml.models.text_latents.TextLatentForecaster`
    (per-fold text latents, docs/text.md)."""
    try:
        model = instantiate(cfg.backbone, horizons=horizons, seed=int(cfg.seed))
    except Exception as exc:
        raise QuantmlInputError(f"could not build backbone={cfg.backbone.get('_target_')}: {exc}") from exc
    head = cfg.get("head")
    if head is not None and head.get("name", "quantile") != "quantile":  # head=diffusion (docs/diffusion.md)
        if not hasattr(model, "use_head"):
            raise QuantmlInputError(
                f"head={head.get('name')} needs a sequence backbone (mlp, lstm, gru, tcn, tsmixer, patchtst, "
                f"itransformer, tft); backbone={cfg.backbone.get('_target_')} has its own outputs: use head=quantile"
            )
        model.use_head(dict(head))
    if warm_source is not None:
        model.warm_from(warm_source)
    if hasattr(model, "checkpoint_in"):  # sequence backbones: resumable fits (docs/backbones.md)
        model.checkpoint_in(job_checkpoint_dir(cfg), resume=bool(cfg.get("resume", False)))
    model = wrap_fusion(model, cfg.get("fusion"))  # fusion=residual_gate: the gated text residual (docs/fusion.md)
    if has_text_side(data):  # raw text towers: per-fold latents, outside the fusion so it sees them (docs/text.md)
        model = TextLatentForecaster(model, text_settings(text_config(cfg.data))["latent_dim"], int(cfg.seed))
    return model


def job_checkpoint_dir(cfg: DictConfig) -> Path:
    """The folder a job's fits checkpoint in: ``<$QUANTML_CHECKPOINT_DIR or <tmp>/quantml-checkpoints>/
    <run identity>``, the same for a rerun of the same job (a new Hydra output folder would not be)."""
    root = os.environ.get(CHECKPOINT_DIR_ENV) or os.path.join(tempfile.gettempdir(), "quantml-checkpoints")
    return Path(root) / run_identity(cfg)


# Float columns of a prediction frame kept in float64: the realised returns (the book's PnL sums
# them) and the probability (average precision and calibration error rank and bin it, and float32
# ties between nearby probabilities would move them beyond rounding). Every other float column
# (forecasts, calibrated quantiles, signals, the label sign) is float32 in memory.
FLOAT64_COLUMNS = frozenset(("ret", "ret_after_cost", "vol", "ret_next_bar", "prob_up"))


def _take(realised, key: str, rows: np.ndarray) -> np.ndarray:
    """``rows`` of a realised column, from a :class:`RealisedTable` or a frame of whole columns."""
    if isinstance(realised, pd.DataFrame):
        return realised[key].to_numpy()[rows]
    return realised.take(key, rows)


def prediction_frame(
    model: Forecaster,
    part: SampleSet,
    realised: RealisedTable | pd.DataFrame,
    columns: Collection[str] | None = None,
) -> pd.DataFrame:
    """Forecasts of ``part`` in the long contract layout (horizon-major), joined with what was realised.

    Compact at any size (tens of millions of rows for a large panel's folds): ``symbol`` and
    ``horizon`` categorical over the panel's sorted symbols and the sorted horizons (the same
    categories in every frame of a panel, so frames concatenate without falling back to strings,
    and sort as the strings would), float columns float32 but :data:`FLOAT64_COLUMNS`.
    ``columns``: only these are built (in their usual order), e.g. :data:`CALIBRATOR_COLUMNS`.
    """
    forecast = model.predict(part)
    horizons = list(forecast.horizons)
    n, n_h = len(part), len(horizons)

    def wanted(name: str) -> bool:
        return columns is None or name in columns

    frame = pd.DataFrame(index=pd.RangeIndex(n * n_h))
    if wanted(SYMBOL):
        frame[SYMBOL] = symbol_column(part, n_h)
    if wanted(TIMESTAMP):  # tz-aware values taken as such: to_numpy() would build one Timestamp object per row
        frame[TIMESTAMP] = part.data.keys[TIMESTAMP].array.take(np.tile(part.rows, n_h))
    if wanted("horizon"):
        frame["horizon"] = pd.Categorical.from_codes(
            np.repeat(np.searchsorted(sorted(horizons), horizons), n), categories=sorted(horizons)
        )
    for name in FORECAST_FIELDS:  # [n, H] -> horizon-major column
        if wanted(name):
            frame[name] = getattr(forecast, name).T.reshape(-1).astype(_float_type(name))
    for name, values in forecast.diagnostics.items():
        if wanted(name):
            frame[name] = np.asarray(values).T.reshape(-1).astype(np.float32)
    data_horizons = part.data.horizons
    for name in REALISED:
        if not wanted(name) or (name == "t1" and f"t1@{data_horizons[0]}" not in realised):
            continue  # (a realised table without label ends: the backtest holds by the 0.1 rule)
        column = np.concatenate([_take(realised, f"{name}@{h}", part.rows) for h in data_horizons])
        frame[name] = column.astype(_float_type(name)) if column.dtype == np.float64 else column
    if "t1" in frame.columns:  # label end per row, UTC like the timestamp
        frame["t1"] = pd.to_datetime(frame["t1"]).dt.tz_localize("UTC")
    if wanted("ret_next_bar"):
        frame["ret_next_bar"] = np.tile(_take(realised, "ret_next_bar", part.rows), n_h)
    return frame


# rows forecast at a time where only some forecast columns are kept (the monitoring reference)
COLUMN_CHUNK_ROWS = 1 << 18


def calibrated_columns(
    model: Forecaster,
    part: SampleSet,
    calibrator: Calibrator | None,
    fields: tuple[str, ...] = ("expected_return", "prob_up", "vol_forecast"),
    chunk_rows: int = COLUMN_CHUNK_ROWS,
) -> dict[str, dict[str, np.ndarray]]:
    """Per horizon (in the forecast's order), ``fields`` of ``model``'s forecasts of ``part`` [len(part)],
    each the values :func:`prediction_frame` then ``calibrator.transform`` give (float32 but
    :data:`FLOAT64_COLUMNS`; ``prob_up`` calibrated), without the long frame.

    Forecast ``chunk_rows`` rows at a time (a cross-sectional backbone, which reads each timestamp's
    whole cross-section, at once): only the kept columns are ever as long as ``part``. The
    quantiles are not among ``fields`` (their calibration needs the frame's other columns)."""
    quantiles = sorted(set(fields) & {"q10", "q50", "q90"})
    if quantiles:
        raise QuantmlInputError(f"calibrated_columns: {quantiles} need the frame; use prediction_frame")
    step = len(part) if getattr(model, "cross_sectional", False) else max(int(chunk_rows), 1)
    kept: dict[str, dict[str, list[np.ndarray]]] = {}
    for start in range(0, max(len(part), 1), max(step, 1)):
        forecast = model.predict(part.data.subset(part.rows[start : start + step]))
        for j, h in enumerate(forecast.horizons):
            for name in fields:
                values = getattr(forecast, name)[:, j].astype(_float_type(name))
                if name == "prob_up" and calibrator is not None:
                    values = _calibrated_prob(calibrator, values, str(h))
                kept.setdefault(str(h), {}).setdefault(name, []).append(values)
    return {h: {name: np.concatenate(chunks) for name, chunks in cols.items()} for h, cols in kept.items()}


def _calibrated_prob(calibrator: Calibrator, prob: np.ndarray, horizon: str) -> np.ndarray:
    if horizon not in calibrator.n_fit:
        raise QuantmlInputError(
            f"the calibrator was fitted on horizons {calibrator.horizons} but the model forecasts {horizon!r}; "
            "fit it on a validation frame with the same horizons"
        )
    return calibrator.calibrate_prob(prob, horizon)


def _float_type(name: str) -> type:
    return np.float64 if name in FLOAT64_COLUMNS else np.float32


def symbol_column(part: SampleSet, n_horizons: int) -> pd.Categorical:
    """``part``'s symbols tiled ``n_horizons`` times, categorical over the panel's sorted symbols
    (from ``symbol_codes``: no string is read per row)."""
    data = part.data
    if not len(data.symbols):  # a panel without its code table: the keys' strings
        names = sorted(pd.unique(data.keys[SYMBOL].to_numpy()))
        column = pd.Categorical(part.keys[SYMBOL].to_numpy(), categories=names)
        return pd.Categorical.from_codes(np.tile(column.codes, n_horizons), categories=column.categories)
    names = np.asarray(data.symbols, dtype=object)
    order = np.argsort(names.astype(str), kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    codes = rank[np.asarray(data.symbol_codes)[part.rows]]
    return pd.Categorical.from_codes(np.tile(codes, n_horizons), categories=names[order])


def compact_predictions(frame: pd.DataFrame, int_columns: tuple[str, ...] = ("fold", "path")) -> pd.DataFrame:
    """``frame`` (a scored prediction frame: forecasts, calibrated forecasts, signals) in place made
    compact: float64 columns but :data:`FLOAT64_COLUMNS` to float32, ``action`` categorical,
    ``int_columns`` (fold ids, CPCV paths) to int16 where they fit. Returns ``frame``."""
    for name in frame.columns:
        column = frame[name]
        if column.dtype == np.float64 and name not in FLOAT64_COLUMNS:
            frame[name] = column.to_numpy(np.float32)
        elif name == "action" and not isinstance(column.dtype, pd.CategoricalDtype):
            frame[name] = pd.Categorical(column.to_numpy(object), categories=sorted(ACTIONS))
        elif name in int_columns and column.dtype.kind in "iu" and _fits_int16(column.to_numpy()):
            frame[name] = column.to_numpy(np.int16)
    return frame


def _fits_int16(values: np.ndarray) -> bool:
    info = np.iinfo(np.int16)
    return not len(values) or (int(values.min()) >= info.min and int(values.max()) <= info.max)


def calibration_split(valid_rows, t0, t1, embargo, share: float = CALIBRATION_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Cut an inner validation slice in time into ``(early_stopping, calibration)`` rows.

    ``valid_rows``: int positions into ``t0``/``t1`` (datetime64[ns] [n]). The calibration part
    holds the rows at the last ``max(1, floor(share * T))`` of the slice's ``T`` unique times;
    the early-stopping part the earlier rows whose label ends more than ``embargo`` before the
    calibration part starts (purged, then embargoed). Both sorted int64, disjoint.
    """
    rows = np.unique(np.asarray(valid_rows, dtype=np.int64))
    t0n = to_ns(t0, "t0")
    times = np.unique(t0n[rows])
    if len(times) < 2:
        raise QuantmlInputError(
            f"the inner validation slice has {len(times)} timestamp(s): an early-stopping part and a "
            "calibration part need at least 2; raise validation.valid_fraction or use fewer splits"
        )
    cut = times[len(times) - max(1, int(np.floor(share * len(times) + 1e-9)))]
    is_cal = t0n[rows] >= cut
    cal = rows[is_cal]
    stop = purge(rows[~is_cal], cal, t0, t1, embargo)  # labels reaching into the calibration part
    gap = int(parse_embargo(embargo).value)  # and an embargo between the two parts
    stop = stop[to_ns(t1, "t1")[stop] + gap < t0n[cal].min()]
    if len(stop) == 0:
        raise QuantmlInputError(
            f"no early-stopping row is left in the inner validation slice ({len(times)} timestamps) once "
            f"its labels reaching the calibration part and the embargo ({embargo}) are purged: raise "
            "validation.valid_fraction, or use a shorter embargo or horizon"
        )
    return stop, cal


@dataclass
class FoldFit:
    """One fold's fitted backbone and what was measured around it.

    model : fitted on the fold's fit rows, early-stopped on the early-stopping part.
    calibrator : fitted on the whole calibration part (applied to the test block); None when
        there is no calibration part.
    valid_frame : the calibration part's predictions, calibrated out of fold (cross-fitted),
        for the scored ``val_*`` metrics; None without a calibration part.
    capacity : ``model.capacity_``.
    stop_rows, calibration_rows : the two parts (positions into ``prep.data``).
    """

    model: Forecaster
    calibrator: Calibrator | None
    valid_frame: pd.DataFrame | None
    capacity: dict
    stop_rows: np.ndarray
    calibration_rows: np.ndarray


def fit_fold_model(
    cfg: DictConfig, prep: PreparedData, splitter, fit_rows: np.ndarray, valid_rows: np.ndarray
) -> FoldFit:
    """Fit a backbone on ``fit_rows``, early-stop it on the first part of ``valid_rows`` and
    calibrate it on the second (see the module docstring)."""
    model = build_model(cfg, prep.data.horizons, prep.warm_source, prep.data)
    if not len(valid_rows):
        model.fit(prep.data.subset(fit_rows), None)
        empty = np.zeros(0, np.int64)
        return FoldFit(model, None, None, capacity_of(model), empty, empty)
    stop_rows, cal_rows = calibration_split(valid_rows, prep.data.t0, prep.data.t1, splitter.embargo)
    model.fit(prep.data.subset(fit_rows), prep.data.subset(stop_rows))
    cal_frame = prediction_frame(model, prep.data.subset(cal_rows), prep.realised)
    residual = model.uses_residual_quantiles
    calibrator = fit_calibrator(cal_frame, cfg.evaluation, residual_quantiles=residual)
    valid_frame = crossfit_calibrated(cfg, prep, splitter, cal_frame, cal_rows, residual)
    return FoldFit(model, calibrator, valid_frame, capacity_of(model), stop_rows, cal_rows)


def crossfit_calibrated(
    cfg: DictConfig, prep: PreparedData, splitter, frame: pd.DataFrame, rows: np.ndarray, residual: bool
) -> pd.DataFrame:
    """``frame`` (predictions of ``rows``, long horizon-major layout) calibrated out of fold: each
    crossfit block of ``rows`` by a calibrator fitted on the other blocks (purged, embargoed).

    Where ``rows`` cannot be cross-fitted (fewer timestamps than ``validation.crossfit_folds``,
    or a block left with nothing to fit on) the frame is returned uncalibrated, with a warning:
    still out of sample, never calibrated on itself.
    """
    n_h = len(prep.data.horizons)
    frame = frame.assign(**{_ROW: np.arange(len(frame))})
    tiled = np.tile(np.asarray(rows, dtype=np.int64), n_h)  # the panel row of each frame row

    def fit_predict(fit_pos: np.ndarray, predict_pos: np.ndarray) -> pd.DataFrame:
        with warnings.catch_warnings():  # a small block falls back to identity maps, said once below
            warnings.simplefilter("ignore", UserWarning)
            calibrator = fit_calibrator(frame[np.isin(tiled, fit_pos)], cfg.evaluation, residual_quantiles=residual)
        return calibrator.transform(frame[np.isin(tiled, predict_pos)])

    try:
        out = crossfit(rows, prep.data.t0, prep.data.t1, fit_predict, splitter.crossfit_folds, splitter.embargo)
    except QuantmlInputError as exc:
        warnings.warn(f"val_* metrics scored uncalibrated (still out of sample): {exc}", UserWarning, stacklevel=2)
        return frame.drop(columns=_ROW)
    return out.sort_values(_ROW, kind="stable").drop(columns=[_ROW, CROSSFIT_BLOCK]).reset_index(drop=True)


def capacity_of(model: Forecaster) -> dict:
    """``model.capacity_`` as a plain dict (``{}`` for a backbone that reports none)."""
    return dict(getattr(model, "capacity_", None) or {})


@dataclass(frozen=True)
class FoldCapacity:
    """A fold model's ``capacity_`` and the number of rows it was fitted on."""

    capacity: dict
    n_fit: int


# long rows of the final model's out-of-fold frame from which each cross-fitting block's frame goes to a
# temporary parquet file as it is made, read back once the last block is predicted: held in memory, the
# earlier blocks' frames sat under the last block's fit (1 GB at 8.4M rows: that fit was the run's peak)
SPILL_MIN_ROWS = 4_000_000


def _out_of_fold(prep: PreparedData, splitter, fit_predict) -> pd.DataFrame:
    """The final model's out-of-fold frame over ``prep.samples`` (:func:`quantml.validation.crossfit`),
    each block's frame spilled to disk while the next fits when the frame has at least
    :data:`SPILL_MIN_ROWS` rows (the same frame read back, without the block column)."""
    args = (prep.samples, prep.data.t0, prep.data.t1)
    if len(prep.samples) * len(prep.data.horizons) < SPILL_MIN_ROWS:
        return crossfit(*args, fit_predict, splitter.crossfit_folds, splitter.embargo)
    with tempfile.TemporaryDirectory(prefix="quantml-oof-") as tmp:
        appender = ParquetAppender(Path(tmp) / "oof.parquet")
        try:
            for fit_rows, predict_rows in crossfit_parts(*args, splitter.crossfit_folds, splitter.embargo):
                appender.append(fit_predict(fit_rows, predict_rows))
        finally:
            path = appender.close()
        return read_staged_oos(path)


def fit_final(
    cfg: DictConfig, prep: PreparedData, splitter, capacities: list[FoldCapacity | dict]
) -> tuple[Forecaster, Calibrator, dict]:
    """The model that gets logged, and what it is calibrated with.

    ``capacities``: the fold models' :class:`FoldCapacity` (a bare ``capacity_`` dict counts as
    fitted on as many rows as the target). The model grows their
    :func:`~quantml.models.base.scaled_median_capacity` for its row count — for boosting, each
    fold's trees scaled by the ratio of rows, so the served model moves its forecasts as far as
    the fold models did — on every development sample (``prep.samples``) with no early stopping.
    Its calibrator is fitted on out-of-fold predictions over ``prep.samples``
    (``validation.crossfit_folds`` purged, embargoed blocks, each predicted by a model fitted on
    the other blocks with the capacity scaled to their rows).

    Returns ``(model, calibrator, capacity)`` (``capacity``: the dict the served model grew to).
    """
    template = build_model(cfg, prep.data.horizons, prep.warm_source, prep.data)
    folds = [c if isinstance(c, FoldCapacity) else FoldCapacity(dict(c), 0) for c in capacities]

    def capacity_for(n_rows: int) -> dict:
        rows = [f.n_fit or n_rows for f in folds]
        return scaled_median_capacity([f.capacity for f in folds], rows, n_rows, template.capacity_grows_with_rows)

    capacity = capacity_for(len(prep.samples))

    def fit_on(rows: np.ndarray) -> Forecaster:
        return template.with_capacity(capacity_for(len(rows))).fit(prep.data.subset(rows), None)

    def fit_predict(fit_rows: np.ndarray, predict_rows: np.ndarray) -> pd.DataFrame:
        trim("final model: cross-fit block")  # the last block's model and temporaries, given back before the next fit
        # what the calibrator reads only: the out-of-fold frame is as long as the development samples x horizons
        return prediction_frame(fit_on(fit_rows), prep.data.subset(predict_rows), prep.realised, CALIBRATOR_COLUMNS)

    oof = _out_of_fold(prep, splitter, fit_predict)
    # the block column is not read: no copy of a frame as long as the development samples x horizons
    calibrator = fit_calibrator(oof, cfg.evaluation, residual_quantiles=template.uses_residual_quantiles)
    del oof
    trim("final model: fit")  # the out-of-fold frame's pages, before the largest fit
    return fit_on(prep.samples), calibrator, capacity
