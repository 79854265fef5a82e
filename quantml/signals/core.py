"""From forecasts to actions, per horizon.

``edge = |expected_return| - cost`` in the forecast's direction (a trade must pay its
round trip), ``score = sign(expected_return) * max(edge, 0) / max(vol_forecast, eps)``,
and ``action`` in {long, flat, short}: long when ``score >= threshold[h]`` and
``confidence >= min_confidence[h]``, short symmetrically, flat otherwise.

The thresholds are a :class:`SignalConfig`; ``quantml tune`` fits them on out-of-sample
predictions and attaches ``SignalConfig.to_dict()`` (JSON) to a registered model version as
the tag ``quantml.signal`` (:data:`SIGNAL_TAG`); ``SignalConfig.from_json`` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError, require_columns
from quantml.contracts.run_layout import TAG_SIGNAL

ACTIONS = ("short", "flat", "long")
ACTION_SIGN = {"short": -1.0, "flat": 0.0, "long": 1.0}
# Model-version tag carrying the tuned thresholds (JSON of SignalConfig.to_dict()).
SIGNAL_TAG = TAG_SIGNAL
SIGNAL_INPUT_COLUMNS = ("horizon", "expected_return", "q10", "q90", "prob_up", "vol_forecast")
_FIX = "pass a prediction frame with them (see quantml.contracts.PREDICTION_COLUMNS)"


def confidence_score(
    prob_up: np.ndarray, q10: np.ndarray, q90: np.ndarray, expected_return: np.ndarray, eps: float = 1e-12
) -> np.ndarray:
    """Confidence in [0, 1] from the calibrated probability and the interval width.

    ``|2 p - 1|`` is how far the calibrated probability is from a coin flip; it is
    damped by how small the expected move is relative to the 80% interval's half
    width (a wide interval around a tiny move is not a confident call).
    """
    p_strength = np.abs(2.0 * np.asarray(prob_up, dtype=np.float64) - 1.0)
    half_width = np.maximum((np.asarray(q90) - np.asarray(q10)) / 2.0, eps)
    sharpness = np.tanh(np.abs(np.asarray(expected_return)) / half_width * 2.0)
    return np.clip(np.sqrt(p_strength * sharpness), 0.0, 1.0)


@dataclass
class SignalConfig:
    """Per-horizon thresholds; ``default`` applies to a horizon with no entry.

    ``threshold[h]``: minimum ``|score|`` to trade horizon ``h``; ``min_confidence[h]``:
    minimum confidence; ``cost``: round-trip cost subtracted from ``|expected_return|``.
    """

    threshold: dict[str, float] = field(default_factory=dict)
    min_confidence: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    eps: float = 1e-6
    default_threshold: float = 0.0
    default_min_confidence: float = 0.0

    def __post_init__(self) -> None:
        for name, values in (("threshold", self.threshold), ("min_confidence", self.min_confidence)):
            for h, v in {**values, "default": getattr(self, f"default_{name}")}.items():
                if not np.isfinite(v) or v < 0:
                    raise QuantmlInputError(
                        f"signal.{name}.{h} = {v}: thresholds must be finite and >= 0; "
                        f"set signal.{name}.{h} to a non-negative number"
                    )
        if self.eps <= 0:
            raise QuantmlInputError(f"signal.eps = {self.eps} must be > 0; set signal.eps=1e-6")

    @classmethod
    def build(cls, threshold=None, min_confidence=None, eps: float = 1e-6, cost: float = 0.0) -> SignalConfig:
        """From the ``signal`` config group's keys (``_target_: quantml.signals.SignalConfig.build``):
        ``threshold`` / ``min_confidence`` map a horizon (or ``default``) to a value; ``cost``
        is the round trip of the run's cost model."""
        thr = dict(threshold or {})
        conf = dict(min_confidence or {})
        return cls(
            threshold={str(k): float(v) for k, v in thr.items() if k != "default"},
            min_confidence={str(k): float(v) for k, v in conf.items() if k != "default"},
            cost=float(cost),
            eps=float(1e-6 if eps is None else eps),
            default_threshold=float(thr.get("default", 0.0)),
            default_min_confidence=float(conf.get("default", 0.0)),
        )

    @classmethod
    def from_config(cls, cfg, cost: float) -> SignalConfig:
        """From a ``signal`` mapping (a DictConfig, a logged config or :meth:`to_dict`;
        ``_target_`` is ignored) and the round-trip ``cost``."""
        return cls.build(cfg.get("threshold"), cfg.get("min_confidence"), cfg.get("eps", 1e-6), cost)

    @classmethod
    def from_dict(cls, d: dict) -> SignalConfig:
        """Inverse of :meth:`to_dict`."""
        return cls.from_config(d, cost=float(d.get("cost", 0.0)))

    @classmethod
    def from_json(cls, text: str) -> SignalConfig:
        """Read the ``quantml.signal`` model-version tag."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QuantmlInputError(
                f"the {SIGNAL_TAG} tag is not JSON ({exc}); "
                "re-attach thresholds with quantml tune ... attach=NAME:VERSION"
            ) from exc
        return cls.from_dict(d)

    def threshold_for(self, horizon: str) -> float:
        return self.threshold.get(horizon, self.default_threshold)

    def min_confidence_for(self, horizon: str) -> float:
        return self.min_confidence.get(horizon, self.default_min_confidence)

    def to_dict(self) -> dict:
        return {
            "threshold": {"default": self.default_threshold, **self.threshold},
            "min_confidence": {"default": self.default_min_confidence, **self.min_confidence},
            "cost": self.cost,
            "eps": self.eps,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def decide_actions(
    score: np.ndarray, confidence: np.ndarray, threshold: np.ndarray, min_confidence: np.ndarray
) -> np.ndarray:
    """Sign of the action (+1 long, 0 flat, -1 short) for arrays that broadcast together.

    Long when ``score > 0``, ``score >= threshold`` and ``confidence >= min_confidence``;
    short symmetrically; NaN scores are flat.
    """
    score = np.asarray(score, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        sure = np.asarray(confidence, dtype=np.float64) >= min_confidence
        long_ = (score > 0) & (score >= threshold) & sure
        short = (score < 0) & (-score >= threshold) & sure
    return long_.astype(np.float64) - short.astype(np.float64)


def per_horizon(horizons: pd.Series, value_of) -> np.ndarray:
    """``value_of(h)`` for each row's horizon ``h`` [n] float64: looked up once per distinct horizon
    (a long frame's categorical column read on its codes, no string per row)."""
    codes, uniques = pd.factorize(horizons)
    values = np.array([value_of(h) for h in uniques] + [value_of(None)], dtype=np.float64)
    return values[codes]  # code -1 (a missing horizon): the last entry, the default


def apply_thresholds(frame: pd.DataFrame, config: SignalConfig) -> pd.Series:
    """``action`` for a frame that already has ``horizon, score, confidence`` (new thresholds only)."""
    require_columns(frame, ("horizon", "score", "confidence"), "apply_thresholds: the frame", _FIX)
    thr = per_horizon(frame["horizon"], config.threshold_for)
    min_conf = per_horizon(frame["horizon"], config.min_confidence_for)
    sign = decide_actions(
        frame["score"].to_numpy(dtype=np.float64), frame["confidence"].to_numpy(dtype=np.float64), thr, min_conf
    )
    return pd.Series(np.asarray(ACTIONS, dtype=object)[sign.astype(np.int64) + 1], index=frame.index, name="action")


def compute_signals(frame: pd.DataFrame, config: SignalConfig, copy: bool = True) -> pd.DataFrame:
    """Add ``edge``, ``score``, ``confidence`` and ``action`` to a long prediction frame (a copy;
    ``copy=False``: to ``frame`` itself).

    ``frame`` needs ``horizon, expected_return, q10, q90, prob_up, vol_forecast``.
    """
    require_columns(frame, SIGNAL_INPUT_COLUMNS, "compute_signals: the frame", _FIX)
    out = frame.copy() if copy else frame
    er = out["expected_return"].to_numpy(dtype=np.float64)
    vol = out["vol_forecast"].to_numpy(dtype=np.float64)
    edge = np.maximum(np.abs(er) - config.cost, 0.0)
    out["edge"] = np.sign(er) * edge
    out["score"] = out["edge"] / np.maximum(vol, config.eps)
    out["confidence"] = confidence_score(out["prob_up"].to_numpy(), out["q10"].to_numpy(), out["q90"].to_numpy(), er)
    out["action"] = apply_thresholds(out, config)
    return out
