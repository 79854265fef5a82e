"""The one interface every backbone implements: ``fit(train, valid)`` and ``predict(data) -> Forecast``.

Shapes: ``n`` rows of the panel, ``F`` features, ``H`` horizons.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import FORECAST_FIELDS, SYMBOL, TIMESTAMP, QuantmlInputError


@dataclass
class PanelData:
    """The model-ready panel: features and targets for every row, sorted by (symbol, timestamp).

    Attributes
    ----------
    keys : DataFrame [n, 2]   ``symbol``, ``timestamp`` (tz-aware UTC).
    X : float32 array [n, F]  causal features (NaN during warm-up).
    feature_names : list of F names; ``feature_modalities`` maps each to its modality.
    known_future : names of features known in advance (calendar), for models that use them.
    horizons : list of H horizon names (``"1h"``, ``"1d"`` ...).
    y_ret, y_dir, y_vol : float arrays [n, H]  forward log return, 1[ret > 0], realised vol
        over the label interval; NaN where the label interval runs past the data.
    t0, t1 : datetime64[ns] arrays [n]  the label interval of each row (t1 = end of the
        longest horizon; NaT when unknown).
    symbol_codes : int array [n]; ``symbols`` the names behind the codes.
    """

    keys: pd.DataFrame
    X: np.ndarray
    feature_names: list[str]
    feature_modalities: dict[str, str]
    horizons: list[str]
    y_ret: np.ndarray
    y_dir: np.ndarray
    y_vol: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    symbol_codes: np.ndarray
    symbols: list[str]
    known_future: list[str] = field(default_factory=list)
    # bool [n] or None: rows that start a new window segment after a flagged data gap
    # (``FeatureMatrix.window_breaks``): a look-back window never reaches across one
    breaks: np.ndarray | None = None
    # sparse side matrices {name: scipy.sparse [n, d]}, rows aligned to these rows, never in X (the raw text
    # towers, quantml.features.text); a wrapper such as quantml.models.text_latents reduces them per fold
    side: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name in ("X", "y_ret", "y_dir", "y_vol", "t0", "t1", "symbol_codes"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PanelData.{name} has {len(getattr(self, name))} rows, keys has {n}")
        if self.breaks is not None and len(self.breaks) != n:
            raise ValueError(f"PanelData.breaks has {len(self.breaks)} rows, keys has {n}")
        for name, matrix in dict(self.side or {}).items():
            if matrix.shape[0] != n:
                raise ValueError(f"PanelData.side[{name!r}] has {matrix.shape[0]} rows, keys has {n}")
        # start position of each row's segment (its symbol's rows, cut at flagged gaps), for lazy windowing
        codes = self.symbol_codes
        cut = codes[1:] != codes[:-1]
        if self.breaks is not None and n:
            cut = cut | np.asarray(self.breaks, dtype=bool)[1:]
        starts = np.r_[0, np.flatnonzero(cut) + 1]
        seg_id = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
        self.segment_start = starts[seg_id] if n else np.zeros(0, dtype=np.int64)

    @property
    def n_rows(self) -> int:
        return len(self.keys)

    @classmethod
    def assemble(cls, panel: pd.DataFrame, features, horizons: list[str], labels=None) -> PanelData:
        """The one way a panel becomes model input, at training and at serving.

        ``features``: a built feature set (``frame``, ``modalities``, ``known_future``);
        ``labels``: multi-horizon labels (``ret``, ``dir``, ``vol``, ``t1_max``), or None when
        serving (targets NaN, ``t1`` NaT).
        """
        n, H = len(panel), len(horizons)
        codes, symbols = pd.factorize(panel[SYMBOL])
        if labels is None:
            nan = np.full((n, H), np.nan)
            y_ret, y_dir, y_vol = nan, nan.copy(), nan.copy()
            t1 = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
        else:
            y_ret, y_dir, y_vol, t1 = labels.ret, labels.dir, labels.vol, labels.t1_max
        return cls(
            keys=panel[[SYMBOL, TIMESTAMP]].reset_index(drop=True),
            X=features.frame.to_numpy(dtype=np.float32),
            feature_names=list(features.frame.columns),
            feature_modalities=dict(features.modalities),
            horizons=list(horizons),
            y_ret=y_ret,
            y_dir=y_dir,
            y_vol=y_vol,
            t0=panel[TIMESTAMP].to_numpy(dtype="datetime64[ns]"),
            t1=t1,
            symbol_codes=codes.astype(np.int64),
            symbols=list(symbols),
            known_future=list(features.known_future),
            breaks=getattr(features, "window_breaks", None),
        )

    def labelled_rows(self) -> np.ndarray:
        """Positions of rows whose every horizon has a label."""
        return np.flatnonzero(np.isfinite(self.y_ret).all(axis=1))

    def subset(self, rows: np.ndarray) -> SampleSet:
        return SampleSet(self, np.asarray(rows, dtype=np.int64))


@dataclass
class SampleSet:
    """A selection of rows of a :class:`PanelData` (a fold's train, valid or test part).

    Sequence models read windows ``data.X[max(segment_start[r], r-L+1) : r+1]`` for each
    row ``r``, so nothing ``[n, L, F]`` is ever built.
    """

    data: PanelData
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def X(self) -> np.ndarray:
        return self.data.X[self.rows]

    @property
    def y_ret(self) -> np.ndarray:
        return self.data.y_ret[self.rows]

    @property
    def y_dir(self) -> np.ndarray:
        return self.data.y_dir[self.rows]

    @property
    def y_vol(self) -> np.ndarray:
        return self.data.y_vol[self.rows]

    @property
    def keys(self) -> pd.DataFrame:
        return self.data.keys.iloc[self.rows].reset_index(drop=True)


@dataclass
class Forecast:
    """Per-horizon forecasts for ``n`` rows; every array is float [n, H].

    Quantiles never cross: ``q10 <= q50 <= q90``. ``prob_up`` is P(forward return > 0).
    ``diagnostics``: optional ``{name: float [n, H]}`` a backbone explains its forecasts with (a fusion
    gate's opening, the text contribution, a regime posterior); :meth:`to_frame` adds them as columns.
    """

    horizons: list[str]
    expected_return: np.ndarray
    q10: np.ndarray
    q50: np.ndarray
    q90: np.ndarray
    prob_up: np.ndarray
    vol_forecast: np.ndarray
    diagnostics: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.expected_return), len(self.horizons))
        for name in FORECAST_FIELDS:
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"Forecast.{name} has shape {arr.shape}, expected {shape}")
            setattr(self, name, arr)
        diagnostics = {}
        for name, values in dict(self.diagnostics).items():
            arr = np.asarray(values, dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"Forecast.diagnostics[{name!r}] has shape {arr.shape}, expected {shape}")
            if name in FORECAST_FIELDS:
                raise ValueError(f"Forecast.diagnostics[{name!r}] shadows a forecast field")
            diagnostics[str(name)] = arr
        self.diagnostics = diagnostics

    def __len__(self) -> int:
        return len(self.expected_return)

    def to_frame(self, keys: pd.DataFrame) -> pd.DataFrame:
        """Long frame, one row per (symbol, timestamp, horizon), horizon-major order."""
        if len(keys) != len(self):
            raise ValueError(f"{len(keys)} keys for {len(self)} forecast rows")
        frames = []
        for j, h in enumerate(self.horizons):
            part = pd.DataFrame({SYMBOL: keys[SYMBOL].to_numpy(), TIMESTAMP: keys[TIMESTAMP].to_numpy()})
            part["horizon"] = h
            for name in FORECAST_FIELDS:
                part[name] = getattr(self, name)[:, j]
            for name, arr in self.diagnostics.items():
                part[name] = arr[:, j]
            frames.append(part)
        return pd.concat(frames, ignore_index=True)

    @staticmethod
    def concat(parts: list[Forecast]) -> Forecast:
        """Rows of ``parts`` in order; a diagnostic survives only when every part carries it."""
        shared = [k for k in parts[0].diagnostics if all(k in p.diagnostics for p in parts)]
        return Forecast(
            parts[0].horizons,
            **{f: np.concatenate([getattr(p, f) for p in parts]) for f in FORECAST_FIELDS},
            diagnostics={k: np.concatenate([p.diagnostics[k] for p in parts]) for k in shared},
        )


class Forecaster(ABC):
    """A backbone. Subclasses take ``horizons`` and ``seed`` plus their own hyper-parameters.

    Capacity
    --------
    After :meth:`fit`, ``capacity_`` is a JSON-able ``{name: int}`` of how much the model grew
    (LightGBM: trees per head and horizon, ``{"return/1d": 37, ...}``; sequence models:
    ``{"epochs": 12}``; ridge: ``{}``). :meth:`with_capacity` gives an unfitted copy that
    trains to a given capacity without early stopping (the final model takes the median
    capacity of the fold models, see :func:`median_capacity`).

    ``capacity_grows_with_rows``: True when a capacity is counted in steps that each see a
    fixed share of the rows, so a fit on more rows needs proportionally more of them (boosting
    rounds at a fixed learning rate: each tree's leaves average over more rows, so the same
    number of trees moves the forecasts less). The final model then scales each fold's capacity
    by its row ratio before taking the median (:func:`scaled_median_capacity`). Epochs already
    pass over every row: sequence models keep False.

    Fitted attributes end with ``_`` (the scikit-learn convention); hyper-parameters do not.
    """

    capacity_grows_with_rows: bool = False

    def __init__(self, horizons: list[str], seed: int = 0) -> None:
        if not horizons:
            raise QuantmlInputError("a backbone needs at least one horizon; set horizon=1d (or another)")
        self.horizons = list(horizons)
        self.seed = int(seed)
        self.fixed_capacity: dict[str, int] | None = None  # set by with_capacity

    @abstractmethod
    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> Forecaster:
        """Fit on ``train``; ``valid`` (purged, earlier than test) is for early stopping only.

        Sets ``capacity_``. With a fixed capacity (:meth:`with_capacity`) there is no early
        stopping: ``valid`` may still serve out-of-sample statistics (residual quantiles)."""

    def unfitted(self) -> Forecaster:
        """A deep copy holding the hyper-parameters only (every attribute ending in ``_`` dropped)."""
        clone = copy.copy(self)
        clone.__dict__ = copy.deepcopy({k: v for k, v in self.__dict__.items() if not k.endswith("_")})
        return clone

    def with_capacity(self, capacity: Mapping[str, int] | None) -> Forecaster:
        """An unfitted copy that trains to ``capacity`` (a ``capacity_`` dict) with no early stopping.

        ``None`` gives a plain unfitted copy (early stopping as configured). Backbones without
        a capacity ignore the values (the default)."""
        clone = self.unfitted()
        clone.fixed_capacity = None if capacity is None else check_capacity(capacity)
        return clone

    @abstractmethod
    def predict(self, data: SampleSet) -> Forecast:
        """Forecast every row of ``data`` (rows need no labels)."""

    @property
    def uses_residual_quantiles(self) -> bool:
        """True when P10/P50/P90 are ``expected_return + vol_forecast * z`` with residual quantiles
        ``z`` (a calibrator may then refit ``z``); False for learned quantile heads."""
        return False

    def feature_importance(self) -> pd.Series | None:
        """Importance per feature name, or None when the backbone has none."""
        return None

    def figures(self) -> dict:
        """Extra matplotlib figures to log (e.g. attention), keyed by file name."""
        return {}


def residual_quantiles(expected: np.ndarray, vol: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Quantiles ``expected + vol * z_q`` from sorted standardised-residual quantiles ``z`` [3, H].

    Sorting ``z`` makes the quantiles non-crossing by construction.
    """
    z = np.sort(np.asarray(z, dtype=np.float64), axis=0)
    return tuple(expected + vol * z[i] for i in range(3))


def check_capacity(capacity: Mapping[str, int], where: str = "capacity") -> dict[str, int]:
    """``capacity`` as a plain ``{str: int >= 1}`` dict, or a :class:`QuantmlInputError` naming the bad entry."""
    if not isinstance(capacity, Mapping):
        raise QuantmlInputError(f"{where} must be a mapping such as {{'return/1d': 37}}, got {type(capacity).__name__}")
    out = {}
    for key, value in capacity.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise QuantmlInputError(f"{where}[{key!r}]={value!r} must be an integer >= 1 (trees, epochs, ...)")
        out[str(key)] = int(value)
    return out


def median_capacity(capacities: list[Mapping[str, int]]) -> dict[str, int]:
    """Per key, the median of the values of the dicts that hold it, rounded half up, at least 1.

    ``[{"return/1d": 3, "vol/1d": 80}, {"return/1d": 8}]`` -> ``{"return/1d": 6, "vol/1d": 80}``
    (keys in first-seen order); ``[]`` or only empty dicts -> ``{}``.
    """
    values: dict[str, list[float]] = {}
    for i, cap in enumerate(capacities):
        if not isinstance(cap, Mapping):
            raise QuantmlInputError(f"capacities[{i}] must be a capacity_ dict, got {type(cap).__name__}")
        for key, value in cap.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise QuantmlInputError(f"capacities[{i}][{key!r}]={value!r} is not a number")
            if not math.isfinite(float(value)):
                raise QuantmlInputError(f"capacities[{i}][{key!r}]={value!r} is not finite")
            values.setdefault(str(key), []).append(float(value))
    return {key: max(1, int(math.floor(float(np.median(v)) + 0.5))) for key, v in values.items()}


def scaled_median_capacity(
    capacities: list[Mapping[str, int]], n_rows: list[int], target_rows: int, grows_with_rows: bool
) -> dict[str, int]:
    """The capacity a model fitted on ``target_rows`` rows gets from fold models of
    ``capacities`` fitted on ``n_rows`` rows each: :func:`median_capacity` of
    ``capacity * target_rows / n_rows`` when ``grows_with_rows`` (boosting rounds), else of the
    capacities as they are (epochs).

    ``[{"return/1d": 4}, {"return/1d": 9}]``, rows ``[1000, 3000]``, target 6000, growing ->
    median of 24 and 18 -> ``{"return/1d": 21}``.
    """
    if len(capacities) != len(n_rows):
        raise QuantmlInputError(f"{len(capacities)} capacities for {len(n_rows)} row counts: pass one per fold")
    if not grows_with_rows:
        return median_capacity(capacities)
    scaled = []
    for cap, n in zip(capacities, n_rows):
        if int(n) < 1:
            raise QuantmlInputError(f"a fold model fitted on {n} rows has no capacity to scale")
        scaled.append({k: float(v) * int(target_rows) / int(n) for k, v in cap.items()})
    return median_capacity(scaled)
