"""``backbone=hybrid``: a cross-sectional encoder feeding a temporal predictor (docs/hybrid.md).

1. Stage 1 (:mod:`~quantml.models.hybrid.stage1`): at each timestamp a Transformer over every asset's
   feature snapshot plus a market row; per asset a relationship embedding (``relation_dim``), its
   attention to the market row, its mean attention to its sector (with ``sectors``) and a baseline
   forecast, trained on the fold's training rows only.
2. Stage 2 (optional, ``residual_boost``; :mod:`~quantml.models.hybrid.boost`): LightGBM on stage 1's
   out-of-fold residuals inside the training rows.
3. Stage 3 (:mod:`~quantml.models.hybrid.temporal`): a sequence backbone (``temporal``) over the panel
   with the stage-1 columns appended to every row's features (modality ``cross_asset``). A window's past
   steps carry the stage-1 outputs of their own timestamps, and stage 1 at time ``s`` reads only the
   snapshot at ``s``, so every input of a window is causal. With ``stage1_crossfit`` stage 3 trains on
   **out-of-fold** stage-1 columns: the training rows are cut into ``crossfit_folds`` purged blocks in
   time (:func:`quantml.validation.crossfit.crossfit_parts`, the blocks of stage 2) and the columns of
   every bar in block ``b``'s time span come from a stage 1 fitted on the other blocks, so stage 3
   learns how far to trust stage-1 outputs it has not been fitted on, as it meets them at prediction
   (where the fold's stage 1 gives them). ``forecasts`` cross-fits the forecast columns
   (``xa_base_<h>``, ``xa_boost_<h>``: return forecasts mean the same in every stage-1 model) and keeps
   the latent ones (relationship embedding, attention) from the fold's stage 1, the model that gives them
   at prediction (an embedding's coordinates only mean something within one model); ``all`` cross-fits
   every column; ``off`` (default: on the planted lead-lag it forecasts better, docs/hybrid.md): every
   column from the fold's stage 1, in sample.

Shapes: ``n`` panel rows, ``F`` features, ``H`` horizons, ``S`` training assets.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.time import parse_duration
from quantml.models.base import Forecast, Forecaster, PanelData, SampleSet
from quantml.models.hybrid.boost import ResidualBoost
from quantml.models.hybrid.grid import window_rows
from quantml.models.hybrid.stage1 import CrossSectionalStage, StageOutput
from quantml.models.hybrid.temporal import build_temporal, temporal_config
from quantml.validation.crossfit import crossfit_parts

MODALITY = L.CROSS_ASSET_MODALITY  # modality of the stage-1 columns stage 3 reads
PREFIX = "xa_"  # stage-1 column names: xa_rel_00.., xa_att_market, xa_att_sector, xa_base_<h>, xa_boost_<h>
ATTENTION_FIGURE = L.HYBRID_ATTENTION_FIGURE
RELATION_DIM_RANGE = (16, 64)
CROSSFIT_MODES = ("forecasts", "all", "off")  # stage1_crossfit: which stage-1 columns stage 3 trains on out of fold


class HybridForecaster(Forecaster):
    """The three-stage cross-asset hybrid.

    Parameters
    ----------
    temporal : stage 3's sequence backbone (``lstm``, ``gru``, ``tcn``, ``tft``, any of
        :data:`quantml.models.sequence.BACKBONES`), built from ``quantml/conf/backbone/<temporal>.yaml``.
    temporal_kwargs : overrides of that config (``{hidden_size: 16, max_epochs: 5}``).
    relation_dim : size of the relationship embedding (16-64).
    d_model, n_heads, n_layers, dropout : stage 1's Transformer.
    stage1_lr, stage1_batch_size (timestamps per batch), stage1_max_epochs, stage1_patience : its training.
    index_symbol : the market row is this symbol's features (null: the equal-weight mean of the assets).
    sectors : ``{SYMBOL: sector}``; gives the ``xa_att_sector`` column (mean attention to same-sector assets).
    baseline_feature : append stage 1's baseline forecast (``xa_base_<h>``) to stage 3's inputs.
    residual_boost : stage 2 on (``xa_boost_<h>``: baseline + trees on the out-of-fold residuals).
    stage1_crossfit : ``off`` (default: the fold's stage 1, in sample), ``forecasts`` (stage 3 trains on
        out-of-fold baseline/boost columns: one stage 1 per block of the training rows, fitted on the
        other blocks) or ``all`` (every stage-1 column out of fold). ``true``/``false``: ``forecasts``/``off``.
    crossfit_folds : blocks of the inner cross-fitting of stage 2 and stage 3's inputs (embargo = the
        longest horizon).
    boost_kwargs : LightGBM settings of stage 2 (:data:`~quantml.models.hybrid.boost.BOOST_DEFAULTS`).
    num_threads : torch threads of stage 1.

    Capacity: ``{"stage1_epochs": e1, "epochs": e3[, "boost/<h>": trees]}``. The bundle is
    cross-sectional (``cross_sectional = True``): :meth:`predict` refuses a panel without every training
    asset.
    """

    cross_sectional = True  # the bundle metadata `cross_sectional: true` (quantml.registry.routing)

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        *,
        temporal: str = "lstm",
        temporal_kwargs: dict | None = None,
        relation_dim: int = 16,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 1,
        dropout: float = 0.1,
        stage1_lr: float = 3e-3,
        stage1_batch_size: int = 64,
        stage1_max_epochs: int = 40,
        stage1_patience: int = 5,
        index_symbol: str | None = None,
        sectors: dict | None = None,
        baseline_feature: bool = True,
        residual_boost: bool = False,
        stage1_crossfit: str | bool = "off",
        crossfit_folds: int = 3,
        boost_kwargs: dict | None = None,
        num_threads: int | None = 1,
    ) -> None:
        super().__init__(horizons, seed)
        lo, hi = RELATION_DIM_RANGE
        if not lo <= int(relation_dim) <= hi:
            raise QuantmlInputError(f"backbone.relation_dim must be in [{lo}, {hi}], got {relation_dim}")
        for name, value in (
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
            ("stage1_batch_size", stage1_batch_size),
            ("stage1_max_epochs", stage1_max_epochs),
            ("stage1_patience", stage1_patience),
        ):
            if int(value) < 1:
                raise QuantmlInputError(f"backbone.{name} must be >= 1, got {value}")
        if not 0 <= float(dropout) < 1:
            raise QuantmlInputError(f"backbone.dropout must be in [0, 1), got {dropout}")
        if not float(stage1_lr) > 0:
            raise QuantmlInputError(f"backbone.stage1_lr must be > 0, got {stage1_lr}")
        if int(crossfit_folds) < 2:
            raise QuantmlInputError(f"backbone.crossfit_folds must be >= 2, got {crossfit_folds}")
        if sectors is not None and not hasattr(sectors, "items"):
            raise QuantmlInputError(
                f"data.sectors (backbone.sectors) must be a mapping {{SYMBOL: sector}}, got {sectors!r}"
            )
        self.temporal = str(temporal)
        self.temporal_kwargs = dict(temporal_kwargs or {})
        temporal_config(self.temporal, self.temporal_kwargs)  # a bad name or reserved key fails now
        self.relation_dim, self.d_model, self.n_heads, self.n_layers = (
            int(relation_dim),
            int(d_model),
            int(n_heads),
            int(n_layers),
        )
        self.dropout, self.stage1_lr = float(dropout), float(stage1_lr)
        self.stage1_batch_size, self.stage1_max_epochs = int(stage1_batch_size), int(stage1_max_epochs)
        self.stage1_patience = int(stage1_patience)
        self.index_symbol = None if index_symbol in (None, "") else str(index_symbol)
        self.sectors = None if sectors is None else {str(k): str(v) for k, v in dict(sectors).items()}
        self.baseline_feature, self.residual_boost = bool(baseline_feature), bool(residual_boost)
        if isinstance(stage1_crossfit, bool):
            stage1_crossfit = "forecasts" if stage1_crossfit else "off"
        if stage1_crossfit not in CROSSFIT_MODES:
            raise QuantmlInputError(
                f"backbone.stage1_crossfit must be one of {', '.join(CROSSFIT_MODES)}, got {stage1_crossfit!r}"
            )
        self.stage1_crossfit = str(stage1_crossfit)
        self.crossfit_folds = int(crossfit_folds)
        self.boost_kwargs = dict(boost_kwargs or {})
        ResidualBoost(self.horizons, **self.boost_kwargs)  # an unknown key fails now
        self.num_threads = num_threads
        self.checkpoint_root: str | None = None
        self.resume_checkpoints = False

    def checkpoint_in(self, directory, resume: bool = False) -> HybridForecaster:
        """Stage 3's fits checkpoint under ``directory`` (:meth:`SequenceForecaster.checkpoint_in`)."""
        self.checkpoint_root = None if directory is None else str(directory)
        self.resume_checkpoints = bool(resume)
        return self

    # ---- Forecaster ---------------------------------------------------------------------
    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> HybridForecaster:
        """Stage 1 on ``train`` (early-stopped on ``valid``), stage 2 inside ``train``, then stage 3 on the
        panel with the stage-1 columns, early-stopped on ``valid``. A fixed capacity trains each stage to it."""
        data = train.data
        if len(data.horizons) != len(self.horizons):
            raise QuantmlInputError(
                f"the panel has horizons {data.horizons}, the backbone was built for {self.horizons}; "
                "build the labels with the same horizon config"
            )
        rows = train.rows[np.isfinite(data.y_ret[train.rows]).any(axis=1)]
        if len(rows) == 0:
            raise QuantmlInputError(
                "the training fold has no labelled rows; use a longer data range or a shorter horizon"
            )
        n_assets = len(np.unique(data.symbol_codes[rows]))
        if n_assets < 2:
            raise QuantmlInputError(
                f"backbone=hybrid needs a cross-section of at least 2 symbols; the training rows hold {n_assets}; "
                "add symbols (data.n_symbols) or use a single-asset backbone such as backbone=lstm"
            )
        fixed = self.fixed_capacity or {}
        valid_rows = None
        if valid is not None and not fixed:
            valid_rows = valid.rows[np.isfinite(valid.data.y_ret[valid.rows]).any(axis=1)]
            valid_rows = valid_rows if len(valid_rows) else None
        self.stage1_ = self._new_stage().fit(
            data, rows, valid.data if valid_rows is not None else None, valid_rows, epochs=fixed.get("stage1_epochs")
        )
        self._block_stages: dict[bytes, CrossSectionalStage] = {}  # stage 1 per crossfit fit part (shared)
        self.boost_ = self._fit_boost(data, rows, fixed) if self.residual_boost else None
        self.feature_names_ = list(data.feature_names)
        self.stage_columns_ = self._stage_columns()
        model = build_temporal(self.temporal, self.horizons, self.seed, {"num_threads": 1, **self.temporal_kwargs})
        if fixed.get("epochs"):
            model = model.with_capacity({"epochs": int(fixed["epochs"])})
        model.checkpoint_in(getattr(self, "checkpoint_root", None), getattr(self, "resume_checkpoints", False))
        lookback = model.lookback
        forecasts_read = self.baseline_feature or self.residual_boost
        crossfit = self.stage1_crossfit == "all" or (self.stage1_crossfit == "forecasts" and forecasts_read)
        if crossfit:  # training windows read out-of-fold stage-1 columns; validation the fold's
            needed = window_rows(data, rows, lookback)
            aug = self._augment(data, needed, outputs=self._crossfit_outputs(data, rows, needed))
            aug_valid = None
            if valid_rows is not None:
                aug_valid = self._augment(valid.data, window_rows(valid.data, valid_rows, lookback)).subset(valid_rows)
        elif valid_rows is not None and valid.data is data:
            aug = self._augment(data, window_rows(data, np.r_[rows, valid_rows], lookback))
            aug_valid = aug.subset(valid_rows)
        else:
            aug = self._augment(data, window_rows(data, rows, lookback))
            aug_valid = None
            if valid_rows is not None:
                aug_valid = self._augment(valid.data, window_rows(valid.data, valid_rows, lookback)).subset(valid_rows)
        self._block_stages = {}
        model.fit(aug.subset(rows), aug_valid)
        self.temporal_ = model
        self.capacity_ = {"stage1_epochs": int(self.stage1_.epochs_), **dict(model.capacity_)}
        if self.boost_ is not None:
            self.capacity_.update(self.boost_.capacity_)
        return self

    def predict(self, data: SampleSet) -> Forecast:
        """Stage 3's forecasts of ``data``'s rows; refuses a panel lacking a training asset. Afterwards
        :attr:`attention_` is the mean attention over the timestamps of ``data``'s rows."""
        self._check_fitted()
        H = len(self.horizons)
        if len(data) == 0:
            empty = np.zeros((0, H))
            return Forecast(self.horizons, empty, empty, empty, empty, empty, empty)
        panel = data.data
        missing = sorted(set(self.stage1_.assets_) - {str(s) for s in panel.symbols})
        if missing:
            raise QuantmlInputError(
                f"backbone=hybrid is cross-sectional: the panel lacks {len(missing)} of the "
                f"{len(self.stage1_.assets_)} assets it was trained on: {', '.join(missing)}; send the whole "
                "cross-section (every training symbol's latest bars)"
            )
        if list(panel.feature_names) != self.feature_names_:
            raise QuantmlInputError(
                f"the panel's features differ from the {len(self.feature_names_)} the model was fitted on "
                f"(first fitted: {self.feature_names_[:3]}); use the same feature_set and ablation"
            )
        needed = window_rows(panel, data.rows, self.temporal_.lookback)
        aug, out = self._augment(panel, needed, keep_output=True)
        self._record_attention(out, np.asarray(panel.t0, dtype="datetime64[ns]")[data.rows])
        return self.temporal_.predict(aug.subset(data.rows))

    @property
    def uses_residual_quantiles(self) -> bool:
        return False  # every sequence backbone has learned quantile heads

    def feature_importance(self) -> pd.Series | None:
        model = getattr(self, "temporal_", None)
        return None if model is None else model.feature_importance()

    def figures(self) -> dict:
        """Stage 3's figures and the attention heatmap (``hybrid_attention.png``) of the latest predict."""
        model = getattr(self, "temporal_", None)
        figs = {} if model is None else dict(model.figures())
        figs.update(self.fold_figures())
        return figs

    def fold_figures(self) -> dict:
        """The figures a fold run logs: only the attention heatmap of the latest predict (the fold's
        test block, the last rows a fold predicts); ``{}`` before any predict."""
        from quantml.models.hybrid.figures import attention_heatmap

        att = getattr(self, "attention_", None)
        return {} if att is None else {ATTENTION_FIGURE: attention_heatmap(att, getattr(self, "attention_span_", None))}

    # ---- stages -------------------------------------------------------------------------
    def _new_stage(self) -> CrossSectionalStage:
        return CrossSectionalStage(
            len(self.horizons),
            self.seed,
            d_model=self.d_model,
            n_heads=self.n_heads,
            n_layers=self.n_layers,
            relation_dim=self.relation_dim,
            dropout=self.dropout,
            lr=self.stage1_lr,
            batch_size=self.stage1_batch_size,
            max_epochs=self.stage1_max_epochs,
            patience=self.stage1_patience,
            index_symbol=self.index_symbol,
            sectors=self.sectors,
            num_threads=self.num_threads,
        )

    def _stage_columns(self) -> list[str]:
        cols = [f"{PREFIX}rel_{i:02d}" for i in range(self.relation_dim)] + [f"{PREFIX}att_market"]
        if self.sectors:
            cols.append(f"{PREFIX}att_sector")
        if self.baseline_feature:
            cols += [f"{PREFIX}base_{h}" for h in self.horizons]
        if self.residual_boost:
            cols += [f"{PREFIX}boost_{h}" for h in self.horizons]
        return cols

    def _row_outputs(
        self, stage: CrossSectionalStage, data: PanelData, rows: np.ndarray
    ) -> tuple[np.ndarray, StageOutput]:
        """Stage-1 outputs of every row at the timestamps of ``rows``: ``[n, k]`` (NaN elsewhere) with
        columns relation, market attention, [sector attention], baseline (the last H)."""
        out = stage.transform(data, rows)
        parts = [out.relation, out.market_attention[:, :, None]]
        if self.sectors:
            parts.append(out.sector_attention[:, :, None])
        parts.append(out.baseline)
        values = np.concatenate(parts, axis=2)
        full = np.full((data.n_rows, values.shape[2]), np.nan)
        present = out.grid.present
        full[out.grid.pos[present]] = values[present]
        return full, out

    def _crossfit_embargo(self):
        return max(parse_duration(h, "horizon") for h in self.horizons)

    def _block_stage(self, data: PanelData, fit_rows: np.ndarray) -> CrossSectionalStage:
        """A stage 1 fitted on ``fit_rows`` for the fold's stage-1 epochs (cached: stage 2 and stage 3's
        inputs cross-fit on the same blocks)."""
        key = np.asarray(fit_rows, dtype=np.int64).tobytes()
        if key not in self._block_stages:
            self._block_stages[key] = self._new_stage().fit(data, fit_rows, epochs=int(self.stage1_.epochs_))
        return self._block_stages[key]

    def _crossfit_outputs(self, data: PanelData, rows: np.ndarray, needed: np.ndarray) -> np.ndarray:
        """Out-of-fold stage-1 outputs ``[n, k]`` (NaN off ``needed``) for stage 3's training windows: the
        rows ``rows`` cut into the purged blocks of :func:`crossfit_parts`; a row of ``needed`` whose time
        lies in block ``b``'s span (from its first bar to the next block's; before block 0: block 0) gets
        the outputs of a stage 1 fitted on the blocks other than ``b`` — only the baseline (the last H
        columns) with ``stage1_crossfit=forecasts``, the rest the fold stage 1's. Records ``crossfit_blocks_``."""
        parts = crossfit_parts(rows, data.t0, data.t1, self.crossfit_folds, self._crossfit_embargo())
        t0 = np.asarray(data.t0, dtype="datetime64[ns]")
        starts = np.array([t0[predict].min() for _, predict in parts])
        block = np.clip(np.searchsorted(starts, t0[needed], side="right") - 1, 0, None)
        full = None
        if self.stage1_crossfit == "forecasts":
            full = self._row_outputs(self.stage1_, data, needed)[0]
        H = len(self.horizons) if self.stage1_crossfit == "forecasts" else None
        self.crossfit_blocks_ = []
        for b, (fit_rows, _) in enumerate(parts):
            mine = needed[block == b]
            if not len(mine):
                continue
            values = self._row_outputs(self._block_stage(data, fit_rows), data, mine)[0]
            if full is None:
                full = np.full_like(values, np.nan)
            if H:
                full[mine, -H:] = values[mine, -H:]
            else:
                full[mine] = values[mine]
            start = str(pd.Timestamp(starts[b], tz="UTC"))
            self.crossfit_blocks_.append({"block": b, "start": start, "n_fit": len(fit_rows), "n_rows": len(mine)})
        return full

    def _fit_boost(self, data: PanelData, rows: np.ndarray, fixed: dict) -> ResidualBoost:
        def outputs_of(fit_rows: np.ndarray, predict_rows: np.ndarray) -> np.ndarray:
            return self._row_outputs(self._block_stage(data, fit_rows), data, predict_rows)[0][predict_rows]

        boost = ResidualBoost(
            self.horizons, self.seed, self.crossfit_folds, self._crossfit_embargo(), **self.boost_kwargs
        )
        trees = {k: v for k, v in fixed.items() if k.startswith("boost/")} or None
        return boost.fit(rows, data.t0, data.t1, outputs_of, lambda r, o: np.hstack([data.X[r], o]), data.y_ret, trees)

    def _augment(self, data: PanelData, rows: np.ndarray, keep_output: bool = False, outputs: np.ndarray | None = None):
        """``data`` with the stage-1 columns appended to ``X`` (modality ``cross_asset``), filled at every
        row of the timestamps of ``rows`` (NaN elsewhere: rows no window reads): the fold's stage 1, or the
        given ``outputs`` [n, k] (the out-of-fold ones of :meth:`_crossfit_outputs`)."""
        H = len(self.horizons)
        out = None
        if outputs is None:
            outputs, out = self._row_outputs(self.stage1_, data, rows)
        cols = [outputs[:, :-H]]
        if self.baseline_feature:
            cols.append(outputs[:, -H:])
        if self.boost_ is not None:
            done = np.flatnonzero(np.isfinite(outputs).all(axis=1))
            boosted = np.full((data.n_rows, H), np.nan)
            boosted[done] = outputs[done, -H:] + self.boost_.predict(np.hstack([data.X[done], outputs[done]]))
            cols.append(boosted)
        extra = np.hstack(cols).astype(np.float32)
        names = self.stage_columns_
        aug = dataclasses.replace(
            data,
            X=np.hstack([np.asarray(data.X, dtype=np.float32), extra]),
            feature_names=list(data.feature_names) + names,
            feature_modalities={**data.feature_modalities, **{c: MODALITY for c in names}},
        )
        return (aug, out) if keep_output else aug

    def _record_attention(self, out: StageOutput, times: np.ndarray) -> None:
        """``attention_``: DataFrame [S, 1 + S] (rows: training assets as queries; columns: ``market`` and
        the training assets), the mean over the timestamps ``times`` of each asset's attention row."""
        assets = list(self.stage1_.assets_)
        S = len(assets)
        at = np.isin(out.grid.times, np.unique(times))
        att = out.attention[at][:, :S, : S + 1]
        with warnings.catch_warnings():  # an asset absent at every timestamp: a NaN row
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(att, axis=0) if len(att) else np.full((S, S + 1), np.nan)
        self.attention_ = pd.DataFrame(mean, index=assets, columns=["market", *assets])
        span = out.grid.times[at]
        self.attention_span_ = (
            (pd.Timestamp(span.min(), tz="UTC"), pd.Timestamp(span.max(), tz="UTC"), int(at.sum()))
            if len(span)
            else None
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "temporal_"):
            raise QuantmlInputError("HybridForecaster is not fitted: call fit(train, valid) first")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("checkpoint_root", None)  # where this host checkpointed its fits: not part of the model
        state.pop("resume_checkpoints", None)
        return state
