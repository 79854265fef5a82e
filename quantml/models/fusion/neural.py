"""Residual-gate fusion around a sequence backbone: the base net plus a gated text tower, trained jointly.

:func:`gate_sequence` turns an unfitted :class:`~quantml.models.sequence.SequenceForecaster` (any of
the eight backbones) into an instance of ``Gated<Backbone>`` (the backbone's class with
:class:`GatedTextMixin` in front), whose ``_build_net`` wraps the backbone's net in
:class:`GatedTextNet`:

- the base net sees the window with every text column zeroed (the normalised mean);
- the tower reads the text content features of the window's last step (the row forecast) and gives
  per horizon three deltas: expected return (also shifting q10/q50/q90, so they stay ordered), the
  direction logit and the log volatility; the gate is a logistic function of the last step's
  activity features (:mod:`~quantml.models.fusion.text`), held at 0 on rows without text;
- modality dropout (``modality_dropout``): in training each sample loses its whole text input with
  that probability (gate 0: the base must stand alone on it);
- the loss adds ``gate_penalty * mean(gate)`` (through ``_extra_loss``), so useless text keeps the
  gate shut.

A panel without text features (``ablation=no_text``) builds the backbone's own net: the model is the base.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from quantml.models.base import Forecast
from quantml.models.fusion.gate import Standardiser
from quantml.models.fusion.tabular import DIAGNOSTICS, GATE, TEXT_CONTRIBUTION, activity_summary, check_fusion_params
from quantml.models.fusion.text import TextColumns, warn_if_no_text
from quantml.models.sequence.trainer import SequenceForecaster

_N_DELTA = 3  # expected return, direction logit, log vol


class GatedTextNet(nn.Module):
    """``base`` net + gated text tower; the same batch in, the base's outputs (plus ``gate`` and
    ``text_delta`` [B, H]) out. ``flag_z0``/``flag_z1`` [S + 1, k]: each symbol index's normalised
    value of a text missing flag at 0 and at 1 (a flag nearer its 1 marks the row as without text)."""

    def __init__(
        self,
        base: nn.Module,
        columns: TextColumns,
        flag_z0: np.ndarray,
        flag_z1: np.ndarray,
        n_horizons: int,
        hidden: int,
        modality_dropout: float,
    ) -> None:
        super().__init__()
        self.base = base
        text = np.sort(np.r_[columns.content, columns.flags]).astype(np.int64)
        self.register_buffer("text_idx", torch.as_tensor(text))
        self.register_buffer("content_idx", torch.as_tensor(columns.content))
        self.register_buffer("activity_idx", torch.as_tensor(columns.activity))
        self.register_buffer("flag_idx", torch.as_tensor(columns.flags))
        self.register_buffer("flag_z0", torch.as_tensor(np.asarray(flag_z0, dtype=np.float32)))
        self.register_buffer("flag_z1", torch.as_tensor(np.asarray(flag_z1, dtype=np.float32)))
        self.n_horizons, self.modality_dropout = int(n_horizons), float(modality_dropout)
        self.tower = nn.Sequential(
            nn.Linear(len(columns.content), hidden), nn.ELU(), nn.Linear(hidden, _N_DELTA * n_horizons)
        )
        nn.init.zeros_(self.tower[-1].weight)  # training starts from the base alone
        nn.init.zeros_(self.tower[-1].bias)
        self.gate = nn.Linear(len(columns.activity), 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, -2.0)

    def available(self, last: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        """bool [B]: rows of the last step ``last`` [B, F] (normalised) that carry text."""
        ok = last[:, self.content_idx].ne(0).any(-1)
        if len(self.flag_idx):
            fz = last[:, self.flag_idx]
            near_one = (fz - self.flag_z1[sym]).abs() < (fz - self.flag_z0[sym]).abs()
            ok = ok & ~near_one.any(-1)
        return ok

    def forward(self, batch: dict) -> dict:
        x = batch["x"]
        last = x[:, -1, :]
        zeroed = dict(batch)
        for key in ("x", "xu"):
            if key in batch:
                v = batch[key].clone()
                v[..., self.text_idx] = 0.0
                zeroed[key] = v
        out = dict(self.base(zeroed))
        avail = self.available(last, batch["sym"])
        if self.training and self.modality_dropout > 0:  # whole text inputs dropped per sample
            avail = avail & (torch.rand(len(avail), device=x.device) >= self.modality_dropout)
        g = torch.sigmoid(self.gate(last[:, self.activity_idx])).squeeze(-1) * avail.to(x.dtype)
        d = self.tower(last[:, self.content_idx]).view(len(x), _N_DELTA, self.n_horizons)
        gd = g[:, None, None] * d
        for key in ("mean", "q10", "q50", "q90"):
            out[key] = out[key] + gd[:, 0]
        out["logit"] = out["logit"] + gd[:, 1]
        out["vol"] = out["vol"] * torch.exp(gd[:, 2].clamp(-10, 10))
        out[GATE] = g[:, None].expand(-1, self.n_horizons)
        out["text_delta"] = gd[:, 0]
        return out


class GatedTextMixin:
    """What ``Gated<Backbone>`` adds to a sequence backbone (module docstring). Attributes:
    ``fusion_modality_dropout``, ``fusion_hidden``, ``fusion_gate_penalty``."""

    _fusion_base: type = SequenceForecaster
    diagnostic_fields = DIAGNOSTICS  # the optional contract columns this model fills

    def fit(self, train, valid=None):
        self.text_columns_ = TextColumns.of(train.data.feature_names, train.data.feature_modalities)
        warn_if_no_text(self.text_columns_)
        self.gate_summary_ = None
        return super().fit(train, valid)

    def _build_net(self, spec: dict) -> nn.Module:
        net = super()._build_net(spec)
        cols = getattr(self, "text_columns_", None)
        if cols is None or not cols.has_text:
            return net
        norm = self.normalizer_
        mean, std = norm.mean_[:, cols.flags].astype(np.float64), norm.std_[:, cols.flags].astype(np.float64)
        z0 = np.clip((0.0 - mean) / std, -norm.clip, norm.clip)
        z1 = np.clip((1.0 - mean) / std, -norm.clip, norm.clip)
        return GatedTextNet(net, cols, z0, z1, spec["n_horizons"], self.fusion_hidden, self.fusion_modality_dropout)

    def _extra_loss(self, out: dict, batch: dict):
        # the backbone's own term (the distilled student's), never the default financial one:
        # _extra_loss_fn adds that to this (it would count twice)
        own = type(self)._fusion_base._extra_loss is not SequenceForecaster._extra_loss
        inner = super()._extra_loss(out, batch) if own else None
        if GATE not in out:
            return inner
        term = self.fusion_gate_penalty * out[GATE].mean()
        return term if inner is None else inner + term

    def _extra_loss_fn(self):
        """This class's term (the gate penalty, plus the backbone's own) and the financial one: the generic
        sum, also for a distilled student of weight 0 (whose own rule would drop the gate penalty)."""
        return SequenceForecaster._extra_loss_fn(self)

    def predict(self, data) -> Forecast:
        base = super().predict(data)
        H, n = len(self.horizons), len(data)
        if n == 0 or not getattr(self, "text_columns_", None) or not self.text_columns_.has_text:
            zero = np.zeros((n, H))
            base.diagnostics = {**base.diagnostics, GATE: zero, TEXT_CONTRIBUTION: zero}
            return base
        parts = {GATE: [], "text_delta": [], "mean": []}

        def collect(out, batch):
            for k in parts:
                parts[k].append(out[k].double().numpy())

        self._run(data.data, data.rows, collect=collect)
        g, delta, mean = (np.concatenate(parts[k]) for k in (GATE, "text_delta", "mean"))
        num, den = np.abs(delta), np.abs(mean - delta) + np.abs(delta)
        contrib = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
        base.diagnostics = {**base.diagnostics, GATE: g, TEXT_CONTRIBUTION: contrib}
        return base

    def _after_fit(self, data, rows: np.ndarray) -> None:
        super()._after_fit(data, rows)
        cols = self.text_columns_
        if not cols.has_text or len(rows) == 0:
            return
        rows = np.asarray(rows, dtype=np.int64)
        fc = self.predict(data.subset(rows))
        X = data.X[rows]
        activity = Standardiser.fit(X[:, cols.activity]).transform(X[:, cols.activity]).mean(axis=1)
        avail = cols.available(X)
        self.gate_summary_ = activity_summary(
            activity, fc.diagnostics[GATE][:, 0], fc.diagnostics[TEXT_CONTRIBUTION].mean(axis=1), avail
        )

    def figures(self) -> dict:
        from quantml.models.fusion.figures import gate_figure

        out = dict(super().figures())
        summary = getattr(self, "gate_summary_", None)
        if summary is not None:
            out["fusion_gate_vs_activity.png"] = gate_figure(summary, type(self).__name__)
        return out

    def __reduce_ex__(self, protocol):
        return _rebuild, (type(self)._fusion_base,), self.__getstate__()


_GATED: dict[type, type] = {}


def gated_class(cls: type) -> type:
    """``Gated<cls>``: ``cls`` with :class:`GatedTextMixin` in front (one class per backbone class)."""
    if issubclass(cls, GatedTextMixin):
        return cls
    if cls not in _GATED:
        _GATED[cls] = type(f"Gated{cls.__name__}", (GatedTextMixin, cls), {"__module__": __name__, "_fusion_base": cls})
    return _GATED[cls]


def _rebuild(base_cls: type):
    cls = gated_class(base_cls)
    return cls.__new__(cls)


def gate_sequence(
    model: SequenceForecaster, *, modality_dropout: float = 0.3, hidden: int = 16, gate_penalty: float = 0.05
) -> SequenceForecaster:
    """The gated-text version of the unfitted sequence backbone ``model`` (same hyper-parameters)."""
    check_fusion_params(modality_dropout, 0.0, gate_penalty)
    if int(hidden) < 1:
        from quantml.contracts import QuantmlInputError

        raise QuantmlInputError(f"fusion.hidden must be >= 1, got {hidden}; e.g. 16")
    cls = gated_class(type(model))
    fused = cls.__new__(cls)
    fused.__dict__.update(model.__dict__)
    fused.fusion_modality_dropout = float(modality_dropout)
    fused.fusion_hidden = int(hidden)
    fused.fusion_gate_penalty = float(gate_penalty)
    return fused
