"""Robust per-bar statistics of the raw text stream: plain dense features, causal by construction.

Per panel row (bar of a symbol), from the posts and comments bucketed into it
(:func:`~quantml.features.text.bucket.bucket_rows`) and, for the trailing ones, from the rows before it:

========================== =================================================================================
``text_posts``             log1p(posts in the bar)
``text_comments``          log1p(comments in the bar)
``text_authors``           log1p(distinct authors of the bar's posts and comments)
``text_comment_ratio``     log1p(comments) - log1p(posts)
``text_burst``             log((1 + posts) / (1 + mean posts of the previous ``window`` bars)) (burstiness)
``text_dup_share``         share of the bar's posts whose normalised text the same symbol already posted in
                           the trailing ``window`` bars or earlier in the bar (bots, copy-paste); 0 without posts
``text_sentiment``         engagement-weighted mean lexicon sentiment of the bar's posts; 0 without posts
``text_comment_sentiment`` the same over the bar's comments; 0 without comments
``text_raw_missing``       1 where the bar has no post (or the stream is absent at serving), else 0
========================== =================================================================================

Modality ``text`` (the ``text_`` prefix). A row's values read only posts with ``available_at`` at or before
its bar close.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantml.features.ops import SegmentOps
from quantml.features.text.bucket import NO_ROW
from quantml.features.text.lexicon import sentiment
from quantml.features.text.towers import engagement_weights, is_comment, tokenize

STAT_NAMES = (
    "text_posts",
    "text_comments",
    "text_authors",
    "text_comment_ratio",
    "text_burst",
    "text_dup_share",
    "text_sentiment",
    "text_comment_sentiment",
    "text_raw_missing",
)
MISSING = "text_raw_missing"


def _weighted_mean(rows: np.ndarray, values: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(rows, weights=weights, minlength=n)
    s = np.bincount(rows, weights=values * weights, minlength=n)
    return np.divide(s, total, out=np.zeros(n), where=total > 0)


def _text_keys(doc: np.ndarray, tokens: np.ndarray, m: int) -> np.ndarray:
    """uint64 [m]: an order-sensitive hash of each text's token sequence (equal tokens -> equal key)."""
    h = pd.util.hash_array(tokens) if len(tokens) else np.zeros(0, np.uint64)
    starts = np.searchsorted(doc, np.arange(m))
    pos = (np.arange(len(doc)) - starts[doc]).astype(np.uint64)
    mixed = h * (pos * np.uint64(2) + np.uint64(1)) + pos * np.uint64(0x9E3779B97F4A7C15)
    out = np.zeros(m, dtype=np.uint64)
    np.add.at(out, doc, mixed)  # wraps modulo 2**64
    return out


def duplicate_flags(rows: np.ndarray, texts: np.ndarray, order: np.ndarray, window: int) -> np.ndarray:
    """bool [m]: a post whose normalised text appeared in an earlier post at most ``window - 1`` rows before
    (same row included, earlier in ``order``). ``rows`` are panel rows (one symbol's rows are contiguous, so a
    row difference within a symbol is a bar count; a text is keyed with its row's symbol by the caller)."""
    m = len(rows)
    if m == 0:
        return np.zeros(0, dtype=bool)
    key = np.asarray(texts)
    key = pd.util.hash_array(key) if key.dtype == object else key
    sort = np.lexsort((order, rows, key))
    k, r = key[sort], rows[sort]
    same = np.r_[False, k[1:] == k[:-1]]
    prev = np.r_[r[:1], r[:-1]]
    dup_sorted = same & (r - prev < int(window))
    out = np.zeros(m, dtype=bool)
    out[sort] = dup_sorted
    return out


def text_stats(
    panel: pd.DataFrame,
    stream: pd.DataFrame | None,
    rows: np.ndarray | None,
    window: int = 24,
    lexicon: str = "builtin",
    tokens: tuple | None = None,
) -> pd.DataFrame:
    """DataFrame [n, len(STAT_NAMES)] float32 in the panel's row order (module docstring). ``stream``: the
    validated text stream (None: no text at all, e.g. serving without it); ``rows``: its bucket rows."""
    n = len(panel)
    codes = pd.factorize(panel["symbol"])[0]
    out = {name: np.zeros(n) for name in STAT_NAMES}
    out[MISSING] = np.ones(n)
    if stream is not None and len(stream):
        doc, tok = tokenize(stream["text"].to_numpy()) if tokens is None else tokens
        score_all = sentiment(stream["text"].to_numpy(), lexicon, (doc, tok))
        ok = rows != NO_ROW
        s, r, score = stream[ok], rows[ok], score_all[ok]
        comment = is_comment(s)
        w = engagement_weights(s["engagement"].to_numpy())
        n_posts = np.bincount(r[~comment], minlength=n).astype(np.float64)
        n_comments = np.bincount(r[comment], minlength=n).astype(np.float64)
        authors = pd.DataFrame({"r": r, "a": s["author"].to_numpy()}).drop_duplicates()
        n_authors = np.bincount(authors["r"].to_numpy(), minlength=n).astype(np.float64)
        ops = SegmentOps(codes, codes=codes)
        trailing = ops.mean(ops.shift(n_posts, 1), int(window), min_periods=1)
        out["text_posts"] = np.log1p(n_posts)
        out["text_comments"] = np.log1p(n_comments)
        out["text_authors"] = np.log1p(n_authors)
        out["text_comment_ratio"] = np.log1p(n_comments) - np.log1p(n_posts)
        out["text_burst"] = np.log1p(n_posts) - np.log1p(np.nan_to_num(trailing, nan=0.0))
        pi = np.flatnonzero(~comment)
        # a text's key: its symbol and its lowercased token sequence (case, spacing, punctuation ignored)
        keyed = _text_keys(doc, tok, len(stream))[ok][pi] ^ codes[r[pi]].astype(np.uint64)
        order = np.arange(len(pi))  # the stream is sorted by (symbol, available_at, post_id)
        dup = duplicate_flags(r[pi], keyed, order, int(window)).astype(np.float64)
        out["text_dup_share"] = np.divide(
            np.bincount(r[pi], weights=dup, minlength=n), n_posts, out=np.zeros(n), where=n_posts > 0
        )
        out["text_sentiment"] = _weighted_mean(r[~comment], score[~comment], w[~comment], n)
        out["text_comment_sentiment"] = _weighted_mean(r[comment], score[comment], w[comment], n)
        out[MISSING] = (n_posts == 0).astype(np.float64)
    return pd.DataFrame({k: v.astype(np.float32) for k, v in out.items()}, index=panel.index)
