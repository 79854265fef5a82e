"""The feature + label build read straight from a symbol-partitioned parquet directory.

The raw panel is never whole in memory: a first pass reads each symbol's timestamps and the few columns
the whole-panel steps need (the optional bar columns, for :func:`quantml.data.panel.unavailable_columns`,
and what the cross-sectional blocks read, on time slices across every symbol); then each symbol's
partition is read, its per-symbol features written into the float32 matrix and its labels into the
label arrays, and the partition dropped. The peak holds the outputs plus one partition. Every value
equals :func:`quantml.features.build_features` / :func:`quantml.labels.make_labels` on the whole panel
(bit for bit): the same engine, :func:`quantml.features.build.build`. With labels:
:func:`quantml.labels.partitioned_features_and_labels`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import OHLCV, SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.features.blocks import BLOCKS
from quantml.features.build import FeatureMatrix, build


@dataclass
class PartitionedBuild:
    """``keys`` [n] (symbol as a categorical, timestamp UTC): the rows, sorted by (symbol, timestamp),
    in the order of ``features.frame`` and of ``labels``."""

    keys: pd.DataFrame
    features: FeatureMatrix
    labels: object  # quantml.labels.Labels, or None


def _sorted_groups(path: str):
    """``(ParquetFile, row groups)``: the file's row groups in timestamp order when their statistics say
    the groups' ranges do not overlap (a sorted panel written by several threads), else in file order."""
    import pyarrow.parquet as pq

    # pre_buffer off: the column chunks are read into buffers of pyarrow's pool, not into the IO
    # cache's, which went to mimalloc and stayed resident after each read (peak RSS at 4.2M rows:
    # 2213 MB with it, 2156 MB without; wall the same)
    pf = pq.ParquetFile(path, memory_map=False, pre_buffer=False)
    md = pf.metadata
    j = pf.schema_arrow.get_field_index(TIMESTAMP)
    spans = []
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(j).statistics
        if st is None or not st.has_min_max:
            spans = None
            break
        spans.append((st.min, st.max, g))
    order = list(range(md.num_row_groups))
    if spans:
        spans.sort()
        if all(spans[i][1] < spans[i + 1][0] for i in range(len(spans) - 1)):
            order = [g for _, _, g in spans]
    return pf, order


class _SymbolRows:
    """One symbol's rows as a frame read on demand: ``columns``, ``len()``, ``rows[column]`` (a Series read
    from the files when a block asks for it; the block context caches what it reads, and forgets all but
    the bar columns after each block), so the raw partition is never whole in memory."""

    def __init__(self, source: Partitioned, sym: str) -> None:
        self.columns = pd.Index(source.columns)
        self._source, self._sym = source, sym
        self._ts, self._order = source._timestamps(sym)

    def __len__(self) -> int:
        return len(self._ts)

    def __getitem__(self, column: str) -> pd.Series:
        if column == TIMESTAMP:
            return self._ts
        if column == SYMBOL:
            return pd.Series(self._source._symbol(self._sym, len(self)), name=SYMBOL)
        if column not in self.columns:
            raise KeyError(column)
        return pd.Series(self._source._column(self._sym, column, self._order), name=column, copy=False)


class Partitioned:
    """A hive-partitioned parquet directory (``symbol=<name>/...parquet``) as a source of
    :func:`quantml.features.build.build`: one group per symbol, read when it is built."""

    owns_keys = True  # the labels' t0 may share the keys' memory

    def __init__(self, path: str | Path, symbols: Iterable[str] | None = None, thin: Sequence[str] = ()) -> None:
        import pyarrow.dataset as ds

        from quantml.data.loaders import _unreadable

        p = Path(path).expanduser()
        try:
            dataset = ds.dataset(p, format="parquet", partitioning="hive")
        except (OSError, ValueError) as exc:
            raise _unreadable(p, "is not a readable partitioned parquet dataset", exc) from None
        files: dict[str, list[str]] = {}
        for frag in dataset.get_fragments():
            sym = ds.get_partition_keys(frag.partition_expression).get(SYMBOL)
            if sym is None:
                raise QuantmlInputError(
                    f"parquet directory {p} is not partitioned by symbol (file {frag.path}); lay it out as "
                    "symbol=<name>/*.parquet, or read it with quantml.data.loaders.load_partitioned"
                )
            files.setdefault(str(sym), []).append(frag.path)
        if symbols is not None:
            wanted = [str(s) for s in symbols]
            unknown = [s for s in wanted if s not in files]
            if unknown:
                raise QuantmlInputError(f"symbols {unknown} are not in {p}; it has {sorted(files)}")
            files = {s: files[s] for s in wanted}
        if not files:
            raise QuantmlInputError(f"parquet directory {p} holds no parquet files; point it at the panel")
        self.symbols = sorted(files)
        self._files = {s: sorted(files[s]) for s in self.symbols}
        first = next(iter(dataset.get_fragments()))
        in_files = set(first.physical_schema.names)
        self.columns = [SYMBOL, *[c for c in dataset.schema.names if c in in_files and c != SYMBOL]]
        if TIMESTAMP not in self.columns or "close" not in self.columns:
            raise QuantmlInputError(
                f"parquet directory {p} has no 'timestamp' or 'close' column (it has {self.columns}); "
                "a panel needs timestamp, symbol and close"
            )
        self._opened: tuple = (None, [])
        self._thin = [c for c in dict.fromkeys(["close", *OHLCV, *thin]) if c in self.columns and c != SYMBOL]
        self._read_thin()

    def _open(self, sym: str) -> list:
        if self._opened[0] != sym:  # the files of the symbol being built, with their row-group order
            self._opened = (sym, [_sorted_groups(f) for f in self._files[sym]])
        return self._opened[1]

    def _column(self, sym: str, column: str, order: np.ndarray | None) -> np.ndarray:
        """One column of the symbol, in timestamp order (``order``: the sort of the rows as read)."""
        import pyarrow as pa

        parts = [pf.read_row_groups(groups, columns=[column]).column(0) for pf, groups in self._open(sym)]
        col = parts[0] if len(parts) == 1 else pa.chunked_array([c for p in parts for c in p.chunks])
        values = col.to_numpy() if pa.types.is_floating(col.type) else col.to_pandas().to_numpy()
        return values if order is None else values[order]

    def _timestamps(self, sym: str) -> tuple[pd.Series, np.ndarray | None]:
        """The symbol's timestamps (UTC, ns, sorted) and the sort of its rows as read (None: already sorted)."""
        import pyarrow as pa

        col = pa.chunked_array(
            [c for pf, g in self._open(sym) for c in pf.read_row_groups(g, [TIMESTAMP]).column(0).chunks]
        )
        if not pa.types.is_timestamp(col.type):
            raise QuantmlInputError(f"column 'timestamp' of {self._files[sym][0]} is {col.type}, not a timestamp")
        ns = col.cast(pa.timestamp("ns", tz=col.type.tz)).cast(pa.int64()).to_numpy()  # UTC instants (naive: UTC)
        order = None if (np.diff(ns) > 0).all() else np.argsort(ns, kind="stable")
        if order is not None:
            ns = ns[order]
            if (np.diff(ns) == 0).any():
                raise QuantmlInputError(
                    f"symbol {sym!r} has duplicate timestamps in {self._files[sym][0]}; keep one row per bar"
                )
        ts = pd.Series(pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC"), name=TIMESTAMP)
        return ts, order

    def _symbol(self, sym: str, n: int) -> pd.Categorical:
        return pd.Categorical.from_codes(np.full(n, self.symbols.index(sym), dtype=np.int32), categories=self.symbols)

    def _read_thin(self) -> None:
        stamps, codes, thin, self._rows, a = [], [], {c: [] for c in self._thin if c != TIMESTAMP}, {}, 0
        for k, sym in enumerate(self.symbols):
            ts, order = self._timestamps(sym)
            stamps.append(ts.array.asi8)
            codes.append(np.full(len(ts), k, dtype=np.int32))
            for c, parts in thin.items():
                parts.append(self._column(sym, c, order))
            self._rows[sym] = (a, a + len(ts))
            a += len(ts)
        # one copy per column (pd.concat of per-symbol frames took 0.8 s at 4.2M rows, this 0.1 s); a column
        # whose dtype differs between symbols goes through pd.concat, which upcasts it as it always did
        ns = np.concatenate(stamps).view("datetime64[ns]")
        data = {
            SYMBOL: pd.Categorical.from_codes(np.concatenate(codes), categories=self.symbols),
            TIMESTAMP: pd.Series(pd.DatetimeIndex(ns).tz_localize("UTC"), name=TIMESTAMP),
        }
        del stamps, codes
        for c in list(thin):
            parts = thin.pop(c)
            same = len({p.dtype for p in parts}) == 1 and parts[0].dtype.kind in "fiub"
            data[c] = np.concatenate(parts) if same else pd.concat([pd.Series(p) for p in parts], ignore_index=True)
        self.panel = pd.DataFrame(data, copy=False)  # keys + the thin columns, every row
        self.keys = self.panel[[SYMBOL, TIMESTAMP]]

    def release(self) -> None:
        """The thin columns are read by the whole-panel steps only."""
        self.panel = self.keys

    def groups(self, codes: np.ndarray) -> list[tuple[int, int]]:
        return [self._rows[s] for s in self.symbols]

    def rows(self, a: int, b: int) -> _SymbolRows:
        sym = next(s for s, r in self._rows.items() if r == (a, b))
        frame = _SymbolRows(self, sym)
        if len(frame) != b - a:  # pragma: no cover - the files changed while being read
            raise QuantmlInputError(f"symbol {sym!r} changed while it was read; rebuild from a stable copy")
        return frame


def build_partitioned(
    path: str | Path,
    feature_set_cfg: Mapping,
    drop_modalities: Iterable[str] = (),
    symbols: Iterable[str] | None = None,
    calendar: Mapping | None = None,
    labels=None,
) -> PartitionedBuild:
    """Features (``feature_set_cfg``) of every row of the symbol-partitioned parquet directory ``path``, one
    symbol partition in memory at a time; ``labels(n)``: the label writer fed alongside (see
    :func:`quantml.features.build.build`; :func:`quantml.labels.partitioned_features_and_labels` passes one).

    The files are not validated (write them from a validated panel: ``quantml.data.validate_panel``);
    rows are sorted by (symbol, timestamp). Returns :class:`PartitionedBuild` (``labels`` None without a
    writer), ``features.frame`` [n, F] float32.
    """
    from quantml.features.build import _plain

    cfg = _plain(feature_set_cfg)
    blocks = cfg.get("blocks") or {}
    thin = [c for name in blocks if name in BLOCKS and BLOCKS[name].cross_sectional for c in BLOCKS[name].requires]
    source = Partitioned(path, symbols, thin)
    features, made = build(source, cfg, drop_modalities, calendar=calendar, labels=labels)
    return PartitionedBuild(keys=source.keys, features=features, labels=made)
