"""``quantml server``: ``mlflow server`` on a real PostgreSQL with artifacts served through it.

A 16-job joblib sweep of tiny jobs, four at a time, through the server and through the embedded
SQLite default loses no run, metric or artifact; a registry round trip (register -> promote) and
predictions (``quantml predict`` and ``mlflow.pyfunc.load_model``) through the server.

Needs PostgreSQL: ``export QUANTML_TEST_POSTGRES="$(.ci/postgres.sh)"`` (``.ci/run`` does it);
without it these tests skip, except in CI (``CI=true``), where they fail. The bad-input tests of
the command need no database.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from quantml.contracts import PREDICTION_COLUMNS
from quantml.contracts import run_layout as L
from tests.conftest import POSTGRES_ENV, requires_postgres
from tests.helpers import TINY, quantml_cli
from tests.helpers.registry_fakes import free_port, sqlite_store

SEEDS = list(range(1, 17))
SWEEP = [
    "-m",
    "hydra/launcher=joblib",
    "hydra.launcher.n_jobs=4",
    f"seed={','.join(map(str, SEEDS))}",
    "backbone=ridge",
    *TINY,
    "tracking.log_model=false",
]
# every parent of the sweep lists at least these (through the store: the server for http://)
PARENT_ARTIFACTS = {
    "config/config.yaml",
    "config/derived.json",
    "audit/leakage_audit.json",
    "folds/fold_plan.json",
    "predictions/oos_predictions.parquet",
    "predictions/market.parquet",
    "predictions/holdout_predictions.parquet",
    "report/fold_metrics.csv",
    "report/report_by_symbol_horizon.csv",
    "report/report.html",
}
PARENT_METRICS = {"oos_ic/4h", "oos_rank_ic/4h", "oos_sharpe_after_cost/4h", "test_ic_mean/4h", "test_ic_std/4h"}
FOLD_METRICS = {"test_rank_ic/4h", "val_rmse/4h"}
SWEEPS: dict[str, dict] = {}  # store -> what its sweep recorded, to compare the two stores


def cli(args, cwd, env, timeout=600, check=True):
    proc = subprocess.run(
        [*quantml_cli(*args)], cwd=cwd, env={**env, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"quantml {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


# -- PostgreSQL and the server ------------------------------------------------------------------
@pytest.fixture(scope="module")
def database():
    """A fresh database on $QUANTML_TEST_POSTGRES's server (dropped afterwards); yields its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(os.environ[POSTGRES_ENV])
    name = f"quantml_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    connect = dict(host=dsn.host, port=dsn.port or 5432, user=dsn.username, password=dsn.password, connect_timeout=5)
    try:
        admin = psycopg.connect(dbname=dsn.database, autocommit=True, **connect)
    except psycopg.Error as exc:
        pytest.fail(
            f"${POSTGRES_ENV} is set but PostgreSQL does not answer ({exc}): run .ci/postgres.sh", pytrace=False
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dbname=dsn.database, autocommit=True, **connect) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(url: str, query: str, *args):
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    with psycopg.connect(host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database) as conn:
        return conn.execute(query, args).fetchall()


@pytest.fixture(scope="module")
def server(database, tmp_path_factory):
    """``quantml server`` on a free port against ``database``; yields (tracking URI, artifacts dir,
    database URL). Stopped with SIGINT (Ctrl-C) afterwards, which must end it and its workers."""
    root = tmp_path_factory.mktemp("server")
    artifacts = root / "served-artifacts"
    port = free_port()
    out, err = open(root / "server.out", "w+"), open(root / "server.err", "w+")  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "QUANTML_SERVER_DB")}
    env["QUANTML_SERVER_DB"] = database  # the environment variable, not a setting: the documented way
    started = time.monotonic()
    proc = subprocess.Popen(
        quantml_cli("server", f"port={port}", f"artifacts_destination={artifacts}"),
        cwd=root, env=env, stdout=out, stderr=err, start_new_session=True,
    )  # fmt: skip
    try:
        uri = None
        while uri is None and time.monotonic() - started < 150 and proc.poll() is None:
            time.sleep(0.25)
            found = re.search(r"MLFLOW_TRACKING_URI=(http://\S+)", Path(root / "server.out").read_text())
            uri = found.group(1) if found else None
        if uri is None:
            raise AssertionError(
                f"quantml server did not print MLFLOW_TRACKING_URI=http://... (exit {proc.poll()}):\n"
                f"{(root / 'server.out').read_text()}\n{(root / 'server.err').read_text()[-4000:]}"
            )
        assert uri == f"http://127.0.0.1:{port}"
        printed = (root / "server.out").read_text()
        assert "waiting for" in printed and "/health" in printed and "ready in" in printed
        print(f"\nquantml server ready in {time.monotonic() - started:.1f} s at {uri}")
        yield uri, artifacts, database
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=40) == 0, (root / "server.err").read_text()[-3000:]
        assert "stopped." in (root / "server.out").read_text()
        with pytest.raises(OSError):  # nothing listens any more: the workers went with it
            import urllib.request

            urllib.request.urlopen(f"{uri}/health", timeout=3)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out.close()
        err.close()


# -- what a sweep recorded ------------------------------------------------------------------------
def artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def check_sweep(uri: str, experiment: str) -> dict:
    """Assert that the sweep's 16 jobs left 16 FINISHED parents with all their fold runs, metrics and
    artifacts (read through ``uri``); return what was recorded per seed and the totals."""
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(L.TAG_KIND) == "parent"]
    folds = [r for r in runs if r.data.tags.get(L.TAG_KIND) == "fold"]
    assert len(runs) == len(parents) + len(folds)
    assert sorted(int(p.data.tags["quantml.seed"]) for p in parents) == SEEDS
    assert {p.info.status for p in parents} == {"FINISHED"}
    with ThreadPoolExecutor(8) as pool:  # one listing per directory: REST round trips, in parallel
        ids = [p.info.run_id for p in parents] + [f.info.run_id for f in folds]
        listed = dict(zip(ids, pool.map(lambda run_id: artifact_paths(client, run_id), ids)))
    per_seed, n_artifacts = {}, 0
    for parent in parents:
        mine = [f for f in folds if f.data.tags["mlflow.parentRunId"] == parent.info.run_id]
        n_folds = int(parent.data.tags["quantml.n_folds"])
        assert len(mine) == n_folds >= 2 and {f.info.status for f in mine} == {"FINISHED"}
        for fold in mine:
            assert FOLD_METRICS <= set(fold.data.metrics), fold.data.metrics.keys()
            assert L.PER_SYMBOL_ARTIFACT in listed[fold.info.run_id]  # per-symbol figures of the fold
            n_artifacts += len(listed[fold.info.run_id])
            assert {"train_start", "test_start", "test_end", "n_train"} <= set(fold.data.params)
        assert PARENT_METRICS <= set(parent.data.metrics)
        files = listed[parent.info.run_id]
        assert PARENT_ARTIFACTS <= files, PARENT_ARTIFACTS - files
        n_artifacts += len(files)
        per_seed[int(parent.data.tags["quantml.seed"])] = {
            "folds": sorted(
                (f.data.params["test_start"], f.data.params["test_end"], f.data.metrics["test_rank_ic/4h"])
                for f in mine
            ),  # (test window, its rank IC)
            "metrics": dict(parent.data.metrics),
            "fold_metrics": sorted(len(f.data.metrics) for f in mine),
            "artifacts": files,
        }
    # no job lost part of its record: every parent has the same metric names and artifact files
    assert len({frozenset(s["metrics"]) for s in per_seed.values()}) == 1
    assert len({frozenset(s["artifacts"]) for s in per_seed.values()}) == 1
    totals = {
        "parents": len(parents),
        "folds": len(folds),
        "metrics": sum(len(r.data.metrics) for r in runs),
        "artifacts": n_artifacts,
    }
    return {"experiment_id": exp.experiment_id, "artifact_location": exp.artifact_location, "seeds": per_seed, **totals}


def compare_stores() -> None:
    """When both sweeps ran in this session: the same record on the server as on SQLite."""
    if set(SWEEPS) != {"server", "sqlite"}:
        return
    a, b = SWEEPS["server"], SWEEPS["sqlite"]
    assert {k: a[k] for k in ("parents", "folds", "metrics", "artifacts")} == {
        k: b[k] for k in ("parents", "folds", "metrics", "artifacts")
    }
    for seed in SEEDS:
        sa, sb = a["seeds"][seed], b["seeds"][seed]
        assert sa["artifacts"] == sb["artifacts"] and sa["fold_metrics"] == sb["fold_metrics"]
        assert sa["metrics"].keys() == sb["metrics"].keys()
        assert sa["metrics"]["oos_rank_ic/4h"] == pytest.approx(sb["metrics"]["oos_rank_ic/4h"], abs=1e-9)
        assert [f[:2] for f in sa["folds"]] == [f[:2] for f in sb["folds"]]
        assert [f[2] for f in sa["folds"]] == pytest.approx([f[2] for f in sb["folds"]], abs=1e-9)


# -- the tests -----------------------------------------------------------------------------------
@requires_postgres
@pytest.mark.timeout(900)
def test_a_16_job_sweep_through_the_server_loses_no_run_metric_or_artifact(server, tmp_path):
    uri, served, database = server
    env = {k: v for k, v in os.environ.items() if k != "QUANTML_SERVER_DB"}
    env["MLFLOW_TRACKING_URI"] = uri
    started = time.monotonic()
    cli(
        ["train", *SWEEP, "tracking.experiment=server_sweep", f"hydra.sweep.dir={tmp_path / 'multirun'}"], tmp_path, env
    )
    took = time.monotonic() - started
    seen = check_sweep(uri, "server_sweep")
    # artifacts went through the server into its destination, none into the client's working dir
    assert seen["artifact_location"].startswith("mlflow-artifacts:")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    on_disk = [p for p in (served / seen["experiment_id"]).rglob("*") if p.is_file()]
    assert len(on_disk) == seen["artifacts"]
    # and the runs are rows of PostgreSQL: the same count and statuses, the same metric count
    exp_id = int(seen["experiment_id"])
    rows = sql(database, "SELECT status, count(*) FROM runs WHERE experiment_id = %s GROUP BY status", exp_id)
    assert dict(rows) == {"FINISHED": seen["parents"] + seen["folds"]}
    (n_metrics,) = sql(
        database,
        "SELECT count(*) FROM latest_metrics m JOIN runs r ON r.run_uuid = m.run_uuid WHERE r.experiment_id = %s",
        exp_id,
    )[0]
    assert n_metrics == seen["metrics"]
    print(
        f"\nserver sweep: {took:.1f} s, {seen['parents']} parents FINISHED, {seen['folds']} fold runs, "
        f"{seen['metrics']} metrics, {seen['artifacts']} artifacts"
    )
    SWEEPS["server"] = seen
    compare_stores()


# slow: ~35 s more on 2 idle cores (85 s on the shared machine); the default suite keeps the
# 3-job joblib sweep on SQLite of test_e2e.py. `make test-all` runs both sweeps and compares them.
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_same_sweep_on_the_sqlite_default_loses_no_run_metric_or_artifact(tmp_path):
    sqlite_store(tmp_path)  # ./mlflow.db, the default store, already migrated (saves seconds)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "QUANTML_SERVER_DB")}
    started = time.monotonic()
    cli(
        ["train", *SWEEP, "tracking.experiment=sqlite_sweep", f"hydra.sweep.dir={tmp_path / 'multirun'}"], tmp_path, env
    )
    took = time.monotonic() - started
    seen = check_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", "sqlite_sweep")
    print(
        f"\nsqlite sweep: {took:.1f} s, {seen['parents']} parents FINISHED, {seen['folds']} fold runs, "
        f"{seen['metrics']} metrics, {seen['artifacts']} artifacts"
    )
    SWEEPS["sqlite"] = seen
    compare_stores()


@requires_postgres
@pytest.mark.timeout(600)
def test_register_promote_and_predict_through_the_server(server, tmp_path, monkeypatch, capsys):
    from quantml.cli.common import compose
    from quantml.cli.predict import main as predict_main
    from quantml.cli.registry import main as registry_main
    from quantml.data import load_panel
    from quantml.registry import RegistryStore
    from quantml.registry.store import mlflow_uri_scope

    uri, served, _ = server
    env = {k: v for k, v in os.environ.items() if k != "QUANTML_SERVER_DB"}
    env["MLFLOW_TRACKING_URI"] = uri
    cli(
        ["train", "backbone=ridge", *TINY, "tracking.experiment=server_model", f"hydra.run.dir={tmp_path / 'run'}"],
        tmp_path,
        env,
    )
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("server_model")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`quantml.kind` = 'parent'")
    assert parent.info.status == "FINISHED"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    assert registry_main(["register", parent.info.run_id, "name=served_model"]) == 0
    assert registry_main(["promote", "served_model", "1", "force=true", "reason=x"]) == 0
    store = RegistryStore(uri)
    assert store.aliases("served_model") == {"candidate": "1", "active": "1", "champion": "1"}
    (event,) = store.events("served_model")
    assert (event.action, event.version, event.forced, event.reason) == ("promote", "1", True, "x")

    data = ["data=synthetic", "data.n_symbols=3", "data.n_bars=700", "data.freq=1h"]
    out = tmp_path / "preds.parquet"
    capsys.readouterr()
    assert predict_main(["model=models:/served_model@active", *data, f"output={out}", "preview=0"]) == 0
    assert "predictions from served_model v1" in capsys.readouterr().out
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(PREDICTION_COLUMNS) and len(frame) == 3  # 3 symbols x 1 horizon
    assert set(frame["model_version"]) == {"1"}

    panel = load_panel(compose("predict", ["model=x", *data]).data)
    with mlflow_uri_scope(uri):
        model = mlflow.pyfunc.load_model("models:/served_model@active")  # downloaded through the server
    direct = model.predict(panel, params={"last_only": True})
    key = ["symbol", "timestamp", "horizon"]
    left = frame.sort_values(key).reset_index(drop=True)
    right = direct.sort_values(key).reset_index(drop=True)
    for column in ("expected_return", "q10", "q50", "q90", "prob_up", "action"):
        pd.testing.assert_series_equal(left[column], right[column], check_dtype=False)
    assert not (tmp_path / "mlruns").exists()  # the model came from the server, not a local store
    assert any(served.rglob("MLmodel"))


# -- bad input: no database is needed to refuse it -------------------------------------------------
def test_server_without_a_database_names_the_setting_and_the_variable(monkeypatch, capsys):
    from quantml.cli.main import main

    monkeypatch.delenv("QUANTML_SERVER_DB", raising=False)
    assert main(["server"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no database") and "backend_store_uri=postgresql+psycopg://" in err
    assert "QUANTML_SERVER_DB" in err and "Traceback" not in err


def test_server_with_postgresql_unreachable_says_so_and_how_to_fix_it(monkeypatch, capsys):
    from quantml.cli.main import main

    closed = free_port()  # nothing listens there
    monkeypatch.setenv("QUANTML_SERVER_DB", f"postgresql://quantml:secret@127.0.0.1:{closed}/quantml")
    assert main(["server", f"port={free_port()}"]) == 2
    err = capsys.readouterr().err
    assert f"PostgreSQL at 127.0.0.1:{closed}/quantml refused" in err and "start PostgreSQL" in err
    assert "secret" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["backend_store_uri=sqlite:///mlflow.db"], "quantml server runs on PostgreSQL"),
        (["backend_store_uri=postgresql://u:p@127.0.0.1:5432/db", "port=http"], "port='http'"),
        (
            ["backend_store_uri=postgresql://u:p@127.0.0.1:5432/db", "--port=5001"],
            "settings are key=value (e.g. port=5001)",
        ),
        (["backend_store_uri=postgresql://u:p@127.0.0.1:5432/db", "no_such_setting=1"], "no_such_setting"),
    ],
)
def test_server_bad_settings_are_one_line_errors(args, message, capsys):
    from quantml.cli.main import main

    assert main(["server", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_server_command_line_serves_artifacts_and_keeps_the_password_off_it(tmp_path):
    from quantml.cli.common import compose
    from quantml.cli.server import server_command, settings_from

    cfg = compose(
        "server",
        ["backend_store_uri=postgres://u:s3cret@db.example:5433/runs", f"artifacts_destination={tmp_path / 'a'}"],
    )
    settings = settings_from(cfg)
    assert settings.backend_store_uri == "postgresql+psycopg://u:s3cret@db.example:5433/runs"
    assert (settings.host, settings.port, settings.tracking_uri) == ("127.0.0.1", 5000, "http://127.0.0.1:5000")
    cmd, env = server_command(settings)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and "--serve-artifacts" in cmd
    assert cmd[cmd.index("--artifacts-destination") + 1] == str(tmp_path / "a")
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "s3cret" not in " ".join(cmd)
    assert env["MLFLOW_BACKEND_STORE_URI"] == settings.backend_store_uri
