"""The experts of a stack: which parent runs, whether they may be stacked, and their records.

Selection uses the grammar of ``quantml sweep-report`` (:func:`quantml.tuning.sweep_report.select_parents`:
``sweep_dir=``, ``experiment=`` or ``runs=``), then ``exclude=`` drops runs. Only walk-forward experts
can be stacked (purged K-fold and CPCV fold models trained on later data, so their out-of-fold
predictions are not out of sample in time). Before anything is read or fitted, the experts must agree
on every field of :data:`CONSISTENCY_FIELDS`; they may differ in features, ablations, backbones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.tracking.reader import FoldRun, ParentRun, RunReader

# what every expert of one stack must share: (tag, what it is)
CONSISTENCY_FIELDS = (
    (L.TAG_DATA_FINGERPRINT, "data fingerprint"),
    (L.TAG_SCHEMA_VERSION, "panel schema version"),
    (L.TAG_LAYOUT_VERSION, "run layout version"),
    (L.TAG_METRICS_VERSION, "metrics version"),
    (L.TAG_FOLD_PLAN, "fold plan (calendar-anchored fold boundaries)"),
    (L.TAG_LOCKBOX_START, "lockbox start"),
)


class StackConsistencyError(QuantmlInputError):
    """Experts that cannot be stacked together (a field differs, not walk-forward, a horizon missing)."""


@dataclass
class Expert:
    """One expert: its parent run, its alias in the OOF table (``e0``, ``e1``, ...), its records."""

    alias: str
    run: ParentRun
    oos: pd.DataFrame | None = None
    folds: list[FoldRun] = field(default_factory=list)
    fold_params: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def describe(self) -> dict:
        choices = {k: v for k, v in self.run.tags.items() if k.startswith(L.CHOICE_TAG_PREFIX)}
        return {"alias": self.alias, "run_id": self.run_id, "run_name": self.run.run_name, **choices}


def select_experts(reader: RunReader, settings) -> tuple[list[ParentRun], str, list[str]]:
    """The parent runs named by ``settings`` (``sweep_dir`` | ``experiment`` | ``runs``, the
    sweep-report grammar) less ``settings.exclude``; non-finished runs of a sweep or experiment are
    dropped with a note (a named ``runs=`` run that did not finish is an error)."""
    from quantml.tuning.sweep_report import select_parents

    parents, label = select_parents(reader, settings)
    excluded = set(settings.exclude or [])
    unknown = excluded - {p.run_id for p in parents}
    if unknown:
        raise QuantmlInputError(
            f"exclude={sorted(unknown)}: not parent runs of {label}; exclude only runs of the selection"
        )
    parents = [p for p in parents if p.run_id not in excluded]
    notes: list[str] = []
    kept = []
    for p in parents:
        if p.status == "FINISHED":
            kept.append(p)
            continue
        if settings.runs:
            raise QuantmlInputError(
                f"run {p.run_id} ({p.run_name}) is {p.status}: only finished runs have out-of-fold predictions "
                f"to stack; drop it from runs=[...]"
            )
        notes.append(f"run {p.run_id} ({p.run_name}) is {p.status}: not stacked")
    if len(kept) < 2:
        raise QuantmlInputError(
            f"{label} has {len(kept)} finished parent run(s) to stack; a stack needs at least 2 experts "
            f"(train more with `quantml train -m ...`)"
        )
    return kept, label, notes


def check_consistency(parents: list[ParentRun], horizons: list[str] | None) -> tuple[dict[str, str], list[str]]:
    """Refuse experts that cannot be stacked; returns the shared fields and the horizons to stack.

    Checked in this order, each error naming the run, the field and the setting that drops it:
    walk-forward validation, every field of :data:`CONSISTENCY_FIELDS` equal to the first
    expert's, and every horizon to stack (``horizons=``; default those every expert covers)
    covered by every expert."""
    for p in parents:
        problem = p.walk_forward_problem()
        if problem:
            raise StackConsistencyError(
                f"cannot stack {problem}, or drop it with exclude=[{p.run_id}] "
                f"(a stack trains walk-forward on its experts' out-of-fold predictions, in time)"
            )
    first = parents[0]
    shared: dict[str, str] = {}
    for tag, what in CONSISTENCY_FIELDS:
        ref = first.tags.get(tag)
        if not ref:
            raise StackConsistencyError(
                f"run {first.run_id} records no {tag} ({what}): it predates what a stack checks; re-run "
                f"`quantml train` with this quantml version, or drop it with exclude=[{first.run_id}]"
            )
        for p in parents[1:]:
            value = p.tags.get(tag)
            if value != ref:
                raise StackConsistencyError(
                    f"run {p.run_id} ({p.run_name}) has {tag}={value or '<none>'} but run {first.run_id} has "
                    f"{ref}: experts of one stack must share the {what}; drop it with exclude=[{p.run_id}] "
                    f"(or stack the runs that share it: runs=[...])"
                )
        shared[tag] = ref
    covered = [h for h in first.horizons if all(h in p.horizons for p in parents[1:])]
    if horizons:
        for h in horizons:
            for p in parents:
                if h not in p.horizons:
                    raise StackConsistencyError(
                        f"run {p.run_id} ({p.run_name}) has no horizon {h} (its horizons: "
                        f"{', '.join(p.horizons) or 'none'}); stack horizons={','.join(covered) or '...'} "
                        f"or drop it with exclude=[{p.run_id}]"
                    )
        chosen = list(horizons)
    else:
        chosen = covered
    if not chosen:
        raise StackConsistencyError(
            "the experts share no horizon (tags quantml.horizons: "
            + "; ".join(f"{p.run_id[:8]}: {','.join(p.horizons)}" for p in parents)
            + "); drop the runs that differ with exclude=[...]"
        )
    return shared, chosen


def load_experts(reader: RunReader, parents: list[ParentRun], horizons: list[str]) -> list[Expert]:
    """Each expert's out-of-fold predictions at ``horizons`` and its fold runs' windows."""
    out = []
    for i, p in enumerate(parents):
        oos = p.oos_predictions()
        oos = oos[oos["horizon"].astype(str).isin(horizons)].reset_index(drop=True)
        out.append(Expert(f"e{i}", p, oos, p.folds(), reader.fold_params(p)))
    return out
