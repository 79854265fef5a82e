"""Time-series splitters: walk-forward, purged K-fold, combinatorial purged CV (CPCV).

Samples are rows of a multi-symbol panel, so many share a timestamp. Every splitter cuts
the sorted UNIQUE sample times ``t0`` into contiguous blocks with ``numpy.array_split``
(``T`` timestamps into ``B`` blocks: the first ``T mod B`` blocks get one extra timestamp),
so all symbols at one time always land in the same block. Training positions are then
purged against each contiguous test segment (see :mod:`quantml.validation.purging`).

* ``walk_forward``: ``n_splits + 1`` blocks; fold ``k`` (0-based) tests on block ``k + 1``
  and trains on blocks ``0..k`` (``mode=expanding``) or on the last ``train_blocks`` of them
  (``mode=rolling``). Training is strictly before the test once purged.
* ``purged_kfold``: ``n_splits`` blocks; fold ``k`` tests on block ``k``, trains on all
  the others (before and after), purged, with the embargo after the test block.
* ``cpcv``: ``n_groups`` blocks; one fold per combination of ``n_test_groups`` test groups
  (``itertools.combinations`` order), ``C(N, k)`` folds and ``C(N-1, k-1)`` backtest paths.
  Test group ``g`` in the ``j``-th fold (in fold order) that tests ``g`` belongs to path ``j``,
  so every path covers every group exactly once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.contracts.config import build, locate, to_mapping
from quantml.validation.purging import (
    _purge_ns,
    check_intervals,
    check_valid_fraction,
    independent_outcomes,
    inner_validation_split,
    parse_embargo,
    to_ns,
    unique_sorted,
)


@dataclass(frozen=True)
class Fold:
    """One train/test split.

    train : int64 [n_train] sorted positions into ``t0``/``t1`` (already purged).
    test : int64 [n_test] sorted positions.
    test_paths : int64 [n_test] CPCV path id of each test sample (zeros otherwise).
    test_groups : the block ids tested (CPCV groups; the test block for the others).
    """

    fold_id: int
    train: np.ndarray
    test: np.ndarray
    test_paths: np.ndarray
    test_groups: tuple[int, ...] = ()


class Splitter(ABC):
    """Base class: blocks of unique timestamps, purge, embargo, minimum fold sizes.

    Attributes
    ----------
    embargo : pd.Timedelta   no training label may start within it after a test segment.
    valid_fraction : float   share of each fold's training timestamps kept for validation.
    min_train_samples, min_test_samples : int   a smaller fold is an error.
    min_inner_outcomes : int   the inner validation slice must hold at least this many
        independent outcomes of the longest horizon (:func:`independent_outcomes`).
    crossfit_folds : int   blocks of the inner cross-fitting (out-of-fold predictions inside a
        training part: calibration of the final model, scored validation metrics).
    """

    method: str = ""

    def __init__(
        self,
        *,
        embargo="0s",
        valid_fraction: float = 0.2,
        min_train_samples: int = 1,
        min_test_samples: int = 1,
        min_inner_outcomes: int = 1,
        crossfit_folds: int = 3,
    ) -> None:
        self.embargo = parse_embargo(embargo)
        self.crossfit_folds = _positive_int(crossfit_folds, "crossfit_folds", minimum=2)
        self.valid_fraction = check_valid_fraction(valid_fraction)
        self.min_train_samples = _positive_int(min_train_samples, "min_train_samples", minimum=1)
        self.min_test_samples = _positive_int(min_test_samples, "min_test_samples", minimum=1)
        self.min_inner_outcomes = _positive_int(min_inner_outcomes, "min_inner_outcomes", minimum=1)

    @property
    def n_paths(self) -> int:
        """Number of complete backtest paths the test predictions form (1 except CPCV)."""
        return 1

    @property
    @abstractmethod
    def n_blocks(self) -> int:
        """Number of contiguous blocks the unique timestamps are cut into."""

    @abstractmethod
    def _plan(self) -> list[tuple[list[int], list[int], dict[int, int]]]:
        """Per fold: (train block ids, test block ids, path id of each test block)."""

    def get_n_splits(self) -> int:
        return len(self._plan())

    def block_starts(self, calendar) -> np.ndarray:
        """First bar time (int64 ns) of each of the ``n_blocks`` blocks of ``calendar`` (sorted
        unique bar times, int64 ns or datetime64): ``numpy.array_split`` of its bars."""
        times = unique_sorted(to_ns(calendar, "calendar"))
        if self.n_blocks > len(times):
            raise QuantmlInputError(
                f"validation.method={self.method} needs {self.n_blocks} blocks but the samples have "
                f"only {len(times)} unique timestamps: use fewer splits/groups or more data"
            )
        return np.array([times[b[0]] for b in np.array_split(np.arange(len(times)), self.n_blocks)], np.int64)

    def split(self, t0, t1, calendar=None) -> list[Fold]:
        """Folds for samples with label intervals ``[t0, t1]`` (datetime64[ns] [n], any order).

        ``calendar``: the bar times the blocks are cut from (the data's calendar, so every run
        on the same data gets the same block boundaries whatever its horizons or ablations
        keep as samples); default the samples' own unique ``t0``. A sample belongs to the
        block whose first bar is the last one at or before its ``t0``.

        Raises :class:`QuantmlInputError` on NaT, ``t1 < t0``, more blocks than unique
        timestamps, or a fold below ``min_train_samples`` / ``min_test_samples``.
        """
        t0n, t1n = to_ns(t0, "t0"), to_ns(t1, "t1")
        check_intervals(t0n, t1n)
        starts = self.block_starts(t0n if calendar is None else calendar)
        if len(t0n) and t0n.min() < starts[0]:
            raise QuantmlInputError(
                f"a sample at {pd.Timestamp(int(t0n.min()))} lies before the fold plan's calendar "
                f"(from {pd.Timestamp(int(starts[0]))}): pass the panel's own bar times as the calendar"
            )
        block = np.searchsorted(starts, t0n, side="right") - 1
        order = np.argsort(block, kind="stable")
        bounds = np.searchsorted(block[order], np.arange(self.n_blocks + 1))
        members = [np.sort(order[bounds[b] : bounds[b + 1]]) for b in range(self.n_blocks)]
        emb = int(self.embargo.value)

        folds = []
        for fold_id, (train_blocks, test_blocks, paths) in enumerate(self._plan()):
            test = np.concatenate([members[b] for b in test_blocks])
            test.sort()
            candidates = np.concatenate([members[b] for b in train_blocks]) if train_blocks else np.zeros(0, np.int64)
            candidates.sort()
            train = _purge_ns(candidates.astype(np.int64), test.astype(np.int64), t0n, t1n, emb)
            path_of_block = np.zeros(self.n_blocks, np.int64)
            path_of_block[list(paths)] = list(paths.values())
            test_paths = path_of_block[block[test]]
            fold = Fold(fold_id, train, test.astype(np.int64), test_paths, tuple(int(b) for b in test_blocks))
            self._check_size(fold, t0n, len(candidates))
            folds.append(fold)
        return folds

    def fold_plan(self, calendar) -> dict:
        """The fold plan on ``calendar`` as JSON-able data: each block's first and last bar (ISO,
        UTC), each fold's train and test blocks, ``hash`` (a short digest of those: the same for
        every run on the same calendar and method, whatever its horizons or ablations), and the
        splitter's ``settings``."""
        times = unique_sorted(to_ns(calendar, "calendar"))
        starts = self.block_starts(times)
        ends = np.r_[times[np.searchsorted(times, starts[1:]) - 1], times[-1]]
        iso = lambda v: pd.Timestamp(int(v), tz="UTC").isoformat()  # noqa: E731
        plan = {
            "method": self.method,
            "blocks": [{"block": i, "start": iso(a), "end": iso(b)} for i, (a, b) in enumerate(zip(starts, ends))],
            "folds": [
                {"fold_id": k, "train_blocks": list(train), "test_blocks": list(test)}
                for k, (train, test, _) in enumerate(self._plan())
            ],
        }
        # the boundaries and the blocks of each fold, not settings that leave them unchanged
        plan["hash"] = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]
        plan["settings"] = self._params()
        return plan

    def inner_split(self, fold: Fold, t0, t1) -> tuple[np.ndarray, np.ndarray]:
        """``(fit, valid)`` of a fold with this splitter's ``valid_fraction`` and ``embargo``.

        Refuses a slice with fewer than ``min_inner_outcomes`` independent outcomes of the
        longest horizon (``t1`` is the end of the longest label)."""
        fit, valid = inner_validation_split(fold.train, t0, t1, self.valid_fraction, self.embargo, fold_id=fold.fold_id)
        self.check_inner_outcomes(valid, t0, t1, f"fold {fold.fold_id}")
        return fit, valid

    def check_inner_outcomes(self, valid, t0, t1, where: str) -> None:
        n = independent_outcomes(valid, t0, t1)
        if n < self.min_inner_outcomes:
            raise QuantmlInputError(
                f"{where}: the inner validation slice holds {n} independent outcome(s) of the longest "
                f"horizon (< validation.min_inner_outcomes={self.min_inner_outcomes}); raise "
                "validation.valid_fraction, use fewer splits, a shorter horizon (horizon.horizons=[...]) or more "
                "data (a longer panel: data.n_bars=, data.start=)"
            )

    def _check_size(self, fold: Fold, t0n: np.ndarray, n_candidates: int) -> None:
        if len(fold.train) < self.min_train_samples:
            purged = n_candidates - len(fold.train)
            raise QuantmlInputError(
                f"fold {fold.fold_id} has {len(fold.train)} training samples ({purged} purged) "
                f"(< min_train_samples={self.min_train_samples}): use fewer splits/groups, a shorter "
                "embargo or more data"
            )
        if len(fold.test) < self.min_test_samples:
            start = f" from {pd.Timestamp(int(t0n[fold.test].min()))}" if len(fold.test) else ""
            raise QuantmlInputError(
                f"fold {fold.fold_id} has {len(fold.test)} test samples{start} "
                f"(< min_test_samples={self.min_test_samples}): use fewer splits/groups, shorter horizons or "
                "more data (a longer panel: data.n_bars=, data.start=)"
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict:
        return {
            "embargo": str(self.embargo),
            "valid_fraction": self.valid_fraction,
            "min_train_samples": self.min_train_samples,
            "min_test_samples": self.min_test_samples,
            "min_inner_outcomes": self.min_inner_outcomes,
            "crossfit_folds": self.crossfit_folds,
        }


class WalkForward(Splitter):
    """Expanding or rolling walk-forward over ``n_splits + 1`` blocks of unique timestamps."""

    method = "walk_forward"

    def __init__(self, n_splits: int = 5, mode: str = "expanding", train_blocks: int | None = None, **kw) -> None:
        super().__init__(**kw)
        self.n_splits = _positive_int(n_splits, "n_splits", minimum=1)
        if mode not in ("expanding", "rolling"):
            raise QuantmlInputError(f"validation.mode={mode!r} is unknown: use 'expanding' or 'rolling'")
        self.mode = mode
        if mode == "rolling":
            if train_blocks is None:
                raise QuantmlInputError(
                    "validation.mode=rolling needs validation.train_blocks (blocks per training window), e.g. 2"
                )
            self.train_blocks = _positive_int(train_blocks, "train_blocks", minimum=1)
        elif train_blocks is not None:
            raise QuantmlInputError(
                f"validation.train_blocks={train_blocks} is only used with mode=rolling: set "
                "validation.mode=rolling or validation.train_blocks=null"
            )
        else:
            self.train_blocks = None

    @property
    def n_blocks(self) -> int:
        return self.n_splits + 1

    def _plan(self):
        plan = []
        for k in range(self.n_splits):
            first = 0 if self.mode == "expanding" else max(0, k + 1 - self.train_blocks)
            plan.append((list(range(first, k + 1)), [k + 1], {k + 1: 0}))
        return plan

    def _params(self) -> dict:
        return {"n_splits": self.n_splits, "mode": self.mode, "train_blocks": self.train_blocks, **super()._params()}


class PurgedKFold(Splitter):
    """K contiguous blocks; each is the test once, all others (purged, embargoed) train."""

    method = "purged_kfold"

    def __init__(self, n_splits: int = 5, **kw) -> None:
        super().__init__(**kw)
        self.n_splits = _positive_int(n_splits, "n_splits", minimum=2)

    @property
    def n_blocks(self) -> int:
        return self.n_splits

    def _plan(self):
        ids = range(self.n_splits)
        return [([b for b in ids if b != k], [k], {k: 0}) for k in ids]

    def _params(self) -> dict:
        return {"n_splits": self.n_splits, **super()._params()}


class CombinatorialPurgedCV(Splitter):
    """CPCV (López de Prado, AFML ch. 12): all ``C(N, k)`` choices of ``k`` test groups."""

    method = "cpcv"

    def __init__(self, n_groups: int = 6, n_test_groups: int = 2, **kw) -> None:
        super().__init__(**kw)
        self.n_groups = _positive_int(n_groups, "n_groups", minimum=2)
        self.n_test_groups = _positive_int(n_test_groups, "n_test_groups", minimum=1)
        if self.n_test_groups >= self.n_groups:
            raise QuantmlInputError(
                f"validation.n_test_groups={self.n_test_groups} must be < n_groups={self.n_groups}: "
                "lower n_test_groups or raise n_groups"
            )

    @property
    def n_blocks(self) -> int:
        return self.n_groups

    @property
    def n_paths(self) -> int:
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    def _plan(self):
        seen = [0] * self.n_groups
        plan = []
        for test in itertools.combinations(range(self.n_groups), self.n_test_groups):
            paths = {}
            for g in test:
                paths[g] = seen[g]
                seen[g] += 1
            plan.append(([g for g in range(self.n_groups) if g not in test], list(test), paths))
        return plan

    def _params(self) -> dict:
        return {"n_groups": self.n_groups, "n_test_groups": self.n_test_groups, **super()._params()}


_SPLITTERS: dict[str, type[Splitter]] = {
    "walk_forward": WalkForward,
    "purged_kfold": PurgedKFold,
    "cpcv": CombinatorialPurgedCV,
}
_COMMON = (
    "embargo",
    "valid_fraction",
    "min_train_samples",
    "min_test_samples",
    "min_inner_outcomes",
    "crossfit_folds",
)
# settings of the lockbox (quantml.validation.lockbox), not of the splitter
LOCKBOX_KEYS = ("holdout", "holdout_start")
_KEYS = {
    "walk_forward": ("n_splits", "mode", "train_blocks", *_COMMON),
    "purged_kfold": ("n_splits", *_COMMON),
    "cpcv": ("n_groups", "n_test_groups", *_COMMON),
}


def make_splitter(cfg) -> Splitter:
    """Build the splitter of the ``validation`` config group (a DictConfig or a mapping).

    ``_target_`` names the class (``conf/validation/*.yaml``) and is instantiated with
    ``hydra.utils.instantiate``; ``method`` (kept for tags and the command line) picks it
    when there is no ``_target_``, and must agree with it when there is. Every other key must
    be a setting of that method (a typo such as ``n_split`` is an error, not silently ignored).
    """
    params = to_mapping(cfg, "validation")
    for key in LOCKBOX_KEYS:
        params.pop(key, None)
    target = params.pop("_target_", None)
    method = params.pop("method", None)
    if target is not None:
        cls = locate(target, "validation")
        own = getattr(cls, "method", None)
        if method is None:
            method = own
        elif own != method:
            raise QuantmlInputError(
                f"validation.method={method!r} does not match validation._target_={target!r} (method={own!r}); "
                f"pick the config group instead (validation={method} on the command line)"
            )
    if method not in _SPLITTERS:
        raise QuantmlInputError(
            f"validation.method={method!r} is unknown: use one of {sorted(_SPLITTERS)} "
            "(e.g. validation=walk_forward on the command line)"
        )
    unknown = sorted(set(params) - set(_KEYS[method]))
    if unknown:
        raise QuantmlInputError(
            f"validation.{unknown[0]} is not a setting of method={method}: its settings are {list(_KEYS[method])}"
        )
    target = target or f"{_SPLITTERS[method].__module__}.{_SPLITTERS[method].__qualname__}"
    return build({"_target_": target, **params}, "validation")


def _positive_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise QuantmlInputError(f"validation.{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def describe_fold(fold: Fold, t0, fit=None, valid=None) -> dict:
    """Child-run params of a fold: ``fold_id, train_start, train_end, valid_start, valid_end,
    test_start, test_end, n_train, n_valid, n_test`` (times as ISO strings, "" when empty).

    ``train_*`` describe ``fit`` when given (the samples the model is fitted on), else
    ``fold.train``.
    """
    t0n = to_ns(t0, "t0")
    train = fold.train if fit is None else np.asarray(fit, np.int64)
    valid = np.zeros(0, np.int64) if valid is None else np.asarray(valid, np.int64)

    def span(rows):
        if len(rows) == 0:
            return "", ""
        v = t0n[rows]
        return pd.Timestamp(int(v.min())).isoformat(), pd.Timestamp(int(v.max())).isoformat()

    out = {"fold_id": fold.fold_id}
    for name, rows in (("train", train), ("valid", valid), ("test", fold.test)):
        out[f"{name}_start"], out[f"{name}_end"] = span(rows)
    out.update(n_train=len(train), n_valid=len(valid), n_test=len(fold.test))
    return out
