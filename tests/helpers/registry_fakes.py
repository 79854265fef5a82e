"""Helpers to build registry scenarios without training: fake parent + fold runs, a toy pyfunc.

Used by the registry and serving tests (and handy for trying the registry CLI by hand):
``log_fake_run`` writes the run layout (``quantml.contracts.run_layout``) through the run
writer — parent tags, per-fold
child runs with ``test_start/test_end`` params and ``test_sharpe_after_cost/<h>`` metrics,
parent ``oos_*`` metrics, the leakage audit — and, optionally, a tiny pyfunc ``model`` that
honours the prediction contract. Nothing is trained.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ParamSchema, ParamSpec

from quantml.contracts import PREDICTION_COLUMNS, SCHEMA_VERSION, SYMBOL, TIMESTAMP, QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.tracking.store import ensure_experiment
from quantml.tracking.writer import RunWriter

TOY_INPUTS = (TIMESTAMP, SYMBOL, "close")


# MLflow warns at class creation that predict() has no type hints; the toy takes any DataFrame.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")

    class ToyForecaster(mlflow.pyfunc.PythonModel):
        """A pyfunc that honours the prediction contract with a one-line 'forecast'.

        ``expected_return`` is the last bar's log return per symbol; the interval is
        +-2%; signals use the thresholds in ``signal.json``. It refuses a panel without
        ``timestamp, symbol, close`` or with another ``schema_version``, like the real one.
        """

        def __init__(self, horizons: Sequence[str] = ("1d",), signal: Mapping | None = None) -> None:
            self.horizons = list(horizons)
            self.signal = dict(
                signal or {"threshold": {"default": 0.0}, "min_confidence": {"default": 0.0}, "cost": 0.0, "eps": 1e-6}
            )

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            from quantml.signals import SignalConfig, compute_signals

            params = params or {}
            panel = model_input
            missing = [c for c in TOY_INPUTS if c not in panel.columns]
            if missing:
                raise QuantmlInputError(
                    f"panel is missing column(s) {missing} required by the model's feature "
                    f"contract; add them to the panel"
                )
            if "schema_version" in panel.columns and set(panel["schema_version"].astype(str)) != {SCHEMA_VERSION}:
                raise QuantmlInputError(
                    f"panel schema_version {sorted(set(panel['schema_version'].astype(str)))} "
                    f"does not match the model's {SCHEMA_VERSION!r}"
                )
            panel = panel.copy()
            panel[TIMESTAMP] = pd.to_datetime(panel[TIMESTAMP], utc=True)
            panel = panel.sort_values([SYMBOL, TIMESTAMP]).reset_index(drop=True)
            er = np.log(panel["close"]).groupby(panel[SYMBOL]).diff().fillna(0.0)
            base = pd.DataFrame({SYMBOL: panel[SYMBOL], TIMESTAMP: panel[TIMESTAMP], "expected_return": er})
            if params.get("last_only", False):
                base = base.groupby(SYMBOL, sort=False).tail(1)
            frames = []
            for h in self.horizons:
                f = base.copy()
                f["horizon"] = h
                frames.append(f)
            out = pd.concat(frames, ignore_index=True)
            out["q10"], out["q50"], out["q90"] = (
                out.expected_return - 0.02,
                out.expected_return,
                out.expected_return + 0.02,
            )
            out["prob_up"] = 0.5 + np.clip(out.expected_return * 10, -0.4, 0.4)
            out["vol_forecast"] = 0.02
            out = compute_signals(out, SignalConfig.from_config(self.signal, cost=self.signal.get("cost", 0.0)))
            from quantml.portfolio import RankLongShort

            out["target_weight"] = RankLongShort(mode="time_series").target_weights(out)
            out["model_name"] = str(params.get("model_name", ""))
            out["model_version"] = str(params.get("model_version", ""))
            out["schema_version"] = SCHEMA_VERSION
            out["data_version"] = "toy"
            return out[list(PREDICTION_COLUMNS)]


TOY_SIGNATURE = ModelSignature(
    inputs=None,
    params=ParamSchema(
        [
            ParamSpec("last_only", "boolean", False),
            ParamSpec("model_name", "string", ""),
            ParamSpec("model_version", "string", ""),
        ]
    ),
)


def sqlite_store(directory: str | Path) -> str:
    """``sqlite:///<directory>/mlflow.db``, copied from a migrated template when possible.

    Creating MLflow's tables runs every migration (3-7 s on a busy machine); tests that
    each need a fresh store copy one migrated empty database instead (cached per MLflow
    version in the temp dir, created atomically, so parallel test processes are safe).
    """
    import shutil

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "mlflow.db"
    template = Path(tempfile.gettempdir()) / f"quantml-mlflow-{mlflow.__version__}-template.db"
    if not template.exists():
        staging = template.with_suffix(f".{os.getpid()}.{time.time_ns()}.tmp")
        MlflowClient(tracking_uri=f"sqlite:///{staging}").search_experiments()
        os.replace(staging, template)
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


def toy_panel(n_bars: int = 30, symbols: Sequence[str] = ("AAA", "BBB"), seed: int = 0) -> pd.DataFrame:
    """A small valid daily panel (timestamp, symbol, OHLCV), sorted by (symbol, timestamp): the
    bars of :func:`quantml.data.synthetic.generate_synthetic` (the one panel generator), renamed
    to ``symbols``."""
    from quantml.data.synthetic import generate_synthetic

    bars = generate_synthetic(freq="1d", n_symbols=len(symbols), n_bars=n_bars, seed=seed).bars
    names = dict(zip(sorted(bars[SYMBOL].unique()), symbols))
    bars = bars[[TIMESTAMP, SYMBOL, "open", "high", "low", "close", "volume"]].assign(
        **{SYMBOL: bars[SYMBOL].map(names)}
    )
    return bars.sort_values([SYMBOL, TIMESTAMP], kind="stable").reset_index(drop=True)


def log_fake_run(
    experiment: str = "quantml-test",
    *,
    tracking_uri: str | None = None,
    fold_sharpe: Mapping[str, Sequence[float]] | None = None,
    oos_ece: Mapping[str, float] | None = None,
    leakage: str | None = "clean",
    audit_artifact: bool | None = None,
    windows: Sequence[tuple[str, str]] | None = None,
    status: str = "FINISHED",
    log_model: bool = True,
    tags: Mapping[str, str] | None = None,
    seed: int = 7,
    artifact_location: str | None = None,
    metrics_version: str | None = None,
    validation: str = "walk_forward",
) -> str:
    """Log a parent run + one child run per fold in the contracts' layout; return the parent id.

    ``fold_sharpe``: ``{horizon: [test_sharpe_after_cost of fold 0, 1, ...]}``.
    ``windows``: the folds' ``(test_start, test_end)``; default consecutive months of 2024.
    ``leakage``: tag ``quantml.leakage_audit`` (None: no tag); ``audit_artifact`` logs
    ``audit/leakage_audit.json`` (default: when ``leakage`` is given).
    ``artifact_location``: used when the experiment is created (default: the store's).
    ``metrics_version``: the tag ``quantml.metrics_version`` (default: this quantml's);
    ``validation``: the tag ``quantml.validation``.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    fold_sharpe = dict(fold_sharpe or {"1d": [0.5, 0.6, 0.7]})
    horizons = list(fold_sharpe)
    n_folds = len(next(iter(fold_sharpe.values())))
    if windows is None:
        starts = pd.date_range("2024-01-01", periods=n_folds + 1, freq="MS")
        windows = [(str(starts[i].date()), str((starts[i + 1] - pd.Timedelta(days=1)).date())) for i in range(n_folds)]
    oos_ece = dict(oos_ece or {h: 0.03 for h in horizons})
    writer = RunWriter(ensure_experiment(client, experiment, artifact_location), client)
    run_tags = {
        L.TAG_DATA_FINGERPRINT: f"fp{seed}",
        L.TAG_FEATURE_CONTRACT_HASH: f"fc{seed}",
        L.TAG_IC_MODE: "cross_sectional",
    }
    if leakage is not None:
        run_tags[L.TAG_LEAKAGE_AUDIT] = leakage
    if metrics_version is not None:
        run_tags[L.TAG_METRICS_VERSION] = str(metrics_version)
    run_tags.update(tags or {})
    parent = writer.start_parent(
        "fake-parent", seed=seed, horizons=horizons, validation=validation, commit="0" * 40, tags=run_tags
    )
    metrics = {}
    for h in horizons:  # one batch per run: SQLite commits are the slow part
        metrics.update(
            {
                f"oos_ece/{h}": float(oos_ece[h]),
                f"oos_sharpe_after_cost/{h}": float(np.mean(fold_sharpe[h])),
                f"oos_rank_ic/{h}": 0.05,
            }
        )
    parent.log_metrics(metrics)
    for i in range(n_folds):
        child = writer.start_fold(parent, i, [0])
        child.log_batch(
            params={L.PARAM_FOLD_ID: str(i), L.PARAM_TEST_START: windows[i][0], L.PARAM_TEST_END: windows[i][1]},
            metrics={f"test_sharpe_after_cost/{h}": float(fold_sharpe[h][i]) for h in horizons},
        )
        child.end("FINISHED")
    if audit_artifact if audit_artifact is not None else leakage is not None:
        parent.log_dict({"clean": leakage == "clean", "checks": {"purging": leakage == "clean"}}, L.AUDIT_ARTIFACT)
    if log_model:
        from quantml.registry.store import mlflow_uri_scope

        with mlflow_uri_scope(client.tracking_uri), mlflow.start_run(run_id=parent.run_id), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "add type hints", "no input example"
            mlflow.pyfunc.log_model(
                name=L.MODEL_ARTIFACT,
                python_model=ToyForecaster(horizons),
                signature=TOY_SIGNATURE,
                pip_requirements=[],
            )
    parent.end(status)
    return parent.run_id


def promote_in_subprocess(tracking_uri: str, name: str, version: str, reason: str, barrier, out_queue) -> None:
    """Worker for the promotion race test: wait at ``barrier``, then force-promote."""
    from quantml.registry.commands import promote
    from quantml.registry.store import RegistryStore

    store = RegistryStore(tracking_uri)
    store.aliases(name)  # connect before the start line
    barrier.wait(timeout=60)
    try:
        result = promote(store, name, version, reason=reason, force=True)
        out_queue.put((version, "ok", result.event.seq))
    except Exception as exc:  # noqa: BLE001 - reported to the parent test
        out_queue.put((version, "error", repr(exc)))


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, proc=None) -> None:
    """Poll ``url`` until it answers 200; raise (with the process's exit) after ``timeout`` s."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def background_server(
    cmd: Sequence[str],
    health_url: str,
    *,
    timeout: float = 60.0,
    log_path: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
):
    """Run ``cmd`` in its own process group until the block ends; always stopped (TERM, then KILL)."""
    import signal
    import subprocess

    full_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True
        )
        try:
            try:
                wait_http(health_url, timeout, proc)
            except Exception as exc:
                log.flush()
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{' '.join(cmd[:4])}... did not start: {exc}\n{tail}") from exc
            yield proc
        finally:
            for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
            # workers that outlived their parent (same process group)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def mlflow_tracking_server(directory: str | Path, timeout: float = 60.0):
    """A real ``mlflow server`` on loopback (SQLite backend, served artifacts in ``directory``).

    Yields its ``http://127.0.0.1:<port>`` URI.
    """
    import sys

    directory = Path(directory)
    backend = sqlite_store(directory / "server")
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(directory / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    with background_server(
        cmd, f"{uri}/health", timeout=timeout, log_path=directory / "mlflow-server.log", cwd=directory
    ):
        yield uri


@contextlib.contextmanager
def mlflow_model_server(model_uri: str, tracking_uri: str, directory: str | Path, timeout: float = 120.0):
    """``mlflow models serve -m <model_uri> --env-manager local`` on loopback; yields its base URL.

    The server process resolves ``models:/`` through ``MLFLOW_TRACKING_URI``, finds
    ``uvicorn`` on ``PATH`` (this interpreter's bin directory first) and imports quantml
    from this checkout (``PYTHONPATH``), as an installed environment would.
    """
    import sys

    port = free_port()
    repo = str(Path(__file__).resolve().parents[2])
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p),
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with background_server(
        cmd, f"{url}/health", timeout=timeout, env=env, log_path=Path(directory) / "model-server.log", cwd=directory
    ):
        yield url


def post_json(url: str, payload: dict, timeout: float = 60.0) -> tuple[int, dict]:
    """POST ``payload`` as JSON; returns (HTTP status, decoded body) for errors too."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(payload, default=str).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"message": body.decode(errors="replace")}
