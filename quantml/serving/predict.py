"""Batch prediction with a registered model: resolve, load, predict, apply tuned signals, write.

``predict_panel(model_uri, panel)`` pins an alias (``models:/NAME@active``; a bare
``models:/NAME`` means that alias) to the version it points at *once*, loads exactly that
version, asks the pyfunc for the prediction contract (``schema.PREDICTION_COLUMNS``) with
``model_name/model_version`` filled from the resolved version. The signal and strategy settings
are the bundle's own (a version made by ``quantml tune attach=`` carries its tuned thresholds and
allocator in its bundle), so ``quantml predict`` answers exactly what ``mlflow models serve``
answers, ``action`` and ``target_weight`` included. Only a version tuned the 0.1 way (model-version tag
``quantml.signal``, JSON of ``SignalConfig.to_dict()``) is predicted with that tag's
thresholds (``score, confidence, action`` and the ``target_weight`` they lead to), with a log
line: ``mlflow models serve`` ignores it, re-run ``quantml tune attach=`` to fix that.
``models:/NAME@champion`` (the 0.1 alias) still resolves for one release: promotions move
it with ``active``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from quantml.bundle import ModelBundle
from quantml.contracts import PREDICTION_COLUMNS, QuantmlInputError, require_columns
from quantml.contracts import run_layout as L
from quantml.contracts.schema import DIAGNOSTIC_FIELDS
from quantml.registry.store import ACTIVE, CHAMPION, RegistryError, RegistryStore, normalise_version
from quantml.serving.text_source import TextSource
from quantml.signals import SignalConfig, compute_signals
from quantml.tracking.reader import RunReader

log = logging.getLogger(__name__)
SIGNAL_TAG = L.TAG_SIGNAL
DEFAULT_ALIAS = ACTIVE
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))?$")
_RUNS_URI = re.compile(r"^runs:/(?P<run_id>[^/]+)/(?P<path>.+)$")


@dataclass
class ResolvedModel:
    """A model URI pinned to one artifact: what is loaded and what the output is stamped with."""

    requested: str
    load_uri: str  # models:/NAME/<version> or the runs:/ URI itself
    name: str = ""  # "" for an unregistered runs:/ model
    version: str = ""
    run_id: str = ""
    signal: SignalConfig | None = None


def parse_signal_tag(value: str, where: str) -> SignalConfig:
    """``SignalConfig`` from the ``quantml.signal`` tag (JSON of ``SignalConfig.to_dict()``)."""
    try:
        return SignalConfig.from_json(value)
    except QuantmlInputError as exc:
        raise QuantmlInputError(f"{where}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise QuantmlInputError(
            f"{where}: the {SIGNAL_TAG} tag is not the JSON of SignalConfig.to_dict() "
            f"({exc}); re-attach thresholds with quantml tune or delete the tag"
        ) from None


def resolve_model(model_uri: str, store: RegistryStore) -> ResolvedModel:
    """Pin ``models:/NAME@alias``, ``models:/NAME`` (= ``@active``), ``models:/NAME/<version|latest>``
    or ``runs:/<id>/model``."""
    model_uri = model_uri.strip()
    m = _MODELS_URI.match(model_uri)
    if m:
        name = m["name"]
        alias = m["alias"]
        if not alias and not m["version"]:
            aliases = store.aliases(name)
            alias = DEFAULT_ALIAS if DEFAULT_ALIAS in aliases or CHAMPION not in aliases else CHAMPION
        if alias:
            try:
                mv = store.client.get_model_version_by_alias(name, alias)
            except MlflowException:
                aliases = store.aliases(name)  # raises "does not exist" for an unknown model
                raise QuantmlInputError(
                    f"model {name!r} has no alias {alias!r} (aliases: {aliases or 'none'}); "
                    f"promote a version first (`quantml registry promote {name} VERSION`) or use "
                    f"models:/{name}/<version>"
                ) from None
        elif m["version"] == "latest":
            versions = store.versions(name)
            if not versions:
                raise QuantmlInputError(f"model {name!r} has no versions; register a run first")
            mv = versions[-1]
        else:
            try:
                mv = store.get_version(name, m["version"])
            except RegistryError as exc:
                raise QuantmlInputError(str(exc)) from None
        version = normalise_version(mv.version)
        tag = (mv.tags or {}).get(SIGNAL_TAG)
        signal = parse_signal_tag(tag, f"{name} v{version}") if tag else None
        return ResolvedModel(model_uri, f"models:/{name}/{version}", name, version, mv.run_id or "", signal)
    r = _RUNS_URI.match(model_uri)
    if r:
        # clear errors for fold runs; a stack run serves its `model` like a parent
        run = RunReader(client=store.client).parent(r["run_id"], action="serve", kinds=L.REGISTRABLE_KINDS)
        return ResolvedModel(model_uri, model_uri, run_id=run.run_id)
    raise QuantmlInputError(
        f"model={model_uri!r} is not a model URI; use models:/NAME@{DEFAULT_ALIAS}, "
        f"models:/NAME/3 or runs:/<run_id>/{L.MODEL_ARTIFACT}"
    )


def apply_signal(predictions: pd.DataFrame, signal: SignalConfig) -> pd.DataFrame:
    """Recompute ``score, confidence, action`` of a prediction-contract frame with ``signal``."""
    out = compute_signals(predictions, signal)
    return out[list(predictions.columns)]


def predict_panel(
    model_uri: str,
    panel: pd.DataFrame,
    *,
    store: RegistryStore | None = None,
    last_only: bool = True,
    text: TextSource | pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, ResolvedModel]:
    """Prediction contract for ``panel`` from the model at ``model_uri``.

    Returns ``(frame [rows, len(PREDICTION_COLUMNS)], resolved)``; one row per
    (symbol, timestamp, horizon), only each symbol's latest bar with ``last_only``.
    ``text``: the raw text stream of a model trained on one (docs/text.md): a table of posts (given on
    purpose: a model without raw text refuses it) or a :class:`TextSource` (loaded only when the model
    reads raw text); None, or a source with no stream: the model is served without text (its text
    features read missing), with a warning.
    Raises ``QuantmlInputError`` when the panel does not match the model's feature contract.
    """
    import mlflow

    store = store or RegistryStore()
    resolved = resolve_model(model_uri, store)
    with store.global_uri():
        try:
            model = mlflow.pyfunc.load_model(resolved.load_uri)
        except MlflowException as exc:
            raise QuantmlInputError(
                f"cannot load {resolved.load_uri} from {store.tracking_uri}: {exc.message}; "
                f"check the URI and MLFLOW_TRACKING_URI"
            ) from None
    params = {"last_only": bool(last_only), "model_name": resolved.name, "model_version": resolved.version}
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.has_input_names():
        # columns the model does not use would only be dropped (noisily) by MLflow
        panel = panel[[c for c in panel.columns if c in set(schema.input_names())]]
    bundle = _bundle_of(model)
    stream = _text_stream(bundle, text, resolved)
    # a 0.1 tag (its thresholds, and the weights they lead to) or posts: the bundle itself, which the
    # pyfunc's params cannot hand a table (the pyfunc takes a path: params text_path)
    direct = bundle if resolved.signal is not None or stream is not None else None
    try:
        if direct is not None:
            signal = resolved.signal.to_dict() if resolved.signal is not None else None
            extra = {} if stream is None else {"text_stream": stream}
            frame = direct.predict_contract(
                panel, bool(last_only), resolved.name, resolved.version, signal=signal, **extra
            )
        else:
            frame = model.predict(panel, params=params)
    except QuantmlInputError:
        raise
    except MlflowException as exc:  # MLflow's schema enforcement: the panel does not fit the signature
        raise QuantmlInputError(
            f"panel does not match the input schema of {resolved.load_uri}: {exc.message}; "
            f"supply the columns the model was trained with"
        ) from None
    frame = pd.DataFrame(frame)
    require_columns(
        frame,
        PREDICTION_COLUMNS,
        f"the output of {resolved.load_uri}",
        "it is not a quantml model (log models with quantml train)",
    )
    # the contract, plus the diagnostic columns the model declares (a fusion model's gate: docs/fusion.md)
    frame = frame[[*PREDICTION_COLUMNS, *(c for c in DIAGNOSTIC_FIELDS if c in frame.columns)]]
    if resolved.signal is not None:
        log.warning(
            "%s v%s carries tuned thresholds only as a 0.1-style %s version tag: applying them here, "
            "but `mlflow models serve` does not; re-run `quantml tune attach=%s:%s` to put them in the bundle",
            resolved.name,
            resolved.version,
            SIGNAL_TAG,
            resolved.name,
            resolved.version,
        )
        if direct is None:  # not a quantml bundle: only score, confidence and action can be redone
            frame = apply_signal(frame, resolved.signal)
    return frame.reset_index(drop=True), resolved


def _text_stream(bundle, text: TextSource | pd.DataFrame | None, resolved: ResolvedModel) -> pd.DataFrame | None:
    """The posts to serve ``bundle`` with: ``text`` loaded when the model reads raw text (its contract's
    ``text`` settings); a table given on purpose to a model that does not is refused."""
    if text is None:
        reads_text = bool(getattr(getattr(bundle, "contract", None), "text", None))
        if reads_text:
            _warn_no_text(resolved, "no text stream was given")
        return None
    explicit = isinstance(text, pd.DataFrame) or text.explicit
    label = text.label if isinstance(text, TextSource) else "the text stream"
    if not isinstance(bundle, ModelBundle):
        if explicit:
            what = f"a {type(bundle).__name__}" if bundle is not None else "not a quantml model"
            raise QuantmlInputError(
                f"{label} is for a single quantml model trained on a raw text stream; {resolved.load_uri} is "
                f"{what}: predict it without text.path"
            )
        return None
    if not getattr(bundle.contract, "text", None):
        if explicit:
            raise QuantmlInputError(
                f"{label}: {resolved.load_uri} was not trained on a raw text stream (its feature contract has no "
                "data.text settings, so it would ignore the posts); predict it without text.path"
            )
        return None
    stream = text if isinstance(text, pd.DataFrame) else text.load()
    if stream is None:
        _warn_no_text(resolved, f"{label} has none")
    return stream


def _warn_no_text(resolved: ResolvedModel, why: str) -> None:
    log.warning(
        "%s was trained on a raw text stream but %s: served without text (its text statistics read missing, "
        "its latents 0); pass text.path=<posts file> (pyfunc: params text_path)",
        resolved.load_uri,
        why,
    )


def _bundle_of(model):
    """The :class:`~quantml.bundle.ModelBundle` inside a loaded quantml pyfunc, or None."""
    try:
        return getattr(model.unwrap_python_model(), "bundle", None)
    except (MlflowException, AttributeError):
        return None


def default_output(resolved: ResolvedModel, root: str | Path = "outputs/predictions") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    label = f"{resolved.name}-v{resolved.version}" if resolved.name else f"run-{resolved.run_id[:12]}"
    return Path(root) / f"{label}-{stamp}.parquet"


def write_predictions(frame: pd.DataFrame, output: str | Path) -> Path:
    """Write the prediction contract as parquet (parent directories created)."""
    output = Path(output)
    if output.suffix not in (".parquet", ".pq"):
        raise QuantmlInputError(f"output={output} must end in .parquet")
    output.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(output, index=False)
    return output
