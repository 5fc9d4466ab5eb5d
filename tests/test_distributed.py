"""Phases 1 and 3 under torchrun (Gloo on the CPU): the same weights as one process with the same
global batch, resume after a SIGKILL of the whole job, two nodes, trials over several processes,
bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, merge, ok, run_script, tiny_config
from regimen.search import trials
from regimen.data.windows import share_of

# fp32: under bf16 autocast each micro-batch's weight gradient is rounded to bf16 before the sum,
# so another split of the batch differs at bf16's precision, not float32's.
EXACT = {"training": {"batch_size": 4, "mixed_precision": False}}
ATOL = 1e-5


def torchrun(script: str, *args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    """The command line of `torchrun [extra] --nproc_per_node nproc script args`."""
    processes = [] if "--nproc_per_node" in extra else ["--nproc_per_node", str(nproc)]
    return [sys.executable, "-m", "torch.distributed.run", *extra, *processes, str(ROOT / script), *args]


def run_torchrun(*args: str, nproc: int = 2, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(*args, nproc=nproc, extra=extra), capture_output=True, text=True,
                          cwd=ROOT.parent, timeout=300)


def run_ok(*args: str, nproc: int = 2) -> None:
    done = run_torchrun(*args, nproc=nproc)
    assert done.returncode == 0, done.stderr[-3000:]


def weights(folder: Path, key: str = "net_state") -> dict[str, torch.Tensor]:
    return torch.load(folder / "ckpt.pt", weights_only=True)[key]


def assert_close_weights(a: Path, b: Path, key: str = "net_state") -> None:
    wa, wb = weights(a, key), weights(b, key)
    state = wa.get("state", wa) if key == "pgm" else wa
    other = wb.get("state", wb) if key == "pgm" else wb
    assert set(state) == set(other)
    for name, value in state.items():
        torch.testing.assert_close(other[name], value, atol=ATOL, rtol=0, msg=name)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny storms (batch 4, fp32), phase 0, and the uninterrupted two-process phase 1."""
    folder = tmp_path_factory.mktemp("ddp")
    config = tiny_config(folder, EXACT)
    ok("tools/preprocess.py", "--config", config)
    run_ok("train_convlstm.py", "--config", config, "--save", str(folder / "two"))
    return config, folder


def test_a_global_batch_is_shared_out_in_order_with_stand_ins_for_empty_shares():
    batch = list(range(10, 17))  # 7 windows, 2 processes x 2 micro-batches: 2, 2, 2, 1
    shares = [share_of(batch, rank, 2, 2) for rank in range(2)]
    assert [s.sizes for s in shares] == [[2, 2], [2, 1]] and [s.offset for s in shares] == [0, 4]
    assert sum((s.rows for s in shares), []) == batch
    last = [share_of([3, 5], rank, 4, 1) for rank in range(4)]  # an epoch's last batch of 2 windows
    assert [s.rows for s in last] == [[3], [5], [3], [3]] and [s.stand_in for s in last] == [False, False, True, True]


def test_two_processes_and_accumulation_take_the_steps_of_one(setup):
    config, folder = setup
    ok("train_convlstm.py", "--config", config, "--save", str(folder / "one"))
    ok("train_convlstm.py", "--config", config, "--save", str(folder / "accumulated"), "--set", "training.accumulate=2")
    assert_close_weights(folder / "one", folder / "two")
    assert_close_weights(folder / "one", folder / "accumulated")

    one, two = (json.loads((folder / run / "metrics.json").read_text())["train_convlstm"] for run in ("one", "two"))
    assert two["val"]["miou"] == pytest.approx(one["val"]["miou"], abs=1e-6)
    assert two["provenance"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "devices": [f"{socket.gethostname()}/cpu"] * 2, "global_batch": 4,
        "accumulate": 1, "micro_batch": 2.0}
    assert one["provenance"]["distributed"]["world_size"] == 1
    history = [json.loads(line) for line in (folder / "two" / "history.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == [1, 2]  # written once, by rank 0
    assert sorted(p.name for p in (folder / "two").iterdir()) == sorted(p.name for p in (folder / "one").iterdir())
    ok("evaluate.py", "--config", config, "--ckpt", str(folder / "two" / "best.pt"), "--split", "val")


def test_stateful_training_on_two_processes_equals_one(tmp_path):
    """training.stateful over two processes (7 training sequences in chunks of 4 and 3, each process a
    share of every batch): each window starts from its predecessor's state, as in one process.
    Shares that move between processes as sequences run out: tests/test_tbptt.py."""
    config = tiny_config(tmp_path, merge(EXACT, {"data": {"T_window": 3, "stride": 3},
                                                 "training": {"stateful": True, "epochs": 1}}))
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "one"))
    run_ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "two"))
    assert_close_weights(tmp_path / "one", tmp_path / "two")


@pytest.fixture(scope="module")
def fitted(setup) -> Path:
    """A copy of the two-process phase 1 with phase 2's CRF beside it."""
    config, folder = setup
    base = folder / "fitted"
    shutil.copytree(folder / "two", base)
    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"))
    return base


# Runs a phase script as its __main__, then names the threads its process still has.
THREADS_LEFT = """
import os, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
names = {open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task")}
print("threads left:", " ".join(sorted(names)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["alternating", "end_to_end"])
def test_joint_training_on_two_processes_equals_one(setup, fitted, mode):
    """Phase 3: the alternating refit runs on rank 0 and reaches every process; end to end, the
    PGM's weights are reduced with the network's. Neither leaves a Gloo thread behind: one alive
    at interpreter exit may free a collective's tensors there, needs the GIL to, and aborts the
    finished process (SIGABRT, as CI once saw end to end)."""
    config, folder = setup
    args = ["--config", config, "--resume", str(fitted / "ckpt.pt"), "--set", f"training.joint.mode={mode}"]
    ok("train_joint.py", *args, "--save", str(folder / f"joint1_{mode}"))
    wrapper = folder / "threads_left.py"
    wrapper.write_text(THREADS_LEFT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(wrapper),
                           str(ROOT / "train_joint.py"), *args, "--save", str(folder / f"joint2_{mode}")],
                          capture_output=True, text=True, cwd=ROOT.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_weights(folder / f"joint1_{mode}", folder / f"joint2_{mode}")
    assert_close_weights(folder / f"joint1_{mode}", folder / f"joint2_{mode}", key="pgm")
    if Path("/proc/self/task").is_dir():  # Linux names a process's threads there
        left = [line for line in done.stdout.splitlines() if line.startswith("threads left:")]
        assert len(left) == 2 and all("gloo" not in line for line in left), left


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts each worker in a session of its own)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        below = children.get(queue.pop(), [])
        found += below
        queue += below
    return found


@pytest.mark.slow
def test_a_job_killed_mid_epoch_resumes_to_the_uninterrupted_result_on_two_or_one_process(setup):
    config, folder = setup
    longer = ["--config", config, "--set", "training.epochs=6"]
    run_ok("train_convlstm.py", *longer, "--save", str(folder / "straight"))

    killed = folder / "killed"
    job = subprocess.Popen(torchrun("train_convlstm.py", *longer, "--save", str(killed)), cwd=ROOT.parent,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "history.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in [job.pid, *descendants(job.pid)]:  # the whole job at once: agent and workers
        os.kill(pid, signal.SIGKILL)
    job.wait()
    epoch = torch.load(killed / "ckpt.pt", weights_only=True)["train_state"]["epoch"]
    assert 1 <= epoch < 6

    shutil.copytree(killed, folder / "killed_one")
    run_ok("train_convlstm.py", *longer, "--save", str(killed), "--resume")
    ok("train_convlstm.py", *longer, "--save", str(folder / "killed_one"), "--resume")
    for resumed in (killed, folder / "killed_one"):
        assert_close_weights(folder / "straight", resumed)
        lines = (resumed / "history.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_two_nodes_over_a_c10d_rendezvous_equal_one_node(setup):
    config, folder = setup
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nodes = ("--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
             f"127.0.0.1:{port}", "--rdzv_id", "two-nodes")
    jobs = [subprocess.Popen(torchrun("train_convlstm.py", "--config", config, "--save", str(folder / "nodes"),
                                      extra=nodes), cwd=ROOT.parent, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()[-3000:]
    assert_close_weights(folder / "two", folder / "nodes")
    provenance = json.loads((folder / "nodes" / "metrics.json").read_text())["train_convlstm"]["provenance"]
    assert provenance["distributed"]["world_size"] == 2


@pytest.mark.slow
def test_a_trial_over_two_processes_runs_its_training_under_torchrun(setup):
    config, folder = setup
    spec = trials.TrialSpec(str(folder / "trial"), "k", Path(config).read_text(), has_pgm=True, joint=False,
                            objectives=["metric"], timeout_s=600, retries=0, env={}, processes=2)
    result = trials.run_trial(spec)
    assert result["status"] == "ok", result["reason"]
    metrics = json.loads((folder / "trial" / "metrics.json").read_text())
    assert metrics["train_convlstm"]["provenance"]["distributed"]["world_size"] == 2
    assert "evaluate_val" in metrics


def test_a_world_larger_than_the_global_batch_is_refused_by_every_process(setup):
    config, folder = setup
    expected = ("error: training.batch_size = 1 is the global batch, split over the 2 processes of this torchrun "
                "job: expected at least 2 windows (raise training.batch_size, or start fewer processes)")
    done = run_torchrun("train_convlstm.py", "--config", config, "--save", str(folder / "refused"),
                        "--set", "training.batch_size=1")
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:") or line.startswith("[rank")]
    assert ours == [expected]  # one line, from rank 0; torchrun adds its own report of the exit codes
    assert "exitcode  : 2" in done.stderr and not (folder / "refused").exists()
    # One process of such a job on its own: exit 2, that line alone, before joining any group.
    alone = subprocess.run([sys.executable, str(ROOT / "train_convlstm.py"), "--config", config, "--save",
                            str(folder / "refused"), "--set", "training.batch_size=2", "--set",
                            "training.accumulate=2"], capture_output=True, text=True, cwd=ROOT.parent,
                           env={**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, timeout=120)
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == [
        "error: training.batch_size = 2 is the global batch, split over the 2 processes of this torchrun job "
        "x training.accumulate 2: expected at least 4 windows (raise training.batch_size, or start fewer processes)"]
    assert not (folder / "refused").exists()


def test_more_gpus_per_trial_than_there_are_is_refused(setup):
    config, folder = setup
    done = run_script("evolve.py", "--config", config, "--out", str(folder / "search"),
                      "--set", "evolutionary.gpus_per_trial=2", "--set", "device=cpu",
                      "--set", "evolutionary.search_space={training.lr: {type: float, low: 0.001, high: 0.01}}")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: evolutionary.gpus_per_trial = 2: more GPUs than the trials have (device: cpu runs the trials on "
        "the CPU); expected at most 1"]
    assert not (folder / "search").exists()
    bad = run_script("train_convlstm.py", "--config", config, "--set", "training.accumulate=5",
                     "--save", str(folder / "acc"))
    assert bad.returncode == 2 and "training.accumulate" in bad.stderr and not (folder / "acc").exists()
