"""The one command line: ``quantml train | tune | predict | registry``, settings as key=value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quantml.cli import main as dispatcher
from quantml.cli import registry
from tests.helpers import quantml_cli


def test_help_lists_every_subcommand(capsys):
    assert dispatcher.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("quantml train", "quantml tune", "quantml predict", "promote NAME VERSION"):
        assert command in out
    assert dispatcher.main([]) == 2  # no command: the usage, as an error
    assert dispatcher.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["registry", "predict"])
def test_subcommand_help(capsys, command):
    assert dispatcher.main([command, "--help"]) == 0
    assert f"quantml {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, command, ids, overrides",
    [
        (["register", "abc123"], "register", {"run_id": "abc123"}, []),
        (["register", "abc123", "name=btc"], "register", {"run_id": "abc123"}, ["name=btc"]),
        (["register", "run_id=abc123"], "register", {}, ["run_id=abc123"]),
        (
            ["promote", "btc", "3", "reason=beats active", "force=true", "gates.calibration.max_ece=0.05"],
            "promote",
            {"name": "btc", "version": "3"},
            ["reason=beats active", "force=true", "gates.calibration.max_ece=0.05"],
        ),
        (
            ["gates", "btc", "3", "baseline=r1", "~gates.sharpe"],
            "gates",
            {"name": "btc", "version": "3"},
            ["baseline=r1", "~gates.sharpe"],
        ),
        (["list"], "list", {}, []),
        (["list", "btc"], "list", {"name": "btc"}, []),
        (["rollback", "btc", "reason=bad fills"], "rollback", {"name": "btc"}, ["reason=bad fills"]),
        (["history", "btc"], "history", {"name": "btc"}, []),
    ],
)
def test_registry_grammar_ids_positional_settings_key_value(argv, command, ids, overrides):
    assert registry.parse_args(argv) == (command, ids, overrides)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["promote", "btc", "3", "--force"], "--force is not an option: settings are key=value (e.g. force=true)"),
        (["register", "abc", "--name", "btc"], "--name is not an option"),
        (["promote", "btc"], "promote needs NAME VERSION (missing VERSION)"),
        (["history", "a", "b"], "history takes NAME, got a b"),
        (["register", "abc", "run_id=def"], "run_id given twice"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_registry_bad_command_lines_exit_2_with_one_line(capsys, argv, message):
    assert registry.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_registry_settings_compose_from_the_packaged_config(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = registry.compose_config(
        *registry.parse_args(
            [
                "promote",
                "btc",
                "7",
                "reason=beats active in 4/5 windows",
                "force=true",
                "baseline=r1",
                "gates.calibration.max_ece=0.05",
                "tracking.uri=sqlite:///other.db",
            ]
        )
    )
    assert (cfg.command, cfg.name, cfg.version, cfg.baseline) == ("promote", "btc", "7", "r1")
    assert cfg.reason == "beats active in 4/5 windows" and cfg.force is True
    assert cfg.gates.calibration.max_ece == 0.05 and cfg.gates.sharpe.min_windows == 2  # the rest: gates.yaml
    assert cfg.tracking.uri == "sqlite:///other.db"
    # gates_file= is merged over the packaged gates; the command line wins over the file
    mine = tmp_path / "gates.yaml"
    mine.write_text("sharpe:\n  min_windows: 4\ncalibration:\n  max_ece: 0.2\n")
    cfg = registry.compose_config(
        *registry.parse_args(["gates", "btc", "7", f"gates_file={mine}", "gates.calibration.max_ece=0.07"])
    )
    assert cfg.gates.sharpe.min_windows == 4 and cfg.gates.calibration.max_ece == 0.07
    assert cfg.gates.folds.min_folds == 3


def test_registry_unknown_setting_is_a_one_line_error(capsys):
    assert registry.main(["list", "colour=blue"]) == 2
    err = capsys.readouterr().err
    assert "Could not override 'colour'" in err and "gates.<gate>.<key>=" in err and err.count("\n") == 1


def test_predict_refuses_positional_settings(capsys):
    assert dispatcher.main(["predict", "models:/m@active"]) == 2
    assert "settings are key=value" in capsys.readouterr().err


def test_the_console_script_runs_hydra_train_with_cfg_job(tmp_path):
    proc = subprocess.run(
        [*quantml_cli("train"), "--cfg", "job", "backbone=ridge", "tracking.uri=sqlite:///x.db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "_target_: quantml.models.ridge.RidgeForecaster" in proc.stdout
    assert "uri: sqlite:///x.db" in proc.stdout
    assert not (tmp_path / "x.db").exists()  # --cfg only prints


def test_python_dash_m_dispatches_too(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "quantml.cli.main", "registry", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "quantml registry register RUN_ID" in proc.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["seed=0", "validation.holdout=365d", "validation.embargo=0", "backbone.reg_lambda=2"],
        ["backbone=lstm", "backbone.limit_train_batches=0.5", "backbone.max_steps=10"],
        ["data=stocks_daily", "data.start=2005-01-01", "data.symbols=[IBM,MSFT]", "data.periods_per_year=252"],
        ["data=synthetic", "+data.symbols=[BTC]", "horizon.horizons=[1h,4h]", "validation.train_blocks=2"],
        ["experiment=smoke", "tracking.log_model=false", "validation=cpcv", "validation.holdout_start=2024-03-01"],
        ["-m", "backbone=ridge,lightgbm", "ablation=full,no_macro", "hydra/launcher=joblib"],
        ["-m", "hparams_search=lightgbm", "backbone.num_leaves=int(interval(7, 31))"],
    ],
)
def test_valid_train_settings_pass_the_boundary_checks(argv):
    from quantml.cli.common import precheck
    from quantml.cli.train import check_settings

    precheck("config", argv, "quantml train", check_settings)  # raises QuantmlInputError on a refusal


def test_a_sweep_with_a_bad_value_is_refused_before_any_job_names_the_job():
    from quantml.cli.common import precheck
    from quantml.cli.train import check_settings
    from quantml.contracts import QuantmlInputError

    with pytest.raises(QuantmlInputError, match=r"backbone.num_leaves=many is not an integer.*\[job 2: "):
        precheck("config", ["-m", "backbone.num_leaves=7,15,many"], "quantml train", check_settings)


def test_tune_setting_typos_are_one_line_errors(capsys):
    assert dispatcher.main(["tune", "run_id=abc", "study.n_trails=3"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "study.n_trails is not a setting of quantml tune; did you mean study.n_trials?" in err
    )
