"""The served model: feature contract, fitted forecaster (with its normalisation statistics),
calibrator, and signal settings, as one object that turns a raw panel into the prediction contract.

A served model recomputes features exactly as training did, and refuses a panel that does
not match its contract instead of answering with garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import PREDICTION_COLUMNS, SCHEMA_VERSION, SYMBOL, TIMESTAMP, QuantmlInputError, require_columns
from quantml.contracts.run_layout import WARMUP_BARS
from quantml.data import data_fingerprint, validate_panel
from quantml.features import build_features
from quantml.models.base import PanelData
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

    @property
    def hash(self) -> str:
        payload = json.dumps(
            {
                "inputs": sorted(self.input_columns),
                "features": self.feature_names,
                "feature_set": self.feature_set,
                "drop": sorted(self.drop_modalities),
                "horizons": self.horizons,
                "schema": self.schema_version,
            },
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
    """Fitted forecaster + calibrator + contract + signal config: panel in, contract out."""

    forecaster: object
    calibrator: object | None
    contract: FeatureContract
    signal: dict
    data_fingerprint: str
    metadata: dict = field(default_factory=dict)
    # tuned allocator settings (AllocatorConfig.to_dict()) of a version made by `quantml tune attach=`;
    # a plain default so bundles pickled before it read None
    allocator: dict | None = None

    @property
    def warmup_bars(self) -> int | None:
        """Leading bars per symbol whose features are not all finite at training (None: not recorded)."""
        value = (getattr(self, "metadata", None) or {}).get(WARMUP_BARS)
        return None if value is None else int(value)

    def check_history(self, panel: pd.DataFrame) -> None:
        """Refuse a panel where a symbol has no bar past the model's warm-up."""
        warmup = self.warmup_bars
        if not warmup:
            return
        need = warmup + 1
        counts = panel.groupby(SYMBOL, sort=True).size()
        short = counts[counts < need]
        if len(short):
            shown = ", ".join(f"{sym} has {int(n)}" for sym, n in short.items())
            raise QuantmlInputError(
                f"panel too short for the model's warm-up: each symbol needs at least {need} bars "
                f"({warmup} warm-up bars, whose features are not yet all finite, plus the bar predicted); "
                f"{shown}; send a longer history per symbol"
            )

    def predict_contract(
        self,
        panel: pd.DataFrame,
        last_only: bool = False,
        model_name: str = "",
        model_version: str = "",
        signal: dict | None = None,
    ) -> pd.DataFrame:
        panel = _coerce_panel(panel)
        self.contract.check(panel)
        panel = validate_panel(panel)
        self.check_history(panel)
        features = build_features(
            panel, self.contract.feature_set, self.contract.drop_modalities, expected=self.contract.feature_names
        )
        data = PanelData.assemble(panel, features, self.contract.horizons)
        n = len(panel)
        rows = np.arange(n)
        if last_only:
            rows = panel.groupby(SYMBOL, sort=False).tail(1).index.to_numpy()
        sample = data.subset(rows)
        frame = self.forecaster.predict(sample).to_frame(sample.keys)
        if self.calibrator is not None:
            frame = self.calibrator.transform(frame)
        signal = signal or self.signal
        config = SignalConfig.from_config(signal, cost=signal.get("cost", 0.0))
        frame = compute_signals(frame, config)
        frame["model_name"] = model_name
        frame["model_version"] = str(model_version)
        frame["schema_version"] = self.contract.schema_version
        frame["data_version"] = data_fingerprint(panel)
        return frame[list(PREDICTION_COLUMNS)].reset_index(drop=True)


def warmup_bars(data: PanelData) -> int:
    """The largest number of leading rows of a symbol whose features are not all finite
    (symbols whose features never become finite are left out)."""
    finite = np.isfinite(np.asarray(data.X, dtype=float)).all(axis=1) if data.X.size else np.ones(len(data.X), bool)
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
