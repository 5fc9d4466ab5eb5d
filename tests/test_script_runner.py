"""script_runner gives what a fresh `python script.py` gives: argv, cwd, environment, sys.path,
output, exit status, and 300 s of patience."""

from __future__ import annotations

import subprocess
import sys

import pytest

import script_runner

SCRIPT = """
import json, os, signal, sys
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path": sys.path, "env": os.environ.get("RUNNER_PROBE"),
                  "main": __name__, "file": __file__}))
print("to stderr", file=sys.stderr)
how = sys.argv[1]
if how == "text":
    sys.exit("a message")
if how == "raise":
    raise ValueError("boom")
if how == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit(int(how))
"""


@pytest.mark.parametrize("how", ["0", "2", "text", "raise", "kill"])
def test_a_script_sees_and_gives_what_a_fresh_interpreter_does(tmp_path, monkeypatch, how):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    monkeypatch.setenv("RUNNER_PROBE", "set by the test")
    fresh = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, cwd=tmp_path)
    forked = script_runner.run([str(script), how], cwd=tmp_path, timeout=60)
    assert forked.returncode == fresh.returncode
    assert forked.stdout == fresh.stdout
    if how == "raise":  # the same traceback but for the frames that run the script
        assert forked.stderr.startswith("to stderr\nTraceback") and forked.stderr.endswith("ValueError: boom\n")
    else:
        assert forked.stderr == fresh.stderr


def test_a_script_past_its_timeout_is_killed(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired) as stopped:
        script_runner.run([str(script)], cwd=tmp_path, timeout=2)
    assert stopped.value.output == b"started\n"
