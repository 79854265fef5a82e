"""Two towers: posts and comments of each bar hashed and pooled separately into sparse side matrices.

Each text is hashed (the hashing trick of scikit-learn's ``HashingVectorizer``: ``n_hash`` columns, token
counts, l2-normalised; no vocabulary, nothing downloaded). A bar's tower vector is the engagement-weighted
mean of its texts' vectors, weights ``log1p(engagement) + 1``. The matrices are ``scipy.sparse.csr_matrix`` float32
``[n_rows, n_hash]`` with rows aligned to the panel's rows (a bar without a text is an empty row); they
never enter the dense feature matrix (the per-fold reducer, :mod:`quantml.features.text.reducer`, does).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from quantml.features.text.bucket import NO_ROW

POST_TOWER = "text_post"
COMMENT_TOWER = "text_comment"
TOWERS = (POST_TOWER, COMMENT_TOWER)
TOKEN_PATTERN = r"(?u)\$?\b\w\w*\b"  # words and cashtags ($BTC)


def is_comment(stream: pd.DataFrame) -> np.ndarray:
    """bool [m]: rows with a ``parent_id`` (comments); the others are posts."""
    return stream["parent_id"].notna().to_numpy()


def engagement_weights(engagement) -> np.ndarray:
    """float [m]: ``log1p(max(engagement, 0)) + 1``."""
    e = np.nan_to_num(np.asarray(engagement, dtype=np.float64), nan=0.0)
    return np.log1p(np.maximum(e, 0.0)) + 1.0


def tokenize(texts) -> tuple[np.ndarray, np.ndarray]:
    """``(doc, tokens)``: the lowercased tokens (words and cashtags) of ``m`` texts, flattened, with the
    index (0..m-1) of the text each came from."""
    series = pd.Series(np.asarray(texts, dtype=object)).fillna("").astype(str).str.lower()
    lists = series.str.findall(TOKEN_PATTERN)
    lengths = lists.str.len().to_numpy(dtype=np.int64)
    doc = np.repeat(np.arange(len(series), dtype=np.int64), lengths)
    tokens = np.asarray([t for words in lists for t in words], dtype=object)
    return doc, tokens


def hash_texts(texts, n_hash: int, tokens: tuple[np.ndarray, np.ndarray] | None = None) -> sp.csr_matrix:
    """csr float32 [m, n_hash]: each text's hashed token counts, l2-normalised (the hashing trick of
    scikit-learn's ``HashingVectorizer(alternate_sign=False, norm="l2")``, vectorised over every token at
    once with pandas' stable ``hash_array``). ``tokens``: :func:`tokenize` of ``texts`` when already done."""
    m = len(texts)
    doc, tok = tokenize(texts) if tokens is None else tokens
    col = (pd.util.hash_array(tok) % np.uint64(n_hash)).astype(np.int64) if len(tok) else np.zeros(0, np.int64)
    X = sp.csr_matrix((np.ones(len(doc)), (doc, col)), shape=(m, int(n_hash)), dtype=np.float64)
    X.sum_duplicates()
    norm = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.diags(np.divide(1.0, norm, out=np.zeros(m), where=norm > 0)) @ X
    return X.astype(np.float32).tocsr()


def pool(rows: np.ndarray, vectors: sp.csr_matrix, weights: np.ndarray, n_rows: int) -> sp.csr_matrix:
    """csr float32 [n_rows, n_hash]: per row, the ``weights``-weighted mean of the ``vectors`` bucketed into
    it (``rows`` [m], :data:`NO_ROW` dropped)."""
    ok = rows != NO_ROW
    r, w = rows[ok], weights[ok]
    total = np.bincount(r, weights=w, minlength=n_rows)
    assign = sp.csr_matrix((w / total[r], (r, np.flatnonzero(ok))), shape=(n_rows, len(rows)), dtype=np.float64)
    out = (assign @ vectors.astype(np.float64)).astype(np.float32).tocsr()
    out.sort_indices()
    return out


def build_towers(
    stream: pd.DataFrame | None, rows: np.ndarray | None, n_rows: int, n_hash: int, tokens: tuple | None = None
) -> dict:
    """``{"text_post": csr [n_rows, n_hash], "text_comment": csr [n_rows, n_hash]}`` from the bucketed
    ``stream`` (``rows`` from :func:`~quantml.features.text.bucket.bucket_rows`); empty matrices without one."""
    if stream is None or not len(stream):
        return {t: sp.csr_matrix((n_rows, int(n_hash)), dtype=np.float32) for t in TOWERS}
    vectors = hash_texts(stream["text"].to_numpy(), n_hash, tokens)
    weights = engagement_weights(stream["engagement"].to_numpy())
    comment = is_comment(stream)
    out = {}
    for tower, mask in ((POST_TOWER, ~comment), (COMMENT_TOWER, comment)):
        idx = np.flatnonzero(mask)
        out[tower] = pool(rows[idx], vectors[idx], weights[idx], n_rows)
    return out
