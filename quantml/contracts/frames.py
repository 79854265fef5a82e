"""Long frames joined without holding them twice: a large panel's prediction frames are gigabytes."""

from __future__ import annotations

import pandas as pd


def own_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each column in an array of its own (no 2-D block shared by several columns), so
    that :func:`concat_releasing` frees each column as it is joined. Copies ``frame`` once."""
    return pd.DataFrame({name: frame[name].copy() for name in frame.columns}, copy=False)


def concat_releasing(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat(frames, ignore_index=True)`` joined one column at a time, each column popped from
    every frame once joined, ``frames`` emptied: the frames and their concatenation are not held
    whole at once (a large panel's out-of-sample frame is gigabytes). A column is freed early when
    it is an array of its own (:func:`own_columns`). Frames whose columns differ: ``pd.concat``."""
    if not frames:
        return pd.DataFrame()
    columns = list(frames[0].columns)
    if any(list(f.columns) != columns for f in frames):
        joined = pd.concat(frames, ignore_index=True)
        frames.clear()
        return joined
    out = {}
    for name in columns:
        parts = [f.pop(name) for f in frames]
        out[name] = pd.concat(parts, ignore_index=True)
        del parts
    frames.clear()
    return pd.DataFrame(out, copy=False)
