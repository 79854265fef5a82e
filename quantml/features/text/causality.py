"""The look-ahead detector for the raw text table and the per-fold reducer: perturb every post that becomes
available after ``cut`` (new text, engagement and authors, plus extra posts), rebuild, and check that the
statistics and the latents at every bar at or before ``cut`` are bit-identical, with the reducer fitted on
training rows that end at or before ``cut``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from quantml.contracts import TIMESTAMP, QuantmlInputError
from quantml.features.text.build import build_text
from quantml.features.text.reducer import TowerReducer


def perturb_text_after(stream: pd.DataFrame, cut: pd.Timestamp, seed: int = 0) -> pd.DataFrame:
    """Copy of ``stream`` where each row with ``available_at > cut`` has a new random text, engagement and
    author, and as many extra posts (new ids, random text) again become available after ``cut``."""
    rng = np.random.default_rng(seed)
    cut = pd.Timestamp(cut)
    out = stream.copy()
    after = (out["available_at"] > cut).to_numpy()
    m = int(after.sum())
    if m == 0:
        return out
    words = np.asarray(["moon", "rug", "pump", "dump", "zzq", "good", "bad", "$X", "noise", "hype"], dtype=object)

    def texts(k: int) -> list[str]:
        return [" ".join(words[rng.integers(0, len(words), rng.integers(1, 12))]) for _ in range(k)]

    out.loc[after, "text"] = texts(m)
    out.loc[after, "engagement"] = np.floor(rng.lognormal(2.0, 1.5, m))
    out.loc[after, "author"] = [f"perturbed{i}" for i in rng.integers(0, 50, m)]
    extra = out[after].copy()
    extra["post_id"] = [f"extra{i}" for i in range(m)]
    extra["parent_id"] = None
    extra["text"] = texts(m)
    extra["available_at"] = extra["available_at"] + pd.to_timedelta(rng.integers(0, 10**12, m), unit="ns")
    extra["event_time"] = np.minimum(extra["event_time"], extra["available_at"])
    both = pd.concat([out, extra], ignore_index=True)
    return both.sort_values(["symbol", "available_at", "post_id"], kind="mergesort").reset_index(drop=True)


def text_causality_violations(
    panel: pd.DataFrame,
    stream: pd.DataFrame,
    settings: Mapping,
    cut: pd.Timestamp | str | None = None,
    fit_rows: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Text statistics and latents whose value at a bar ``<= cut`` changes when the posts available after
    ``cut`` change: ``{name: rows that differ}``, empty when causal. ``fit_rows``: the training rows the
    reducer is fitted on (default: every bar ``<= cut``); a row after ``cut`` is an error."""
    ts = panel[TIMESTAMP]
    cut = ts.sort_values().iloc[len(ts) // 2] if cut is None else pd.Timestamp(cut)
    past = (ts <= cut).to_numpy()
    rows = np.flatnonzero(past) if fit_rows is None else np.asarray(fit_rows, dtype=np.int64)
    if (~past[rows]).any():
        raise QuantmlInputError("text_causality_violations: fit_rows must end at or before cut (a training fold)")
    base = build_text(panel, stream, settings)
    moved = build_text(panel, perturb_text_after(stream, cut, seed), settings)
    k = int(base.settings["latent_dim"])
    lat_a = TowerReducer(k, seed).fit(base.side, rows)
    lat_b = TowerReducer(k, seed).fit(moved.side, rows)
    a = pd.concat([base.frame, pd.DataFrame(lat_a.transform(base.side, len(panel)), columns=lat_a.names)], axis=1)
    b = pd.concat([moved.frame, pd.DataFrame(lat_b.transform(moved.side, len(panel)), columns=lat_b.names)], axis=1)
    bad = {}
    for c in a.columns:
        x, y = a[c].to_numpy()[past], b[c].to_numpy()[past]
        same = x.view(np.uint32) == y.view(np.uint32)
        if not same.all():
            bad[c] = int((~same).sum())
    return bad
