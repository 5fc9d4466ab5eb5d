"""Threads that fit the cores this process may use, and progress lines when stderr is not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, ok, phase_one, tiny_config
from regimen.core import machine


def test_threads_follow_affinity_omp_and_the_config(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert machine.threads_to_use(None) == (1, "CPU affinity")
    finally:
        os.sched_setaffinity(0, cores)
    assert machine.threads_to_use(3) == (3, "threads in the config")
    if len(cores) > 1:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert machine.threads_to_use(None) == (1, "OMP_NUM_THREADS")


def test_busy_cores_are_named_but_never_change_the_thread_count(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert machine.shared_cores_hint(2, load=1.2) is None  # this process alone
    assert machine.shared_cores_hint(2, load=2.1) == (
        "other jobs keep about 1.1 of the 2 cores busy (load average 2.1): 2 threads will wait on them; "
        "set threads: 1 in the config if an epoch is slow")
    assert machine.shared_cores_hint(1, load=4.0) is None
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert machine.shared_cores_hint(2, load=3.0) is None  # cores to spare


def test_a_run_pinned_to_one_core_trains_with_one_thread(tmp_path):
    config = tiny_config(tmp_path, {"training": {"epochs": 1}})
    ok("tools/preprocess.py", "--config", config)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run([sys.executable, str(ROOT / "train_convlstm.py"), "--config", config, "--save",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert done.returncode == 0, done.stderr
    assert "training on the CPU with 1 threads (CPU affinity" in done.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_convlstm"]["provenance"]["threads"] == 1


def test_progress_is_logged_inside_an_epoch_when_stderr_is_a_file(tmp_path):
    config, _ = phase_one(tmp_path)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, as under nohup or a batch scheduler
        subprocess.run([sys.executable, str(ROOT / "train_convlstm.py"), "--config", config, "--save",
                        str(tmp_path / "again"), "--set", "progress_interval_s=0.001"],
                       stdout=subprocess.DEVNULL, stderr=stderr, check=True)
    lines = log.read_text().splitlines()
    inside = [line for line in lines if "epoch 1: " in line and " batches, " in line and "s left" in line]
    assert inside and inside[0].index("epoch 1: 1/") > 0  # after the first batch, before the epoch ends
    epoch_end = next(i for i, line in enumerate(lines) if "INFO epoch 1: loss=" in line)
    assert lines.index(inside[0]) < epoch_end
