"""A regime model's posterior as combiner inputs: a VSSM run's ``regime_p*`` columns as ``regime__p*``.

``regime_source`` (``conf/stack.yaml``) says where a regime-reading combiner's ``regime__*`` inputs
come from: ``block`` (the regime feature block, :mod:`quantml.stacking.regime`), a regime model — the
alias (``e1``) or parent run id of a ``backbone=vssm`` run, stacked as an expert or not — or both
(``[block, e1]``). A regime model's walk-forward out-of-fold predictions carry its filtered posterior
``regime_p<k>`` per row (the same value on every horizon's row); one row per ``(symbol, timestamp)``
of them joins the stack table as ``regime__p<k>``. Each value came from the fold model that predicted
that bar (trained before its fold) and reads bars ``<= t`` only (the VSSM's filter is causal), so the
walk-forward fitted on folds ``< k`` never sees fold ``k``. The served stack rebuilds the same columns
from the regime model's final model on the served panel (:func:`served_posterior`)::

    source = parse_regime_source(["block", "e1"])    # RegimeSource(block=True, model="e1")
    post = posterior_frame(vssm_oos, run_id)         # symbol, timestamp, regime__p0, regime__p1
    table = attach_regime(table, post)               # quantml.stacking.regime.attach_regime
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.data.panel import ts_int64
from quantml.stacking.regime import REGIME_PREFIX

BLOCK = "block"
POSTERIOR_PREFIX = REGIME_PREFIX + "p"  # regime__p0, regime__p1, ...: the stack table's posterior columns
EXTERNAL = "regime_model"  # StackBundle.posterior_source of a regime model that is not an expert
_MODEL_COLUMN = re.compile(rf"^{re.escape(L.REGIME_COLUMN_PREFIX)}(\d+)$")


@dataclass(frozen=True)
class RegimeSource:
    """Where the ``regime__*`` inputs come from: the regime block and/or one regime model (alias or run id)."""

    block: bool = True
    model: str | None = None

    def describe(self) -> list[str]:
        return ([BLOCK] if self.block else []) + ([self.model] if self.model else [])


def parse_regime_source(value) -> RegimeSource:
    """``regime_source``: ``block`` (default, also for None), an expert alias or run id, or a list of both."""
    if value is None:
        return RegimeSource()
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    models = [v for v in items if v != BLOCK]
    if not items or len(models) > 1:
        raise QuantmlInputError(
            f"regime_source={value!r}: name `block`, one regime model (an expert alias like e1 or a VSSM parent "
            "run id), or both as [block, e1]"
        )
    return RegimeSource(block=BLOCK in items, model=models[0] if models else None)


def model_columns(frame: pd.DataFrame) -> list[str]:
    """The ``regime_p<k>`` columns of a regime model's predictions, in the order of ``k``."""
    found = [(int(m.group(1)), c) for c in frame.columns if isinstance(c, str) and (m := _MODEL_COLUMN.match(c))]
    return [c for _, c in sorted(found)]


def posterior_frame(predictions: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """``symbol, timestamp, regime__p0 ..``: one row per ``(symbol, timestamp)`` of a regime model's
    predictions (its out-of-fold predictions, or a served prediction frame), the ``regime_p<k>`` values
    renamed. The posterior does not depend on the horizon: rows of one key that disagree are an error."""
    cols = model_columns(predictions)
    if not cols:
        raise QuantmlInputError(
            f"run {run_id} has no regime_p* columns in its predictions: it is not a regime model; name a "
            "backbone=vssm run as regime_source, or regime_source=block"
        )
    keys = pd.DataFrame({SYMBOL: predictions[SYMBOL].astype(str).to_numpy(), "t": ts_int64(predictions[TIMESTAMP])})
    first = ~keys.duplicated().to_numpy()
    values = predictions[cols].to_numpy(np.float64)
    # each row's key -> that key's first row: every row of a key must carry the first row's values
    again = pd.MultiIndex.from_frame(keys[first]).get_indexer(pd.MultiIndex.from_frame(keys))
    if not np.array_equal(values, values[first][again], equal_nan=True):
        raise QuantmlInputError(
            f"run {run_id}: its regime_p* columns differ between horizons of one (symbol, timestamp); a regime "
            "posterior is one value per bar; retrain it with this quantml version"
        )
    stamps = pd.to_datetime(predictions[TIMESTAMP], utc=True).to_numpy()
    out = pd.DataFrame({SYMBOL: predictions[SYMBOL].to_numpy()[first], TIMESTAMP: stamps[first]})
    for j, col in enumerate(cols):
        out[POSTERIOR_PREFIX + col[len(L.REGIME_COLUMN_PREFIX) :]] = values[first, j]
    return out.reset_index(drop=True)


def resolve_regime_model(reader, name: str, experts, shared: dict[str, str]) -> tuple[str | None, object]:
    """``(alias or None, parent run)`` of the regime model ``name``: an expert (by alias or run id), or
    another finished walk-forward parent run that shares the experts' data, fold plan and lockbox
    (``shared``: the consistency fields the experts agree on)."""
    from quantml.stacking.experts import CONSISTENCY_FIELDS

    for e in experts:
        if name in (e.alias, e.run_id):
            return e.alias, e.run
    if re.fullmatch(r"e\d+", name):
        raise QuantmlInputError(
            f"regime_source={name}: no expert has that alias (the experts: "
            f"{', '.join(e.alias for e in experts)}); name an expert's alias or a VSSM parent run id"
        )
    run = reader.parent(name, "use as regime_source")
    if run.status != "FINISHED":
        raise QuantmlInputError(f"regime_source={name}: the run is {run.status}; name a finished VSSM run")
    problem = run.walk_forward_problem()
    if problem:
        raise QuantmlInputError(f"regime_source: cannot use {problem}")
    for tag, what in CONSISTENCY_FIELDS:
        if tag in shared and run.tags.get(tag) != shared[tag]:
            raise QuantmlInputError(
                f"regime_source={name} has {tag}={run.tags.get(tag) or '<none>'} but the experts have {shared[tag]}: "
                f"a regime model must share the experts' {what}; train it on the experts' data and folds"
            )
    return None, run


def served_posterior(bundle, panel: pd.DataFrame) -> pd.DataFrame:
    """``symbol, timestamp, regime__p0 ..`` of every bar of ``panel`` from a regime model's final model
    (a :class:`~quantml.bundle.ModelBundle` whose forecaster has ``regime_posterior``), its features
    built from the panel as its ``predict_contract`` builds them; values at ``t`` read bars ``<= t``."""
    from quantml.bundle.model import _coerce_panel
    from quantml.data import validate_panel
    from quantml.features import build_features
    from quantml.models.base import PanelData

    forecaster = bundle.forecaster
    if not hasattr(forecaster, "regime_posterior"):
        raise QuantmlInputError(
            f"the regime model's final model ({type(forecaster).__name__}) has no regime posterior; "
            "name a backbone=vssm run as regime_source"
        )
    contract = bundle.contract
    panel = _coerce_panel(panel)
    contract.check(panel)
    panel = validate_panel(panel)
    features = build_features(
        panel,
        contract.feature_set,
        contract.drop_modalities,
        expected=list(contract.feature_names),
        calendar=getattr(contract, "calendar", None) or None,
    )
    data = PanelData.assemble(panel, features, contract.horizons)
    return posterior_frame(forecaster.regime_posterior(data), "the regime model")
