"""Shared fixtures: a tiny config in a temporary folder, and running scripts as a user would."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import yaml

import script_runner

from regimen.search import trials

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "data": {
        "generator": {"num_sequences": 10, "sequence_length": 10, "height": 12, "width": 12},
        "T_window": 4,
        "stride": 3,
    },
}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With REGIMEN_NO_SKIP=1 (CI, where every optional requirements file is installed) a test that
    skips fails instead, with its reason: every test runs there. Users without an extra keep the skips."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("REGIMEN_NO_SKIP") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome, report.longrepr = "failed", f"skipped, but REGIMEN_NO_SKIP=1 runs every test: {reason}"


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


# Phases 1-3 in seconds on the tiny grid.
FAST = {"model": {"convlstm": {"hidden_sizes": [6, 6]}, "pgm": {"fit_steps": 20}},
        "training": {"epochs": 2, "joint": {"epochs": 2}}}


def tiny_config(folder: Path, extra: dict | None = None, name: str = "config.yaml") -> str:
    """A tiny, fast config with its data under `folder`; returns its path."""
    raw = merge(merge(merge(TINY, FAST), {"data": {"root": str(folder / "data")}}), extra or {})
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def ok(*args: str) -> subprocess.CompletedProcess:
    """Run a script and insist that it succeeds."""
    done = run_script(*args)
    assert done.returncode == 0, done.stderr
    return done


def phase_one(folder: Path) -> tuple[str, Path]:
    """Phases 0 and 1 on tiny storms in `folder`: (config path, the phase-1 run folder)."""
    config = tiny_config(folder)
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(folder / "base"))
    return config, folder / "base"


def metrics_of(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture
def stand_in_phases(monkeypatch):
    """Trials of evolve.py run tests/fault_phase.py for every phase instead of training."""
    for phase in trials.SCRIPTS:
        monkeypatch.setitem(trials.SCRIPTS, phase, str(ROOT / "tests" / "fault_phase.py"))


@pytest.fixture
def write_config(tmp_path):
    """Write a tiny config (data under tmp_path/data) with extra keys merged in; return its path."""

    def write(extra: dict | None = None, name: str = "config.yaml") -> Path:
        raw = merge(merge(TINY, {"data": {"root": str(tmp_path / "data")}}), extra or {})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def run_script(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a project script as `python script args` from another directory than the repo, in a
    child of an interpreter that has imported torch already (script_runner)."""
    return script_runner.run([str(ROOT / script), *args], cwd=cwd or ROOT.parent, timeout=300)


def malicious_pickle(marker: Path) -> bytes:
    """A pgm_params.pkl whose unpickling would run `touch marker`."""

    class RunsACommand:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps({"type": "crf", "params": RunsACommand()})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to prove nothing was written)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_figures(got, expected, rel: float, where: str = "") -> None:
    """Nested metric dicts (and lists) equal to `rel`, key by key; exact for strings and None."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            assert_same_figures(got[key], expected[key], rel, f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same_figures(a, b, rel, f"{where}[{i}]")
    elif isinstance(expected, (int, float)) and not isinstance(expected, bool):
        assert got == pytest.approx(expected, rel=rel, abs=1e-15), where
    else:
        assert got == expected, where
