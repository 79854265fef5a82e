"""The raw social text stream: loaded and validated beside the panel, never joined as-of onto it.

One row per post or comment, in the stream grammar (``event_time``, ``available_at``, UTC):

=============== ============================================================================
``symbol``      the panel symbol it is about (or ``entity``, mapped through ``data.text.entity_map``)
``event_time``  when it was written; ``available_at`` (>= event_time): when quantml may see it
``platform``    where it was posted (any string)
``post_id``     unique id; ``parent_id``: empty / NaN for a post, the post's id for a comment
``author``      who wrote it; ``text``: the raw text; ``engagement``: likes/replies (number >= 0)
=============== ============================================================================

Sources: the synthetic generator's ``social_text`` stream (``data.text_stream=true``) or a user file
``data.text.path`` (parquet/CSV, a file or a directory). The table comes back validated and sorted by
(symbol, available_at, post_id); bucketing it into bars is :mod:`quantml.features.text.bucket`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, QuantmlInputError

TEXT_STREAM = "social_text"  # the synthetic generator's stream name (quantml.data.plants.text.STREAM)
TEXT_COLUMNS = (
    SYMBOL,
    "event_time",
    "available_at",
    "platform",
    "post_id",
    "parent_id",
    "author",
    "text",
    "engagement",
)
ENTITY = "entity"


def _plain(value):
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def text_config(cfg_data) -> dict:
    """``data.text`` as a plain dict (``{}`` when absent)."""
    if cfg_data is None:
        return {}
    try:
        value = cfg_data.get("text", None)
    except Exception:  # pragma: no cover - omegaconf missing value
        value = None
    value = _plain(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise QuantmlInputError(
            f"data.text={value!r} must be a mapping such as {{path: posts.parquet, latent_dim: 16}}"
        )
    return dict(value)


def load_text_stream(cfg_data) -> pd.DataFrame | None:
    """The raw text stream the ``data`` config describes, validated, or None when there is none.

    Synthetic: the generator's ``social_text`` stream when ``data.text_stream`` is on (regenerated with the
    same arguments: the panel's generator output is deterministic). File: ``data.text.path`` (any source),
    with ``data.text.entity_map`` when the file has ``entity`` instead of ``symbol``.
    """
    from quantml.data.loaders import _flag, _get, _plants

    text = text_config(cfg_data)
    path = text.get("path")
    if path:
        return read_text_file(path, text.get("entity_map"), f"data.text.path={path}")
    if _get(cfg_data, "source") != "synthetic":
        return None
    plants = _plants(cfg_data)
    if not plants.get("text_stream"):
        return None
    from quantml.data.synthetic import default_bars, generate_synthetic

    freq = str(_get(cfg_data, "freq", "1h"))
    n_bars = _get(cfg_data, "n_bars")
    # the panel's own arguments (quantml.data.loaders): n_bars null is default_bars(freq), not 3000 -- another
    # length draws another stream, whose posts do not carry the effect planted in the panel's returns
    syn = generate_synthetic(
        freq=freq,
        n_symbols=int(_get(cfg_data, "n_symbols", 4)),
        n_bars=default_bars(freq) if n_bars is None else int(n_bars),
        seed=int(_get(cfg_data, "seed", 0)),
        start=str(_get(cfg_data, "start", "2024-01-01")),
        orderbook=_flag(cfg_data, "orderbook"),
        price_signal=_flag(cfg_data, "price_signal"),
        regime_shift_at=_get(cfg_data, "regime_shift_at"),
        regime_shift_vol=_get(cfg_data, "regime_shift_vol", 3.0),
        plants=plants,
    )
    return validate_text_stream(syn.streams[TEXT_STREAM], None, "the synthetic social_text stream")


def load_text_file(path, where: str | None = None) -> pd.DataFrame:
    """The rows of ``path`` (a parquet/CSV file or a directory of them), not yet validated; ``where`` names
    the setting in messages (default ``text.path=<path>``). A path that does not exist is refused."""
    from pathlib import Path

    from quantml.data.loaders import load_files

    where = where or f"text.path={path}"
    if not Path(str(path)).expanduser().exists():
        raise QuantmlInputError(f"{where}: no such file or directory; give a parquet/CSV file (or directory) of posts")
    return load_files(Path(str(path)).expanduser())


def read_text_file(path, entity_map: Mapping | None = None, where: str | None = None) -> pd.DataFrame:
    """:func:`load_text_file` validated (:func:`validate_text_stream`, ``entity_map`` for an ``entity`` column)."""
    where = where or f"text.path={path}"
    return validate_text_stream(load_text_file(path, where), entity_map, where)


def _utc(values: pd.Series, name: str, where: str) -> pd.Series:
    try:
        out = pd.to_datetime(values, utc=True)
    except (TypeError, ValueError) as exc:
        raise QuantmlInputError(f"{where}: column {name!r} is not a time ({exc}); use ISO times in UTC") from None
    if out.isna().any():
        bad = int(out.isna().sum())
        raise QuantmlInputError(f"{where}: {bad} row(s) have no {name}; give every post its {name} (UTC)")
    return out.astype("datetime64[ns, UTC]")


def _is_empty(values: pd.Series) -> np.ndarray:
    s = values.astype(object)
    return (s.isna() | s.astype(str).str.strip().isin(("", "nan", "None"))).to_numpy()


def validate_text_stream(
    df: pd.DataFrame, entity_map: Mapping | None = None, where: str = "text stream"
) -> pd.DataFrame:
    """The stream with the columns of :data:`TEXT_COLUMNS` (typed: UTC times, str ids and text, float
    engagement), ``symbol`` resolved from ``entity`` through ``entity_map`` when needed, sorted by
    (symbol, available_at, post_id). ``QuantmlInputError`` naming the problem and the fix otherwise."""
    if not isinstance(df, pd.DataFrame):
        raise QuantmlInputError(f"{where}: expected a table of posts, got {type(df).__name__}")
    df = df.copy()
    entity_map = _plain(entity_map)
    if SYMBOL not in df.columns:
        if ENTITY not in df.columns:
            raise QuantmlInputError(
                f"{where} has neither 'symbol' nor 'entity' (columns: {list(df.columns)}); add a symbol column, "
                "or an entity column with data.text.entity_map={ENTITY_OR_CASHTAG: SYMBOL}"
            )
        if not entity_map:
            raise QuantmlInputError(
                f"{where} names entities, not symbols: set data.text.entity_map, e.g. "
                "data.text.entity_map='{bitcoin: BTC, $BTC: BTC, ethereum: ETH}'"
            )
        lookup = {str(k).strip().lower(): str(v) for k, v in dict(entity_map).items()}
        df[SYMBOL] = df[ENTITY].astype(str).str.strip().str.lower().map(lookup)
        df = df[df[SYMBOL].notna()]  # posts about entities outside the map are not about the panel
    missing = [c for c in TEXT_COLUMNS if c not in df.columns and c not in ("platform", "parent_id", "engagement")]
    if missing:
        raise QuantmlInputError(
            f"{where} lacks column(s) {missing} (it has {list(df.columns)}); a text stream needs "
            f"{list(TEXT_COLUMNS)} (platform, parent_id and engagement are optional)"
        )
    if "platform" not in df.columns:
        df["platform"] = ""
    if "parent_id" not in df.columns:
        df["parent_id"] = None
    if "engagement" not in df.columns:
        df["engagement"] = 0.0
    df["event_time"] = _utc(df["event_time"], "event_time", where)
    df["available_at"] = _utc(df["available_at"], "available_at", where)
    early = (df["available_at"] < df["event_time"]).to_numpy()
    if early.any():
        first = df.loc[early].iloc[0]
        raise QuantmlInputError(
            f"{where}: {int(early.sum())} row(s) have available_at < event_time (first: post {first['post_id']!r}, "
            f"{first['available_at']} < {first['event_time']}); available_at is when the post could be seen, "
            "never before it was written"
        )
    if _is_empty(df["post_id"]).any():
        raise QuantmlInputError(f"{where}: some rows have no post_id; give every post and comment a unique id")
    df["post_id"] = df["post_id"].astype(str)
    dup = df["post_id"].duplicated()
    if dup.any():
        raise QuantmlInputError(
            f"{where}: post_id {df.loc[dup, 'post_id'].iloc[0]!r} appears more than once; post ids must be unique"
        )
    empty_parent = _is_empty(df["parent_id"])
    df["parent_id"] = np.where(empty_parent, None, df["parent_id"].astype(str)).astype(object)
    engagement = pd.to_numeric(df["engagement"], errors="coerce")
    if (engagement < 0).any():
        raise QuantmlInputError(f"{where}: engagement must be >= 0 (likes, replies); found {engagement.min()}")
    df["engagement"] = engagement.fillna(0.0).astype(np.float64)
    df[SYMBOL] = df[SYMBOL].astype(str)
    for c in ("platform", "author", "text"):
        df[c] = df[c].fillna("").astype(str)
    out = df[list(TEXT_COLUMNS)].sort_values([SYMBOL, "available_at", "post_id"], kind="mergesort")
    return out.reset_index(drop=True)
