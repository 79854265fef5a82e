"""``backbone=vssm``: a regime-latent variational state-space forecaster (discrete regimes, exact filter).

The model, per symbol (a segment of its bars, cut at flagged gaps):

* a latent regime ``z_t`` in ``{0 .. K-1}`` follows a Markov chain with a learned transition ``A``
  [K, K] (initialised sticky) and initial distribution;
* an **observation** ``o_t`` [D] — the features named by ``obs_features`` (default the last bar's
  return ``ret_1`` and the 12-bar realised vol ``rv_12``), standardised per symbol —
  is Gaussian given the regime: ``N(m_k, s_k^2)``;
* an **emission per horizon head**: given ``z_t = k`` and the features ``x_t`` (a small encoder), the
  forward return of horizon ``h`` is ``N(mu_hk(x_t), sigma_hk(x_t)^2)`` and its log realised vol
  ``N(nu_hk(x_t), tau_hk(x_t)^2)``.

Training maximises the evidence ``sum_t log p(o_t, y_t | o_<t)`` over the fit rows: the regime is
marginalised exactly by the forward algorithm (with the exact filtered posterior as the variational
distribution the evidence lower bound is tight, so it *is* the log evidence). Labels never enter the
filter: a label is only known once its horizon has passed, so the posterior that weighs the regimes at
``t`` is the **filtered** ``p(z_t | o_1..o_t)`` — in training and in prediction alike, never smoothed
with later bars. Training runs on chunks of ``chunk_len`` rows after ``burn_in`` bars of burn-in; the
prediction filter runs exactly, from each segment's first bar.

Forecasts: the predictive of each horizon is the mixture ``sum_k p(z_t = k | o_<=t) N(mu_hk, sigma_hk^2)``:
``expected_return`` its mean, ``prob_up`` its P(> 0), ``vol_forecast`` the mixture's expected realised
vol, and P10/P50/P90 the quantiles of ``n_samples`` draws from it (common random numbers from the seed),
which the experiment's calibrator then shifts conformally (learned quantiles:
``uses_residual_quantiles`` is False). ``Forecast.diagnostics`` carries ``regime_p<k>`` [n, H] (the
filtered posterior, the same for every horizon); the states are ordered after fit by their observation
scale, so ``regime_p0`` is the calmest regime.
"""

from __future__ import annotations

import copy
import fnmatch
import math

import numpy as np
import pandas as pd
import torch

from quantml.contracts import SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.models.base import Forecast, Forecaster, PanelData, SampleSet
from quantml.models.threads import torch_threads
from quantml.models.vssm.figures import posterior_figure, transition_figure
from quantml.models.vssm.mixture import common_draws, mixture_mean, mixture_prob_up, sampled_quantiles
from quantml.models.vssm.names import CAPACITY_EPOCHS, POSTERIOR_FIGURE, TRANSITION_FIGURE, regime_column
from quantml.models.vssm.net import VSSMNet, label_log_lik
from quantml.models.vssm.scaling import VSSMScaler
from quantml.models.vssm.sequences import SCOPES, Batch, Tracks, chunk_stretches, full_stretches, gather

_VOL_FLOOR = 1e-8


class VSSMForecaster(Forecaster):
    """Parameters (``conf/backbone/vssm.yaml``; see the module docstring for the model)

    n_regimes : K discrete regimes (>= 2).
    scope : ``market`` (one chain for the panel: each step observes every symbol's bar of that time) or
        ``symbol`` (one chain per symbol segment).
    obs_features : feature names or glob patterns the filter observes (default ``["ret_1", "rv_12"]``).
    hidden_size, dropout : the emission encoder (two layers).
    stay_init : initial probability of staying in a regime (the transition is learned from there).
    chunk_len, burn_in : training chunks (rows that count) and the bars of burn-in before each.
    batch_size : chunks per optimiser step; lr, weight_decay, grad_clip : AdamW.
    max_epochs, patience : epochs, early stopping on the validation evidence.
    w_obs, w_vol : weights of the observation evidence and of the log-vol emission in the loss.
    n_samples : draws from the predictive mixture for the quantiles.
    clip_features : standardised features clipped to +-clip; num_threads : torch CPU threads.
    """

    def __init__(
        self,
        horizons: list[str],
        seed: int = 0,
        *,
        n_regimes: int = 2,
        scope: str = "market",
        obs_features: list[str] | tuple[str, ...] = ("ret_1", "rv_12"),
        hidden_size: int = 32,
        dropout: float = 0.1,
        stay_init: float = 0.97,
        chunk_len: int = 128,
        burn_in: int = 64,
        batch_size: int = 4,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        grad_clip: float | None = 5.0,
        max_epochs: int = 40,
        patience: int = 5,
        w_obs: float = 1.0,
        w_vol: float = 0.5,
        n_samples: int = 1000,
        clip_features: float = 10.0,
        num_threads: int | None = 1,
    ) -> None:
        super().__init__(horizons, seed)
        for name, value, low in (
            ("n_regimes", n_regimes, 2),
            ("hidden_size", hidden_size, 1),
            ("chunk_len", chunk_len, 2),
            ("burn_in", burn_in, 0),
            ("batch_size", batch_size, 1),
            ("max_epochs", max_epochs, 1),
            ("patience", patience, 1),
            ("n_samples", n_samples, 50),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise QuantmlInputError(f"backbone.{name} must be an integer >= {low}, got {value!r}")
        if isinstance(obs_features, str):
            obs_features = [obs_features]
        obs_features = [str(f) for f in (obs_features or [])]
        if not obs_features:
            raise QuantmlInputError(
                "backbone.obs_features is empty; name the features the regime filter observes, e.g. [ret_1]"
            )
        if scope not in SCOPES:
            raise QuantmlInputError(f"backbone.scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not 0 <= dropout < 1:
            raise QuantmlInputError(f"backbone.dropout must be in [0, 1), got {dropout}")
        if not 0 < stay_init < 1:
            raise QuantmlInputError(f"backbone.stay_init must be in (0, 1), got {stay_init}; e.g. 0.97")
        for name, value in (("w_obs", w_obs), ("w_vol", w_vol), ("weight_decay", weight_decay)):
            if not value >= 0:
                raise QuantmlInputError(f"backbone.{name} must be >= 0, got {value}")
        if not lr > 0:
            raise QuantmlInputError(f"backbone.lr must be > 0, got {lr}; use e.g. 5e-3")
        if not clip_features > 0:
            raise QuantmlInputError(f"backbone.clip_features must be > 0, got {clip_features}")
        self.n_regimes, self.scope, self.obs_features = int(n_regimes), str(scope), obs_features
        self.hidden_size, self.dropout, self.stay_init = int(hidden_size), float(dropout), float(stay_init)
        self.chunk_len, self.burn_in, self.batch_size = int(chunk_len), int(burn_in), int(batch_size)
        self.lr, self.weight_decay, self.grad_clip = float(lr), float(weight_decay), grad_clip
        self.max_epochs, self.patience = int(max_epochs), int(patience)
        self.w_obs, self.w_vol, self.n_samples = float(w_obs), float(w_vol), int(n_samples)
        self.clip_features, self.num_threads = float(clip_features), num_threads

    # ------------------------------------------------------------------ fit
    def fit(self, train: SampleSet, valid: SampleSet | None = None) -> VSSMForecaster:
        data = train.data
        rows = _labelled(data, train.rows)
        if not len(rows):
            raise QuantmlInputError("backbone=vssm got no training row with every horizon labelled; use more data")
        self.feature_names_ = list(data.feature_names)
        self.obs_columns_ = resolve_obs_columns(self.obs_features, self.feature_names_)
        self.scaler_ = VSSMScaler(self.clip_features).fit(data, rows)
        vrows = _labelled(data, valid.rows) if valid is not None and len(valid) else np.zeros(0, np.int64)
        fixed = (self.fixed_capacity or {}).get(CAPACITY_EPOCHS)
        epochs = int(fixed) if fixed else self.max_epochs
        early = fixed is None and len(vrows) > 0
        tracks = Tracks.of(data, self.scope)
        with torch_threads(self.num_threads):
            torch.manual_seed(self.seed)
            rng = np.random.default_rng([self.seed, 0x7353])
            net = VSSMNet(
                len(self.feature_names_) + 2,
                len(self.obs_columns_),
                len(self.horizons),
                self.n_regimes,
                self.hidden_size,
                self.dropout,
                self.stay_init,
            )
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            best, best_state, best_epoch, bad = math.inf, None, epochs, 0
            self.history_ = []
            for epoch in range(1, epochs + 1):
                net.train()
                stretches = chunk_stretches(
                    tracks, rows, self.chunk_len, self.burn_in, int(rng.integers(self.chunk_len))
                )
                order = rng.permutation(len(stretches))
                losses = []
                for lo in range(0, len(order), self.batch_size):
                    loss = self._loss(net, data, tracks, [stretches[i] for i in order[lo : lo + self.batch_size]], rows)
                    opt.zero_grad()
                    loss.backward()
                    if self.grad_clip:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), float(self.grad_clip))
                    opt.step()
                    losses.append(float(loss.detach()))
                record = {"epoch": epoch, "train_loss": float(np.mean(losses))}
                if early:
                    record["valid_loss"] = self._eval_loss(net, data, tracks, vrows)
                    if record["valid_loss"] < best - 1e-6:
                        best, best_state, best_epoch, bad = (
                            record["valid_loss"],
                            copy.deepcopy(net.state_dict()),
                            epoch,
                            0,
                        )
                    else:
                        bad += 1
                self.history_.append(record)
                if early and bad >= self.patience:
                    break
            if best_state is not None:
                net.load_state_dict(best_state)
        self.net_ = net.eval()
        with torch.no_grad():
            self.order_ = np.argsort(net.obs_log_scale.mean(1).numpy(), kind="stable")  # calm -> turbulent
            self.transition_ = net.transition().numpy()[np.ix_(self.order_, self.order_)].astype(np.float64)
        self.capacity_ = {CAPACITY_EPOCHS: int(best_epoch)}
        self.draws_ = common_draws(self.seed, self.n_samples)
        self.fit_posterior_ = self.regime_posterior(train)
        return self

    def _filter(self, net: VSSMNet, data: PanelData, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward filter over a batch's grid: ``(log_post [B, L, K], log_evidence [B, L])``."""
        z, finite = self.scaler_.features(data, batch.rows)
        cols = self.obs_columns_
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a))  # noqa: E731
        return net.filter(t(z[:, cols]), t(finite[:, cols].astype(np.float32)), t(batch.b), t(batch.l), batch.shape)

    def _loss(self, net: VSSMNet, data: PanelData, tracks: Tracks, stretches, counted: np.ndarray) -> torch.Tensor:
        """Minus the one-step evidence ``log p(o_t, y_t | o_<t)`` of the counted rows, per row."""
        return self._loss_sum(net, data, gather(tracks, stretches, counted))[0]

    def _loss_sum(self, net: VSSMNet, data: PanelData, batch: Batch) -> tuple[torch.Tensor, int]:
        log_post, log_ev = self._filter(net, data, batch)
        c = batch.counted
        rows, b, l = batch.rows[c], torch.as_tensor(batch.b[c]), torch.as_tensor(batch.l[c])  # noqa: E741
        y_ret = np.nan_to_num(data.y_ret[rows] / self.scaler_.ret_scale_)
        y_logvol = np.log(np.maximum(np.nan_to_num(data.y_vol[rows]), _VOL_FLOOR) / self.scaler_.vol_scale_)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        lik = label_log_lik(net.emissions(t(self._inputs(data, rows))), t(y_ret), t(y_logvol), self.w_vol)
        label = torch.logsumexp(log_post[b, l] + lik, dim=-1).sum()
        cells = np.unique(batch.b[c] * (batch.shape[1] + 1) + batch.l[c])  # each counted step's evidence once
        cb, cl = torch.as_tensor(cells // (batch.shape[1] + 1)), torch.as_tensor(cells % (batch.shape[1] + 1))
        evidence = log_ev[cb, cl].sum()
        n = max(int(c.sum()), 1)
        return -(self.w_obs * evidence + label) / n, n

    def _eval_loss(self, net: VSSMNet, data: PanelData, tracks: Tracks, rows: np.ndarray) -> float:
        net.eval()
        stretches = chunk_stretches(tracks, rows, self.chunk_len, self.burn_in, 0)
        total, n = 0.0, 0
        with torch.no_grad():
            for lo in range(0, len(stretches), 4 * self.batch_size):
                loss, m = self._loss_sum(net, data, gather(tracks, stretches[lo : lo + 4 * self.batch_size], rows))
                total += float(loss) * m
                n += m
        return total / max(n, 1)

    def _inputs(self, data: PanelData, rows: np.ndarray) -> np.ndarray:
        z, _ = self.scaler_.features(data, rows)
        return np.concatenate([z, self.scaler_.static(data, rows)], axis=1)

    # ------------------------------------------------------------------ predict
    def _check_panel(self, data: PanelData) -> None:
        if list(data.feature_names) != self.feature_names_:
            missing = [f for f in self.feature_names_ if f not in data.feature_names]
            raise QuantmlInputError(
                "backbone=vssm was fitted on other features than the panel to predict has"
                + (f" (missing: {missing[:10]})" if missing else " (same names, other order)")
                + "; build the panel with the feature set the model was trained on"
            )

    def filtered_posterior(self, data: PanelData, rows: np.ndarray) -> np.ndarray:
        """float64 [len(rows), K]: p(z_t = k | o_1..o_t) of each row (in the order of ``rows``), from the
        exact forward filter over its segment's bars up to it; states ordered calm -> turbulent."""
        self._check_panel(data)
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), self.n_regimes))
        if not len(rows):
            return out
        tracks = Tracks.of(data, self.scope)
        stretches = full_stretches(tracks, rows)
        batch = gather(tracks, stretches)
        with torch_threads(self.num_threads), torch.no_grad():
            log_post, _ = self._filter(self.net_, data, batch)
        post = np.exp(log_post.numpy().astype(np.float64))[..., self.order_]
        where = {tr: i for i, (tr, _, _, _) in enumerate(stretches)}
        b = np.array([where[int(tr)] for tr in tracks.track[rows]], dtype=np.int64)
        return post[b, tracks.step[rows]]

    def _emissions(self, data: PanelData, rows: np.ndarray) -> dict[str, np.ndarray]:
        with torch_threads(self.num_threads), torch.no_grad():
            em = self.net_.emissions(torch.as_tensor(self._inputs(data, rows)))
        return {k: v.numpy().astype(np.float64)[..., self.order_] for k, v in em.items()}

    def predict(self, data: SampleSet) -> Forecast:
        panel, rows = data.data, np.asarray(data.rows, dtype=np.int64)
        n, H = len(rows), len(self.horizons)
        w = self.filtered_posterior(panel, rows)
        em = self._emissions(panel, rows) if n else None
        er, pu, vol = np.zeros((n, H)), np.zeros((n, H)), np.zeros((n, H))
        q = np.zeros((3, n, H))
        u, eps = self.draws_
        for j in range(H if n else 0):
            rs, vs = self.scaler_.ret_scale_[j], self.scaler_.vol_scale_[j]
            mean, sd = em["mu"][:, j] * rs, np.exp(em["log_sigma"][:, j]) * rs
            er[:, j] = mixture_mean(w, mean)
            pu[:, j] = mixture_prob_up(w, mean, sd)
            vol[:, j] = mixture_mean(w, np.exp(em["nu"][:, j] + 0.5 * np.exp(2 * em["log_tau"][:, j])) * vs)
            q[:, :, j] = sampled_quantiles(w, mean, sd, u, eps)
        diagnostics = {regime_column(k): np.repeat(w[:, k : k + 1], H, axis=1) for k in range(self.n_regimes)}
        return Forecast(self.horizons, er, q[0], q[1], q[2], pu, vol, diagnostics=diagnostics)

    def regime_posterior(self, data: SampleSet | PanelData) -> pd.DataFrame:
        """The filtered regime posterior of every row of ``data`` (a :class:`SampleSet`, or a whole
        :class:`PanelData`): ``symbol``, ``timestamp``, ``regime_p0`` .. ``regime_p{K-1}``, one row per
        panel row in the given order. Values at ``t`` read bars ``<= t`` only (features for other models:
        docs/vssm.md)."""
        if isinstance(data, PanelData):
            data = data.subset(np.arange(data.n_rows))
        post = self.filtered_posterior(data.data, data.rows)
        keys = data.data.keys.iloc[np.asarray(data.rows, dtype=np.int64)]
        out = pd.DataFrame({SYMBOL: keys[SYMBOL].to_numpy(), TIMESTAMP: keys[TIMESTAMP].to_numpy()})
        for k in range(self.n_regimes):
            out[regime_column(k)] = post[:, k]
        return out

    @property
    def uses_residual_quantiles(self) -> bool:
        """False: P10/P50/P90 are sampled from the predictive mixture (the calibrator only shifts them)."""
        return False

    def figures(self) -> dict:
        """The filtered posterior per bar over the fit rows, and the transition matrix."""
        if getattr(self, "fit_posterior_", None) is None:
            return {}
        cols = [regime_column(k) for k in range(self.n_regimes)]
        return {
            POSTERIOR_FIGURE: posterior_figure(self.fit_posterior_, cols),
            TRANSITION_FIGURE: transition_figure(self.transition_),
        }


def resolve_obs_columns(patterns: list[str], names: list[str]) -> list[int]:
    """Positions of the features matching ``patterns`` (names or globs), in feature order."""
    cols = [i for i, name in enumerate(names) if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    if not cols:
        raise QuantmlInputError(
            f"backbone.obs_features={patterns} matches no feature of the panel ({names[:12]}"
            f"{' ...' if len(names) > 12 else ''}); name features the feature set builds, e.g. "
            "backbone.obs_features=[ret_1] with the returns block"
        )
    return cols


def _labelled(data: PanelData, rows) -> np.ndarray:
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    ok = np.isfinite(data.y_ret[rows]).all(1) & np.isfinite(data.y_vol[rows]).all(1)
    return rows[ok]
