"""Every wrong file or setting given to ``quantml train`` ends in ONE line ``error: ...`` on stderr
naming the culprit and the fix, exit code 2, no traceback, and no MLflow run left RUNNING.

The cases run in-process (``quantml.cli.main.main(argv)``, stderr captured); two subprocess
checks prove the console (a single run, a ``-m`` sweep with one bad job) shows no traceback.
"""

from __future__ import annotations

import gzip
import os
import subprocess

import mlflow
import numpy as np
import pytest

from quantml.cli import main as dispatcher
from quantml.contracts import run_layout as L
from tests.helpers import TINY, quantml_cli
from tests.helpers.registry_fakes import sqlite_store

EXPERIMENT = "bad-input"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small daily panel, and damaged copies of it, in one folder."""
    from quantml.data.synthetic import generate_synthetic

    d = tmp_path_factory.mktemp("bad-data")
    good = generate_synthetic(freq="1d", n_symbols=2, n_bars=300, seed=1).bars
    good.to_parquet(d / "good.parquet", index=False)
    raw = (d / "good.parquet").read_bytes()
    text = good.to_csv(index=False)
    (d / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00not a parquet body" * 40)
    (d / "truncated.parquet").write_bytes(raw[: len(raw) // 2])
    (d / "csv_named.parquet").write_text(text)
    (d / "truncated.csv").write_text(text[: len(text) // 2 + 7])
    (d / "binary.csv").write_bytes(raw)
    (d / "semicolon.csv").write_text(text.replace(",", ";"))
    (d / "empty.csv").write_bytes(b"")
    (d / "extra_field.csv").write_text(text + "2030-01-01T00:00:00Z,BTC,1,1,1,1,1,99\n")
    gz = gzip.compress(text.encode())
    (d / "truncated.csv.gz").write_bytes(gz[: len(gz) // 2])
    good.drop(columns="timestamp").to_parquet(d / "no_timestamp.parquet", index=False)
    for name, column, value in (("inf", "close", np.inf), ("nan", "close", np.nan), ("negvol", "volume", -3.0)):
        bad = good.copy()
        bad.loc[5, column] = value
        bad.to_parquet(d / f"{name}.parquet", index=False)
    first = good["symbol"] == good["symbol"].iloc[0]
    good.drop(good.index[first][150::2]).to_parquet(d / "mixed_freq.parquet", index=False)
    (d / "schemas").mkdir()
    a, b = (good[good["symbol"] == s] for s in sorted(good["symbol"].unique()))
    a.to_parquet(d / "schemas" / "a.parquet", index=False)
    b.rename(columns={"volume": "vol"}).to_parquet(d / "schemas" / "b.parquet", index=False)
    locked = d / "locked.parquet"
    locked.write_bytes(raw)
    locked.chmod(0)
    yield d
    locked.chmod(0o644)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return sqlite_store(tmp_path_factory.mktemp("bad-store"))


FILE = ["data=parquet", "horizon=1d", "validation.embargo=1d"]
RUN, BEFORE = "run", "before"  # fails inside its MLflow run (ends FAILED) | before any run starts

# (id, overrides ({d}: the data folder), what the one line must say, where it fails)
CASES = [
    # files
    ("corrupt-parquet", [*FILE, "data.path={d}/corrupt.parquet"], ["{d}/corrupt.parquet", "re-export"], RUN),
    ("truncated-parquet", [*FILE, "data.path={d}/truncated.parquet"], ["{d}/truncated.parquet", "corrupt"], RUN),
    ("csv-named-parquet", [*FILE, "data.path={d}/csv_named.parquet"], ["{d}/csv_named.parquet", "parquet"], RUN),
    ("truncated-csv", [*FILE, "data.path={d}/truncated.csv"], ["{d}/truncated.csv", "truncated", "re-export"], RUN),
    ("binary-csv", [*FILE, "data.path={d}/binary.csv"], ["{d}/binary.csv", "not a text CSV", "re-export"], RUN),
    ("truncated-gzip", [*FILE, "data.path={d}/truncated.csv.gz"], ["{d}/truncated.csv.gz", "gzip"], RUN),
    ("extra-field-csv", [*FILE, "data.path={d}/extra_field.csv"], ["{d}/extra_field.csv", "well-formed"], RUN),
    ("semicolon-csv", [*FILE, "data.path={d}/semicolon.csv"], ["{d}/semicolon.csv", "semicolons", "comma-"], RUN),
    ("empty-file", [*FILE, "data.path={d}/empty.csv"], ["{d}/empty.csv", "empty", "data.path"], RUN),
    ("missing-file", [*FILE, "data.path={d}/nope.parquet"], ["{d}/nope.parquet", "does not exist", "data.path="], RUN),
    ("no-permission", [*FILE, "data.path={d}/locked.parquet"], ["{d}/locked.parquet", "permission", "chmod"], RUN),
    (
        "schemas-differ",
        [*FILE, "data.path={d}/schemas"],
        ["{d}/schemas/a.parquet", "{d}/schemas/b.parquet", "'volume'", "'vol'", "rename"],
        RUN,
    ),
    ("no-timestamp", [*FILE, "data.path={d}/no_timestamp.parquet"], ["['timestamp']", "rename"], RUN),
    ("inf-price", [*FILE, "data.path={d}/inf.parquet"], ["'close'", "inf", "repair"], RUN),
    ("nan-price", [*FILE, "data.path={d}/nan.parquet"], ["'close'", "nan", "repair"], RUN),
    ("negative-volume", [*FILE, "data.path={d}/negvol.parquet"], ["'volume'", "-3", "use 0"], RUN),
    ("mixed-frequency", [*FILE, "data.path={d}/mixed_freq.parquet"], ["mixed bar frequencies", "resample"], RUN),
    # settings the library checks where it uses them (inside the run)
    ("too-little-data", [*TINY, "backbone=ridge", "validation.min_train_samples=100000"], ["min_train_samples"], RUN),
    ("1h-on-daily", ["data=stocks_daily", "horizon=1h"], ["shorter than"], RUN),
    ("typo-validation-key", [*TINY, "+validation.n_splts=3"], ["validation.n_splts", "n_splits"], RUN),
    ("embargo-not-duration", [*TINY, "validation.embargo=abc"], ["validation.embargo='abc'", "1d"], RUN),
    ("n-splits-negative", [*TINY, "validation.n_splits=-3"], ["validation.n_splits=-3", ">= 1"], RUN),
    # settings checked at the boundary (no run is started)
    ("seed-abc", [*TINY, "seed=abc"], ["seed=abc", "seed=42"], BEFORE),
    ("seed-negative", [*TINY, "seed=-1"], ["seed=-1", "seed=42"], BEFORE),
    ("seed-float", [*TINY, "seed=1.5"], ["seed=1.5", "whole number"], BEFORE),
    ("n-bars-10x", [*TINY, "data.n_bars=10x"], ["data.n_bars=10x", "data.n_bars=3000"], BEFORE),
    ("n-estimators-abc", ["backbone.n_estimators=abc"], ["backbone.n_estimators=abc", "=300"], BEFORE),
    ("learning-rate-abc", ["backbone.learning_rate=fast"], ["backbone.learning_rate=fast", "=0.05"], BEFORE),
    ("horizons-empty", [*TINY, "horizon.horizons=[]"], ["horizon.horizons=[]", "horizon=1d"], BEFORE),
    ("horizons-not-list", [*TINY, "horizon.horizons=4h"], ["horizon.horizons=4h", "[4h]"], BEFORE),
    ("horizon-not-duration", [*TINY, "horizon.horizons=[abc]"], ["'abc'", "1d"], BEFORE),
    ("typo-key", [*TINY, "validation.n_splts=3"], ["validation.n_splts", "did you mean validation.n_splits"], BEFORE),
    ("unknown-backbone", ["backbone=nonexistent"], ["backbone=nonexistent", "lightgbm, lstm"], BEFORE),
    ("bool-maybe", [*TINY, "tracking.log_model=maybe"], ["tracking.log_model=maybe", "=true"], BEFORE),
    ("start-not-date", [*TINY, "data.start=notadate"], ["data.start=notadate", "ISO date"], BEFORE),
    ("holdout-start-not-date", [*TINY, "validation.holdout_start=soon"], ["holdout_start=soon", "ISO"], BEFORE),
    ("fee-not-number", [*TINY, "cost.fee_bps=cheap"], ["cost.fee_bps=cheap", "=1.0"], BEFORE),
    ("periods-negative", [*TINY, "data.periods_per_year=-5"], ["data.periods_per_year=-5", "252"], BEFORE),
    ("dash-dash-flag", ["--seed", "3"], ["--seed", "seed="], BEFORE),
    ("unparsable", [*TINY, "seed=[1,"], ["seed=[1,", "quote"], BEFORE),
    ("plus-existing", [*TINY, "+seed=3"], ["seed already exists", "seed=..."], BEFORE),
    ("sweep-bad-job", ["-m", *TINY, "seed=1,abc"], ["seed=abc", "[job 1: seed=abc]"], BEFORE),
]


def _runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.parametrize("overrides, expected, where", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit_and_the_fix(
    overrides, expected, where, data, store, tmp_path, monkeypatch, capsys
):
    if "locked.parquet" in " ".join(overrides) and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    monkeypatch.chdir(tmp_path)  # Hydra's outputs/
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    before = {r.info.run_id for r in _runs(store)}
    argv = [a.replace("{d}", str(data)) for a in overrides]
    code = dispatcher.main(["train", *argv, f"tracking.uri={store}", f"tracking.experiment={EXPERIMENT}"])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err and "HYDRA_FULL_ERROR" not in out + err
    for text in expected:
        assert text.replace("{d}", str(data)) in lines[0], lines[0]
    runs = _runs(store)
    assert all(r.info.status != "RUNNING" for r in runs)
    new = [r for r in runs if r.info.run_id not in before]
    if where == BEFORE:
        assert new == []  # refused before anything ran
    else:
        (parent,) = [r for r in new if L.run_kind(r.data.tags) == L.KIND_PARENT]
        assert parent.info.status == "FAILED"
        assert lines[0].removeprefix("error: ") in parent.data.tags[L.TAG_ERROR]


def _quantml_train(args, cwd, store):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": store}
    return subprocess.run(
        [*quantml_cli("train"), *args, f"tracking.uri={store}", f"tracking.experiment={EXPERIMENT}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_console_of_a_single_run_with_a_corrupt_file(data, tmp_path):
    store = sqlite_store(tmp_path / "store")
    proc = _quantml_train([*FILE, f"data.path={data}/corrupt.parquet"], tmp_path, store)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert proc.stderr.startswith(f"error: data file {data}/corrupt.parquet is not a readable parquet file")
    assert "Traceback" not in proc.stdout + proc.stderr and "HYDRA_FULL_ERROR" not in proc.stdout + proc.stderr
    (run,) = _runs(store)
    assert run.info.status == "FAILED"


def _sweep_with_one_bad_job(data, tmp_path, launcher=()):
    """Run a 2-job sweep whose second job names a symbol the data lacks; returns
    ``(exit code, console, the error lines, the parent runs, every run)``."""
    store = sqlite_store(tmp_path / "store")
    args = ["-m", *launcher, *TINY, "backbone=ridge", "tracking.log_model=false", "+data.symbols=[BTC,ETH],[NOPE]"]
    proc = _quantml_train([*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, store)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    runs = _runs(store)
    parents = [r for r in runs if L.run_kind(r.data.tags) == L.KIND_PARENT]
    return proc.returncode, proc.stdout + proc.stderr, errors, parents, runs


def _check_one_bad_job(returncode, console, errors, parents, runs):
    assert returncode == 2, console[-3000:]
    assert "Traceback" not in console and "HYDRA_FULL_ERROR" not in console and "Error executing job" not in console
    assert len(errors) == 1 and "data.symbols ['NOPE'] not in the data" in errors[0], console[-3000:]
    assert console.count("['NOPE'] not in the data") == 1  # shown once
    assert sorted(r.info.status for r in parents) == ["FAILED", "FINISHED"]
    (failed,) = [r for r in parents if r.info.status == "FAILED"]
    assert errors[0].removeprefix("error: ").split(" [job ")[0] in failed.data.tags[L.TAG_ERROR]
    assert all(r.info.status != "RUNNING" for r in runs)


def test_console_of_a_sweep_with_one_bad_job(data, tmp_path):
    returncode, console, errors, parents, runs = _sweep_with_one_bad_job(data, tmp_path)
    assert returncode == 2 and len(errors) == 1, console[-3000:]
    _check_one_bad_job(returncode, console, errors, parents, runs)


@pytest.mark.slow
def test_console_of_a_parallel_sweep_with_one_bad_job(data, tmp_path):
    # joblib workers are other processes: their failures still reach the exit status
    outcome = _sweep_with_one_bad_job(data, tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert outcome[0] == 2 and len(outcome[2]) == 1, outcome[1][-3000:]
    _check_one_bad_job(*outcome)


def test_an_unreadable_file_is_named_even_as_root(data, monkeypatch):
    # CI runs as root, where chmod does not block reads: stand in for a user without read access
    from quantml.contracts import QuantmlInputError
    from quantml.data import loaders

    monkeypatch.setattr(loaders.os, "access", lambda *args, **kwargs: False)
    with pytest.raises(QuantmlInputError, match=r"good\.parquet cannot be read: permission denied.*chmod u\+r"):
        loaders.load_files(data / "good.parquet")
    with pytest.raises(QuantmlInputError, match=r"schemas'? cannot be listed: permission denied.*chmod u\+rx"):
        loaders.load_files(data / "schemas")
