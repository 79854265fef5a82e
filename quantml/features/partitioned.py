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

    def __init__(self, source: Partitioned, sym: str, a: int, b: int) -> None:
        self.columns = pd.Index(source.columns)
        self._source, self._sym = source, sym
        self._files = source._open(sym)  # its own open files: symbols may be built on several threads at once
        if sum(pf.metadata.num_rows for pf, _, _ in self._files) != b - a:  # pragma: no cover
            raise QuantmlInputError(f"symbol {sym!r} changed while it was read; rebuild from a stable copy")
        # the timestamps and their sort, as the first pass read them
        self._ts = source.keys[TIMESTAMP].iloc[a:b].reset_index(drop=True)
        self._order = source._order[sym]

    def __len__(self) -> int:
        return len(self._ts)

    def __getitem__(self, column: str) -> pd.Series:
        if column == TIMESTAMP:
            return self._ts
        if column == SYMBOL:
            return pd.Series(self._source._symbol(self._sym, len(self)), name=SYMBOL)
        if column not in self.columns:
            raise KeyError(column)
        values = self._source._columns(self._files, [column], self._order)[column]
        return pd.Series(values, name=column, copy=False)


class _Column:
    """One thin column of every row, written a symbol at a time: into one array while every symbol's values
    share a numeric dtype, else kept as parts that ``pd.concat`` joins (upcasting, as a whole-panel read would)."""

    def __init__(self, n: int) -> None:
        self.n, self.values, self.parts = n, None, None

    def put(self, a: int, values: np.ndarray) -> None:
        from quantml.features.memory import populated

        if self.parts is None and self.values is None and values.dtype.kind in "fiub":
            self.values = populated((self.n,), values.dtype)
        if self.parts is None and self.values is not None and values.dtype == self.values.dtype:
            self.values[a : a + len(values)] = values
            return
        if self.parts is None:  # another dtype than the symbols before: parts from here on
            self.parts = [] if self.values is None else [self.values[:a]]
        self.parts.append(values)

    def finish(self, n: int):
        if self.parts is None:
            return self.values[:n]
        return pd.concat([pd.Series(p) for p in self.parts], ignore_index=True)


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
        self._thin = [c for c in dict.fromkeys(["close", *OHLCV, *thin]) if c in self.columns and c != SYMBOL]
        self._read_thin()

    def _open(self, sym: str) -> list:
        """The symbol's files, opened: ``(ParquetFile, row-group order, path)`` each."""
        return [(*_sorted_groups(f), f) for f in self._files[sym]]

    @staticmethod
    def _columns(opened: list, columns: list[str], order: np.ndarray | None) -> dict[str, np.ndarray]:
        """Columns of a symbol (``opened``: its files, :meth:`_open`) in timestamp order (``order``: the sort
        of the rows as read): one read of the files for all of them (pyarrow decodes them in parallel)."""
        import pyarrow as pa

        for pf, _, path in opened:
            lacking = [c for c in columns if c not in pf.schema_arrow.names]
            if lacking:
                raise QuantmlInputError(
                    f"parquet file {path} lacks column(s) "
                    f"{lacking} that other files of the panel have; write every partition with the same columns "
                    "(NaN where a symbol has no values)"
                )
        tables = [pf.read_row_groups(groups, columns=columns) for pf, groups, _ in opened]
        out = {}
        for c in columns:
            parts = [t.column(c) for t in tables]
            col = parts[0] if len(parts) == 1 else pa.chunked_array([k for p in parts for k in p.chunks])
            values = col.to_numpy() if pa.types.is_floating(col.type) else col.to_pandas().to_numpy()
            out[c] = values if order is None else values[order]
        return out

    def _timestamps(self, sym: str, opened: list) -> tuple[np.ndarray, np.ndarray | None]:
        """The symbol's timestamps (int64 UTC ns, sorted) and the sort of its rows as read (None: already sorted)."""
        import pyarrow as pa

        col = pa.chunked_array([c for pf, g, _ in opened for c in pf.read_row_groups(g, [TIMESTAMP]).column(0).chunks])
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
        return ns, order

    def _symbol(self, sym: str, n: int) -> pd.Categorical:
        return pd.Categorical.from_codes(np.full(n, self.symbols.index(sym), dtype=np.int32), categories=self.symbols)

    def _read_thin(self) -> None:
        """The keys and the thin columns of every row, written symbol by symbol into arrays of every row
        (their pages mapped at once: no per-symbol parts concatenated afterwards)."""
        import pyarrow.parquet as pq

        from quantml.features.memory import populated

        n = sum(pq.read_metadata(f).num_rows for s in self.symbols for f in self._files[s])
        stamps, codes = populated((n,), np.int64), populated((n,), np.int32)
        thin: dict[str, _Column] = {c: _Column(n) for c in self._thin if c != TIMESTAMP}
        self._rows, self._order, a = {}, {}, 0
        for k, sym in enumerate(self.symbols):
            opened = self._open(sym)
            ns, self._order[sym] = self._timestamps(sym, opened)
            b = a + len(ns)
            if b > n:  # pragma: no cover - the files changed while being read
                raise QuantmlInputError(f"symbol {sym!r} changed while it was read; rebuild from a stable copy")
            stamps[a:b], codes[a:b] = ns, k
            for c, values in self._columns(opened, list(thin), self._order[sym]).items():
                thin[c].put(a, values)
            self._rows[sym] = (a, b)
            a = b
        utc = pd.DatetimeIndex(stamps[:a].view("datetime64[ns]")).tz_localize("UTC")
        data = {
            SYMBOL: pd.Categorical.from_codes(codes[:a], categories=self.symbols),
            TIMESTAMP: pd.Series(utc, name=TIMESTAMP),
        }
        for c in list(thin):
            data[c] = thin.pop(c).finish(a)
        self.panel = pd.DataFrame(data, copy=False)  # keys + the thin columns, every row
        self.keys = self.panel[[SYMBOL, TIMESTAMP]]

    def release(self) -> None:
        """The thin columns are read by the whole-panel steps only."""
        self.panel = self.keys

    def groups(self, codes: np.ndarray) -> list[tuple[int, int]]:
        return [self._rows[s] for s in self.symbols]

    def rows(self, a: int, b: int) -> _SymbolRows:
        sym = next(s for s, r in self._rows.items() if r == (a, b))
        return _SymbolRows(self, sym, a, b)


def build_partitioned(
    path: str | Path,
    feature_set_cfg: Mapping,
    drop_modalities: Iterable[str] = (),
    symbols: Iterable[str] | None = None,
    calendar: Mapping | None = None,
    labels=None,
    threads: int | None = None,
) -> PartitionedBuild:
    """Features (``feature_set_cfg``) of every row of the symbol-partitioned parquet directory ``path``, one
    symbol partition in memory at a time; ``labels(n)``: the label writer fed alongside (see
    :func:`quantml.features.build.build`; :func:`quantml.labels.partitioned_features_and_labels` passes one);
    ``threads``: symbols built at once (None: this job's share of the CPUs; the values never depend on it).

    The files are not validated (write them from a validated panel: ``quantml.data.validate_panel``);
    rows are sorted by (symbol, timestamp). Returns :class:`PartitionedBuild` (``labels`` None without a
    writer), ``features.frame`` [n, F] float32.
    """
    from quantml.features.build import _plain

    cfg = _plain(feature_set_cfg)
    blocks = cfg.get("blocks") or {}
    thin = [c for name in blocks if name in BLOCKS and BLOCKS[name].cross_sectional for c in BLOCKS[name].requires]
    source = Partitioned(path, symbols, thin)
    features, made = build(source, cfg, drop_modalities, calendar=calendar, labels=labels, threads=threads)
    return PartitionedBuild(keys=source.keys, features=features, labels=made)
