"""From forecasts to actions, per horizon.

``edge = |expected_return| - cost`` in the forecast's direction (a trade must pay its
round trip), ``score = sign(expected_return) * max(edge, 0) / max(vol_forecast, eps)``,
and ``action`` in {long, flat, short}: long when ``score >= threshold[h]`` and
``confidence >= min_confidence[h]``, short symmetrically, flat otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ACTIONS = ("short", "flat", "long")


def confidence_score(prob_up: np.ndarray, q10: np.ndarray, q90: np.ndarray,
                     expected_return: np.ndarray, eps: float = 1e-12) -> np.ndarray:
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
    """Per-horizon thresholds; ``default`` applies to a horizon with no entry."""

    threshold: dict[str, float] = field(default_factory=dict)
    min_confidence: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    eps: float = 1e-6
    default_threshold: float = 0.0
    default_min_confidence: float = 0.0

    @classmethod
    def from_config(cls, cfg, cost: float) -> "SignalConfig":
        thr = dict(cfg.get("threshold") or {})
        conf = dict(cfg.get("min_confidence") or {})
        return cls(
            threshold={k: float(v) for k, v in thr.items() if k != "default"},
            min_confidence={k: float(v) for k, v in conf.items() if k != "default"},
            cost=float(cost),
            eps=float(cfg.get("eps", 1e-6)),
            default_threshold=float(thr.get("default", 0.0)),
            default_min_confidence=float(conf.get("default", 0.0)),
        )

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


def compute_signals(frame: pd.DataFrame, config: SignalConfig) -> pd.DataFrame:
    """Add ``edge``, ``score``, ``confidence`` and ``action`` to a long prediction frame.

    ``frame`` needs ``horizon, expected_return, q10, q90, prob_up, vol_forecast``.
    """
    out = frame.copy()
    er = out["expected_return"].to_numpy(dtype=np.float64)
    vol = out["vol_forecast"].to_numpy(dtype=np.float64)
    edge = np.maximum(np.abs(er) - config.cost, 0.0)
    out["edge"] = np.sign(er) * edge
    out["score"] = out["edge"] / np.maximum(vol, config.eps)
    out["confidence"] = confidence_score(out["prob_up"].to_numpy(), out["q10"].to_numpy(),
                                         out["q90"].to_numpy(), er)
    horizons = out["horizon"].to_numpy()
    thr = np.array([config.threshold_for(h) for h in horizons], dtype=np.float64)
    min_conf = np.array([config.min_confidence_for(h) for h in horizons], dtype=np.float64)
    score = out["score"].to_numpy()
    sure = out["confidence"].to_numpy() >= min_conf
    action = np.where((score > 0) & (score >= thr) & sure, "long",
                      np.where((score < 0) & (-score >= thr) & sure, "short", "flat"))
    out["action"] = action
    return out
