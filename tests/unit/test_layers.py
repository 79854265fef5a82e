"""The floors of the package (docs/architecture.md) are an import-linter contract (.importlinter).

The real tree keeps it; a copy of the tree with one backwards import breaks it, so the
contract is known to bite (not only to pass).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"


def lint_imports(cwd: Path, config: Path = CONFIG) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    # cwd first on the path: import-linter finds the root packages there
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(exe), "--config", str(config), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def floors() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    return parser["importlinter:contract:floors"]["layers"].split()


def test_the_floors_are_the_flow_from_contracts_to_cli():
    assert floors()[-1] == "contracts" and floors()[0] == "cli"
    packaged = {
        p.stem if p.is_file() else p.name
        for p in (REPO / "quantml").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert packaged == set(floors()), "every subpackage of quantml sits on exactly one floor"


def test_the_package_keeps_its_floors():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def _copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "conf")
    shutil.copytree(REPO / "quantml", dst / "quantml", ignore=ignore)
    shutil.copytree(REPO / "hydra_plugins", dst / "hydra_plugins", ignore=ignore)
    (dst / "tests").mkdir()
    (dst / "tests" / "__init__.py").write_text("")


@pytest.mark.parametrize(
    "importer, line, broken",
    [
        ("contracts/errors.py", "from quantml.cli import main  # injected", "quantml.contracts.errors -> quantml.cli"),
        ("models/base.py", "import quantml.experiment  # injected", "quantml.models.base -> quantml.experiment"),
        ("data/__init__.py", "from tests import helpers  # injected", "quantml.data -> tests"),
    ],
)
def test_a_backwards_import_breaks_the_contract(tmp_path, importer, line, broken):
    _copy_tree(tmp_path)
    assert lint_imports(tmp_path).returncode == 0  # the copy keeps the contract ...
    target = tmp_path / "quantml" / importer
    target.write_text(target.read_text() + f"\n\ndef _injected():\n    {line}\n")
    proc = lint_imports(tmp_path)  # ... until one import goes the wrong way, even inside a function
    assert proc.returncode == 1, proc.stdout[-4000:]
    assert "BROKEN" in proc.stdout and broken in proc.stdout.replace("\n", " ")
