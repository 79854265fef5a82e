"""The MLflow run layout: the names train, tune, the registry and serving agree on.

Everything quantml writes to MLflow is named here, once: the ``quantml.*`` tag keys, the
run kinds, the params and artifacts the readers rely on, the registry's aliases and
version tags. ``quantml.tracking.writer`` is the one writer of this layout and
``quantml.tracking.reader`` the one reader; nothing else spells these strings.

Layout versions: ``"2"`` (this one) is recorded on every run as ``quantml.layout_version``.
Runs logged by quantml 0.1 carry no such tag and read as layout ``"1"``: the same parent/
fold tags, the resolved config at :data:`CONFIG_ARTIFACT`, derived values only as
``derived.*`` params.

Pure constants and tiny helpers: imports nothing from quantml outside ``contracts``.
"""

from __future__ import annotations

from collections.abc import Mapping

LAYOUT_VERSION = "2"
LEGACY_LAYOUT_VERSION = "1"  # quantml 0.1: no layout tag
KNOWN_LAYOUT_VERSIONS = (LEGACY_LAYOUT_VERSION, LAYOUT_VERSION)

TAG_PREFIX = "quantml."


def quantml_tag(name: str) -> str:
    """``"kind" -> "quantml.kind"``."""
    return f"{TAG_PREFIX}{name}"


# -- run kinds (tag quantml.kind) ---------------------------------------------------------------
KIND_PARENT = "parent"  # one per train job: config, OOS predictions, report, the model
KIND_FOLD = "fold"  # nested under a parent: one validation fold
KIND_TUNE = "tune"  # nested under a parent: a threshold study
KIND_STACK = "stack"  # one per `quantml stack`: a served, registrable Z-layer over parent runs
KIND_MONITOR = "monitor"  # one per `quantml monitor`: checks of a version's logs (docs/monitoring.md)
KIND_ROUTE = "route"  # one per route-map change: the run a map version's pyfunc is logged on
KIND_SWEEP = "sweep"  # one per `quantml sweep-report`: the leaderboard of a sweep's parent runs
RUN_KINDS = (KIND_PARENT, KIND_FOLD, KIND_TUNE, KIND_STACK, KIND_MONITOR, KIND_SWEEP, KIND_ROUTE)

# -- run tags ---------------------------------------------------------------------------------------
# every run
TAG_KIND = quantml_tag("kind")
TAG_LAYOUT_VERSION = quantml_tag("layout_version")
TAG_ERROR = quantml_tag("error")  # "<Type>: <message>" of a FAILED run
TAG_PRUNED = quantml_tag("pruned")  # "true" on a run ended KILLED by Optuna's pruner
# parent runs: provenance
TAG_METRICS_VERSION = quantml_tag("metrics_version")
TAG_SEED = quantml_tag("seed")
# threads the backbone trained on (n_jobs resolved: LightGBM is deterministic for any count)
TAG_THREADS = quantml_tag("threads")
TAG_GIT_COMMIT = quantml_tag("git_commit")
TAG_SCHEMA_VERSION = quantml_tag("schema_version")
TAG_VALIDATION = quantml_tag("validation")
TAG_HORIZONS = quantml_tag("horizons")  # comma-separated, in config order
TAG_SWEEP_DIR = quantml_tag("sweep_dir")
TAG_OUTPUT_DIR = quantml_tag("output_dir")
TAG_MODEL_NAME = quantml_tag("model_name")  # optional: default registered-model name
# parent runs: what the data turned out to be
TAG_DATA_FINGERPRINT = quantml_tag("data_fingerprint")
TAG_FEATURE_CONTRACT_HASH = quantml_tag("feature_contract_hash")
TAG_IC_MODE = quantml_tag("ic_mode")
TAG_BAR = quantml_tag("bar")
TAG_N_SYMBOLS = quantml_tag("n_symbols")
TAG_N_FEATURES = quantml_tag("n_features")
TAG_PERIODS_PER_YEAR = quantml_tag("periods_per_year")
TAG_LEAKAGE_AUDIT = quantml_tag("leakage_audit")  # "clean" | "violations"
TAG_N_FOLDS = quantml_tag("n_folds")
TAG_MONITOR = quantml_tag("monitor")
TAG_BEST_MONITOR = quantml_tag("best_monitor")
# "true" | "false": false for purged K-fold / CPCV (folds train on data after their test block)
TAG_TRADABLE = quantml_tag("tradable")
# fold runs
TAG_FOLD_ID = quantml_tag("fold_id")
TAG_PATH_IDS = quantml_tag("path_ids")  # comma-separated CPCV path ids
# tune runs (and the model-version tags a study attaches)
TAG_SOURCE_RUN = quantml_tag("source_run")
TAG_OBJECTIVE = quantml_tag("objective")
TAG_SIGNAL = quantml_tag("signal")  # JSON of SignalConfig.to_dict()
TAG_ALLOCATOR = quantml_tag("allocator")  # JSON of AllocatorConfig.to_dict()
TAG_TUNE_RUN = quantml_tag("tune_run")
TAG_TUNE_HOLDOUT_SHARPE = quantml_tag("tune_holdout_sharpe")

TAG_OPTUNA_STUDY_NAME = "optuna.study_name"  # tune runs: where the study lives
TAG_OPTUNA_STORAGE = "optuna.storage"  # (the storage URL with any password redacted)

CHOICE_TAG_PREFIX = "choice."  # choice.<group> = the Hydra config-group choice


def choice_tag(group: str) -> str:
    return f"{CHOICE_TAG_PREFIX}{group}"


# MLflow's own tags quantml writes or reads
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_NOTE = "mlflow.note.content"  # the run's description in the UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the MLflow 3 UI opens on training runs

# -- params the readers rely on -------------------------------------------------------------------
# fold runs
PARAM_FOLD_ID = "fold_id"
PARAM_TEST_START = "test_start"
PARAM_TEST_END = "test_end"
# parent runs: the flattened resolved config is logged as params for the UI's filters and
# comparisons; readers read the configuration from CONFIG_ARTIFACT, never from these.
DERIVED_PARAM_PREFIX = "derived."
LEGACY_PARAM_PERIODS_PER_YEAR = "derived.periods_per_year"  # layout 1's only record of it

# -- artifacts ---------------------------------------------------------------------------------------
CONFIG_ARTIFACT = "config/config.yaml"  # the resolved Hydra config
DERIVED_ARTIFACT = "config/derived.json"  # values derived from the data: periods_per_year, ...
OOS_ARTIFACT = "predictions/oos_predictions.parquet"
AUDIT_ARTIFACT = "audit/leakage_audit.json"
FOLD_METRICS_ARTIFACT = "report/fold_metrics.csv"
REPORT_BY_SYMBOL_HORIZON_ARTIFACT = "report/report_by_symbol_horizon.csv"
REPORT_HTML_ARTIFACT = "report/report.html"
FEATURE_IMPORTANCE_ARTIFACT = "report/feature_importance.csv"
ERROR_ARTIFACT = "error.txt"
MODEL_ARTIFACT = "model"  # runs:/<parent run id>/model, the quantml pyfunc

# -- registry --------------------------------------------------------------------------------------
ALIAS_CANDIDATE = "candidate"
ALIAS_ACTIVE = "active"
ALIAS_CHAMPION = "champion"  # the 0.1 name of "active": set beside it for one release
VERSION_TAG_RUN_ID = quantml_tag("run_id")  # the version's source parent run
VERSION_TAG_METRIC_PREFIX = quantml_tag("metric.")  # headline metrics: quantml.metric.<name>
EVENT_TAG_PREFIX = quantml_tag("event.")  # registered-model tag per promotion/rollback
LOCK_TAG = quantml_tag("lock")
LOCK_SUFFIX = ".quantml-lock"

# -- appended: one honest chain --------------------------------------------------------------------
# parent runs: how many times the lockbox (``holdout_*`` metrics of the parent) was read
TAG_LOCKBOX_READS = quantml_tag("lockbox_reads")
# model-version tags of a tuned version (a new version whose bundle carries the settings)
TAG_TUNE_SELECTION_SHARPE = quantml_tag("tune_selection_sharpe")  # replaces tune_holdout_sharpe
TAG_SOURCE_VERSION = quantml_tag("source_version")  # the version the tuned one was copied from
# validation methods whose fold models never train on later data: their OOS backtests are tradable
WALK_FORWARD = "walk_forward"
TRADABLE_VALIDATIONS = (WALK_FORWARD,)
# bundle metadata: bars a symbol needs before its features are all finite
WARMUP_BARS = "warmup_bars"
LOCKBOX_PREFIX = "holdout_"  # lockbox metrics on the parent run: holdout_<metric>/<h>
TUNED_MODEL_ARTIFACT = "tuned_model"  # a tuned copy logged on the source run (no tune run to hold it)

# -- the lockbox and the fold plan -------------------------------------------------------------------
SPLIT_HOLDOUT = "holdout"  # metric split of the lockbox: holdout_<metric>/<h> on the parent run
TAG_LOCKBOX_START = quantml_tag("lockbox_start")  # ISO UTC: first bar of the lockbox ("none": no lockbox)
TAG_LOCKBOX_SOURCE = quantml_tag("lockbox_source")  # pinned | recorded:<run id> | computed | none
TAG_FOLD_PLAN = quantml_tag("fold_plan")  # short hash of the fold plan's boundary dates
HOLDOUT_ARTIFACT = "predictions/holdout_predictions.parquet"  # the final model's lockbox predictions
# every development bar: symbol, timestamp, ret_next_bar (the book's PnL calendar, for tune and gates)
MARKET_ARTIFACT = "predictions/market.parquet"
FOLD_PLAN_ARTIFACT = "folds/fold_plan.json"  # calendar-anchored block boundaries and each fold's blocks
# bundle metadata: each symbol's first bar at training (ISO UTC): a served symbol whose panel
# starts there holds its whole history, so fewer bars than the warm-up are not a truncation
FIRST_BARS = "first_bars"
# bundle metadata: the final model's capacity taken from the folds (median best iteration / epoch)
CAPACITY = "capacity"


def layout_version(tags: Mapping[str, str]) -> str:
    """The run's layout version; a run without the tag (quantml 0.1) is layout ``"1"``."""
    return str(tags.get(TAG_LAYOUT_VERSION) or LEGACY_LAYOUT_VERSION)


def run_kind(tags: Mapping[str, str], default: str | None = None) -> str | None:
    return tags.get(TAG_KIND, default)


def split_list_tag(value: str | None) -> list[str]:
    """``"1d, 5d" -> ["1d", "5d"]`` (the comma lists of ``quantml.horizons`` / ``quantml.path_ids``)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def version_metric_tag(metric: str) -> str:
    return f"{VERSION_TAG_METRIC_PREFIX}{metric}"


# -- runs that outlive their process: heartbeat leases and resumable sweeps ------------------------
# a RUNNING parent run's lease: ISO UTC time until which its job is known alive (renewed while it
# lives); a RUNNING run whose lease has expired is marked FAILED the next time the store is used
TAG_LEASE_UNTIL = quantml_tag("lease_until")
TAG_LEASE_HOST = quantml_tag("lease_host")  # host:pid of the job holding the lease
# the identity of a train job: a hash of its resolved config without run names, output folders
# and `resume` itself; `resume=true` skips a job whose identity already FINISHED
TAG_RUN_IDENTITY = quantml_tag("run_identity")

# -- appended: the sweep leaderboard (quantml sweep-report) ------------------------------------------
TAG_SWEEP_RUN = quantml_tag("sweep_run")  # on each parent of a sweep: the id of its latest sweep run
TAG_N_TRIALS = quantml_tag("n_trials")  # sweep runs: the number of trials the DSR deflates by
TAG_TRIALS_SOURCE = quantml_tag("trials_source")  # sweep runs: how n_trials was counted (or given)
TAG_BEST_RUN = quantml_tag("best_run")  # sweep runs: the parent chosen on development figures
SWEEP_LEADERBOARD_CSV = "sweep/leaderboard.csv"  # one row per parent: mean ± std over folds, holdout beside
SWEEP_LEADERBOARD_HTML = "sweep/leaderboard.html"  # the same table, sortable, with the DSR and PBO below
SWEEP_SUMMARY = "sweep/summary.json"  # the DSR and PBO figures and their inputs
SWEEP_PBO_FIGURE = "figures/pbo_logits.png"  # the CSCV logit distribution

# -- appended: the stack (quantml stack, docs/stacking.md) --------------------------------------------
# stack runs (quantml.kind=stack): also the consistency fields they checked (data fingerprint, schema,
# metrics version, fold plan, lockbox start, validation, horizons) under the experts' own tag names
TAG_STACK_EXPERTS = quantml_tag("stack_experts")  # comma list of the experts' parent run ids, alias order
TAG_COMBINER = quantml_tag("combiner")  # the combiner config's choice (conf/combiner/*.yaml)
TAG_STACK_AUDIT = quantml_tag("stack_audit")  # clean | violations (the stack ran with force=true)
TAG_STACK_FORCED = quantml_tag("stack_forced")  # "true" when a failed audit was overridden
TAG_STACK_FORCE_REASON = quantml_tag("stack_force_reason")  # the reason= given with force=true
TAG_EXPERTS_LAYOUT_VERSION = quantml_tag("experts_layout_version")  # the layout the experts share
STACK_OOF_ARTIFACT = "stack/oof_table.parquet"  # one row per (symbol, timestamp, horizon), a block per expert
STACK_COMPARISON_CSV = "stack/comparison.csv"  # stack vs equal weight vs best single vs each expert
STACK_AUDIT_ARTIFACT = "stack/leakage_audit.json"  # PASS/FAIL per check of the OOF table
STACK_EXPERTS_ARTIFACT = "stack/experts.json"  # alias -> run id, name, choices
STACK_FOLDS_ARTIFACT = "stack/folds.json"  # per stack fold: fit window and rows, combiner and calibrator
# a gating combiner's (regime_gate) weight of each expert on each stacked row, and their plot
STACK_GATE_WEIGHTS_ARTIFACT = "stack/gate_weights.parquet"
STACK_GATE_FIGURE = "stack/gate_weights.png"

# -- appended: the served stack and its lockbox (quantml stack serve=true holdout=true) ----------------
STACK_FINAL_ARTIFACT = "stack/final.json"  # per candidate and horizon: the final combiner's fit (development rows)
STACK_HOLDOUT_COMPARISON_CSV = "stack/holdout_comparison.csv"  # stack vs baselines vs each final model, lockbox
STACK_HOLDOUT_VERDICT_CSV = "stack/holdout_verdict.csv"  # per horizon and baseline: lockbox rank IC gain, t, verdict
STACK_SCALE_CHECK_CSV = "stack/scale_check.csv"  # per expert/horizon: lockbox vs development forecast spread
# run kinds whose `model` the registry registers, gates, promotes and serves
REGISTRABLE_KINDS = (KIND_PARENT, KIND_STACK)

# -- appended: Optuna workers on one study (quantml tune study.n_workers, the hparams sweeper) ----------
# a hyper-parameter trial's parent run: the Optuna trial and study it is (params of the resolved config)
PARAM_HPARAMS_TRIAL = "hparams_search.trial"
PARAM_HPARAMS_STUDY = "hparams_search.study_name"
# how quantml.error of a trial's run ended FAILED because its trial's heartbeat went stale starts
HEARTBEAT_STALE = "optuna heartbeat stale"
# Optuna trial user attr: host:pid of the sweeper that asked the trial and beats its heartbeat
TRIAL_ATTR_WORKER = quantml_tag("worker")
# Optuna study user attrs quantml.uncounted_trial.<number> = why: trials left out of the trial budget
# (failed stale: their sweeper died; asked over the budget by a concurrent sweeper)
STUDY_ATTR_UNCOUNTED_PREFIX = quantml_tag("uncounted_trial.")

# -- warm start: a candidate fitted from a registered version on newer data (docs/registry.md) ------
# parent-run tags of a warm-started run, copied to its model version by `quantml registry register`
TAG_WARM_START_SOURCE = quantml_tag("warm_start_source")  # models:/NAME/<version> the fits started from
TAG_WARM_START_RUN = quantml_tag("warm_start_run")  # the source version's parent run id
TAG_WARM_START_AFTER = quantml_tag("warm_start_after")  # ISO UTC: the source's last development bar
WARM_START_TAGS = (TAG_WARM_START_SOURCE, TAG_WARM_START_RUN, TAG_WARM_START_AFTER)

# -- appended: route maps (quantml registry route; docs/routing.md) ------------------------------------------
TAG_ROUTE_ENTRIES = quantml_tag("route_entries")  # map version: JSON list of its current entries
TAG_ROUTE_MAP = quantml_tag("route_map")  # route run: the map's registered-model name
TAG_ROUTE_BASE = quantml_tag("route_base")  # map version: the map version it was built on ("" for none)
TAG_ROUTE_CHANGE = quantml_tag("route_change")  # map version: the change in one line
ROUTE_ENTRIES_ARTIFACT = "route/entries.json"  # route run: the entries with their previous values
ROUTE_EXPERIMENT = "quantml-routes"  # default experiment of the route runs
CROSS_SECTIONAL = "cross_sectional"  # bundle metadata: the model needs every one of its symbols at once

# -- quantml monitor (docs/monitoring.md) -------------------------------------------------------------
TAG_DEGRADED = quantml_tag("degraded")  # model-version tag: "true" after a FAIL
TAG_DEGRADED_REASON = quantml_tag("degraded_reason")  # model-version tag: the failed checks
TAG_MONITOR_MODEL = quantml_tag("monitor_model")  # monitor run: "NAME"
TAG_MONITOR_VERSION = quantml_tag("monitor_version")  # monitor run: the version monitored
TAG_MONITOR_STATUS = quantml_tag("monitor_status")  # monitor run: OK | WARN | FAIL | n/a
TAG_MONITOR_LOG_DIR = quantml_tag("monitor_log_dir")
TAG_MONITOR_WINDOW = quantml_tag("monitor_window")
MONITOR_REPORT_ARTIFACT = "monitor/report.html"
MONITOR_CHECKS_ARTIFACT = "monitor/checks.csv"
MONITOR_ROLLING_ARTIFACT = "monitor/rolling.csv"
MONITOR_FIGURES = "monitor/figures"
MONITOR_METRIC_PREFIX = "monitor_"  # metrics: monitor_<check>/<horizon>[/<group>], monitor_status (0 OK .. 3 FAIL)
MONITOR_STATUS_METRIC = "monitor_status"
PER_SYMBOL_ARTIFACT = (
    "metrics/per_symbol.csv"  # fold run: IC, rank IC, hit rate per (symbol, horizon) of its test block
)

# -- backbones' own figures and metrics (docs/fusion.md, hybrid.md, vssm.md, distill.md) --------------------
METRIC_GATE_MEAN = "gate_mean"  # fold metric test_gate_mean/<h>: a fusion model's mean gate opening
METRIC_TEXT_CONTRIBUTION = "text_contribution"  # fold metric: |gate*delta| / (|base| + |gate*delta|)
HYBRID_ATTENTION_FIGURE = "hybrid_attention.png"  # figures/<name>: the hybrid's asset x asset attention
CROSS_ASSET_MODALITY = "cross_asset"  # modality of the hybrid's stage-1 columns
VSSM_POSTERIOR_FIGURE = "vssm_regime_posterior.png"  # figures/<name>: the filtered regime posterior
VSSM_TRANSITION_FIGURE = "vssm_transition.png"  # figures/<name>: the learned transition matrix
REGIME_COLUMN_PREFIX = "regime_p"  # diagnostics columns regime_p0, regime_p1, ... of a regime model
METRIC_LATENCY_STUDENT = "distill_latency_ms_student"  # parent metric: ms per row of the student's predict
METRIC_LATENCY_TEACHER = "distill_latency_ms_teacher"
METRIC_OOF_SHARE = "distill_oof_share"  # share of training rows with an out-of-fold teacher target
METRIC_TEACHER_RANK_IC = "teacher_rank_ic"  # fold metrics test_teacher_rank_ic/<h>, test_student_rank_ic/<h>
METRIC_STUDENT_RANK_IC = "student_rank_ic"
