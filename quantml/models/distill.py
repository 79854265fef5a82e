"""``backbone=distilled``: a LightGBM teacher distilled into a TSMixer student.

Fit on a fold's training part (``n`` panel rows, ``H`` horizons):

1. the **teacher** (:class:`~quantml.models.lightgbm_model.LightGBMForecaster`, keys under ``teacher:``)
   is fitted on the whole part, early-stopped on ``valid`` like the plain backbone: its trees per head
   are the capacity of the inner fits;
2. the student's **teacher targets** are OUT-OF-FOLD teacher forecasts inside the part: the part is cut
   into ``crossfit_folds`` time blocks (:func:`quantml.validation.crossfit.crossfit_parts`, the rows'
   ``t0``/``t1``, purged, embargo = the longest horizon), each predicted by a teacher fitted on the other
   blocks with the trees scaled to their rows. The student never learns the teacher's in-sample fit;
3. the **student** (:class:`DistilledStudent`, a :class:`~quantml.models.sequence.TSMixerForecaster`,
   keys under ``student:``) trains on its usual loss plus ``distill_weight * masked MSE(mean, teacher)``
   in scaled units, early-stopped on ``valid``.

Serving uses the student only: the fitted teacher stays in memory for the fold's comparison
(:meth:`DistilledForecaster.fold_metrics`) and is left out of the pickled model (the bundle holds the
student alone). Capacity is the student's epochs plus the teacher's trees (``teacher/<head>/<h>``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.time import parse_duration
from quantml.models.base import Forecast, Forecaster, SampleSet, check_capacity
from quantml.models.lightgbm_model import LightGBMForecaster, rank_ic_metric
from quantml.models.sequence.tsmixer import TSMixerForecaster
from quantml.validation.crossfit import crossfit_parts

TEACHER_PREFIX = "teacher/"  # capacity keys of the teacher's heads
# metrics (names for the lead: quantml/contracts/run_layout.py)
METRIC_LATENCY_STUDENT = L.METRIC_LATENCY_STUDENT  # ms per row, median of timed predicts of the last bars
METRIC_LATENCY_TEACHER = L.METRIC_LATENCY_TEACHER
METRIC_OOF_SHARE = L.METRIC_OOF_SHARE  # share of the training rows with an out-of-fold teacher target
METRIC_TEACHER_RANK_IC = L.METRIC_TEACHER_RANK_IC  # fold metrics test_teacher_rank_ic/<h>, test_student_rank_ic/<h>
METRIC_STUDENT_RANK_IC = L.METRIC_STUDENT_RANK_IC
EXTRA_TEACHER = "teacher"  # the training batches' key of the teacher targets


class DistilledStudent(TSMixerForecaster):
    """A TSMixer trained on its usual loss plus ``distill_weight * masked MSE(mean, teacher)``.

    ``teacher_targets_``: float [data.n_rows, H] teacher expected returns (return units, NaN where the
    row has no out-of-fold target), set before :meth:`fit` and dropped after it (never pickled).
    ``distill_weight=0`` trains exactly the plain TSMixer of the same seed.
    """

    def __init__(self, horizons: list[str], seed: int = 0, distill_weight: float = 1.0, **kwargs) -> None:
        super().__init__(horizons, seed, **kwargs)
        if isinstance(distill_weight, bool) or not isinstance(distill_weight, (int, float)) or distill_weight < 0:
            raise QuantmlInputError(f"backbone.distill_weight must be a number >= 0, got {distill_weight!r}")
        self.distill_weight = float(distill_weight)

    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> DistilledStudent:
        try:
            return super().fit(train, valid)
        finally:
            self.__dict__.pop("teacher_targets_", None)

    def _batch_extras(self, data, scaler) -> dict[str, np.ndarray]:
        targets = getattr(self, "teacher_targets_", None)
        if targets is None:
            return {}
        targets = np.asarray(targets, dtype=np.float64)
        if targets.shape != (data.n_rows, len(self.horizons)):
            raise QuantmlInputError(
                f"teacher targets have shape {targets.shape}, expected [{data.n_rows}, {len(self.horizons)}]: "
                "one row per panel row and one column per horizon"
            )
        return {EXTRA_TEACHER: targets / scaler.ret_scale_}

    def _extra_loss(self, out: dict, batch: dict):
        teacher = batch.get(EXTRA_TEACHER)
        if teacher is None:
            return None
        mean = out["mean"].float()
        teacher = teacher.to(mean.device).float()
        ok = torch.isfinite(teacher)
        sq = torch.where(ok, (mean - torch.nan_to_num(teacher)) ** 2, torch.zeros_like(mean))
        return self.distill_weight * sq.sum() / ok.sum().clamp_min(1)

    def _extra_loss_fn(self):
        if self.distill_weight > 0:
            return super()._extra_loss_fn()
        return self._financial_loss()  # no distillation term: the plain TSMixer's loss (and its financial term)


class DistilledForecaster(Forecaster):
    """A LightGBM teacher distilled into a TSMixer student (see the module docstring).

    Parameters
    ----------
    distill_weight : lambda of ``MSE(y) + lambda * MSE(teacher)`` (0 = the plain student).
    crossfit_folds : time blocks of the inner cross-fitting that makes the out-of-fold teacher targets.
    embargo : embargo of the inner cross-fitting (a duration); None = the longest horizon.
    latency_repeats : timed predicts of the last bar of each symbol, per model (median taken).
    teacher, student : keyword arguments of :class:`LightGBMForecaster` and :class:`DistilledStudent`.
    """

    capacity_grows_with_rows = False  # the student's epochs decide; the teacher's trees are rescaled inside

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        distill_weight: float = 1.0,
        crossfit_folds: int = 3,
        embargo=None,
        latency_repeats: int = 5,
        teacher: Mapping | None = None,
        student: Mapping | None = None,
    ) -> None:
        super().__init__(horizons, seed)
        if isinstance(crossfit_folds, bool) or not isinstance(crossfit_folds, (int, np.integer)) or crossfit_folds < 2:
            raise QuantmlInputError(f"backbone.crossfit_folds must be an integer >= 2, got {crossfit_folds!r}")
        if int(latency_repeats) < 1:
            raise QuantmlInputError(f"backbone.latency_repeats must be >= 1, got {latency_repeats}")
        for name, value in (("teacher", teacher), ("student", student)):
            if value is not None and not isinstance(value, Mapping):
                raise QuantmlInputError(f"backbone.{name} must be a mapping of its keys, got {type(value).__name__}")
        self.crossfit_folds, self.latency_repeats = int(crossfit_folds), int(latency_repeats)
        longest = max(parse_duration(h, "horizon") for h in self.horizons)
        self.embargo = longest if embargo is None else parse_duration(embargo, "backbone.embargo", allow_zero=True)
        try:
            self.teacher = LightGBMForecaster(self.horizons, self.seed, **dict(teacher or {}))
            self.student = DistilledStudent(
                self.horizons, self.seed, distill_weight=distill_weight, **dict(student or {})
            )
        except TypeError as exc:
            raise QuantmlInputError(f"backbone=distilled: a key under teacher: or student: is unknown ({exc})") from exc

    @property
    def distill_weight(self) -> float:
        return self.student.distill_weight

    @property
    def diagnostic_fields(self) -> tuple[str, ...]:
        """The student's optional contract columns (``gate``, ``text_contribution`` with ``fusion=residual_gate``)."""
        return tuple(getattr(self.student, "diagnostic_fields", ()) or ())

    def checkpoint_in(self, directory, resume: bool = False) -> DistilledForecaster:
        """The student's fits checkpoint under ``directory`` (:meth:`SequenceForecaster.checkpoint_in`);
        copies (:meth:`with_capacity`) keep it."""
        self.checkpoint_root = None if directory is None else str(directory)
        self.resume_checkpoints = bool(resume)
        return self

    # ---- fit ------------------------------------------------------------------------------------
    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> DistilledForecaster:
        """Teacher on the part, out-of-fold teacher targets inside it, the student on both; sets
        ``teacher_``, ``student_``, ``teacher_targets_`` (float [n_rows, H], NaN outside the OOF rows),
        ``capacity_`` and ``fold_diagnostics_`` (latencies, OOF share)."""
        fixed = getattr(self, "fixed_capacity", None)
        teacher_cap = None
        if fixed is not None:
            teacher_cap = {k[len(TEACHER_PREFIX) :]: v for k, v in fixed.items() if k.startswith(TEACHER_PREFIX)}
        teacher = self.teacher.with_capacity(teacher_cap or None)
        if fixed is not None and not teacher_cap:
            teacher.early_stopping_rounds = 0  # a fixed capacity means no early stopping, for the teacher too
        teacher.fit(train, valid)
        self.teacher_ = teacher
        self.teacher_targets_ = self._oof_teacher_targets(train, teacher)
        student_cap = None if fixed is None else {k: v for k, v in fixed.items() if not k.startswith(TEACHER_PREFIX)}
        student = self.student.with_capacity(student_cap or None) if fixed is not None else self.student.unfitted()
        student.checkpoint_in(getattr(self, "checkpoint_root", None), getattr(self, "resume_checkpoints", False))
        student.teacher_targets_ = self.teacher_targets_
        student.fit(train, valid)
        self.student_ = student
        self.capacity_ = {
            **dict(student.capacity_),
            **{f"{TEACHER_PREFIX}{k}": int(v) for k, v in (teacher.capacity_ or {}).items()},
        }
        labelled = np.isfinite(train.data.y_ret[train.rows]).any(axis=1)
        has_target = np.isfinite(self.teacher_targets_[train.rows]).any(axis=1)
        self.fold_diagnostics_ = {
            METRIC_OOF_SHARE: float(has_target[labelled].mean()) if labelled.any() else 0.0,
            **self._latency(train),
        }
        return self

    def _oof_teacher_targets(self, train: SampleSet, teacher: LightGBMForecaster) -> np.ndarray:
        """Out-of-fold teacher expected returns [data.n_rows, H] over the labelled rows of ``train``
        (NaN elsewhere): each crossfit block predicted by a teacher fitted on the other (purged,
        embargoed) blocks, grown to the fitted teacher's trees scaled to its rows."""
        data = train.data
        out = np.full((data.n_rows, len(self.horizons)), np.nan)
        rows = train.rows[np.isfinite(data.y_ret[train.rows]).any(axis=1) & ~np.isnat(data.t1[train.rows])]
        if not len(rows):
            return out
        try:
            parts = crossfit_parts(rows, data.t0, data.t1, self.crossfit_folds, self.embargo)
        except QuantmlInputError as exc:
            warnings.warn(
                f"distilled: no out-of-fold teacher targets ({exc}); the student trains on the targets alone",
                UserWarning,
                stacklevel=3,
            )
            return out
        capacity = dict(teacher.capacity_ or {})
        for fit_pos, predict_pos in parts:
            scaled = {k: max(1, int(round(v * len(fit_pos) / len(rows)))) for k, v in capacity.items()}
            inner = self.teacher.with_capacity(check_capacity(scaled) if scaled else None)
            inner.fit(data.subset(fit_pos), None)
            out[predict_pos] = inner.predict(data.subset(predict_pos)).expected_return
        return out

    def _latency(self, train: SampleSet) -> dict[str, float]:
        """Predict latency in ms per row of the student and the teacher: median of ``latency_repeats``
        timed predicts of the last training bar of each symbol."""
        data = train.data
        codes = data.symbol_codes[train.rows]
        last = np.array([train.rows[codes == c].max() for c in np.unique(codes)], dtype=np.int64)
        part = data.subset(np.sort(last))
        result = {}
        for name, model in ((METRIC_LATENCY_STUDENT, self.student_), (METRIC_LATENCY_TEACHER, self.teacher_)):
            model.predict(part)  # warm-up (first-call allocations)
            times = []
            for _ in range(self.latency_repeats):
                start = time.perf_counter()
                model.predict(part)
                times.append(time.perf_counter() - start)
            result[name] = 1000.0 * float(np.median(times)) / len(part)
        return result

    # ---- predict and what is reported --------------------------------------------------------------
    def predict(self, data: SampleSet) -> Forecast:
        """The student's forecasts (the teacher is not needed to serve)."""
        if not hasattr(self, "student_"):
            raise QuantmlInputError("DistilledForecaster is not fitted: call fit(train, valid) first")
        return self.student_.predict(data)

    def fold_metrics(self, test: SampleSet) -> dict[str, float]:
        """On ``test``'s labelled rows (a fold's test block): ``test_teacher_rank_ic/<h>`` and
        ``test_student_rank_ic/<h>`` (mean cross-sectional Spearman per timestamp; one symbol: Pearson
        over time), plus the latencies of :attr:`fold_diagnostics_`. Needs the in-memory teacher (a
        model read back from a pickle has none: only the student's figures)."""
        diag = dict(getattr(self, "fold_diagnostics_", {}))
        student = self.predict(test).expected_return
        teacher = self.teacher_.predict(test).expected_return if hasattr(self, "teacher_") else None
        t0 = test.data.t0[test.rows]
        for j, h in enumerate(self.horizons):
            y = test.y_ret[:, j]
            ok = np.isfinite(y)
            if ok.sum() < 2:
                continue
            score = rank_ic_metric(t0[ok], int(ok.sum()))
            diag[f"test_{METRIC_STUDENT_RANK_IC}/{h}"] = float(score(y[ok], student[ok, j])[1])
            if teacher is not None:
                diag[f"test_{METRIC_TEACHER_RANK_IC}/{h}"] = float(score(y[ok], teacher[ok, j])[1])
        self.fold_diagnostics_ = diag
        return diag

    def run_metrics(self) -> dict[str, float]:
        """Metrics of this (final) model for its parent run: the two predict latencies."""
        diag = getattr(self, "fold_diagnostics_", {})
        return {k: float(diag[k]) for k in (METRIC_LATENCY_STUDENT, METRIC_LATENCY_TEACHER) if k in diag}

    def feature_importance(self) -> pd.Series | None:
        """The teacher's importance while it is in memory (the student has none)."""
        teacher = getattr(self, "teacher_", None)
        return None if teacher is None else teacher.feature_importance()

    def figures(self) -> dict:
        """The student's loss curve and a bar chart of the two predict latencies (and, after
        :meth:`fold_metrics`, the teacher's and the student's test rank IC)."""
        figs = dict(self.student_.figures()) if hasattr(self, "student_") else {}
        diag = getattr(self, "fold_diagnostics_", {})
        if METRIC_LATENCY_STUDENT not in diag:
            return figs
        import matplotlib.pyplot as plt

        ics = [h for h in self.horizons if f"test_{METRIC_TEACHER_RANK_IC}/{h}" in diag]
        fig, axes = plt.subplots(1, 2 if ics else 1, figsize=(9 if ics else 4.5, 3.5), squeeze=False)
        ax = axes[0, 0]
        ax.bar(["student", "teacher"], [diag[METRIC_LATENCY_STUDENT], diag[METRIC_LATENCY_TEACHER]])
        ax.set_ylabel("ms per row (last bar of each symbol)")
        ax.set_title("predict latency")
        if ics:
            ax = axes[0, 1]
            x = np.arange(len(ics))
            ax.bar(x - 0.2, [diag[f"test_{METRIC_TEACHER_RANK_IC}/{h}"] for h in ics], 0.4, label="teacher")
            ax.bar(x + 0.2, [diag[f"test_{METRIC_STUDENT_RANK_IC}/{h}"] for h in ics], 0.4, label="student")
            ax.set_xticks(x, ics)
            ax.set_ylabel("test rank IC")
            ax.legend()
        fig.tight_layout()
        return {**figs, "distill_teacher_vs_student.png": fig}

    @property
    def uses_residual_quantiles(self) -> bool:
        return False  # the student's learned quantile heads

    # ---- pickling: the student only ------------------------------------------------------------
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("teacher_", None)  # serving needs only the student
        state.pop("teacher_targets_", None)
        state.pop("checkpoint_root", None)  # where this host checkpointed its fits: not part of the model
        state.pop("resume_checkpoints", None)
        return state
