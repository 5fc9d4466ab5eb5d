"""The stages of regimen/ are layers (pyproject.toml's import-linter contracts): the project keeps
them, and an import that climbs a layer breaks them, named with its line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]  # import-linter's command


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the packages under `root`, not the installed ones
    return subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_the_project_keeps_its_layers():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def lint_with_line(tmp_path: Path, module: str, line: str) -> tuple[subprocess.CompletedProcess, int]:
    """`lint` of a copy of the project whose `module` (a path under the root) ends with `line`;
    with the number that line has there."""
    for name in ("regimen", "models"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lines = (tmp_path / module).read_text().splitlines() + [line]
    (tmp_path / module).write_text("\n".join(lines) + "\n")
    return lint(tmp_path), len(lines)


def test_an_import_that_climbs_a_layer_is_named(tmp_path):
    done, number = lint_with_line(tmp_path, "regimen/data/windows.py", "from regimen.train import stack")
    assert done.returncode == 1
    assert "regimen.data is not allowed to import regimen.train" in done.stdout
    assert f"regimen.data.windows -> regimen.train.stack (l.{number})" in done.stdout


def test_models_may_not_import_regimen(tmp_path):
    done, number = lint_with_line(tmp_path, "models/hmm.py", "import regimen")
    assert done.returncode == 1
    assert "models is not allowed to import regimen" in done.stdout
    assert f"models.hmm -> regimen (l.{number})" in done.stdout
