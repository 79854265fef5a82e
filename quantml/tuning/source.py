"""The run a study tunes: a quantml train parent run, its out-of-sample predictions and market calendar.

Read through :class:`quantml.tracking.reader.RunReader`: costs and the signal's own
thresholds come from the run's logged resolved config (``cfg.cost``, ``cfg.signal``),
``periods_per_year`` from the value the run derived (else inferred from the timestamps), the book
from ``cfg.strategy``, the PnL calendar from ``predictions/market.parquet`` (None when absent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError, periods_per_year, require_columns
from quantml.contracts import run_layout as L
from quantml.market.execution import CostModel
from quantml.signals.core import SignalConfig
from quantml.tracking.reader import RunReader

OOS_ARTIFACT = L.OOS_ARTIFACT
REQUIRED_COLUMNS = ("symbol", TIMESTAMP, "horizon", "score", "confidence", "vol_forecast", "ret_next_bar", "fold")


@dataclass
class SourceRun:
    """``frame``: the OOS prediction frame; ``cfg``: the run's resolved config; ``params``/``tags``:
    the run's (for display); ``horizons``: in run order; ``derived``: values the run derived."""

    run_id: str
    experiment_id: str
    frame: pd.DataFrame
    params: dict[str, str]
    tags: dict[str, str]
    horizons: list[str]
    cfg: DictConfig = field(default_factory=lambda: OmegaConf.create({}))
    derived: dict = field(default_factory=dict)
    # every development bar (``predictions/market.parquet``: symbol, timestamp, ret_next_bar), the
    # PnL calendar of the run's books; None for runs logged before it (books on forecast bars only)
    market: pd.DataFrame | None = None

    @property
    def layout_version(self) -> str:
        return L.layout_version(self.tags)

    def costs(self) -> CostModel:
        """The run's cost model (``cfg.cost``); zero costs when its config has none."""
        cost = self.cfg.get("cost")
        if not cost:
            return CostModel(fee_bps=0.0, slippage_bps=0.0)
        return CostModel.from_config(cost)

    def signal_config(self, costs: CostModel) -> SignalConfig:
        """The run's own thresholds (``cfg.signal``). ``cost`` is read back from the frame
        (``|expected_return| - |edge|`` on rows with an edge), else ``costs.round_trip``."""
        signal = self.cfg.get("signal") or {}
        f = self.frame
        with_edge = f["edge"].abs() > 0 if "edge" in f.columns else pd.Series(False, index=f.index)
        cost = (
            float(np.median(f.loc[with_edge, "expected_return"].abs() - f.loc[with_edge, "edge"].abs()))
            if with_edge.any()
            else costs.round_trip
        )
        if np.isclose(cost, costs.round_trip, rtol=1e-6, atol=0.0):  # float32 frames: read back to ~1e-7
            cost = costs.round_trip
        return SignalConfig.from_config(signal, cost=max(cost, 0.0))

    def periods_per_year(self) -> float:
        """As the run derived it, else ``cfg.data.periods_per_year``, else inferred from the timestamps."""
        for value in (self.derived.get("periods_per_year"), (self.cfg.get("data") or {}).get("periods_per_year")):
            if _is_number(value):
                return float(value)
        return periods_per_year(self.frame[TIMESTAMP], self.frame[SYMBOL])

    def ic_mode(self) -> str:
        """The run's IC mode (tag ``quantml.ic_mode``), else the one its number of symbols gives."""
        tagged = self.tags.get(L.TAG_IC_MODE)
        if tagged:
            return str(tagged)
        from quantml.evaluation import ic_mode_for

        return ic_mode_for(int(self.frame[SYMBOL].nunique()))

    def strategy_config(self):
        """The run's ``strategy`` config node (the book its folds were scored with), or None."""
        from quantml.registry.book import run_strategy_config

        return run_strategy_config(self.cfg)

    def paths(self) -> list[int]:
        return sorted(int(p) for p in self.frame["path"].unique()) if "path" in self.frame.columns else [0]


def _is_number(v) -> bool:
    try:
        float(v)
        return v is not None
    except (TypeError, ValueError):
        return False


def load_source_run(run_id: str, tracking_uri: str | None = None, reader: RunReader | None = None) -> SourceRun:
    """Read a parent run: its OOS predictions, resolved config and derived values."""
    reader = reader or RunReader(tracking_uri)
    parent = reader.parent(run_id, action="tune")
    problem = parent.walk_forward_problem()
    if problem:
        raise QuantmlInputError(f"cannot tune: {problem}")
    frame = parent.oos_predictions()
    require_columns(
        frame,
        REQUIRED_COLUMNS,
        f"{OOS_ARTIFACT} of run {run_id}",
        "re-run quantml train with this quantml version (prediction contract in quantml.contracts)",
    )
    cfg = parent.config()
    listed = parent.horizons
    horizons = [h for h in listed if h in set(frame["horizon"])] or list(dict.fromkeys(frame["horizon"]))
    return SourceRun(
        parent.run_id,
        parent.experiment_id,
        frame,
        parent.params,
        parent.tags,
        horizons,
        cfg=cfg,
        derived=parent.derived(),
        market=parent.market(),
    )
