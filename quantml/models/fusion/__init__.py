"""Residual-gate fusion: ``y = base(price, macro, microstructure) + gate(text activity) * delta(text)``
for every head, around any backbone (docs/fusion.md).

- :class:`~quantml.models.fusion.tabular.ResidualGateForecaster`: a ridge / LightGBM base and a gated
  text residual fitted on the base's out-of-fold residuals (inner cross-fitting);
- :func:`~quantml.models.fusion.neural.gate_sequence`: a sequence backbone's net plus a gated text
  tower, trained jointly with modality dropout;
- :func:`wrap_fusion`: the configured one (``fusion=none | residual_gate``); ``backbone=distilled`` gets
  the neural one in its TSMixer student (the LightGBM teacher reads every feature).

Both give ``Forecast.diagnostics`` ``gate`` and ``text_contribution`` ([n, H]).
"""

from __future__ import annotations

from collections.abc import Mapping

from quantml.contracts import QuantmlInputError
from quantml.models.base import Forecaster
from quantml.models.fusion.tabular import DIAGNOSTICS, GATE, TEXT_CONTRIBUTION, ResidualGateForecaster
from quantml.models.fusion.text import ACTIVITY_WORDS, TextColumns

FUSIONS = ("none", "residual_gate")

__all__ = [
    "ACTIVITY_WORDS",
    "DIAGNOSTICS",
    "FUSIONS",
    "GATE",
    "TEXT_CONTRIBUTION",
    "ResidualGateForecaster",
    "TextColumns",
    "wrap_fusion",
]


def wrap_fusion(model: Forecaster, fusion: Mapping | None) -> Forecaster:
    """``model`` with the configured fusion (``cfg.fusion``: ``name`` and its keys); ``None`` or
    ``name: none`` returns ``model`` itself."""
    fusion = dict(fusion or {})
    name = str(fusion.get("name", "none"))
    if name == "none":
        return model
    if name != "residual_gate":
        raise QuantmlInputError(f"fusion={name} is not a fusion; use one of {', '.join(FUSIONS)}")
    dropout = float(fusion.get("modality_dropout", 0.3))
    penalty = float(fusion.get("gate_penalty", 0.05))
    hidden = int(fusion.get("hidden", 16))
    if hasattr(model, "_build_net"):  # a sequence backbone: the gated text tower inside its net
        from quantml.models.fusion.neural import gate_sequence

        return gate_sequence(model, modality_dropout=dropout, hidden=hidden, gate_penalty=penalty)
    from quantml.models.distill import DistilledForecaster

    if isinstance(model, DistilledForecaster):  # its TSMixer student gets the tower; the teacher reads every feature
        from quantml.models.fusion.neural import gate_sequence

        model.student = gate_sequence(model.student, modality_dropout=dropout, hidden=hidden, gate_penalty=penalty)
        return model
    return ResidualGateForecaster(
        model,
        modality_dropout=dropout,
        l2=float(fusion.get("l2", 10.0)),
        gate_penalty=penalty,
        crossfit_folds=int(fusion.get("crossfit_folds", 3)),
        embargo=fusion.get("embargo"),
        max_iter=int(fusion.get("max_iter", 200)),
    )
