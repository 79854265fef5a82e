"""Data readiness: coverage, gaps, stale prices and missing streams of a panel, and a gate on them.

``audit_panel(panel, calendars, window, thresholds)`` measures, per symbol, the bars present
against the bars its calendar expects (declared via ``data.calendars`` or inferred from its own
bars: :func:`quantml.contracts.exchange_calendars.panel_bars_missing`), its longest gap and its
share of stale bars (close unchanged from the previous bar); per symbol x stream (every
``<col>_missing`` flag of the joined panel) the share of bars with the stream missing; and for
text (``social_posts``, ``social_comments``) the counts per UTC day. Thresholds make it a gate
(:func:`require_ready`, what ``quantml train data.require_ready=true`` runs). No CLI, no MLflow.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts.exchange_calendars import declared_calendar, panel_bars_missing, resolve_calendars
from quantml.contracts.time import duration_to_bars, infer_calendars, parse_duration

MISSING_SUFFIX = "_missing"
TEXT_COUNT_COLUMNS = ("social_posts", "social_comments")
PASS, FAIL = "PASS", "FAIL"


def _share(value, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise QuantmlInputError(f"{key}={value!r} must be a share between 0 and 1 (e.g. {key}=0.95) or null")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise QuantmlInputError(f"{key}={value!r} must be a share between 0 and 1 (e.g. {key}=0.95) or null")
    return value


@dataclass(frozen=True)
class ReadyThresholds:
    """What a ready panel needs. ``None`` switches a check off.

    min_coverage : per symbol, bars present / bars expected on its calendar (0.95).
    max_gap : per symbol, the longest gap in **trading time** on its calendar (``4h``, ``1d``).
    max_missing : per symbol x stream, the share of bars with ``<stream>_missing`` = 1 (0.2).
    max_missing_by : per stream name or ``fnmatch`` pattern (``macro_*``), a limit replacing
        ``max_missing`` (the exact name wins over a pattern, patterns in the order given).
    max_stale : per symbol, the share of bars whose close equals the previous bar's.
    """

    min_coverage: float | None = 0.95
    max_gap: str | None = None
    max_missing: float | None = 0.2
    max_missing_by: Mapping[str, float] = field(default_factory=dict)
    max_stale: float | None = None

    @classmethod
    def from_config(cls, node, prefix: str = "data.ready") -> ReadyThresholds:
        """From a config node (a mapping with the field names; unknown keys are an error)."""
        if node is None:
            return cls()
        if hasattr(node, "items") and not isinstance(node, Mapping):
            node = dict(node.items())
        if not isinstance(node, Mapping):
            raise QuantmlInputError(f"{prefix}={node!r} must be a mapping of thresholds (min_coverage, max_gap, ...)")
        node = {k: v for k, v in dict(node).items() if k != "window"}
        known = {"min_coverage", "max_gap", "max_missing", "max_missing_by", "max_stale"}
        unknown = sorted(set(node) - known)
        if unknown:
            raise QuantmlInputError(
                f"{prefix}.{unknown[0]} is not a readiness threshold; use {', '.join(sorted(known))} or window"
            )
        max_gap = node.get("max_gap")
        if max_gap is not None:
            parse_duration(max_gap, f"{prefix}.max_gap")
            max_gap = str(max_gap)
        by = node.get("max_missing_by") or {}
        if hasattr(by, "items") and not isinstance(by, Mapping):
            by = dict(by.items())
        if not isinstance(by, Mapping):
            raise QuantmlInputError(
                f"{prefix}.max_missing_by={by!r} must be a mapping stream -> share, e.g. '{{macro_*: 0.3}}'"
            )
        return cls(
            min_coverage=_share(node.get("min_coverage", cls.min_coverage), f"{prefix}.min_coverage"),
            max_gap=max_gap,
            max_missing=_share(node.get("max_missing", cls.max_missing), f"{prefix}.max_missing"),
            max_missing_by={str(k): _share(v, f"{prefix}.max_missing_by.{k}") for k, v in by.items()},
            max_stale=_share(node.get("max_stale"), f"{prefix}.max_stale"),
        )

    def missing_limit(self, stream: str) -> float | None:
        """The limit on ``stream``'s missing share: its own, else the first matching pattern, else the default."""
        if stream in self.max_missing_by:
            return self.max_missing_by[stream]
        for pattern, limit in self.max_missing_by.items():
            if fnmatch.fnmatchcase(stream, pattern):
                return limit
        return self.max_missing

    def to_dict(self) -> dict:
        return {
            "min_coverage": self.min_coverage,
            "max_gap": self.max_gap,
            "max_missing": self.max_missing,
            "max_missing_by": dict(self.max_missing_by),
            "max_stale": self.max_stale,
        }


@dataclass
class DataAudit:
    """The tables of an audit and its verdict.

    symbols : one row per symbol: ``calendar`` (a declared code or ``inferred``), ``first``, ``last``,
        ``bars_expected``, ``bars_present``, ``bars_missing``, ``coverage``, ``longest_gap_start``,
        ``longest_gap_end``, ``longest_gap_bars``, ``stale_share``.
    streams : one row per symbol x stream: ``bars``, ``missing_bars``, ``missing_share``.
    text : one row per symbol x UTC day: ``bars`` and the sum of each text count column.
    checks : one row per check: ``check``, ``symbol``, ``stream``, ``value``, ``limit``, ``verdict``,
        ``message`` (the shortfall, for a FAIL).
    """

    symbols: pd.DataFrame
    streams: pd.DataFrame
    text: pd.DataFrame
    checks: pd.DataFrame
    thresholds: ReadyThresholds
    window: str | None
    start: pd.Timestamp | None
    end: pd.Timestamp | None

    @property
    def ready(self) -> bool:
        return bool((self.checks["verdict"] == PASS).all()) if len(self.checks) else True

    def shortfalls(self) -> list[str]:
        """One line per failed check: what is short and by how much."""
        return list(self.checks.loc[self.checks["verdict"] == FAIL, "message"])

    def summary(self) -> dict:
        return {
            "ready": self.ready,
            "window": self.window,
            "start": None if self.start is None else str(self.start),
            "end": None if self.end is None else str(self.end),
            "thresholds": self.thresholds.to_dict(),
            "n_checks": len(self.checks),
            "n_failed": int((self.checks["verdict"] == FAIL).sum()) if len(self.checks) else 0,
            "shortfalls": self.shortfalls(),
        }

    def to_text(self, max_text_rows: int = 14) -> str:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
            parts = [
                f"data audit of {len(self.symbols)} symbol(s), {self.start} .. {self.end}"
                + (f" (window {self.window})" if self.window else ""),
                "",
                "per symbol:",
                self.symbols.to_string(index=False),
            ]
            if len(self.streams):
                wide = self.streams.pivot(index="stream", columns=SYMBOL, values="missing_share")
                parts += ["", "missing share per stream x symbol:", wide.round(4).to_string()]
            if len(self.text):
                parts += [
                    "",
                    f"text counts per day (last {max_text_rows} rows of {len(self.text)}):",
                    self.text.tail(max_text_rows).to_string(index=False),
                ]
            failed_rows = self.checks[self.checks["verdict"] == FAIL] if len(self.checks) else self.checks
            n_pass = len(self.checks) - len(failed_rows)
            parts += ["", f"checks: {n_pass} passed, {len(failed_rows)} failed" if len(self.checks) else "checks: none"]
            if len(failed_rows):
                shown = failed_rows[["verdict", "check", SYMBOL, "stream", "value", "limit"]]
                parts.append(shown.to_string(index=False))
            failed = self.shortfalls()
            parts += ["", "verdict: READY" if self.ready else f"verdict: NOT READY ({len(failed)} check(s) failed)"]
            parts += [f"  {line}" for line in failed]
        return "\n".join(parts)

    def write(self, directory) -> list[Path]:
        """``audit_symbols.csv``, ``audit_streams.csv``, ``audit_text.csv``, ``audit_checks.csv`` and
        ``audit.json`` (the verdict, thresholds, window, shortfalls) under ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, frame in (
            ("audit_symbols.csv", self.symbols),
            ("audit_streams.csv", self.streams),
            ("audit_text.csv", self.text),
            ("audit_checks.csv", self.checks),
        ):
            frame.to_csv(out / name, index=False)
            paths.append(out / name)
        (out / "audit.json").write_text(json.dumps(self.summary(), indent=2), encoding="utf-8")
        paths.append(out / "audit.json")
        return paths


def _plain(spec):
    if spec is None or isinstance(spec, (str, Mapping)):
        return spec
    if hasattr(spec, "items"):  # a DictConfig
        return {k: v for k, v in spec.items()}
    return spec


def audit_panel(
    panel: pd.DataFrame,
    calendars=None,
    window=None,
    thresholds: ReadyThresholds | None = None,
) -> DataAudit:
    """Audit ``panel`` (a validated panel, streams joined) over the last ``window`` of it (a
    duration, wall-clock back from its last bar; ``None``: all of it) against ``thresholds``.

    ``calendars``: ``data.calendars`` (``None``, a code, or ``{symbol: code, default: code}``), or
    the already resolved ``{symbol: code}``. Bars expected = bars present + the bars missing in the
    gaps between a symbol's bars in the window (a symbol's first bar in the window counts no gap
    before it; a feed that stops before the panel's end or starts after its start is not a gap).
    """
    thresholds = thresholds or ReadyThresholds()
    for column in (TIMESTAMP, SYMBOL):
        if column not in panel.columns:
            raise QuantmlInputError(f"the panel has no {column!r} column; audit a validated panel (load_panel)")
    if len(panel) == 0:
        raise QuantmlInputError("the panel is empty: nothing to audit; widen data.start/data.end or data.symbols")
    syms = panel[SYMBOL].astype(str).to_numpy()
    ts = panel[TIMESTAMP]
    declared = resolve_calendars(_plain(calendars), pd.unique(syms))
    missing = np.asarray(panel_bars_missing(ts, syms, declared), dtype=np.float64)
    cals = infer_calendars(ts, syms)
    for sym, code in declared.items():
        cals[sym] = declared_calendar(code, ts[syms == sym])
    end = ts.max()
    start = ts.min()
    inside = np.ones(len(panel), dtype=bool)
    if window is not None and str(window).strip().lower() not in ("", "null", "none", "all"):
        span = parse_duration(window, "audit.window")
        start = end - span
        inside = (ts > start).to_numpy()
        if not inside.any():
            raise QuantmlInputError(f"audit.window={window} holds no bar of the panel; use a longer window")
    else:
        window = None
    order = np.lexsort((pd.DatetimeIndex(ts).asi8, pd.factorize(syms)[0]))
    rows = order[inside[order]]
    frame = panel.iloc[rows].reset_index(drop=True)
    gap = missing[rows].copy()
    fsyms = frame[SYMBOL].astype(str).to_numpy()
    first_of_symbol = np.r_[True, fsyms[1:] != fsyms[:-1]]
    gap[first_of_symbol] = 0.0  # the bar before it is outside the window (or there is none)
    fts = frame[TIMESTAMP]
    prev_ts = fts.shift(1)
    close = frame["close"].to_numpy(dtype=np.float64) if "close" in frame.columns else None

    sym_rows, checks = [], []
    for sym in pd.unique(fsyms):
        idx = np.flatnonzero(fsyms == sym)
        present = len(idx)
        lost = float(gap[idx].sum())
        expected = present + lost
        coverage = present / expected if expected else 1.0
        g = gap[idx]
        if g.max() > 0:
            k = idx[int(np.argmax(g))]
            gap_start, gap_end, gap_bars = prev_ts.iloc[k], fts.iloc[k], int(g.max())
        else:
            gap_start, gap_end, gap_bars = pd.NaT, pd.NaT, 0
        if close is not None and present > 1:
            c = close[idx]
            stale = float((c[1:] == c[:-1]).sum() / (present - 1))
        else:
            stale = 0.0
        sym_rows.append(
            {
                SYMBOL: sym,
                "calendar": declared.get(sym, "inferred"),
                "first": fts.iloc[idx[0]],
                "last": fts.iloc[idx[-1]],
                "bars_expected": int(expected),
                "bars_present": present,
                "bars_missing": int(lost),
                "coverage": coverage,
                "longest_gap_start": gap_start,
                "longest_gap_end": gap_end,
                "longest_gap_bars": gap_bars,
                "stale_share": stale,
            }
        )
        if thresholds.min_coverage is not None:
            ok = coverage >= thresholds.min_coverage
            checks.append(
                _check(
                    "coverage",
                    sym,
                    None,
                    coverage,
                    thresholds.min_coverage,
                    ok,
                    f"{sym} coverage {coverage:.4g} < {thresholds.min_coverage:g} "
                    f"(missing {int(lost)} of {int(expected)} bars)",
                )
            )
        if thresholds.max_gap is not None:
            limit = duration_to_bars(thresholds.max_gap, cals[sym], "data.ready.max_gap")
            ok = gap_bars <= limit
            checks.append(
                _check(
                    "longest_gap",
                    sym,
                    None,
                    gap_bars,
                    limit,
                    ok,
                    f"{sym} longest gap {gap_bars} bars ({gap_start} to {gap_end}) > max_gap "
                    f"{thresholds.max_gap} ({limit} bars, by {gap_bars - limit})",
                )
            )
        if thresholds.max_stale is not None:
            ok = stale <= thresholds.max_stale
            checks.append(
                _check(
                    "stale",
                    sym,
                    None,
                    stale,
                    thresholds.max_stale,
                    ok,
                    f"{sym} close unchanged on {stale:.1%} of its bars > {thresholds.max_stale:.1%}",
                )
            )
    symbols = pd.DataFrame(sym_rows)

    flags = [c for c in frame.columns if c.endswith(MISSING_SUFFIX) and c[: -len(MISSING_SUFFIX)] in frame.columns]
    stream_rows = []
    if flags:
        grouped = frame[flags].astype(np.float64).groupby(fsyms, sort=False)
        sums, counts = grouped.sum(), grouped.count()
        for sym in pd.unique(fsyms):
            for flag in flags:
                stream = flag[: -len(MISSING_SUFFIX)]
                bars = int(counts.loc[sym, flag])
                lost = int(sums.loc[sym, flag])
                share = lost / bars if bars else 0.0
                stream_rows.append(
                    {SYMBOL: sym, "stream": stream, "bars": bars, "missing_bars": lost, "missing_share": share}
                )
                limit = thresholds.missing_limit(stream)
                if limit is not None:
                    checks.append(
                        _check(
                            "stream_missing",
                            sym,
                            stream,
                            share,
                            limit,
                            share <= limit,
                            f"{stream} missing on {share:.1%} of {sym}'s bars > {limit:.1%} ({lost} of {bars} bars)",
                        )
                    )
    streams = pd.DataFrame(stream_rows, columns=[SYMBOL, "stream", "bars", "missing_bars", "missing_share"])

    text_cols = [c for c in TEXT_COUNT_COLUMNS if c in frame.columns]
    if text_cols:
        day = fts.dt.floor("1D")
        text = frame[text_cols].astype(np.float64).groupby([fsyms, day.to_numpy()], sort=True).agg(["sum", "size"])
        out = pd.DataFrame({SYMBOL: text.index.get_level_values(0), "day": text.index.get_level_values(1)})
        out["day"] = pd.to_datetime(out["day"], utc=True)
        out["bars"] = text[(text_cols[0], "size")].to_numpy()
        for c in text_cols:
            out[c] = text[(c, "sum")].to_numpy()
        text = out
    else:
        text = pd.DataFrame(columns=[SYMBOL, "day", "bars"])

    check_frame = pd.DataFrame(checks, columns=["check", SYMBOL, "stream", "value", "limit", "verdict", "message"])
    return DataAudit(symbols, streams, text, check_frame, thresholds, window, start, end)


def _check(name, sym, stream, value, limit, ok, message) -> dict:
    return {
        "check": name,
        SYMBOL: sym,
        "stream": stream or "",
        "value": value,
        "limit": limit,
        "verdict": PASS if ok else FAIL,
        "message": "" if ok else message,
    }


def require_ready(panel: pd.DataFrame, calendars=None, window=None, thresholds: ReadyThresholds | None = None):
    """:func:`audit_panel`, and a :class:`QuantmlInputError` listing every shortfall when the panel
    is not ready (what ``quantml train data.require_ready=true`` runs before anything is fitted)."""
    audit = audit_panel(panel, calendars, window, thresholds)
    if not audit.ready:
        failed = audit.shortfalls()
        raise QuantmlInputError(
            f"data.require_ready=true: the panel is not ready ({len(failed)} check(s) failed"
            f"{f' over the last {window}' if audit.window else ''}): {'; '.join(failed)}; repair the data, "
            "or relax data.ready.* (min_coverage, max_gap, max_missing, max_missing_by, max_stale), "
            "or set data.require_ready=false (quantml data audit shows the tables)"
        )
    return audit
