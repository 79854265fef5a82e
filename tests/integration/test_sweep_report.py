"""`quantml sweep-report` on a real tiny sweep (3 ridge runs of `quantml train -m`): the leaderboard,
the sweep run and its links, the trial count of the DSR (a failed and a pruned trial on the same data
in another experiment included), the PBO figure, lockbox reads counted, and the registry's dsr gate."""

from __future__ import annotations

import math
import os
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest

from quantml.cli import main as dispatcher
from quantml.contracts import run_layout as L
from quantml.evaluation.overfitting import deflated_sharpe, per_period_sharpe
from quantml.registry.book import run_books
from quantml.registry.gates import Baseline, bar_returns, evaluate_gates, load_gates_config
from quantml.tracking.reader import RunReader
from quantml.tracking.writer import RunWriter
from tests.helpers import TINY, quantml_cli
from tests.helpers.registry_fakes import sqlite_store

SELECTION = "test_sharpe_after_cost_mean/4h"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_report")
    uri = sqlite_store(root)
    sweep_dir = str(root / "multirun")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MLFLOW_TRACKING_URI": uri}
    args = ["-m", "backbone=ridge", "backbone.alpha=0.1,3.0,30.0", *TINY, "tracking.experiment=sr"]
    proc = subprocess.run(
        [*quantml_cli("train"), *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(uri)
    reader = RunReader(client=client)
    parents = reader.sweep_parents(sweep_dir)
    assert len(parents) == 3
    fingerprint = parents[0].tags[L.TAG_DATA_FINGERPRINT]
    # two earlier trials on the same data, elsewhere in the store: one failed, one pruned
    writer = RunWriter.for_experiment(uri, "earlier")
    for status, extra in (("FAILED", {L.TAG_ERROR: "ValueError: boom"}), ("KILLED", {L.TAG_PRUNED: "true"})):
        run = writer.start_parent("earlier trial", tags={L.TAG_DATA_FINGERPRINT: fingerprint, **extra}, commit="x")
        run.end(status)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield {"uri": uri, "dir": sweep_dir, "client": client, "reader": reader, "root": root}


def report(capsys, *args) -> tuple[int, str, str]:
    rc = dispatcher.main(["sweep-report", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_sweep_report_leaderboard_dsr_pbo_and_links(sweep, capsys):
    client, reader = sweep["client"], sweep["reader"]
    before = {p.run_id: int(p.tags.get(L.TAG_LOCKBOX_READS, 0)) for p in reader.sweep_parents(sweep["dir"])}
    out_dir = sweep["root"] / "report"
    rc, out, err = report(capsys, f"sweep_dir={sweep['dir']}", f"output_dir={out_dir}")
    assert rc == 0, err
    parents = reader.sweep_parents(sweep["dir"])

    # the leaderboard: every parent, best first by the development selection figure
    table = pd.read_csv(out_dir / L.SWEEP_LEADERBOARD_CSV)
    assert len(table) == 3 and list(table["rank"]) == [1, 2, 3]
    by_id = {p.run_id: p for p in parents}
    selection = [by_id[r].metrics[SELECTION] for r in table["run_id"]]
    assert selection == sorted(selection, reverse=True)
    best = by_id[table["run_id"][0]]
    for m in ("rank_ic", "sharpe_after_cost", "max_drawdown", "ece"):
        for stat in ("mean", "std"):
            key = f"test_{m}_{stat}/4h"
            assert np.allclose(table[key], [by_id[r].metrics[key] for r in table["run_id"]])
        key = f"holdout_{m}/4h"  # the lockbox beside the selection figures
        assert np.allclose(table[key], [by_id[r].metrics[key] for r in table["run_id"]])
    assert (table["choice.backbone"] == "ridge").all()
    html_text = (out_dir / L.SWEEP_LEADERBOARD_HTML).read_text()
    assert "function sortBy" in html_text and html_text.count("<tr") == 4 and 'class="best"' in html_text
    assert "data:image/png;base64," in html_text

    # the DSR of the best run: its book's per-bar returns, N = 3 + the failed and the pruned trial
    books = {p.run_id: bar_returns(run_books(p), "4h") for p in parents}
    sharpes = [per_period_sharpe(s.to_numpy()) for s in books.values()]
    expected = deflated_sharpe(books[best.run_id].to_numpy(), 5, float(np.var(sharpes, ddof=1)))
    assert f"DSR {expected.dsr:.4f}" in out
    assert "N=5 counted: 5 parent run(s)" in out and "1 failed" in out and "1 pruned" in out and "3 finished" in out
    assert best.run_name in out and "never the lockbox" in out
    assert "PBO " in out and "C(16,8)=12870" in out

    # the sweep run: kind sweep, artifacts, metrics; every parent names it
    sweep_runs = client.search_runs(
        [best.experiment_id], filter_string=f"tags.`{L.TAG_KIND}` = '{L.KIND_SWEEP}'", max_results=10
    )
    assert len(sweep_runs) == 1
    sr = sweep_runs[0]
    assert sr.info.run_id in out and sr.data.tags[L.TAG_BEST_RUN] == best.run_id
    assert sr.data.tags[L.TAG_N_TRIALS] == "5"
    assert sr.data.metrics["oos_dsr/4h"] == pytest.approx(expected.dsr, abs=1e-9)
    assert 0.0 <= sr.data.metrics["oos_pbo/4h"] <= 1.0
    logged = {a.path for a in client.list_artifacts(sr.info.run_id, "sweep")}
    logged |= {a.path for a in client.list_artifacts(sr.info.run_id, "figures")}
    assert {L.SWEEP_LEADERBOARD_CSV, L.SWEEP_LEADERBOARD_HTML, L.SWEEP_SUMMARY, L.SWEEP_PBO_FIGURE} <= logged
    for p in parents:
        assert p.tags[L.TAG_SWEEP_RUN] == sr.info.run_id
        assert int(p.tags[L.TAG_LOCKBOX_READS]) == before[p.run_id] + 1  # the lockbox read, counted
    # the sweep run is not a parent: it is not counted as a trial, nor listed in the sweep
    assert len(reader.parents_on_fingerprint(best.tags[L.TAG_DATA_FINGERPRINT])) == 5

    # one trial given: the DSR is the PSR against zero, and higher; without the lockbox nothing is read
    rc, out1, err = report(
        capsys, f"sweep_dir={sweep['dir']}", "dsr.n_trials=1", "log_to_mlflow=false", "show_lockbox=false"
    )
    assert rc == 0, err
    assert f"DSR {expected.psr_zero:.4f}" in out1 and f"PSR(0) {expected.psr_zero:.4f}" in out1
    assert expected.psr_zero > expected.dsr
    assert "n_trials=1 given" in out1 and "lockbox" not in out1.split("trials:")[1]
    after = {p.run_id: int(p.tags[L.TAG_LOCKBOX_READS]) for p in reader.sweep_parents(sweep["dir"])}
    assert after == {r: before[r] + 1 for r in before}


def test_dsr_gate_reads_the_same_book_and_trial_count(sweep):
    reader = sweep["reader"]
    parents = reader.sweep_parents(sweep["dir"])
    run = max(parents, key=lambda p: p.metrics[SELECTION])
    cfg = load_gates_config(overrides=["dsr.enabled=true", "dsr.min_probability=0.0"])
    result = next(r for r in evaluate_gates(reader, run.run_id, cfg, Baseline("0")).results if r.name == "dsr")
    assert result.passed, result.detail
    assert "N=5 counted" in result.detail and "from 3 trials' books" in result.detail
    dsr = result.figures["dsr"]["4h"]
    strict = load_gates_config(overrides=["dsr.enabled=true", f"dsr.min_probability={min(dsr + 1e-6, 1.0)}"])
    failed = next(r for r in evaluate_gates(reader, run.run_id, strict, Baseline("0")).results if r.name == "dsr")
    assert not failed.passed and f"DSR {dsr:.4f} <" in failed.detail
    one = load_gates_config(overrides=["dsr.enabled=true", "dsr.n_trials=1"])
    single = next(r for r in evaluate_gates(reader, run.run_id, one, Baseline("0")).results if r.name == "dsr")
    assert single.figures["dsr"]["4h"] > dsr  # fewer trials, a lower bar
    # off by default; on in the packaged strict example
    assert not load_gates_config().dsr.enabled
    from quantml.registry.gates import GATES_CONFIG

    assert load_gates_config(GATES_CONFIG.with_name("gates_strict.yaml")).dsr.enabled


def test_sweep_report_bad_input_is_one_line_exit_2(sweep, capsys):
    rc, _, err = report(capsys, "sweep_dir=/nowhere/at/all")
    assert rc == 2 and "quantml.sweep_dir=/nowhere/at/all" in err and sweep["dir"] in err
    rc, _, err = report(capsys, f"sweep_dir={sweep['dir']}", "select.metric=holdout_sharpe_after_cost")
    assert rc == 2 and "never chosen on" in err
    rc, _, err = report(capsys)
    assert rc == 2 and "exactly one of sweep_dir=" in err
    rc, _, err = report(capsys, "experiment=nope")
    assert rc == 2 and "no experiment 'nope'" in err
    rc, _, err = report(capsys, "--sweep-dir=x")
    assert rc == 2 and "sweep_dir=x" in err
    assert dispatcher.main(["sweep-report", "--help"]) == 0
    assert dispatcher.main(["--help"]) == 0
    assert "quantml sweep-report" in capsys.readouterr().out


def test_runs_and_experiment_selectors(sweep, capsys):
    reader = sweep["reader"]
    ids = [p.run_id for p in reader.sweep_parents(sweep["dir"])][:2]
    rc, out, err = report(capsys, f"runs=[{ids[0]},{ids[1]}]", "log_to_mlflow=false", "show_lockbox=false")
    assert rc == 0, err
    assert "(2 parent runs;" in out and all(i[:12] in out for i in ids)
    rc, out, err = report(capsys, "experiment=sr", "log_to_mlflow=false", "show_lockbox=false", "pbo.n_splits=8")
    assert rc == 0, err
    assert "(3 parent runs;" in out and "C(8,4)=70" in out
    assert not math.isnan(float(out.split("DSR ")[1].split()[0]))
