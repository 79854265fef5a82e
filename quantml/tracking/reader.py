"""The one reader of the MLflow run layout (``quantml.contracts.run_layout``).

Tune, the registry's gates and serving read runs only through :class:`RunReader`:
a parent run with a kind check (a fold run -> "tune its parent run_id=..."), its layout
version, its resolved config (``config/config.yaml``, loaded with OmegaConf: configuration
is read back from the logged config, never from param strings), its out-of-sample
predictions, its fold runs and its derived values.

Layout ``"1"`` (quantml 0.1, no ``quantml.layout_version`` tag) is read where it has the
same record: tags, fold runs, the OOS parquet, ``config/config.yaml``; its
``periods_per_year`` is the ``derived.periods_per_year`` param. What it lacks is refused
with the layout version and the fix: re-run ``quantml train``.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from quantml.contracts import HORIZON_SEPARATOR, QuantmlInputError
from quantml.contracts import run_layout as L

RETRAIN = "re-run `quantml train` with this quantml version"


class RunLayoutError(QuantmlInputError):
    """A run that is not what the caller needs (wrong kind, missing record, unknown layout)."""


@dataclass
class FoldRun:
    """One fold (child) run: its id, test window, metrics."""

    run_id: str
    fold_id: str
    test_start: str | None
    test_end: str | None
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    status: str = "FINISHED"

    def window(self, match_on: str) -> tuple:
        if match_on == "time_range":
            return (self.test_start, self.test_end)
        return (self.fold_id,)

    def label(self) -> str:
        if self.test_start and self.test_end:
            return f"fold {self.fold_id} [{self.test_start[:10]}..{self.test_end[:10]}]"
        return f"fold {self.fold_id}"


@dataclass
class ParentRun:
    """A parent run's record; artifacts are read on demand through its reader."""

    run_id: str
    experiment_id: str
    run_name: str
    status: str
    artifact_uri: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    reader: RunReader = field(repr=False, default=None)

    @property
    def layout_version(self) -> str:
        return L.layout_version(self.tags)

    @property
    def kind(self) -> str:
        return self.tags.get(L.TAG_KIND, L.KIND_PARENT)

    @property
    def horizons(self) -> list[str]:
        """``quantml.horizons`` in config order, else the horizons of the logged metrics."""
        return L.split_list_tag(self.tags.get(L.TAG_HORIZONS))

    def config(self) -> DictConfig:
        return self.reader.resolved_config(self.run_id, self.layout_version)

    def oos_predictions(self) -> pd.DataFrame:
        return self.reader.oos_predictions(self.run_id)

    def folds(self) -> list[FoldRun]:
        return self.reader.folds(self)

    def leakage_audit(self) -> dict | None:
        return self.reader.leakage_audit(self.run_id)

    def market(self) -> pd.DataFrame | None:
        """Every development bar (``predictions/market.parquet``), or None for runs without it."""
        return self.reader.market(self.run_id)

    def has_oos_predictions(self) -> bool:
        return self.reader.has_artifact(self.run_id, L.OOS_ARTIFACT)

    def derived(self) -> dict:
        return self.reader.derived(self)

    @property
    def metrics_version(self) -> str:
        """``quantml.metrics_version``; a run without it (quantml 0.1) computed version ``"1"``."""
        return str(self.tags.get(L.TAG_METRICS_VERSION) or "1")

    @property
    def validation(self) -> str:
        """The validation method: tag ``quantml.validation``, else the resolved config's
        ``validation.method``; ``""`` when neither records it."""
        tagged = self.tags.get(L.TAG_VALIDATION)
        if tagged:
            return str(tagged)
        try:
            return str((self.config().get("validation") or {}).get("method") or "")
        except QuantmlInputError:
            return ""

    def walk_forward_problem(self) -> str | None:
        """Why this run's out-of-sample predictions are not tradable, or None for walk-forward.

        Purged K-fold and CPCV fold models train on data later than their test block, so a
        cut of their OOS predictions is not out of sample and their backtests are not tradable."""
        method = self.validation
        if not method or method in L.TRADABLE_VALIDATIONS:
            return None
        return (
            f"run {self.run_id} was validated with {method}: its fold models train on data later than "
            f"their test blocks, so its out-of-sample predictions are not out of sample in time and "
            f"their after-cost backtests are not tradable; re-run `quantml train validation={L.WALK_FORWARD}`"
        )

    def lockbox_metrics(self) -> dict[str, float]:
        """The lockbox (``holdout_*`` metrics of this parent run); every read that finds some is
        counted in the parent tag ``quantml.lockbox_reads``."""
        found = {k: v for k, v in self.metrics.items() if k.startswith(L.LOCKBOX_PREFIX)}
        if found:
            self.reader.count_lockbox_read(self)
        return found

    def periods_per_year(self) -> float | None:
        """As the run derived it (layout 2: tag / ``derived.json``; layout 1: ``derived.*`` param)."""
        value = self.derived().get("periods_per_year")
        return float(value) if _number(value) else None


def _number(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _int_or_inf(text: str) -> float:
    try:
        return int(text)
    except ValueError:
        return math.inf


class RunReader:
    """Typed reads of quantml runs from one tracking store."""

    def __init__(self, tracking_uri: str | None = None, client: mlflow.MlflowClient | None = None) -> None:
        self.client = client or mlflow.MlflowClient(tracking_uri)
        self.tracking_uri = self.client.tracking_uri

    # -- runs ---------------------------------------------------------------------------------------
    def get_run(self, run_id: str):
        """The raw MLflow run, or a clear error naming the store."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            raise RunLayoutError(
                f"MLflow run {run_id!r} not found: it is not a run of the tracking store {self.tracking_uri}; "
                f"check the id (mlflow ui), or point tracking_uri= / MLFLOW_TRACKING_URI at the store the run "
                f"was logged to"
            ) from exc

    def parent(self, run_id: str, action: str = "read", kinds: tuple[str, ...] = (L.KIND_PARENT,)) -> ParentRun:
        """The parent run ``run_id``; a child run is refused with its parent's id in the message.

        ``action`` is the verb of the message (``tune``, ``register``, ...). A run without a
        kind tag is read as a parent (hand-made or very old runs). ``kinds``: the run kinds
        accepted (the registry also takes ``stack`` runs: :data:`run_layout.REGISTRABLE_KINDS`).
        """
        if not run_id:
            raise RunLayoutError(
                f"no run to {action}: pass run_id=<parent run id of a quantml train job> "
                "(find it in `mlflow ui` or `mlflow runs list`)"
            )
        run = self.get_run(run_id)
        tags = dict(run.data.tags)
        version = L.layout_version(tags)
        if version not in L.KNOWN_LAYOUT_VERSIONS:
            raise RunLayoutError(
                f"run {run_id} has run layout version {version}, which this quantml does not know "
                f"(it reads {', '.join(L.KNOWN_LAYOUT_VERSIONS)}); upgrade quantml, or {RETRAIN}"
            )
        kind = tags.get(L.TAG_KIND, L.KIND_PARENT)
        if kind not in kinds:
            parent = tags.get(L.MLFLOW_PARENT_RUN_ID, "<parent>")
            raise RunLayoutError(
                f"run {run_id} is a {kind} run; {action} its parent run {parent} instead (run_id={parent})"
            )
        return self._parent_record(run)

    def children(self, parent: ParentRun | str, kind: str | None = None) -> list:
        """Raw child runs of ``parent`` (optionally of one kind)."""
        parent = parent if isinstance(parent, ParentRun) else self.parent(parent)
        found = self.client.search_runs(
            [parent.experiment_id], filter_string=f"tags.{L.MLFLOW_PARENT_RUN_ID} = '{parent.run_id}'", max_results=5000
        )
        if kind is None:
            return list(found)
        # layout 1 child runs without a kind tag were folds
        return [r for r in found if r.data.tags.get(L.TAG_KIND, L.KIND_FOLD) == kind]

    def folds(self, parent: ParentRun | str) -> list[FoldRun]:
        """The fold runs of ``parent`` in fold order, with their test windows and metrics."""
        out = []
        for child in self.children(parent, L.KIND_FOLD):
            tags, params = child.data.tags, child.data.params
            fold_id = tags.get(L.TAG_FOLD_ID, params.get(L.PARAM_FOLD_ID, child.info.run_name))
            out.append(
                FoldRun(
                    run_id=child.info.run_id,
                    fold_id=str(fold_id),
                    test_start=params.get(L.PARAM_TEST_START),
                    test_end=params.get(L.PARAM_TEST_END),
                    metrics=dict(child.data.metrics),
                    tags=dict(tags),
                    status=child.info.status,
                )
            )
        out.sort(key=lambda f: (_int_or_inf(f.fold_id), f.fold_id))
        return out

    def count_lockbox_read(self, parent: ParentRun) -> int:
        """Increment the parent's ``quantml.lockbox_reads`` tag (the one write of the reader:
        reading the lockbox is what it records); returns the new count."""
        fresh = self.get_run(parent.run_id).data.tags.get(L.TAG_LOCKBOX_READS, "0")
        count = (int(fresh) if str(fresh).isdigit() else 0) + 1
        self.client.set_tag(parent.run_id, L.TAG_LOCKBOX_READS, str(count))
        parent.tags[L.TAG_LOCKBOX_READS] = str(count)
        return count

    # -- searching parent runs (sweep reports, the trial count of the deflated Sharpe ratio) --------
    def _parent_record(self, run) -> ParentRun:
        return ParentRun(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            run_name=run.info.run_name or "",
            status=run.info.status,
            artifact_uri=run.info.artifact_uri or "",
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            reader=self,
        )

    def search_parents(self, filter_string: str = "", experiment_ids: list[str] | None = None) -> list[ParentRun]:
        """Every parent run (tag ``quantml.kind=parent``, any status: finished, failed, pruned, running)
        matching the MLflow ``filter_string``, in ``experiment_ids`` (None: every experiment of the
        store), oldest first."""
        if experiment_ids is None:
            experiment_ids = [e.experiment_id for e in self.client.search_experiments()]
        if not experiment_ids:
            return []
        kind = f"tags.`{L.TAG_KIND}` = '{L.KIND_PARENT}'"
        query = f"{kind} and {filter_string}" if filter_string else kind
        out, token = [], None
        while True:
            page = self.client.search_runs(
                list(experiment_ids),
                filter_string=query,
                order_by=["attributes.start_time ASC"],
                max_results=1000,
                page_token=token,
            )
            out += [self._parent_record(r) for r in page]
            token = page.token
            if not token:
                break
        return out

    def finished_with_identity(self, identity: str, experiment_id: str) -> ParentRun | None:
        """The newest FINISHED parent run of ``experiment_id`` whose ``quantml.run_identity`` is
        ``identity`` (what ``resume=true`` skips a job for), or None."""
        found = self.search_parents(
            f"tags.`{L.TAG_RUN_IDENTITY}` = '{_quoted(identity)}' and attributes.status = 'FINISHED'",
            [str(experiment_id)],
        )
        return found[-1] if found else None

    def sweep_parents(self, sweep_dir: str) -> list[ParentRun]:
        """The parent runs of one ``quantml train -m`` sweep: tag ``quantml.sweep_dir`` equal to
        ``sweep_dir`` (as the sweep recorded it), in any experiment of the store."""
        return self.search_parents(f"tags.`{L.TAG_SWEEP_DIR}` = '{_quoted(sweep_dir)}'")

    def experiment_parents(self, experiment: str) -> list[ParentRun]:
        """Every parent run of the MLflow experiment named ``experiment``."""
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in self.client.search_experiments())
            raise RunLayoutError(
                f"no experiment {experiment!r} in the tracking store {self.tracking_uri} "
                f"(it has: {', '.join(names) or 'none'}); pass experiment=NAME of one of them"
            )
        return self.search_parents(experiment_ids=[exp.experiment_id])

    def parents_on_fingerprint(self, fingerprint: str) -> list[ParentRun]:
        """Every parent run of the store (every experiment, every status: earlier sweeps, pruned
        and failed trials included) trained on the data ``quantml.data_fingerprint=fingerprint``."""
        return self.search_parents(f"tags.`{L.TAG_DATA_FINGERPRINT}` = '{_quoted(fingerprint)}'")

    # -- artifacts ----------------------------------------------------------------------------------
    def _download(self, run_id: str, path: str, tmp: str) -> Path | None:
        try:
            return Path(self.client.download_artifacts(run_id, path, tmp))
        except (MlflowException, OSError):
            return None

    def per_symbol(self, parent: ParentRun | str) -> pd.DataFrame:
        """Every fold run's ``metrics/per_symbol.csv`` (IC, rank IC, hit rate per symbol and horizon of
        its test block) with a ``fold`` column; empty for runs logged before these tables."""
        parts = []
        with tempfile.TemporaryDirectory() as tmp:
            for fold in self.folds(parent):
                local = self._download(fold.run_id, L.PER_SYMBOL_ARTIFACT, f"{tmp}/{fold.run_id}")
                if local is not None and local.is_file():
                    parts.append(pd.read_csv(local, dtype={"symbol": str, "horizon": str}).assign(fold=fold.fold_id))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def resolved_config(self, run_id: str, layout: str | None = None) -> DictConfig:
        """The run's resolved config from ``config/config.yaml``."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, L.CONFIG_ARTIFACT, tmp)
            if local is None or not local.is_file():
                layout = layout or L.layout_version(self.get_run(run_id).data.tags)
                raise RunLayoutError(
                    f"run {run_id} (run layout version {layout}) has no {L.CONFIG_ARTIFACT}, so its configuration "
                    f"cannot be read back (quantml reads the logged resolved config, not param strings); "
                    f"{RETRAIN}"
                )
            return OmegaConf.load(local)

    def oos_predictions(self, run_id: str) -> pd.DataFrame:
        """The run's ``predictions/oos_predictions.parquet``."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, L.OOS_ARTIFACT, tmp)
            if local is None or not local.is_file():
                raise RunLayoutError(
                    f"run {run_id} has no {L.OOS_ARTIFACT}: use the parent run of a finished "
                    "quantml train job (its out-of-sample predictions are logged there)"
                )
            return pd.read_parquet(local)

    def has_artifact(self, run_id: str, path: str) -> bool:
        """Whether the run logged the artifact file ``path`` (listing only, nothing downloaded)."""
        folder, _, _ = path.rpartition("/")
        try:
            return any(f.path == path for f in self.client.list_artifacts(run_id, folder or None))
        except (MlflowException, OSError):
            return False

    def market(self, run_id: str) -> pd.DataFrame | None:
        """The run's market calendar ``predictions/market.parquet`` (``symbol``, ``timestamp`` UTC,
        ``ret_next_bar``: every development bar, the PnL calendar of the run's books), or None when
        the run predates it (its books then run on the forecast bars only)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, L.MARKET_ARTIFACT, tmp)
            if local is None or not local.is_file():
                return None
            market = pd.read_parquet(local)
        require = [c for c in ("symbol", "timestamp", "ret_next_bar") if c not in market.columns]
        if require:
            raise RunLayoutError(f"{L.MARKET_ARTIFACT} of run {run_id} lacks column(s) {require}; {RETRAIN}")
        ts = pd.to_datetime(market["timestamp"], utc=True)
        return market.assign(timestamp=ts)[["symbol", "timestamp", "ret_next_bar"]]

    def leakage_audit(self, run_id: str) -> dict | None:
        """``audit/leakage_audit.json``, or None when absent or unreadable."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, L.AUDIT_ARTIFACT, tmp)
            if local is None:
                return None
            try:
                return json.loads(local.read_text())
            except (OSError, ValueError):
                return None

    def fold_params(self, parent: ParentRun | str) -> dict[str, dict[str, str]]:
        """``{fold id: params}`` of the parent's fold runs (``train_start``, ``train_end``,
        ``valid_start``, ``valid_end``, ``test_start``, ``test_end``, counts): the windows each fold
        model was fitted and tested on, as logged (UTC strings)."""
        out: dict[str, dict[str, str]] = {}
        for child in self.children(parent, L.KIND_FOLD):
            tags, params = child.data.tags, dict(child.data.params)
            fold_id = tags.get(L.TAG_FOLD_ID, params.get(L.PARAM_FOLD_ID, child.info.run_name))
            out[str(fold_id)] = params
        return out

    def fold_plan(self, run_id: str) -> dict | None:
        """``folds/fold_plan.json`` (each block's first and last bar, each fold's blocks, the
        lockbox start), or None when the run has none (before calendar-anchored fold plans)."""
        with tempfile.TemporaryDirectory() as tmp:
            local = self._download(run_id, L.FOLD_PLAN_ARTIFACT, tmp)
            if local is None or not local.is_file():
                return None
            try:
                return json.loads(local.read_text())
            except (OSError, ValueError):
                return None

    def derived(self, parent: ParentRun | str) -> dict:
        """Values the run derived from its data: ``config/derived.json`` (layout 2), else the
        ``quantml.periods_per_year`` tag, else (layout 1) the ``derived.*`` params."""
        parent = parent if isinstance(parent, ParentRun) else self.parent(parent)
        out: dict = {}
        if parent.layout_version != L.LEGACY_LAYOUT_VERSION:
            with tempfile.TemporaryDirectory() as tmp:
                local = self._download(parent.run_id, L.DERIVED_ARTIFACT, tmp)
                if local is not None:
                    try:
                        out = dict(json.loads(local.read_text()))
                    except (OSError, ValueError):
                        out = {}
            if "periods_per_year" not in out and _number(parent.tags.get(L.TAG_PERIODS_PER_YEAR)):
                out["periods_per_year"] = float(parent.tags[L.TAG_PERIODS_PER_YEAR])
        else:
            for key, value in parent.params.items():
                if key.startswith(L.DERIVED_PARAM_PREFIX):
                    out[key[len(L.DERIVED_PARAM_PREFIX) :]] = float(value) if _number(value) else value
        return out


def _quoted(value: str) -> str:
    """A value inside a single-quoted MLflow filter string."""
    return str(value).replace("'", "\\'")


def metric_horizons(metrics: dict[str, float]) -> set[str]:
    """Horizons named in ``<split>_<metric>/<horizon>`` metric keys."""
    return {k.partition(HORIZON_SEPARATOR)[2] for k in metrics if HORIZON_SEPARATOR in k} - {""}
