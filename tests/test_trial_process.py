"""A trial's phases in one process give what the phase scripts give when typed one by one."""

from __future__ import annotations

import json
import subprocess

from conftest import ok, tiny_config
from regimen.search import trials


def test_one_trial_process_gives_the_numbers_of_the_scripts_run_by_hand(tmp_path):
    config = tiny_config(tmp_path, {"training": {"epochs": 1}})
    ok("tools/preprocess.py", "--config", config)
    text = open(config).read()
    spec = trials.TrialSpec(str(tmp_path / "trial"), "k", text, has_pgm=True, joint=False, objectives=["metric"],
                            timeout_s=600, retries=0)
    result = trials.run_trial(spec)
    assert result["status"] == "ok", result

    by_hand = tmp_path / "by_hand"
    by_hand.mkdir()
    (by_hand / "trial.yaml").write_text(text)
    for phase, command in trials.trial_commands(by_hand, has_pgm=True, joint=False):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    one, separate = (json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path / "trial", by_hand))
    for section in ("train_convlstm", "fit_pgm"):
        assert one[section]["val"] == separate[section]["val"], section
    assert one["evaluate_val"]["unary"] == separate["evaluate_val"]["unary"]
    assert one["evaluate_val"]["final"] == separate["evaluate_val"]["final"]
    logs = {phase: (tmp_path / "trial" / f"{phase}.log").read_text() for phase in ("train_convlstm", "evaluate")}
    assert "phase 1:" in logs["train_convlstm"] and "phase 1:" not in logs["evaluate"]
    assert "evaluating" in logs["evaluate"] and "evaluating" not in logs["train_convlstm"]
    assert "phase 2:" not in (tmp_path / "trial" / "log.txt").read_text()  # phase 1's run log is its own


def test_the_phase_that_fails_ends_the_trial_with_its_exit_code(tmp_path):
    script = tmp_path / "phase.py"
    script.write_text("import sys\nprint('ran', sys.argv[1:])\nsys.exit(int(sys.argv[1]))\n")
    phases = [(name, str(tmp_path / f"{name}.log"), [str(script), code]) for name, code in
              (("first", "0"), ("second", "3"), ("third", "0"))]
    done = subprocess.run([trials.sys.executable, "-m", "regimen.search.trial_process", json.dumps(phases)])
    assert done.returncode == 3
    assert (tmp_path / "first.log").read_text() == "ran ['0']\n"
    assert (tmp_path / "second.log").read_text() == "ran ['3']\n" and not (tmp_path / "third.log").exists()
    assert trials._last_phase(phases) == "second"


def test_a_phase_that_cannot_even_start_is_named_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setitem(trials.SCRIPTS, "train_convlstm", str(tmp_path / "missing.py"))
    spec = trials.TrialSpec(str(tmp_path / "trial"), "k", "seed: 1\n", has_pgm=True, joint=False,
                            objectives=["metric"], timeout_s=60, retries=0)
    result = trials.run_trial(spec)
    assert result["status"] == "crashed"
    assert result["reason"].startswith("train_convlstm exited 1: FileNotFoundError") and "missing.py" in result["reason"]
