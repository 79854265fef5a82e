"""Inner cross-fitting: out-of-fold predictions inside one training part, purged, in time.

The part's positions are cut into ``n_blocks`` contiguous blocks of its unique sample times
``t0`` (``numpy.array_split``, as the splitters do: every symbol of one time lands in one
block). Block ``b`` is predicted by a model fitted on the other blocks, purged with the one
rule of :mod:`quantml.validation.purging`: a fit sample is dropped when its label interval
``[t0, t1]`` touches ``[start_b, max t1 in b + embargo]`` (labels reaching into the block
are purged, labels starting within the embargo after it are embargoed).

What is fitted and predicted is a callable, so the same utility serves calibration (the
final model's calibrator, a fold's scored validation metrics), distillation, residual boosts
and stacking::

    parts = crossfit_parts(rows, t0, t1, n_blocks=3, embargo="1d")
    oof = crossfit(rows, t0, t1, lambda fit, pred: model_on(fit).frame(pred), 3, "1d")
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.contracts.frames import concat_releasing, own_columns
from quantml.validation.purging import _embargo_ns, _purge_ns, _rows, check_intervals, to_ns, unique_sorted

CROSSFIT_BLOCK = "crossfit_block"  # column crossfit() adds: the block a row was predicted in


def crossfit_parts(positions, t0, t1, n_blocks: int, embargo) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (fit, predict) position pairs of an inner cross-fitting, one per block, in time order.

    Parameters
    ----------
    positions : int array [m] of positions into ``t0``/``t1`` (the training part; any order,
        duplicates ignored).
    t0, t1 : datetime64[ns] arrays [n] (tz-aware accepted), the label interval of each sample.
    n_blocks : number of contiguous blocks of unique ``t0`` times (>= 2).
    embargo : duration (``"1d"``, a ``pd.Timedelta``, 0).

    Returns
    -------
    ``[(fit_b, predict_b) for b in range(n_blocks)]``: sorted int64 position arrays.
    ``predict_b`` are the positions of block ``b`` (together they partition ``positions``);
    ``fit_b`` the positions of the other blocks that survive purging against block ``b``.

    Raises :class:`QuantmlInputError` on NaT or ``t1 < t0``, ``n_blocks < 2``, fewer unique
    times than blocks, or a block whose fit part is empty after purging.
    """
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 2:
        raise QuantmlInputError(
            f"crossfit needs an integer n_blocks >= 2, got {n_blocks!r}; set validation.crossfit_folds=3"
        )
    t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
    rows = _rows(positions, len(t0n), "positions")
    check_intervals(t0n, t1n, rows)
    times = unique_sorted(t0n[rows])
    if len(times) < n_blocks:
        raise QuantmlInputError(
            f"crossfit over {len(times)} unique timestamp(s) cannot make {n_blocks} blocks: lower "
            "validation.crossfit_folds or give the part more data"
        )
    emb = _embargo_ns(embargo)
    block_of_time = np.repeat(np.arange(n_blocks), [len(b) for b in np.array_split(times, n_blocks)])
    block = block_of_time[np.searchsorted(times, t0n[rows])]
    parts = []
    for b in range(n_blocks):
        predict = rows[block == b]
        fit = _purge_ns(rows[block != b], predict, t0n, t1n, emb)
        if len(fit) == 0:
            start = pd.Timestamp(int(t0n[predict].min()))
            raise QuantmlInputError(
                f"crossfit block {b} (from {start}) leaves no sample to fit on after purging and the "
                f"embargo ({pd.Timedelta(emb, 'ns')}): lower validation.crossfit_folds or the embargo, "
                "or give the part more data"
            )
        parts.append((fit, predict))
    return parts


def crossfit(
    positions,
    t0,
    t1,
    fit_predict: Callable[[np.ndarray, np.ndarray], pd.DataFrame],
    n_blocks: int,
    embargo,
) -> pd.DataFrame:
    """Out-of-fold outputs over ``positions``: ``fit_predict(fit_b, predict_b)`` per block of
    :func:`crossfit_parts`, concatenated in block (time) order.

    ``fit_predict`` fits whatever it fits on ``fit_b`` and returns a DataFrame (or anything
    ``pd.DataFrame`` accepts) of its outputs for ``predict_b``, in any row layout it likes
    (one row per position, or per position and horizon). The result gains the column
    ``crossfit_block`` (the block each row was predicted in) and a fresh RangeIndex.
    """
    frames = []
    for b, (fit, predict) in enumerate(crossfit_parts(positions, t0, t1, n_blocks, embargo)):
        out = fit_predict(fit, predict)
        # each column an array of its own, joined a column at a time: the out-of-fold frame of a large
        # panel's development samples x horizons is gigabytes, and pd.concat would hold it twice
        out = own_columns(out) if isinstance(out, pd.DataFrame) else pd.DataFrame(out)
        out[CROSSFIT_BLOCK] = b
        frames.append(out)
    return concat_releasing(frames)
