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


def copy_of_project(tmp_path: Path) -> Path:
    for name in ("regimen", "models"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_an_import_that_climbs_a_layer_is_named(tmp_path):
    root = copy_of_project(tmp_path)
    windows = root / "regimen" / "data" / "windows.py"
    lines = windows.read_text().splitlines()
    windows.write_text("\n".join(lines + ["from regimen.train import stack"]) + "\n")
    done = lint(root)
    assert done.returncode == 1
    assert "regimen.data is not allowed to import regimen.train" in done.stdout
    assert f"regimen.data.windows -> regimen.train.stack (l.{len(lines) + 1})" in done.stdout


def test_models_may_not_import_regimen(tmp_path):
    root = copy_of_project(tmp_path)
    hmm = root / "models" / "hmm.py"
    lines = hmm.read_text().splitlines()
    hmm.write_text("\n".join(lines + ["import regimen"]) + "\n")
    done = lint(root)
    assert done.returncode == 1
    assert "models is not allowed to import regimen" in done.stdout
    assert f"models.hmm -> regimen (l.{len(lines) + 1})" in done.stdout
