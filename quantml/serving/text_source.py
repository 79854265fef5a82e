"""Where a served panel's raw text stream comes from (docs/text.md, "Serving").

A model trained on a raw text stream (its feature contract carries ``data.text``) reads posts at serving
time as well: ``quantml predict`` / ``quantml paper`` take ``text.path=<parquet/CSV file or directory of
posts>``; without it the stream the data config describes is used (``data=model``: the version's own
``data.text.path`` or synthetic ``data.text_stream`` plant; ``data=synthetic data.text_stream=true``: the
generator's). A model without raw text ignores a stream that only comes with its data config and refuses
one given on purpose (``text.path=``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import pandas as pd

from quantml.contracts import QuantmlInputError


@dataclass(frozen=True)
class TextSource:
    """``load()``: the raw text stream (validated, or None: there is none); ``explicit``: given on the
    command line (``text.path=``), so a model without raw text refuses it rather than ignoring it;
    ``label``: where it comes from, for messages."""

    load: Callable[[], pd.DataFrame | None]
    explicit: bool
    label: str


def text_path_of(cfg: Mapping) -> str | None:
    """``cfg.text.path`` of a serving config (``conf/predict.yaml``, ``conf/paper.yaml``), or None."""
    text = cfg.get("text")
    path = text.get("path") if isinstance(text, Mapping) else None
    return None if path in (None, "") else str(path)


def serving_text_source(cfg, resolved, store) -> TextSource:
    """The text source of a serving config: ``text.path=`` when given (read at each ``load()``, so a file
    that grows is read again), else the data config's stream (``data=model``: the version's own)."""
    from quantml.data.text_stream import load_text_file, load_text_stream
    from quantml.serving.source_data import is_model_source, model_data_config

    path = text_path_of(cfg)
    if path is not None:
        # validated by the model itself, with the entity map it was trained with
        return TextSource(lambda: load_text_file(path, f"text.path={path}"), True, f"text.path={path}")
    data_cfg = cfg.get("data")

    def from_data():
        source = model_data_config(data_cfg, resolved, store) if is_model_source(data_cfg) else data_cfg
        return load_text_stream(source)

    return TextSource(from_data, False, "the data config's text stream")


class UnreadablePosts(QuantmlInputError):
    """The posts of a :class:`TextSource` could not be read or are incomplete (a file caught half-written)."""


def checked_on_read(source: TextSource) -> TextSource:
    """``source`` whose ``load()`` also checks, at once, that every row is a complete post (the stream format
    of :func:`~quantml.data.text_stream.validate_text_stream`; an ``entity`` file is checked with its entities
    standing in for symbols, the model maps them later), raising :class:`UnreadablePosts` when the read or that
    check fails -- so ``quantml paper follow=true`` can tell posts caught half-written from the model's own
    refusals, say so, and read them again at the next poll. The rows are returned as read."""
    from quantml.data.text_stream import ENTITY, validate_text_stream

    def load() -> pd.DataFrame | None:
        try:
            stream = source.load()
            if stream is not None:
                probe = stream
                if "symbol" not in stream.columns and ENTITY in stream.columns:
                    probe = stream.assign(symbol=stream[ENTITY].astype(str))
                validate_text_stream(probe, None, source.label)
        except (QuantmlInputError, OSError, ValueError) as exc:
            raise UnreadablePosts(str(exc)) from exc
        return stream

    return replace(source, load=load)
