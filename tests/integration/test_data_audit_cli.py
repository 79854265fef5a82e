"""`quantml data audit` exit codes and files, and `quantml train data.require_ready=true` on a
damaged panel: one line listing the shortfalls, exit 2, the run FAILED (none left RUNNING)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from quantml.cli import main as dispatcher
from quantml.contracts import run_layout as L
from tests.helpers import TINY
from tests.helpers.registry_fakes import sqlite_store


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """The TINY synthetic panel (3 symbols x 700 hourly bars, streams joined) with 40 hours of
    BTC lost and ETH's funding missing on 100 more of its bars, as a parquet file."""
    from quantml.data import load_panel

    d = tmp_path_factory.mktemp("audit-data")
    panel = load_panel({"source": "synthetic", "n_symbols": 3, "n_bars": 700, "freq": "1h", "seed": 42})
    btc = np.flatnonzero(panel["symbol"].to_numpy() == "BTC")
    panel = panel.drop(panel.index[btc[300:340]]).reset_index(drop=True)
    eth = np.flatnonzero((panel["symbol"].to_numpy() == "ETH") & (panel["funding_rate_missing"].to_numpy() == 0))
    panel.loc[eth[200:300], "funding_rate"] = np.nan
    panel.loc[eth[200:300], "funding_rate_missing"] = 1.0
    panel.to_parquet(d / "damaged.parquet", index=False)
    return d / "damaged.parquet"


def test_audit_exit_codes_and_files(damaged, tmp_path, capsys):
    out = tmp_path / "audit"
    assert dispatcher.main(["data", "audit", "data=synthetic", "data.n_bars=400", f"output_dir={out}"]) == 0
    assert "verdict: READY" in capsys.readouterr().out
    summary = json.loads((out / "audit.json").read_text())
    assert summary["ready"] is True and summary["shortfalls"] == []
    assert {p.name for p in out.iterdir()} >= {"audit_symbols.csv", "audit_streams.csv", "audit_checks.csv"}

    code = dispatcher.main(["data", "audit", f"data={damaged}", "audit.max_missing=0.15", f"output_dir={out}"])
    text = capsys.readouterr().out
    assert code == 1
    assert "verdict: NOT READY (2 check(s) failed)" in text, text
    assert "BTC coverage 0.9429 < 0.95 (missing 40 of 700 bars)" in text, text
    assert "funding_rate missing on " in text and "of ETH's bars > 15.0%" in text, text
    assert json.loads((out / "audit.json").read_text())["ready"] is False

    assert dispatcher.main(["data", "audit", f"data={damaged}", "audit.window=10d", "audit.max_missing=0.15"]) == 0
    capsys.readouterr()
    for bad, culprit in (
        (["audit.min_coverage=2"], "audit.min_coverage=2.0"),
        (["audit.window=soon"], "audit.window"),
        (["--window", "3d"], "--window is not an option"),
    ):
        assert dispatcher.main(["data", "audit", f"data={damaged}", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and culprit in err, err
    assert dispatcher.main(["data", "nope"]) == 2
    assert "unknown data command" in capsys.readouterr().err


def test_train_require_ready_refuses_a_damaged_panel(damaged, tmp_path, monkeypatch, capsys):
    store = sqlite_store(tmp_path / "store")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    tiny = [a for a in TINY if not a.startswith("data")]
    args = [*tiny, "data=parquet", f"data.path={damaged}", "backbone=ridge", "tracking.log_model=false"]
    code = dispatcher.main(
        ["train", *args, "data.require_ready=true", "data.ready.max_missing=0.15", f"tracking.uri={store}"]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: data.require_ready=true: the panel is not ready"), err
    assert "BTC coverage 0.9429 < 0.95 (missing 40 of 700 bars)" in lines[0]
    assert "funding_rate missing on" in lines[0] and "of ETH's bars > 15.0%" in lines[0]
    client = mlflow.MlflowClient(store)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    (parent,) = [r for r in runs if L.run_kind(r.data.tags) == L.KIND_PARENT]
    assert parent.info.status == "FAILED" and "BTC coverage" in parent.data.tags[L.TAG_ERROR]
