"""The served model: feature contract, fitted forecaster (with its normalisation statistics),
calibrator, signal settings and strategy, as one object that turns a raw panel into the
prediction contract.

A served model recomputes features exactly as training did, and refuses a panel that does
not match its contract instead of answering with garbage. Its ``target_weight`` column is the
run's configured strategy (``cfg.strategy``, carried in the bundle) through the same
``strategy.target_weights`` the backtest book reads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import (
    SCHEMA_VERSION,
    SYMBOL,
    TIMESTAMP,
    QuantmlInputError,
    periods_per_year,
    require_columns,
)
from quantml.contracts.run_layout import FIRST_BARS, WARMUP_BARS
from quantml.contracts.schema import DIAGNOSTIC_FIELDS, prediction_columns
from quantml.data import data_fingerprint, validate_panel
from quantml.evaluation.metrics import ic_mode_for
from quantml.features import build_features
from quantml.features.text import STAT_NAMES as TEXT_STATS
from quantml.features.text import attach_text, serving_text
from quantml.models.base import PanelData
from quantml.portfolio.allocator import AllocatorConfig
from quantml.portfolio.strategy import AllocatorStrategy, build_strategy, market_returns
from quantml.signals import SignalConfig, compute_signals


@dataclass
class FeatureContract:
    """What a panel must carry for this model, and what the features must come out as."""

    input_columns: list[str]
    feature_names: list[str]
    feature_set: dict
    drop_modalities: list[str]
    horizons: list[str]
    schema_version: str = SCHEMA_VERSION
    # symbol -> the trading calendar its duration windows resolved on at training
    # (``FeatureMatrix.calendar``); serving resolves them on the same one. Empty: bar counts only.
    calendar: dict = field(default_factory=dict)
    # data.text settings (n_hash, window, lexicon, entity_map, latent_dim) of a model trained on a raw text
    # stream (quantml.features.text); empty: no raw text. Bundles pickled before it read {}.
    text: dict = field(default_factory=dict)

    @property
    def hash(self) -> str:
        fields = {
            "inputs": sorted(self.input_columns),
            "features": self.feature_names,
            "feature_set": self.feature_set,
            "drop": sorted(self.drop_modalities),
            "horizons": self.horizons,
            "schema": self.schema_version,
        }
        if getattr(self, "calendar", None):  # only then: hashes of bar-count contracts stay as they were
            fields["calendar"] = self.calendar
        if getattr(self, "text", None):  # likewise: contracts without raw text keep their hash
            fields["text"] = self.text
        payload = json.dumps(
            fields,
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def check(self, panel: pd.DataFrame) -> None:
        """Refuse a panel with missing inputs or another schema version."""
        if "schema_version" in panel.columns:
            versions = set(panel["schema_version"].astype(str).unique())
            if versions != {self.schema_version}:
                raise QuantmlInputError(
                    f"panel schema_version {sorted(versions)} does not match the model's "
                    f"{self.schema_version!r}: convert the panel to schema {self.schema_version} "
                    f"or use a model trained on your schema"
                )
        require_columns(
            panel,
            self.input_columns,
            f"panel (for the model's feature contract, hash {self.hash})",
            "add them to the panel (same names and meaning as at training)",
        )


@dataclass
class ModelBundle:
    """Fitted forecaster + calibrator + contract + signal config + strategy: panel in, contract out."""

    forecaster: object
    calibrator: object | None
    contract: FeatureContract
    signal: dict
    data_fingerprint: str
    metadata: dict = field(default_factory=dict)
    # tuned allocator settings (AllocatorConfig.to_dict()) of a version made by `quantml tune attach=`;
    # a plain default so bundles pickled before it read None
    allocator: dict | None = None
    # the run's resolved `strategy` config (a mapping with `_target_`); None (and bundles pickled
    # before it): the rank long/short default
    strategy: dict | None = None

    @property
    def diagnostic_fields(self) -> tuple[str, ...]:
        """The optional diagnostic columns (``DIAGNOSTIC_FIELDS``) the forecaster declares in its
        ``diagnostic_fields`` and the contract carries after ``PREDICTION_COLUMNS`` (docs/fusion.md)."""
        declared = set(getattr(self.forecaster, "diagnostic_fields", ()) or ())
        return tuple(name for name in DIAGNOSTIC_FIELDS if name in declared)

    @property
    def warmup_bars(self) -> int | None:
        """Leading bars per symbol whose features are not all finite at training (None: not recorded)."""
        value = (getattr(self, "metadata", None) or {}).get(WARMUP_BARS)
        return None if value is None else int(value)

    def serving_strategy(self, signal: SignalConfig, panel: pd.DataFrame):
        """The strategy ``target_weight`` comes from: the bundle's ``strategy`` config built with
        :func:`build_strategy` (None: :class:`RankLongShort`), its thresholds ``signal`` (the ones
        that made the ``action`` column), a tuned ``allocator`` (``quantml tune attach=``)
        overriding the allocator settings, ``mode=auto`` bound to the run's IC mode (metadata
        ``ic_mode``, else from the panel's number of symbols, as the run chose it)."""
        strategy = build_strategy(getattr(self, "strategy", None), signal)
        if isinstance(strategy, AllocatorStrategy):
            tuned = getattr(self, "allocator", None)
            allocator = AllocatorConfig.from_dict(tuned) if tuned else strategy.allocator
            # the volume column only prices impact in a backtest; a weight does not read it
            strategy = AllocatorStrategy(allocator, signal, volume_column=None)
        ic_mode = (getattr(self, "metadata", None) or {}).get("ic_mode") or ic_mode_for(panel[SYMBOL].nunique())
        bind = getattr(strategy, "bind", None)
        strategy = bind(ic_mode=str(ic_mode)) if bind is not None else strategy
        if not hasattr(strategy, "target_weights"):
            raise QuantmlInputError(
                f"the model's strategy {type(strategy).__name__} has no target_weights(frame, market, "
                "periods_per_year) method, so it cannot fill target_weight; serve a model trained with "
                "strategy=rank_long_short or strategy=allocator"
            )
        return strategy

    def periods_per_year(self, panel: pd.DataFrame) -> float:
        """Bars per year of the run (metadata), else of ``panel``."""
        value = (getattr(self, "metadata", None) or {}).get("periods_per_year")
        return float(value) if value else periods_per_year(panel)

    def check_history(self, panel: pd.DataFrame, strategy=None) -> None:
        """Refuse a panel where a symbol has no bar past the model's warm-up, or (``strategy``
        with ``min_history()``: the allocator) fewer bars than the strategy's covariance window
        needs for the last bar's weight to be the backtest's."""
        counts = panel.groupby(SYMBOL, sort=True).size()
        warmup = self.warmup_bars
        if warmup:
            _refuse_short(
                counts[~self._whole_history(panel).reindex(counts.index, fill_value=False)],
                warmup + 1,
                f"the model's warm-up: each symbol needs at least {warmup + 1} bars "
                f"({warmup} warm-up bars, whose features are not yet all finite, plus the bar predicted)",
            )
        need, why = strategy.min_history() if hasattr(strategy, "min_history") else (1, "")
        if need > 1:
            _refuse_short(
                counts, need, f"the strategy: each symbol needs at least {need} bars ({why}, plus the bar predicted)"
            )

    def _whole_history(self, panel: pd.DataFrame) -> pd.Series:
        """Per symbol of ``panel``: True when its first bar is at or before the symbol's first bar
        at training (bundle metadata ``first_bars``), so the panel holds all the history the
        model ever saw for it (a symbol listed late, such as FB in the bundled stocks, has fewer
        bars than the warm-up at training too, and was trained on exactly those features)."""
        first = pd.Series((getattr(self, "metadata", None) or {}).get(FIRST_BARS) or {}, dtype=object)
        starts = panel.groupby(SYMBOL, sort=True)[TIMESTAMP].min()
        if first.empty:
            return pd.Series(False, index=starts.index)
        known = pd.to_datetime(first.reindex(starts.index), utc=True)
        return (starts <= known).fillna(False).astype(bool)

    def predict_contract(
        self,
        panel: pd.DataFrame,
        last_only: bool = False,
        model_name: str = "",
        model_version: str = "",
        signal: dict | None = None,
        text_stream: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """The prediction contract ``[rows, len(PREDICTION_COLUMNS)]`` of ``panel``: one row per
        (symbol, timestamp, horizon), only each symbol's latest bar with ``last_only``.
        ``signal``: thresholds replacing the bundle's (a 0.1 ``quantml.signal`` tag). ``text_stream``:
        the raw posts/comments (docs/text.md) of a model trained on one (refused by a model that was not);
        None: served without text."""
        panel = _coerce_panel(panel)
        self.contract.check(panel)
        panel = validate_panel(panel)
        signal = signal or self.signal
        config = SignalConfig.from_config(signal, cost=signal.get("cost", 0.0))
        strategy = self.serving_strategy(config, panel)
        self.check_history(panel, strategy)
        text_cfg = getattr(self.contract, "text", None) or {}  # a model trained on a raw text stream
        if text_stream is not None and not text_cfg:
            raise QuantmlInputError(
                "a raw text stream was given, but this model was not trained on one (its feature contract has no "
                "data.text settings, so it would ignore the posts); serve it without text.path / text_path"
            )
        expected = [n for n in self.contract.feature_names if not (text_cfg and n in TEXT_STATS)]
        features = build_features(
            panel,
            self.contract.feature_set,
            self.contract.drop_modalities,
            expected=expected,
            calendar=getattr(self.contract, "calendar", None) or None,
        )
        # the raw stream's statistics and towers; without one they say missing and the latents are 0
        text = serving_text(panel, text_stream, text_cfg) if text_cfg else None
        if text is not None:
            features = attach_text(features, text)
        data = PanelData.assemble(panel, features, self.contract.horizons)
        if text is not None:
            data.side = dict(text.side)
        rows, keep = _rows_to_predict(panel, last_only)
        sample = data.subset(rows)
        frame = self.forecaster.predict(sample).to_frame(sample.keys)
        if self.calibrator is not None:
            frame = self.calibrator.transform(frame)
        frame = compute_signals(frame, config)
        frame["target_weight"] = strategy.target_weights(frame, market_returns(panel), self.periods_per_year(panel))
        if keep is not None:  # each symbol's own last bar
            frame = frame[frame[TIMESTAMP].to_numpy() == keep.reindex(frame[SYMBOL]).to_numpy()]
        frame["model_name"] = model_name
        frame["model_version"] = str(model_version)
        frame["schema_version"] = self.contract.schema_version
        frame["data_version"] = data_fingerprint(panel)
        return frame[list(prediction_columns(self.diagnostic_fields))].reset_index(drop=True)


def _refuse_short(counts: pd.Series, need: int, what: str) -> None:
    """QuantmlInputError naming each symbol of ``counts`` (bars per symbol) under ``need``."""
    short = counts[counts < need]
    if len(short):
        shown = ", ".join(f"{sym} has {int(n)}" for sym, n in short.items())
        raise QuantmlInputError(f"panel too short for {what}; {shown}; send a longer history per symbol")


def _rows_to_predict(panel: pd.DataFrame, last_only: bool) -> tuple[np.ndarray, pd.Series | None]:
    """Rows of ``panel`` to forecast, and (``last_only``) each symbol's last timestamp to keep.

    With ``last_only`` every row at any symbol's last timestamp is forecast, not only the last
    rows: a strategy's weight at a bar reads every symbol's forecast at that bar (ranks,
    allocator), so a symbol whose history ends earlier is weighted against the same
    cross-section as in the backtest."""
    if not last_only:
        return np.arange(len(panel)), None
    last = panel.groupby(SYMBOL, sort=False)[TIMESTAMP].max()
    rows = np.flatnonzero(panel[TIMESTAMP].isin(set(last.to_numpy())).to_numpy())
    return rows, last


def _finite_rows(X: np.ndarray, chunk_rows: int = 1 << 18) -> np.ndarray:
    """``np.isfinite(X).all(axis=1)`` [n] of a matrix [n, F] in its own dtype, ``chunk_rows`` rows at a
    time: a float64 copy of a large panel's float32 matrix is twice the matrix (5 GB at 8.4M rows)."""
    out = np.empty(len(X), dtype=bool)
    for start in range(0, len(X), chunk_rows):
        out[start : start + chunk_rows] = np.isfinite(X[start : start + chunk_rows]).all(axis=1)
    return out


def warmup_bars(data: PanelData) -> int:
    """The largest number of leading rows of a symbol whose features are not all finite
    (symbols whose features never become finite are left out)."""
    finite = _finite_rows(np.asarray(data.X)) if data.X.size else np.ones(len(data.X), bool)
    codes = np.asarray(data.symbol_codes)
    worst = 0
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        ok = np.flatnonzero(finite[rows])
        if len(ok):
            worst = max(worst, int(ok[0]))
    return worst


def _coerce_panel(panel: pd.DataFrame) -> pd.DataFrame:
    """Accept timestamps as strings (JSON over REST) as well as datetimes."""
    if not isinstance(panel, pd.DataFrame):
        raise QuantmlInputError(f"expected a pandas DataFrame panel, got {type(panel).__name__}")
    panel = panel.copy()
    if TIMESTAMP in panel.columns and not pd.api.types.is_datetime64_any_dtype(panel[TIMESTAMP]):
        panel[TIMESTAMP] = pd.to_datetime(panel[TIMESTAMP], utc=True)
    return panel
