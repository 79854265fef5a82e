"""``quantml paper``: paper-trade a registered version bar by bar, with keyed logs and a resumable state.

One session pins the model URI to one version (:func:`~quantml.serving.predict.resolve_model`),
then polls the data: each poll loads the whole panel and predicts every row of it ONCE
(``predict_panel(..., last_only=False)``: the features are causal, so the row of bar ``t`` equals
the prediction on the history up to ``t``; tests/integration/test_paper.py proves it), keeps the
bars after the state's last acted bar (and inside ``[start, end]``) and steps them in time order
through the execution engine (:class:`quantml.market.fills.Executor`):

per bar ``t``: targets ``[N symbols, H horizons]`` = the contract's ``target_weight`` of the bar
times the bucket's ``horizon_weight`` (fractions of ``execution.aum``; a (symbol, horizon) without a
row keeps its previous target); ``executor.on_bar(t, quotes_t, targets)`` fills the orders of the
previous decision in bar ``t`` and books the previous decision bar's PnL. Every ``commit_bars`` bars
(and at the end of every poll) the bars' prediction rows (``source="paper"``), fills and PnL rows
(stamped with the model name/version of the prediction row that decided them) are appended to the
keyed logs (``quantml.serving.logs``), and LAST the state is written atomically to
``<log_dir>/paper_state.json`` (the commit point). A kill between the logs and the state re-acts
those bars from the previous state on the next run: the same rows, which the logs' keys drop.
(``commit_bars=1`` commits every bar; a larger batch only saves time: ``append_log`` reads the
log's keys at every append.) Nothing ever trades live.

Money: targets, positions and PnL are fractions of ``execution.aum``; notionals are in the
panel's price currency (see ``quantml.contracts.logs``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts.logs import EXECUTION_LOG, LOG_COLUMNS, LOGS, PNL_LOG, PREDICTION_LOG, SOURCE_PAPER
from quantml.market.execution import CostModel
from quantml.market.fills import BarQuotes, ExecutionConfig, Executor
from quantml.registry.store import RegistryStore
from quantml.serving.logs import append_log, read_log
from quantml.serving.paper_settings import (
    PaperSettings,
    SourceRun,
    default_log_dir,
    horizon_weight_vector,
    read_source_run,
    resolve_start,
    sort_horizons,
    source_costs,
)
from quantml.serving.paper_state import PaperState, load_state, move_aside, save_state, settings_hash, state_path
from quantml.serving.predict import ResolvedModel, predict_panel, resolve_model
from quantml.serving.text_source import TextSource, UnreadablePosts, checked_on_read

_FIX = "reset=true (moves {log_dir} aside and starts over) or another log_dir="
_DROP_TOL = 1e-9  # notional below which an unfilled, uncarried remainder is not counted as dropped


# ------------------------------------------------------------------------------------------- session
@dataclass
class PollSummary:
    """One poll: the bars acted on and the rows each log gained."""

    poll: int
    bars: int
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    rows: dict[str, int]
    pnl: float
    panel_last: pd.Timestamp | None

    def line(self) -> str:
        if not self.bars:
            last = self.panel_last.isoformat() if self.panel_last is not None else "-"
            return f"poll {self.poll}: no new bar (panel ends {last})"
        span = self.first.isoformat() if self.bars == 1 else f"{self.first.isoformat()} .. {self.last.isoformat()}"
        rows = ", ".join(f"+{self.rows[k]} {k}" for k in LOGS)
        return f"poll {self.poll}: {self.bars} bar(s) {span}: {rows}; pnl {self.pnl:+.6f} of aum"


class PaperSession:
    """A pinned model, its execution engine and its persisted state; :meth:`poll` acts on new bars."""

    def __init__(
        self,
        settings: PaperSettings,
        execution: ExecutionConfig,
        costs: CostModel | None,
        store: RegistryStore,
        echo: Callable[[str], None] = print,
        *,
        resolved: ResolvedModel | None = None,
        source: SourceRun | None = None,
    ) -> None:
        self.settings, self.execution, self.store, self.echo = settings, execution, store, echo
        self.resolved = resolved or resolve_model(settings.model, store)  # pinned once per session
        self.source = source or read_source_run(self.resolved, store)
        self.costs = costs if costs is not None else source_costs(self.source)
        self.start = resolve_start(settings, self.source, self.resolved)
        self.log_dir = settings.log_dir or default_log_dir(self.resolved)
        self.moved_to: Path | None = None
        if settings.reset:
            self.moved_to = move_aside(self.log_dir)
        self.state = load_state(self.log_dir)
        if self.state is not None:
            self._check_version(self.state)
        self.executor: Executor | None = None
        self.weights: np.ndarray | None = None
        self.polls = 0
        self.session_bars = 0
        self.session_rows = dict.fromkeys(LOGS, 0)

    # -- set-up on the first panel ---------------------------------------------------------------
    def _bind(self, frame: pd.DataFrame, panel: pd.DataFrame) -> None:
        """Symbols and horizons from the first prediction frame; check (or create) the state."""
        symbols = sorted(panel[SYMBOL].astype(str).unique())
        horizons = sort_horizons(frame["horizon"].unique())
        self.weights = horizon_weight_vector(self.settings.horizon_weights, horizons, self.source.strategy_target)
        digest = settings_hash(self.execution, self.costs, self.weights, horizons, symbols)
        r = self.resolved
        if self.state is None:
            self.state = PaperState(
                model_uri=r.load_uri,
                model_name=r.name,
                model_version=r.version,
                run_id=r.run_id,
                settings_hash=digest,
                symbols=symbols,
                horizons=horizons,
                start=self.start.isoformat(),
            )
            self.executor = Executor(symbols, horizons, self.execution, self.costs)
            return
        s = self.state
        fix = _FIX.format(log_dir=self.log_dir)
        if s.settings_hash != digest or s.symbols != symbols or s.horizons != horizons:
            what = "symbols" if s.symbols != symbols else "horizons" if s.horizons != horizons else "settings"
            raise QuantmlInputError(
                f"{state_path(self.log_dir)} was written with other {what} (execution/cost/horizon_weights/"
                f"symbols/horizons hash {s.settings_hash} != {digest}); rerun with the settings it was started "
                f"with, or use {fix}"
            )
        self.executor = Executor.from_state(s.executor, symbols, horizons, self.execution, self.costs)

    def _check_symbols(self, panel: pd.DataFrame) -> None:
        """The book's symbols are fixed per log dir: a symbol the panel gained is refused, not ignored."""
        new = sorted(set(panel[SYMBOL].astype(str).unique()) - set(self.state.symbols))
        if new:
            raise QuantmlInputError(
                f"the panel gained symbol(s) {new} that {state_path(self.log_dir)} does not trade "
                f"({self.state.symbols}); use {_FIX.format(log_dir=self.log_dir)} to trade them, or "
                "filter the data (data.symbols=[...])"
            )

    def past_end(self) -> bool:
        """True once the last bar acted on is at or after ``end`` (nothing more to act on)."""
        s, end = self.state, self.settings.end
        return end is not None and s is not None and s.last_bar is not None and pd.Timestamp(s.last_bar) >= end

    def _check_version(self, s: PaperState) -> None:
        r = self.resolved
        if (s.model_name, s.model_version, s.model_uri) != (r.name, r.version, r.load_uri):
            raise QuantmlInputError(
                f"{state_path(self.log_dir)} was written for {s.model_uri} (version {s.model_version}) but "
                f"model={self.settings.model} is now {r.load_uri}: a log dir follows one version; use "
                + _FIX.format(log_dir=self.log_dir)
            )

    # -- one poll ------------------------------------------------------------------------------------
    def poll(self, panel: pd.DataFrame, text: TextSource | pd.DataFrame | None = None) -> PollSummary:
        """Predict the whole panel once, act on every bar after the last acted one, in time order.
        ``text``: the raw text stream of a model trained on one (:func:`predict_panel`)."""
        self.polls += 1
        panel_last = pd.to_datetime(panel[TIMESTAMP], utc=True).max() if len(panel) else None
        bars = self._new_bars(panel) if self.executor is not None else None
        if bars is not None and not bars:  # a poll that brings nothing new: no prediction
            return PollSummary(self.polls, 0, None, None, dict.fromkeys(LOGS, 0), 0.0, panel_last)
        frame, _ = predict_panel(self.resolved.load_uri, panel, store=self.store, last_only=False, text=text)
        frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
        if self.executor is None:
            self._bind(frame, panel)
        self._check_symbols(panel)
        bars = self._new_bars(panel)
        rows = dict.fromkeys(LOGS, 0)
        pnl_sum = 0.0
        if len(bars):
            quotes = _QuoteBook(panel, self.state.symbols)
            producers = _producers(frame, self.resolved)
            by_bar = dict(tuple(frame.groupby(TIMESTAMP, sort=True)))
            pending: list[tuple[pd.Timestamp, dict[str, pd.DataFrame]]] = []
            for i, ts in enumerate(bars):
                pending.append((ts, self._act(ts, by_bar.get(ts), quotes, producers)))
                if len(pending) >= self.settings.commit_bars or i == len(bars) - 1:
                    got = self._commit(pending)
                    pnl_sum += sum(_pnl_total(out[PNL_LOG]) for _, out in pending)
                    pending = []
                    for k in LOGS:
                        rows[k] += got[k]
        summary = PollSummary(
            self.polls,
            len(bars),
            bars[0] if len(bars) else None,
            bars[-1] if len(bars) else None,
            rows,
            pnl_sum,
            panel_last,
        )
        self.session_bars += len(bars)
        for k in LOGS:
            self.session_rows[k] += rows[k]
        return summary

    def _new_bars(self, panel: pd.DataFrame) -> list[pd.Timestamp]:
        ts = pd.DatetimeIndex(pd.to_datetime(panel[TIMESTAMP], utc=True).unique()).sort_values()
        keep = ts >= pd.Timestamp(self.state.start)
        if self.state.last_bar is not None:
            keep &= ts > pd.Timestamp(self.state.last_bar)
        if self.settings.end is not None:
            keep &= ts <= self.settings.end
        return list(ts[keep])

    def _act(self, ts: pd.Timestamp, rows: pd.DataFrame | None, quotes: _QuoteBook, producers) -> dict:
        """Step the executor over one bar; returns the bar's rows of each log (not written yet)."""
        s = self.state
        N, H = len(s.symbols), len(s.horizons)
        previous = np.zeros((N, H)) if s.targets is None else np.asarray(s.targets, dtype=np.float64)
        targets = None
        if rows is not None and len(rows):
            grid = (
                rows.assign(symbol=rows[SYMBOL].astype(str))
                .pivot_table(index=SYMBOL, columns="horizon", values="target_weight", aggfunc="first")
                .reindex(index=s.symbols, columns=s.horizons)
                .to_numpy(dtype=np.float64)
            )
            scaled = grid * self.weights[None, :]
            targets = np.where(np.isfinite(scaled), scaled, previous)  # no row: keep the bucket's target
        outcome = self.executor.on_bar(ts, quotes.at(ts), targets)
        s.targets = (previous if targets is None else targets).tolist()
        s.last_bar = ts.isoformat()
        s.bars_acted += 1
        predictions = pd.DataFrame()
        if rows is not None and len(rows):
            predictions = rows.assign(source=SOURCE_PAPER, logged_at=pd.Timestamp.now(tz="UTC"))
        return {
            PREDICTION_LOG: predictions,
            EXECUTION_LOG: _stamp(outcome.fills, "decided_at", producers, self.resolved),
            PNL_LOG: _stamp(outcome.pnl, TIMESTAMP, producers, self.resolved),
        }

    def _commit(self, pending: list[tuple[pd.Timestamp, dict[str, pd.DataFrame]]]) -> dict[str, int]:
        """Append the rows of the ``pending`` bars to the logs, then (the commit point) write the state:
        after it those bars are never acted on again; a kill before it re-acts them from the previous
        state on the next run, and the logs' keys drop the rows already written."""
        got = dict.fromkeys(LOGS, 0)
        for log in LOGS:
            parts = [out[log] for _, out in pending if len(out[log])]
            if parts:
                rows = pd.concat(parts, ignore_index=True)
                got[log] = append_log(self.log_dir, log, rows.reindex(columns=list(LOG_COLUMNS[log])))
        s = self.state
        s.executor = self.executor.state_dict()
        for k in LOGS:
            s.rows_logged[k] = int(s.rows_logged.get(k, 0)) + got[k]
        save_state(self.log_dir, s)
        return got


def _pnl_total(pnl: pd.DataFrame) -> float:
    return float(pd.to_numeric(pnl["pnl"], errors="coerce").sum()) if len(pnl) else 0.0


class _QuoteBook:
    """The panel's bars as ``[T, N]`` arrays in the executor's symbol order: :meth:`at` one bar."""

    def __init__(self, panel: pd.DataFrame, symbols: list[str]) -> None:
        p = panel.assign(**{TIMESTAMP: pd.to_datetime(panel[TIMESTAMP], utc=True), SYMBOL: panel[SYMBOL].astype(str)})
        p = p.drop_duplicates([TIMESTAMP, SYMBOL], keep="last")
        self.index = pd.DatetimeIndex(p[TIMESTAMP].unique()).sort_values()
        self.cols: dict[str, np.ndarray | None] = {}
        for c in ("open", "high", "low", "close", "volume"):
            if c not in p.columns or p[c].isna().all():
                self.cols[c] = None
                continue
            wide = p.pivot(index=TIMESTAMP, columns=SYMBOL, values=c).reindex(index=self.index, columns=symbols)
            self.cols[c] = wide.to_numpy(dtype=np.float64)
        self.n = len(symbols)

    def at(self, ts: pd.Timestamp) -> BarQuotes:
        t = self.index.get_loc(ts)
        nan = np.full(self.n, np.nan)

        def row(c):
            return nan.copy() if self.cols[c] is None else self.cols[c][t].copy()

        volume = None if self.cols["volume"] is None else self.cols["volume"][t].copy()
        return BarQuotes(open=row("open"), high=row("high"), low=row("low"), close=row("close"), volume=volume)


def _producers(frame: pd.DataFrame, resolved: ResolvedModel) -> pd.DataFrame:
    """``(timestamp, symbol, horizon) -> model_name, model_version`` of each prediction row (a routed
    version's rows carry their own producer)."""
    out = frame[[TIMESTAMP, SYMBOL, "horizon", "model_name", "model_version"]].copy()
    out[SYMBOL] = out[SYMBOL].astype(str)
    out["horizon"] = out["horizon"].astype(str)
    out["model_name"] = out["model_name"].astype(str).replace("", resolved.name)
    out["model_version"] = out["model_version"].astype(str).replace("", resolved.version)
    return out.drop_duplicates([TIMESTAMP, SYMBOL, "horizon"]).set_index([TIMESTAMP, SYMBOL, "horizon"])


def _stamp(rows: pd.DataFrame, when: str, producers: pd.DataFrame, resolved: ResolvedModel) -> pd.DataFrame:
    """``rows`` (fills or PnL of the engine) with the model name/version of the row that decided them."""
    if rows is None or rows.empty:
        return pd.DataFrame()
    out = rows.copy()
    out[when] = pd.to_datetime(out[when], utc=True)
    if when != TIMESTAMP:
        out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
    keys = pd.MultiIndex.from_arrays([out[when], out[SYMBOL].astype(str), out["bucket"].astype(str)])
    who = producers.reindex(keys)
    out["model_name"] = who["model_name"].fillna(resolved.name).to_numpy()
    out["model_version"] = who["model_version"].fillna(resolved.version).to_numpy()
    return out


# ---------------------------------------------------------------------------------------------- run
@dataclass
class PaperResult:
    """The end of a session: where its logs are, what it did, the totals per horizon bucket."""

    log_dir: Path
    resolved: ResolvedModel
    start: pd.Timestamp
    polls: int
    bars: int
    rows: dict[str, int]
    pnl_by_bucket: pd.Series  # after-cost PnL per bucket over the whole log, fraction of aum
    capped: int  # fills with a remainder carried to the next bar (participation cap)
    dropped: int  # fills with a remainder dropped (slippage cap)
    moved_to: Path | None
    interrupted: bool = False

    def summary(self, data: str = "") -> str:
        """The end-of-run summary; ``data``: the ``data=`` settings to repeat in the monitor command."""
        r = self.resolved
        label = f"{r.name} v{r.version}" if r.name else r.load_uri
        lines = [
            f"paper {label}: {self.bars} bar(s) acted on in {self.polls} poll(s) from {self.start.isoformat()}"
            + (" (stopped by Ctrl-C)" if self.interrupted else ""),
            "rows logged: " + ", ".join(f"{self.rows[k]} {k}" for k in LOGS) + f" -> {self.log_dir}",
        ]
        if len(self.pnl_by_bucket):
            per = ", ".join(f"{b} {v:+.6f}" for b, v in self.pnl_by_bucket.items())
            lines.append(f"pnl per horizon bucket (whole log, fraction of aum): {per}")
        lines.append(f"fills: {self.capped} capped by participation (rest carried), {self.dropped} dropped remainders")
        if self.moved_to is not None:
            lines.append(f"reset: the previous log dir was moved to {self.moved_to}")
        model = f"models:/{r.name}/{r.version}" if r.name else r.load_uri
        lines.append(f"next: quantml monitor model={model} log_dir={self.log_dir}" + (f" {data}" if data else ""))
        return "\n".join(lines)


def fill_counts(log_dir: str | Path) -> tuple[int, int]:
    """(fills whose remainder was carried, fills whose remainder was dropped) in the execution log."""
    fills = read_log(log_dir, EXECUTION_LOG)
    if fills.empty:
        return 0, 0
    order = pd.to_numeric(fills["order_notional"], errors="coerce").fillna(0.0)
    filled = pd.to_numeric(fills["filled_notional"], errors="coerce").fillna(0.0)
    carried = pd.to_numeric(fills["carried_notional"], errors="coerce").fillna(0.0)
    dropped = (order - filled - carried) > _DROP_TOL * np.maximum(order.abs(), 1.0)
    return int((carried > _DROP_TOL).sum()), int(dropped.sum())


def pnl_by_bucket(log_dir: str | Path) -> pd.Series:
    pnl = read_log(log_dir, PNL_LOG)
    if pnl.empty:
        return pd.Series(dtype=float)
    total = pd.to_numeric(pnl["pnl"], errors="coerce").groupby(pnl["bucket"].astype(str)).sum()
    return total.reindex(sort_horizons(total.index))


def run_paper(
    settings: PaperSettings,
    load: Callable[[], pd.DataFrame],
    execution: ExecutionConfig,
    costs: CostModel | None,
    store: RegistryStore,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
    *,
    resolved: ResolvedModel | None = None,
    source: SourceRun | None = None,
    text: TextSource | None = None,
) -> PaperResult:
    """Replay (``follow=False``: one poll) or follow (poll every ``poll_s`` until ``max_polls`` or
    Ctrl-C) the panel ``load()`` returns. ``costs=None``: the source run's cost settings. ``text``: where
    a model trained on a raw text stream reads its posts (loaded again at each poll that predicts; in follow
    mode posts that cannot be read, e.g. a file caught half-written, are said and read again at the next
    poll, like the panel)."""
    session = PaperSession(settings, execution, costs, store, echo, resolved=resolved, source=source)
    if settings.follow and text is not None:
        text = checked_on_read(text)  # posts caught half-written: said, read again at the next poll
    interrupted = False
    try:
        while True:
            try:
                panel = load()
            except (QuantmlInputError, OSError, ValueError) as exc:
                if not settings.follow or session.polls == 0:
                    raise
                # a file caught half-written by a follow poll: said, then read again at the next poll
                session.polls += 1
                echo(f"poll {session.polls}: the data could not be read ({exc}); trying again in {settings.poll_s:g}s")
                panel = None
            if panel is not None:
                first = session.polls == 0
                try:
                    echo(session.poll(panel, text).line())
                except UnreadablePosts as exc:
                    if first:  # as with the panel: a first poll that cannot read is a setup error
                        raise
                    # nothing was acted on (the poll stops before its first bar): the same bars come again
                    again = f"trying again in {settings.poll_s:g}s"
                    echo(f"poll {session.polls}: the posts could not be read ({exc}); {again}")
            if not settings.follow or (settings.max_polls is not None and session.polls >= settings.max_polls):
                break
            if session.past_end():
                echo(f"end={settings.end.isoformat()} reached: stopping")
                break
            sleep(settings.poll_s)
    except KeyboardInterrupt:
        interrupted = True
    capped, dropped = fill_counts(session.log_dir)
    return PaperResult(
        session.log_dir,
        session.resolved,
        session.start,
        session.polls,
        session.session_bars,
        dict(session.session_rows),
        pnl_by_bucket(session.log_dir),
        capped,
        dropped,
        session.moved_to,
        interrupted,
    )


def run_paper_config(cfg, echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep):
    """:func:`run_paper` from a composed ``conf/paper.yaml`` (``cfg.tracking_uri``: the resolved store).

    ``cost: null`` (the default) takes the cost settings of the model's source run (else the
    :class:`CostModel` defaults), before the execution config is resolved (``execution=close`` reads
    ``cost.slippage_bps``)."""
    from omegaconf import OmegaConf, open_dict

    from quantml.serving.source_data import load_serving_panel
    from quantml.serving.text_source import serving_text_source

    settings = PaperSettings.from_config(cfg)
    store = RegistryStore(cfg.get("tracking_uri") or None)
    resolved = resolve_model(settings.model, store)
    source = read_source_run(resolved, store)
    if cfg.get("cost") is None:
        with open_dict(cfg):
            cfg.cost = source_costs(source).to_dict()
    costs = CostModel.from_config(OmegaConf.to_container(cfg.cost, resolve=True))
    execution = ExecutionConfig.from_config(cfg.execution)
    return run_paper(
        settings,
        lambda: load_serving_panel(cfg.data, resolved, store),
        execution,
        costs,
        store,
        echo,
        sleep,
        resolved=resolved,
        source=source,
        text=serving_text_source(cfg, resolved, store),  # text.path=, else the data config's (docs/text.md)
    )
