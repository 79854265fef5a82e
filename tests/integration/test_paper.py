"""``quantml paper`` end to end on a real (tiny) registered model.

One ridge model (1h bars, horizons 1h and 8h: a short_horizon and a long_horizon bucket under
``execution=tiered``) is trained once for the module on a seeded synthetic panel, registered twice
(v1 promoted to active, v2 a candidate) in a temporary SQLite store. The paper trader replays its
lockbox (the 75 bars from ``quantml.lockbox_start``) from a parquet copy of the same panel.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from quantml.cli.common import CONFIG_DIR
from quantml.cli.paper import main as paper_main
from quantml.cli.predict import main as predict_main
from quantml.contracts import QuantmlInputError
from quantml.contracts import run_layout as L
from quantml.contracts.logs import LOG_KEYS, LOGS, PAPER_STATE_FILE
from quantml.data import load_panel
from quantml.market.execution import CostModel
from quantml.market.fills import ExecutionConfig
from quantml.registry import register
from quantml.serving import predict_panel
from quantml.serving.logs import read_log
from quantml.serving.paper import PaperSession, PaperSettings, load_state, run_paper
from quantml.serving.paper_settings import horizon_weight_vector, sort_horizons
from tests.helpers.tiny_runs import register_active, temp_store, train_run

REPO = Path(__file__).resolve().parents[2]
NAME = "paper"
N_BARS, N_SYMBOLS, HORIZONS = 500, 3, ["1h", "8h"]
PANEL = {"source": "synthetic", "freq": "1h", "n_symbols": N_SYMBOLS, "n_bars": N_BARS, "seed": 42}
PANEL["start"] = "2024-03-01"
TRAIN = [
    "data=synthetic",
    f"data.n_bars={N_BARS}",
    f"data.n_symbols={N_SYMBOLS}",
    "data.start=2024-03-01",
    "backbone=ridge",
    "horizon=1h",
    "horizon.horizons=[1h,8h]",
    "feature_set=price",
    "validation.n_splits=2",
    "validation.valid_fraction=0.3",
    "validation.min_inner_outcomes=3",
    "validation.embargo=8h",
    "print_report=false",
    "tracking.experiment=paper",
]


def _paper_cfg(name: str = "tiered"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="paper", overrides=[f"execution={name}", "cost=equity", "model=x"])
    GlobalHydra.instance().clear()
    return cfg


def _execution(name: str = "tiered", **overrides) -> ExecutionConfig:
    node = dict(_paper_cfg(name).execution)
    node.update(overrides)
    return ExecutionConfig.from_config(node)


COSTS = CostModel.from_config(_paper_cfg().cost)  # conf/cost/equity.yaml: what the CLI tests pass (cost=equity)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(tracking uri, store, parent run id, work dir, lockbox start, panel file): NAME v1 @active, v2 candidate."""
    root = tmp_path_factory.mktemp("paper")
    uri, store = temp_store(root, ["paper"])
    result = train_run(uri, TRAIN)
    register_active(store, result.parent_run_id, NAME, "paper tests")
    register(store, result.parent_run_id, NAME)  # v2: a candidate, for the refusal of another version
    lockbox = pd.Timestamp(store.client.get_run(result.parent_run_id).data.tags[L.TAG_LOCKBOX_START])
    panel_file = root / "panel" / "panel.parquet"
    panel_file.parent.mkdir()
    load_panel(PANEL).to_parquet(panel_file, index=False)
    return uri, store, result.parent_run_id, root, lockbox, panel_file


def _settings(log_dir, **kw) -> PaperSettings:
    return PaperSettings(model=kw.pop("model", f"models:/{NAME}@active"), log_dir=Path(log_dir), **kw)


def _file_panel(path) -> pd.DataFrame:
    return load_panel({"source": "file", "path": str(path)})


def _logs(log_dir) -> dict[str, pd.DataFrame]:
    return {log: read_log(log_dir, log).drop(columns=["logged_at"], errors="ignore") for log in LOGS}


def _duplicated_keys(log_dir) -> dict[str, int]:
    return {log: int(read_log(log_dir, log).duplicated(list(LOG_KEYS[log])).sum()) for log in LOGS}


@pytest.fixture(scope="module")
def replay(model):
    """One uninterrupted replay of the lockbox: (result, log dir)."""
    _, store, _, root, _, panel_file = model
    log_dir = root / "replay"
    result = run_paper(_settings(log_dir), lambda: _file_panel(panel_file), _execution(), COSTS, store)
    return result, log_dir


def test_replay_of_the_lockbox_writes_three_keyed_logs_and_a_rerun_adds_nothing(model, replay):
    _, store, run_id, _, lockbox, panel_file = model
    result, log_dir = replay
    panel = _file_panel(panel_file)
    bars = pd.DatetimeIndex(panel["timestamp"].unique())
    lockbox_bars = bars[bars >= lockbox]
    T, N, H = len(lockbox_bars), N_SYMBOLS, len(HORIZONS)
    assert T == 75 and result.start == lockbox and result.bars == T
    logs = _logs(log_dir)
    preds, fills, pnl = logs["predictions"], logs["executions"], logs["pnl"]
    assert len(preds) == T * N * H  # one row per symbol x bar x horizon
    assert len(pnl) == (T - 1) * N * H  # the last decision waits for its next bar
    assert result.rows == {"predictions": len(preds), "executions": len(fills), "pnl": len(pnl)}
    assert _duplicated_keys(log_dir) == dict.fromkeys(LOGS, 0)
    assert set(preds["source"]) == {"paper"} and preds["timestamp"].min() == lockbox
    for frame in logs.values():
        assert set(frame["model_name"]) == {NAME} and set(frame["model_version"]) == {"1"}
    assert set(fills["bucket"]) == set(HORIZONS)
    assert set(fills.groupby("bucket")["policy"].first().items()) == {("1h", "short_horizon"), ("8h", "long_horizon")}
    assert (fills["filled_notional"] <= fills["order_notional"] + 1e-6).all()
    assert (fills["decided_at"] < fills["timestamp"]).all()  # filled after the close that decided it
    assert np.isfinite(pnl["pnl"]).all() and pnl["pnl"].abs().sum() > 0
    # the bucket's position after the fills tracks its target (rank weights / H) where nothing is capped
    state = json.loads((log_dir / PAPER_STATE_FILE).read_text())
    assert state["last_bar"] == lockbox_bars[-1].isoformat() and state["bars_acted"] == T
    assert (state["model_name"], state["model_version"], state["run_id"]) == (NAME, "1", run_id)
    assert np.abs(np.asarray(state["targets"])).sum(axis=0).max() <= 1.0 / H + 1e-9  # gross 1 book per horizon / H
    assert "quantml monitor model=models:/paper/1 log_dir=" in result.summary()
    # rerun over the same data: nothing to act on, not a row written
    again = run_paper(_settings(log_dir), lambda: _file_panel(panel_file), _execution(), COSTS, store)
    assert again.bars == 0 and again.rows == dict.fromkeys(LOGS, 0)
    after = _logs(log_dir)
    for log in LOGS:
        pd.testing.assert_frame_equal(after[log], logs[log])


def test_horizon_weights_auto_follow_the_strategy_and_a_mapping_names_every_horizon():
    rank = "quantml.portfolio.strategy.RankLongShort"
    allocator = "quantml.portfolio.strategy.AllocatorStrategy"
    np.testing.assert_array_equal(horizon_weight_vector("auto", ["1h", "8h"], rank), [0.5, 0.5])
    np.testing.assert_array_equal(horizon_weight_vector("auto", ["1h", "8h"], allocator), [1.0, 1.0])
    np.testing.assert_array_equal(horizon_weight_vector({"8h": 0.25, "1h": 0.75}, ["1h", "8h"], None), [0.75, 0.25])
    with pytest.raises(QuantmlInputError, match=r"missing \['8h'\]"):
        horizon_weight_vector({"1h": 1.0}, ["1h", "8h"], rank)
    with pytest.raises(QuantmlInputError, match="set it explicitly"):
        horizon_weight_vector("auto", ["1h"], None)
    assert sort_horizons(["1d", "8h", "1h"]) == ["1h", "8h", "1d"]


def test_full_panel_prediction_row_equals_prediction_on_the_history_up_to_its_bar(model, replay):
    """The shortcut of every poll: one prediction of the whole panel == bar-by-bar prediction."""
    _, store, _, _, lockbox, panel_file = model
    panel = _file_panel(panel_file)
    full, _ = predict_panel(f"models:/{NAME}/1", panel, store=store, last_only=False)
    full["timestamp"] = pd.to_datetime(full["timestamp"], utc=True)
    bars = pd.DatetimeIndex(panel["timestamp"].unique()).sort_values()
    checked = [bars[bars >= lockbox][0], bars[bars >= lockbox][40], bars[-1]]
    cols = ["expected_return", "q10", "q50", "q90", "prob_up", "vol_forecast", "score", "confidence"]
    for t in checked:
        cut, _ = predict_panel(f"models:/{NAME}/1", panel[panel["timestamp"] <= t], store=store, last_only=True)
        cut["timestamp"] = pd.to_datetime(cut["timestamp"], utc=True)
        key = ["symbol", "horizon"]
        row = full[full["timestamp"] == t].sort_values(key).reset_index(drop=True)
        cut = cut.sort_values(key).reset_index(drop=True)
        assert len(cut) == N_SYMBOLS * len(HORIZONS) and (cut["timestamp"] == t).all()
        # the features are float32: the two calls agree to its rounding (a look-ahead would differ in
        # the leading digits), and the book's weights and actions are the same exactly
        np.testing.assert_allclose(cut[cols].to_numpy(float), row[cols].to_numpy(float), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(cut["target_weight"], row["target_weight"], rtol=0, atol=1e-12)
        assert list(cut["action"]) == list(row["action"])


def test_follow_mode_acts_on_the_bars_a_growing_directory_gains(model, replay, tmp_path):
    """A directory that gains a file between polls: the same logs as the one-shot replay."""
    _, store, _, _, lockbox, panel_file = model
    _, replay_dir = replay
    panel = _file_panel(panel_file)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cut = lockbox + pd.Timedelta(hours=30)
    panel[panel["timestamp"] <= cut].to_parquet(data_dir / "part-1.parquet", index=False)
    lines, naps = [], []

    def grow(seconds):  # between polls: the second file lands, caught half-written first
        naps.append(seconds)
        if len(naps) == 1:
            (data_dir / "part-2.parquet").write_bytes(b"PAR1 half a file")
        if len(naps) == 2:
            panel[panel["timestamp"] > cut].to_parquet(data_dir / "part-2.parquet", index=False)

    settings = _settings(tmp_path / "log", follow=True, poll_s=0.0, max_polls=4)
    result = run_paper(settings, lambda: _file_panel(data_dir), _execution(), COSTS, store, lines.append, grow)
    assert result.polls == 4 and naps == [0.0, 0.0, 0.0] and len(lines) == 4
    assert lines[0].startswith("poll 1: 31 bar(s)") and "could not be read" in lines[1]
    assert lines[2].startswith("poll 3: 44 bar(s)") and lines[3].startswith("poll 4: no new bar")
    followed, replayed = _logs(tmp_path / "log"), _logs(replay_dir)
    for log in LOGS:  # data_version: the fingerprint of the panel each poll saw
        drop = ["data_version"] if log == "predictions" else []
        pd.testing.assert_frame_equal(followed[log].drop(columns=drop), replayed[log].drop(columns=drop))


def test_refusals_in_sample_start_another_version_other_settings_and_reset(model, replay, tmp_path):
    _, store, _, _, lockbox, panel_file = model
    _, replay_dir = replay
    early = (lockbox - pd.Timedelta(days=2)).isoformat()
    with pytest.raises(QuantmlInputError, match="inside paper v1's development data .* allow_in_sample=true"):
        PaperSession(_settings(tmp_path / "a", start=early), _execution(), COSTS, store)
    session = PaperSession(_settings(tmp_path / "a", start=early, allow_in_sample=True), _execution(), COSTS, store)
    assert session.start == pd.Timestamp(early)
    # the replay's state belongs to v1: v2 (or any other version) is refused on that log dir
    panel = _file_panel(panel_file)
    with pytest.raises(QuantmlInputError, match=r"written for models:/paper/1 .* models:/paper/2.*reset=true"):
        PaperSession(_settings(replay_dir, model=f"models:/{NAME}/2"), _execution(), COSTS, store)
    richer = PaperSession(_settings(replay_dir), _execution(aum=2e6), COSTS, store)
    with pytest.raises(QuantmlInputError, match="written with other settings"):
        richer.poll(panel)
    wider = pd.concat([panel, panel[panel["symbol"] == panel["symbol"].iloc[0]].assign(symbol="ZZZ")])
    with pytest.raises(QuantmlInputError, match="written with other symbols"):
        PaperSession(_settings(replay_dir), _execution(), COSTS, store).poll(wider.reset_index(drop=True))
    # reset=true moves the old log dir aside (nothing deleted) and starts over
    fresh = tmp_path / "fresh"
    run_paper(_settings(fresh, end=(lockbox + pd.Timedelta(hours=3)).isoformat()), lambda: panel,
              _execution(), COSTS, store)  # fmt: skip
    moved = run_paper(
        _settings(fresh, model=f"models:/{NAME}/2", reset=True, end=(lockbox + pd.Timedelta(hours=3)).isoformat()),
        lambda: panel,
        _execution(),
        COSTS,
        store,
    )
    assert moved.moved_to is not None and load_state(moved.moved_to).model_version == "1"
    assert load_state(fresh).model_version == "2" and moved.bars == 4


def test_cli_paper_and_predict_append_to_one_log_dir(model, tmp_path, capsys):
    uri, _, _, _, lockbox, panel_file = model
    log_dir = tmp_path / "cli"
    end = (lockbox + pd.Timedelta(hours=5)).isoformat()
    args = [f"model=models:/{NAME}@active", f"data={panel_file}", f"log_dir={log_dir}", f"tracking.uri={uri}"]
    assert paper_main([*args, f"end={end}", "cost=equity"]) == 0
    out = capsys.readouterr().out
    assert "poll 1: 6 bar(s)" in out and "next: quantml monitor model=models:/paper/1" in out
    assert len(read_log(log_dir, "predictions")) == 6 * N_SYMBOLS * len(HORIZONS)
    assert paper_main([*args, "start=2024-03-02"]) == 2  # inside the development data
    assert "allow_in_sample=true" in capsys.readouterr().err
    # quantml predict log_dir= appends the panel's last bar (source=predict), once
    output = tmp_path / "preds.parquet"
    predict = [f"model=models:/{NAME}@active", f"data={panel_file}", f"output={output}", f"tracking.uri={uri}"]
    assert predict_main([*predict, f"log_dir={log_dir}"]) == 0
    assert f"{N_SYMBOLS * len(HORIZONS)} new row(s) appended" in capsys.readouterr().out
    assert predict_main([*predict, f"log_dir={log_dir}"]) == 0
    assert "0 new row(s) appended" in capsys.readouterr().out
    logged = read_log(log_dir, "predictions")
    assert logged.groupby("source").size().to_dict() == {"paper": 36, "predict": N_SYMBOLS * len(HORIZONS)}
    assert not logged.duplicated(list(LOG_KEYS["predictions"])).any()


def test_a_crash_between_the_logs_and_the_state_re_acts_those_bars_without_a_duplicate(model, replay, tmp_path):
    """The logs are appended before the state (the commit point): a crash in between leaves rows the
    state does not know of; the rerun re-acts those bars from the previous state and the keys drop them."""
    import quantml.serving.paper as paper

    _, store, _, _, _, panel_file = model
    _, replay_dir = replay
    log_dir, commits = tmp_path / "crash", []
    real_save = paper.save_state

    def crash_on_third(path, state):
        commits.append(state.last_bar)
        if len(commits) == 3:  # bars 21..30 are in the logs, the state still says 20
            raise RuntimeError("killed between the logs and the state")
        return real_save(path, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paper, "save_state", crash_on_third)
        with pytest.raises(RuntimeError, match="killed between"):
            run_paper(_settings(log_dir, commit_bars=10), lambda: _file_panel(panel_file), _execution(), COSTS, store)
    assert load_state(log_dir).bars_acted == 20  # two commits of 10 bars
    assert read_log(log_dir, "predictions")["timestamp"].nunique() == 30  # ... while the logs hold 30 bars
    resumed = run_paper(_settings(log_dir, commit_bars=10), lambda: _file_panel(panel_file), _execution(), COSTS, store)
    assert resumed.bars == 55 and load_state(log_dir).bars_acted == 75
    assert _duplicated_keys(log_dir) == dict.fromkeys(LOGS, 0)
    got, want = _logs(log_dir), _logs(replay_dir)
    for log in LOGS:
        pd.testing.assert_frame_equal(got[log], want[log])


@pytest.mark.slow
def test_killed_mid_replay_resumes_to_the_logs_of_an_uninterrupted_run(model, replay, tmp_path):
    """SIGKILL `quantml paper` once some bars are committed; the rerun ends with the same logs, no key twice."""
    uri, _, _, _, _, panel_file = model
    _, replay_dir = replay
    log_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "quantml.cli.main",
        "paper",
        f"model=models:/{NAME}@active",
        f"data={panel_file}",
        f"log_dir={log_dir}",
        f"tracking.uri={uri}",
        "cost=equity",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*cmd, "commit_bars=1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    state_file, acted = log_dir / PAPER_STATE_FILE, 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if state_file.exists():
            try:
                acted = json.loads(state_file.read_text())["bars_acted"]
            except (ValueError, KeyError):
                acted = 0
            if acted >= 10:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _logs(log_dir)
    assert 10 <= json.loads(state_file.read_text())["bars_acted"] < 75 and 0 < len(partial["predictions"]) < 450
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _duplicated_keys(log_dir) == dict.fromkeys(LOGS, 0)
    resumed, replayed = _logs(log_dir), _logs(replay_dir)
    for log in LOGS:
        pd.testing.assert_frame_equal(resumed[log], replayed[log])
    assert json.loads(state_file.read_text())["bars_acted"] == 75


def test_data_model_reads_the_panel_settings_back_from_the_source_run(model, tmp_path):
    from quantml.serving.predict import resolve_model
    from quantml.serving.source_data import model_data_config

    uri, store, _, _, _, panel_file = model
    data = model_data_config(
        {"source": "model", "symbols": None, "end": None}, resolve_model(f"models:/{NAME}/1", store), store
    )
    assert (data.source, data.n_bars, data.n_symbols, data.start) == ("synthetic", N_BARS, N_SYMBOLS, "2024-03-01")
    assert (
        model_data_config(
            {"source": "model", "end": "2024-03-10"}, resolve_model(f"models:/{NAME}/1", store), store
        ).end
        == "2024-03-10"
    )
    # quantml predict data=model predicts exactly what the same panel given as a file does
    outputs = {}
    for label, data_arg in (("model", "data=model"), ("file", f"data={panel_file}")):
        outputs[label] = tmp_path / f"{label}.parquet"
        args = [f"model=models:/{NAME}@active", data_arg, f"output={outputs[label]}", f"tracking.uri={uri}"]
        assert predict_main(args) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(outputs["model"]), pd.read_parquet(outputs["file"]))
