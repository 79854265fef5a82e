"""The served stack: the experts' final models and the final combiner as one object, raw panel in,
prediction contract out, logged as the stack run's ``model`` through the quantml pyfunc.

:class:`StackBundle` holds every expert's :class:`~quantml.bundle.ModelBundle` (loaded from the
expert's ``model`` artifact, alias order ``e0``, ``e1``, ...), and per horizon the final combiner and
its calibrator. :func:`fit_final` fits them on **all development OOF rows** whose labels ended more
than the embargo before the lockbox's first bar (never on a lockbox row); the calibrator is fitted on
the combiner's cross-fitted out-of-fold predictions inside those rows, exactly as every walk-forward
stack fold does (:func:`quantml.stacking.walkforward.fit_combiner`).

``predict_contract(panel)``: every expert predicts the panel (each refuses a panel that fails its own
contract, with its own error), the rows are assembled like the OOF table (``<alias>__<field>``),
regime features attached when the combiner reads them, then combiner, calibrator,
:func:`~quantml.signals.compute_signals` with the first expert's signal settings and the first
expert's strategy's ``target_weights`` (the one book the comparison trades). The output has the
columns of :data:`quantml.contracts.PREDICTION_COLUMNS`, like a single model's.

The panel a stack needs (regime features, the lockbox) is rebuilt from the first expert's logged
config through training's own data preparation (:func:`stack_panel`), and refused when its data
fingerprint is not the experts' (the data changed since they were trained).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from quantml.bundle import FeatureContract, ModelBundle
from quantml.contracts import PREDICTION_COLUMNS, SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.data import data_fingerprint
from quantml.portfolio.strategy import market_returns
from quantml.signals import SignalConfig
from quantml.stacking.combiners import expert_column
from quantml.stacking.oof import EXPERT_FIELDS, KEY, REQUIRED_FIELDS
from quantml.stacking.walkforward import apply_combiner, fit_combiner

RETRAIN = "re-run `quantml train` with this quantml version"


def uses_regime(combiner) -> bool:
    """Whether a combiner reads regime columns (``regime__*``) from its rows."""
    return bool(getattr(combiner, "uses_regime", False))


def development_mask(table: pd.DataFrame, lockbox_start: pd.Timestamp | None, embargo: pd.Timedelta) -> np.ndarray:
    """OOF rows the final combiner may be fitted on: labels ended more than ``embargo`` before the
    lockbox's first bar (and the row itself before it). Without a lockbox: every row."""
    if lockbox_start is None:
        return np.ones(len(table), dtype=bool)
    t1 = pd.to_datetime(table["t1"], utc=True)
    ts = pd.to_datetime(table[TIMESTAMP], utc=True)
    return ((t1 + embargo < lockbox_start) & (ts < lockbox_start)).to_numpy()


@dataclass
class FinalFit:
    """A combiner config fitted once per horizon on the development OOF rows."""

    combiners: dict[str, object]
    calibrators: dict[str, object]
    info: dict


def fit_final(
    make,
    table: pd.DataFrame,
    aliases: list[str],
    horizons: list[str],
    *,
    lockbox_start: pd.Timestamp | None,
    embargo: pd.Timedelta,
    crossfit_folds: int,
    cfg_evaluation,
    min_fit_rows: int,
) -> FinalFit:
    """The final combiner and calibrator per horizon, fitted on every development OOF row of
    ``table`` purged with ``embargo`` before ``lockbox_start`` (see :func:`development_mask`)."""
    dev = development_mask(table, lockbox_start, embargo)
    combiners, calibrators, info = {}, {}, {}
    for h in horizons:
        fit = table[dev & (table["horizon"].astype(str).to_numpy() == h)].reset_index(drop=True)
        if len(fit) < min_fit_rows:
            raise QuantmlInputError(
                f"the final stack ({h}): {len(fit)} development OOF row(s) end more than the embargo before the "
                f"lockbox (< min_fit_rows={min_fit_rows}); lower min_fit_rows or the embargo, or train the "
                "experts with more data"
            )
        combiner, calibrator = fit_combiner(
            make, fit, aliases, embargo=embargo, crossfit_folds=crossfit_folds, cfg_evaluation=cfg_evaluation
        )
        ts = pd.to_datetime(fit[TIMESTAMP], utc=True)
        combiners[h], calibrators[h] = combiner, calibrator
        info[h] = {
            "n_fit": len(fit),
            "fit_start": str(ts.min()),
            "fit_end": str(ts.max()),
            "t1_max": str(pd.to_datetime(fit["t1"], utc=True).max()),
            "combiner": combiner.describe() if hasattr(combiner, "describe") else {},
            "calibrator": calibrator.to_dict(),
        }
    return FinalFit(combiners, calibrators, info)


def union_contract(experts: list[ModelBundle], horizons: list[str]) -> FeatureContract:
    """The inputs a served stack reads: every column any expert's feature contract needs (the
    pyfunc's input signature); features and feature set stay each expert's own."""
    inputs = sorted(set().union(*(set(e.contract.input_columns) for e in experts)))
    return FeatureContract(
        input_columns=inputs,
        feature_names=[],
        feature_set={"stack": [e.contract.hash for e in experts]},
        drop_modalities=[],
        horizons=list(horizons),
        schema_version=experts[0].contract.schema_version,
    )


@dataclass
class StackBundle:
    """The experts' final models + the final combiner and calibrator per horizon + the first
    expert's signal settings and strategy: panel in, prediction contract out (like
    :class:`~quantml.bundle.ModelBundle`, so the quantml pyfunc serves it unchanged)."""

    experts: list[ModelBundle]
    aliases: list[str]
    expert_runs: list[str]
    horizons: list[str]
    combiners: dict[str, object]
    calibrators: dict[str, object]
    signal: dict
    data_fingerprint: str
    contract: FeatureContract
    strategy: dict | None = None
    metadata: dict = field(default_factory=dict)
    regime: bool = False  # attach regime features (the combiner reads them)
    regime_params: dict | None = None
    # a regime model's posterior as regime__p* inputs (quantml.stacking.regime_posterior): the alias of the
    # expert that is the regime model, or EXTERNAL for posterior_model (a regime model not stacked); None: none
    posterior_source: str | None = None
    posterior_model: ModelBundle | None = None
    allocator: dict | None = None  # a tuned allocator is not supported for a stack: always None
    kind: str = L.KIND_STACK

    @property
    def combiner_name(self) -> str:
        first = next(iter(self.combiners.values()))
        return getattr(first, "name", type(first).__name__)

    def describe(self) -> dict:
        return {
            "experts": dict(zip(self.aliases, self.expert_runs, strict=True)),
            "horizons": self.horizons,
            "combiner": {h: (c.describe() if hasattr(c, "describe") else {}) for h, c in self.combiners.items()},
            "calibrator": {h: c.to_dict() for h, c in self.calibrators.items()},
            "regime": self.regime,
            "posterior_source": self.posterior_source,
            "data_fingerprint": self.data_fingerprint,
        }

    # -- the table the combiner reads ----------------------------------------------------------
    def expert_table(self, panel: pd.DataFrame) -> pd.DataFrame:
        """Every expert's forecasts of ``panel`` in the OOF table's layout: one row per
        ``(symbol, timestamp, horizon)`` every expert predicted, a block ``<alias>__<field>`` per
        expert, sorted by horizon, timestamp, symbol; regime columns attached when the combiner
        reads them (the regime block, and/or the regime model's posterior ``regime__p*`` from its final
        model). Each expert refuses a panel that fails its contract (its own error)."""
        table = None
        for alias, expert in zip(self.aliases, self.experts, strict=True):
            frame = expert.predict_contract(panel, last_only=False)
            frame = frame[frame["horizon"].astype(str).isin(self.horizons)]
            block = frame[KEY].copy()
            block["horizon"] = block["horizon"].astype(str)
            block[TIMESTAMP] = pd.to_datetime(block[TIMESTAMP], utc=True)
            for name in EXPERT_FIELDS:
                block[expert_column(alias, name)] = frame[name].to_numpy(np.float64)
            table = block if table is None else table.merge(block, on=KEY, how="inner")
        table = table.sort_values(["horizon", TIMESTAMP, SYMBOL], kind="mergesort").reset_index(drop=True)
        if self.regime:
            from quantml.stacking.regime import attach_regime, regime_features

            table = attach_regime(table, regime_features(_panel_frame(panel), self.regime_params))
        if self.posterior_source:
            from quantml.stacking.regime import attach_regime
            from quantml.stacking.regime_posterior import EXTERNAL, served_posterior

            source = self.posterior_source
            model = self.posterior_model if source == EXTERNAL else self.experts[self.aliases.index(source)]
            table = attach_regime(table, served_posterior(model, panel))
        return table

    def combine(self, table: pd.DataFrame, signal: SignalConfig | None = None) -> pd.DataFrame:
        """The stacked forecasts and signals of an expert table (no ``target_weight``): the final
        combiner and calibrator of each horizon, then the signals."""
        signal = signal or self.signal_config()
        frames = []
        for h in self.horizons:
            rows = table[table["horizon"].to_numpy() == h]
            if rows.empty:
                continue
            frames.append(apply_combiner(self.combiners[h], self.calibrators[h], rows, self.aliases, signal))
        if not frames:
            raise QuantmlInputError(
                f"the panel gives the stack no row at its horizons {self.horizons}; send a longer history per symbol"
            )
        return pd.concat(frames, ignore_index=True)

    def signal_config(self, signal: dict | None = None) -> SignalConfig:
        signal = signal or self.signal
        return SignalConfig.from_config(signal, cost=signal.get("cost", 0.0))

    # -- serving ------------------------------------------------------------------------------------
    def predict_contract(
        self,
        panel: pd.DataFrame,
        last_only: bool = False,
        model_name: str = "",
        model_version: str = "",
        signal: dict | None = None,
    ) -> pd.DataFrame:
        """The prediction contract ``[rows, len(PREDICTION_COLUMNS)]`` of ``panel`` (every row, or
        only each symbol's latest bar with ``last_only``), as :meth:`ModelBundle.predict_contract`."""
        from quantml.bundle.model import _coerce_panel

        panel = _coerce_panel(panel)
        config = self.signal_config(signal)
        table = self.expert_table(panel)
        keep = None
        if last_only:  # every row at any symbol's last bar: the strategy weighs the same cross-section
            last = panel.groupby(SYMBOL, sort=False)[TIMESTAMP].max()
            last = pd.to_datetime(last, utc=True)
            table = table[table[TIMESTAMP].isin(set(last.to_numpy()))].reset_index(drop=True)
            keep = last
        frame = self.combine(table, config)
        strategy = ModelBundle.serving_strategy(self, config, panel)
        periods = ModelBundle.periods_per_year(self, panel)
        frame["target_weight"] = strategy.target_weights(frame, market_returns(panel), periods)
        if keep is not None:
            frame = frame[frame[TIMESTAMP].to_numpy() == keep.reindex(frame[SYMBOL]).to_numpy()]
        frame["model_name"] = model_name
        frame["model_version"] = str(model_version)
        frame["schema_version"] = self.contract.schema_version
        frame["data_version"] = data_fingerprint(_panel_frame(panel))
        return frame[list(PREDICTION_COLUMNS)].reset_index(drop=True)


def _panel_frame(panel: pd.DataFrame) -> pd.DataFrame:
    """The panel as the data layer validates it (sorted, typed), as the experts read it."""
    from quantml.data import validate_panel

    return validate_panel(panel.copy())


# -- loading what a stack is made of -------------------------------------------------------------------
def load_expert_bundle(tracking_uri: str, run_id: str) -> ModelBundle:
    """The :class:`ModelBundle` of an expert's ``model`` artifact (``runs:/<run id>/model``)."""
    from quantml.registry.store import mlflow_uri_scope
    from quantml.tracking.pyfunc import load_bundle

    uri = f"runs:/{run_id}/{L.MODEL_ARTIFACT}"
    with tempfile.TemporaryDirectory() as tmp, mlflow_uri_scope(tracking_uri):
        try:
            bundle = load_bundle(uri, tmp)
        except QuantmlInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - an MLflow download error: name the run and the fix
            raise QuantmlInputError(
                f"expert run {run_id} has no loadable {L.MODEL_ARTIFACT!r} ({uri}: {type(exc).__name__}); the served "
                "stack and its lockbox evaluation run the experts' final models: train the experts with "
                "tracking.log_model=true, or stack with serve=false holdout=false"
            ) from None
    if isinstance(bundle, StackBundle):
        raise QuantmlInputError(f"expert run {run_id} serves a stack; stack parent runs of `quantml train` only")
    return bundle


def has_model(reader, run_id: str) -> bool:
    """Whether a parent run logged a ``model`` (an MLflow 3 logged model or a run artifact)."""
    run = reader.get_run(run_id)
    try:
        found = reader.client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"name = '{L.MODEL_ARTIFACT}'"
        )
        if any(m.source_run_id == run_id for m in found):
            return True
    except Exception:  # noqa: BLE001 - a store without logged models: look at the run's artifacts
        pass
    return reader.has_artifact(run_id, f"{L.MODEL_ARTIFACT}/MLmodel")


def stack_panel(expert, fingerprint: str | None = None, check: bool = True):
    """The experts' data rebuilt from the first expert's logged config (``config/config.yaml``)
    through training's own preparation (:func:`quantml.experiment.prepare.prepare_data`), with
    the lockbox reserved at the experts' ``quantml.lockbox_start``: a
    :class:`~quantml.experiment.prepare.PreparedData`. Refused when its data fingerprint is not
    the experts' ``quantml.data_fingerprint`` (the data changed since they were trained);
    ``check=False`` skips that check (tests that perturb the lockbox bars)."""
    from quantml.experiment.prepare import prepare_data

    cfg = expert.run.config()
    prep = prepare_data(cfg, served=True)  # the experts are served on prep.panel: it keeps their inputs
    want = fingerprint or expert.run.tags.get(L.TAG_DATA_FINGERPRINT)
    if check and want and prep.fingerprint != want:
        source = cfg.data.get("name") or cfg.data.get("_target_")
        raise QuantmlInputError(
            f"the data of expert run {expert.run_id} (data={source}, from its logged config) now has fingerprint "
            f"{prep.fingerprint} but the experts were trained on {want} ({L.TAG_DATA_FINGERPRINT}): the data "
            "changed since they were trained; retrain the experts on this data, or restore it"
        )
    return reserve_stack_lockbox(prep, expert)


def reserve_stack_lockbox(prep, expert):
    """``prep`` with the experts' lockbox (``quantml.lockbox_start``) reserved, purged with the
    first expert's embargo, as training reserved it."""
    from quantml.experiment.prepare import reserve_lockbox
    from quantml.validation import make_splitter
    from quantml.validation.lockbox import Lockbox

    tag = expert.run.tags.get(L.TAG_LOCKBOX_START) or "none"
    start = None if tag == "none" else pd.Timestamp(tag)
    if start is not None:
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    splitter = make_splitter(expert.run.config().validation)
    return reserve_lockbox(
        prep, Lockbox(start, f"recorded:{expert.run_id}" if start is not None else "none"), splitter.embargo
    )


def regime_inputs(panel: pd.DataFrame, params: dict | None = None) -> list[str]:
    """The panel columns the regime features read (a served panel must carry them too)."""
    from quantml.features import build_features
    from quantml.stacking.regime import REGIME_BLOCK, default_regime_params

    block = default_regime_params() if params is None else dict(params)
    fm = build_features(panel, {"name": "stack_regime", "blocks": {REGIME_BLOCK: block}})
    return list(fm.input_columns)


def served_columns_ok(table: pd.DataFrame, aliases: list[str]) -> np.ndarray:
    """Rows of an expert table where every expert's required fields are finite (as the OOF table keeps)."""
    cols = [expert_column(a, n) for a in aliases for n in REQUIRED_FIELDS]
    return np.isfinite(table[cols].to_numpy(np.float64)).all(axis=1)
