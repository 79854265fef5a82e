"""The book a route map trades, judged as one book: each (symbol, horizon) cell's out-of-sample
predictions come from the run of the entry version that serves the cell, and the union is traded by
one strategy, window by window, like a single version's book.

A map is only as good as the book it trades: every entry version may pass its own gates while the
routed cross-section (BTC from v2, the rest from v1) trades worse than either. This gate recomputes
that book on the development folds the entries share (their walk-forward test windows must be the
same: the same data and validation settings), with the strategy, signal and costs of the map's
default entry (what :class:`~quantml.registry.routing.RoutedBundle` serves), against the map's active
version's routed book on the same windows (else zero).
"""

from __future__ import annotations

import tempfile
import warnings

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL
from quantml.registry.book import FoldBooks, per_fold, run_books
from quantml.registry.gates import GateResult
from quantml.registry.store import RegistryStore

GATE_NAME = "routed_book"


def _map_bundle(store: RegistryStore, name: str, version):
    from quantml.tracking.pyfunc import load_bundle

    with tempfile.TemporaryDirectory() as tmp, store.global_uri():
        return load_bundle(f"models:/{name}/{version}", tmp)


def _windows(reader, run_id: str) -> dict[int, tuple]:
    return {f.fold_id: (f.test_start, f.test_end) for f in reader.folds(run_id)}


class RoutedBook:
    """The routed out-of-sample frame of one map version and how to trade it.

    ``books``: :class:`FoldBooks` over the union of the cells' rows; ``strategy``: the default entry's
    (with its own signal); ``windows``: fold id -> (test_start, test_end), shared by every entry;
    ``problem``: why the map has no one book (entries on different windows, a run without OOS rows);
    ``folds``: the folds it is judged on (None: every fold; a tuned map version: its selection folds);
    ``settings``: where its thresholds come from (the default entry's, or the map's tuned ones)."""

    def __init__(self, store: RegistryStore, name: str, version) -> None:
        from quantml.contracts import run_layout as L
        from quantml.registry.commands import version_book
        from quantml.registry.routing import owner
        from quantml.tracking import RunReader

        self.name, self.version = name, str(version)
        self.label = f"{name} v{version}"
        self.problem: str | None = None
        self.books: FoldBooks | None = None
        self.strategy = None
        self.folds: tuple[int, ...] | None = None
        self.windows: dict[int, tuple] = {}
        self.map_version = store.get_version(name, str(version))
        tuned = version_book(store, self.map_version) if L.TAG_SOURCE_VERSION in (self.map_version.tags or {}) else None
        if tuned is not None and tuned.problem:
            self.problem = tuned.problem
            return
        routed = _map_bundle(store, name, version)
        reader = RunReader(store.tracking_uri, client=store.client)
        runs, windows = {}, {}
        for key in {e.key for e in routed.entries}:
            model, ver = key.rsplit("/", 1)
            mv = store.get_version(model, ver)
            rb = run_books(reader.parent(mv.run_id, action="gate")) if mv.run_id else None
            if rb is None:
                self.problem = f"{model} v{ver} has no out-of-sample predictions per fold to trade"
                return
            runs[key] = (rb, version_book(store, mv))
            windows[key] = _windows(reader, mv.run_id)
        shared = set.intersection(*(set(w.items()) for w in windows.values()))
        first = next(iter(windows.values()))
        if any(set(w.items()) != set(first.items()) for w in windows.values()):
            self.problem = (
                "its entries were judged on different walk-forward windows (other data or validation settings), "
                "so their out-of-sample rows do not form one book; the entries' own gates still apply"
            )
            return
        self.windows = dict(sorted(shared))
        parts = []
        for key, (rb, _) in runs.items():
            frame = rb.books.frame
            cells = frame[[SYMBOL, "horizon"]].astype(str).drop_duplicates()
            mine = [
                (s, h)
                for s, h in cells.itertuples(index=False)
                if (who := owner(routed.entries, routed.bundles, s, h)) is not None and who.key == key
            ]
            keep = pd.MultiIndex.from_frame(frame[[SYMBOL, "horizon"]].astype(str)).isin(mine)
            parts.append(frame.loc[np.asarray(keep)])
        union = pd.concat(parts, ignore_index=True)
        default = next(e for e in routed.entries if e.is_default)
        rb, book = runs[default.key]
        market = rb.books.market
        if market is not None:  # every entry's market bars (the routed symbols may come from several runs)
            extra = [r.books.market for r, _ in runs.values() if r.books.market is not None and r is not rb]
            market = pd.concat([market, *extra], ignore_index=True).drop_duplicates() if extra else market
        self.books = FoldBooks(
            union, market, rb.books.costs, rb.books.periods_per_year, rb.books.ic_mode, list(routed.horizons)
        )
        self.default_run = rb.run
        self.default_label = f"{default.model} v{default.version}"
        if tuned is not None:  # the map's own tuned settings, judged on the folds they were not tuned on
            self.strategy = rb.strategy(tuned.signal, tuned.allocator)
            self.folds = tuned.folds
            self.settings = f"{self.label}'s tuned settings, on selection folds {','.join(map(str, tuned.folds))}"
        else:
            self.strategy = rb.strategy(book.signal, book.allocator)
            self.settings = f"{self.default_label}'s strategy"
        self.per_entry = self._per_entry(reader, routed, store)

    @staticmethod
    def _per_entry(reader, routed, store) -> dict[str, str]:
        """Per entry version: the mean over folds of its fold runs' rank IC on the cells it serves."""
        from quantml.registry.routing import owner

        out = {}
        for key in dict.fromkeys(e.key for e in routed.entries):
            model, ver = key.rsplit("/", 1)
            table = reader.per_symbol(store.get_version(model, ver).run_id)
            if table.empty:
                continue
            mine = [
                (who is not None and who.key == key)
                for who in (
                    owner(routed.entries, routed.bundles, s, h) for s, h in zip(table["symbol"], table["horizon"])
                )
            ]
            served = table[np.asarray(mine, dtype=bool)]
            if len(served):
                by_h = served.groupby("horizon")["rank_ic"].mean()
                out[f"{model} v{ver}"] = ", ".join(f"{h} {v:+.3f}" for h, v in by_h.items())
        return out

    def fold_sharpe(self) -> dict[str, dict[int, float]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return per_fold(self.books.results(self.strategy, folds=self.folds))


def gate_routed_book(store: RegistryStore, name: str, version, cfg) -> GateResult:
    """The map version's routed book against the active map version's (else 0), window by window:
    better (by ``sharpe.margin``) in at least ``sharpe.min_windows`` windows at every horizon."""
    candidate = RoutedBook(store, name, version)
    if candidate.problem:
        return GateResult(GATE_NAME, False, f"{candidate.label}: no routed book ({candidate.problem})")
    cand = candidate.fold_sharpe()
    active = store.active_version(name)
    base_label, base = "0", {}
    if active is not None and str(active) != str(version):
        baseline = RoutedBook(store, name, active)
        if baseline.problem is None and baseline.windows == candidate.windows:
            base_label, base = f"active v{active}'s routed book", baseline.fold_sharpe()
        else:
            base_label = f"0 (active v{active}'s routed book is not on the same windows)"
    margin = float(cfg.sharpe.get("margin", 0.0) or 0.0)
    need = int(cfg.sharpe.get("min_windows", 2) or 1)
    lines, passed = [], True
    for h, by_fold in cand.items():
        wins = [f for f, s in by_fold.items() if np.isfinite(s) and s > base.get(h, {}).get(f, 0.0) + margin]
        judged = len([s for s in by_fold.values() if np.isfinite(s)])
        ok = len(wins) >= min(need, judged) and judged > 0
        passed &= ok
        shown = " ".join(f"{s:+.2f}" for s in by_fold.values())
        lines.append(f"{h}: better than {base_label} in {len(wins)}/{judged} windows (Sharpe per window {shown})")
    if candidate.per_entry:  # each entry on the cells it serves, from its fold runs' per-symbol tables
        shown = "; ".join(f"{who} {ics}" for who, ics in candidate.per_entry.items())
        lines.append(f"per entry, mean fold rank IC on its cells: {shown}")
    detail = f"{candidate.label}, traded with {candidate.settings}: " + "; ".join(lines)
    return GateResult(GATE_NAME, bool(passed), detail, {"candidate": cand, "baseline": base})
