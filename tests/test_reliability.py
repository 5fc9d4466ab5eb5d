"""Nothing lost, nothing mixed: --overwrite, one writer per folder, resume at any moment, divergence,
npz folder names, out-of-memory trials, interrupted writes and file modes, through the real scripts."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, metrics_of, ok, phase_one, run_script, snapshot, tiny_config
from regimen.core import folders
from regimen.core.config_file import load_config
from regimen.search.evolution import evolve
from test_evolution import rows, search_config, without_seconds


@pytest.fixture(scope="module")
def storms(tmp_path_factory):
    """Phases 0-2 on tiny storms, once for the module: (config path, phase-1 folder)."""
    config, base = phase_one(tmp_path_factory.mktemp("storms"))
    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"))
    return config, base


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT.parent)


def wait_for(condition, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def weights(folder: Path) -> dict:
    return torch.load(folder / "ckpt.pt", weights_only=True)["net_state"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# --------------------------------------------------------------------------- 1, 2: --overwrite


def test_overwrite_starts_a_new_run_with_nothing_of_the_old_one(storms, tmp_path):
    config, base = storms
    old = tmp_path / "old"
    shutil.copytree(base, old, ignore=shutil.ignore_patterns(folders.LOCK_FILE))
    assert (old / "pgm_params.pkl").is_file() and "fit_pgm" in metrics_of(old)
    ok("train_convlstm.py", "--config", config, "--save", str(old), "--overwrite", "--set", "seed=5",
       "--set", "training.epochs=1")
    assert not (old / "pgm_params.pkl").exists()  # phase 2 of the old run is gone with it
    assert set(metrics_of(old)) == {"train_convlstm"} and metrics_of(old)["train_convlstm"]["provenance"]["seed"] == 5
    assert yaml.safe_load((old / "config.yaml").read_text())["seed"] == 5
    history = [json.loads(line) for line in (old / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1]


def test_export_overwrite_replaces_a_bundle_and_nothing_else(storms, tmp_path):
    config, base = storms
    bundle = tmp_path / "bundle"
    ok("export.py", "--config", config, "--ckpt", str(base / "best.pt"), "--out", str(bundle))
    first = (bundle / "MANIFEST.json").read_text()
    ok("export.py", "--config", config, "--ckpt", str(base / "best.pt"), "--out", str(bundle), "--overwrite")
    ok("export.py", "--verify", str(bundle))
    first, again = (json.loads(text)["files"] for text in (first, (bundle / "MANIFEST.json").read_text()))
    assert first.pop("metrics.json") != again.pop("metrics.json")  # its provenance: a new export
    assert first == again

    mine = tmp_path / "mine"
    (mine / "src").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "src" / "model.py").write_text("print(1)")
    before = snapshot(tmp_path)
    for out in (mine, tmp_path):  # a user's folder, and the folder holding every bundle
        done = run_script("export.py", "--config", config, "--ckpt", str(base / "best.pt"), "--out", str(out),
                          "--overwrite")
        assert done.returncode == 2 and "--overwrite replaces only an export bundle" in done.stderr
    assert snapshot(tmp_path) == before


def test_a_killed_overwrite_run_resumes_the_new_run_not_the_old(storms, tmp_path):
    config, base = storms
    new = ["--config", config, "--set", "seed=5", "--set", "training.epochs=3",
           "--set", "model.convlstm.hidden_sizes=[16,16]"]  # a slower first epoch to kill it in
    ok("train_convlstm.py", *new, "--save", str(tmp_path / "straight"))

    killed = tmp_path / "ow"
    shutil.copytree(base, killed, ignore=shutil.ignore_patterns(folders.LOCK_FILE))
    process = start(str(ROOT / "train_convlstm.py"), *new, "--save", str(killed), "--overwrite")
    wait_for(lambda: "seed: 5" in _text(killed / "config.yaml"))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "ckpt.pt").exists()  # killed before its first checkpoint; the old one is gone
    assert not (killed / "pgm_params.pkl").exists()

    done = ok("train_convlstm.py", "--config", config, "--save", str(killed), "--resume")
    assert "starting that run from its beginning" in done.stderr
    assert_same_weights(weights(killed), weights(tmp_path / "straight"))
    assert metrics_of(killed)["train_convlstm"]["provenance"]["seed"] == 5


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


# --------------------------------------------------------------------------- 3: one writer per folder


def test_a_second_writer_is_refused_and_a_killed_holder_leaves_no_lock(storms, tmp_path):
    config, _ = storms
    run = tmp_path / "run"
    longer = ["--config", config, "--set", "training.epochs=4", "--save", str(run)]
    first = start(str(ROOT / "train_convlstm.py"), *longer)
    wait_for(lambda: (run / "config.yaml").exists())
    second = run_script("train_convlstm.py", *longer, "--overwrite")
    assert second.returncode == 2
    assert f"--save {run}: in use by PID {first.pid} (train_convlstm.py on " in second.stderr

    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    ok("train_convlstm.py", *longer, "--resume")  # the kernel dropped the lock with the process
    assert torch.load(run / "ckpt.pt", weights_only=True)["train_state"]["epoch"] == 4


def test_two_searches_into_one_folder(tmp_path, stand_in_phases):
    config = load_config(search_config(tmp_path, {}))
    out = tmp_path / "search"
    folders.claim(out, "test")  # another evolve.py holds it
    try:
        done = run_script("evolve.py", "--config", str(tmp_path / "config.yaml"), "--out", str(out))
    finally:
        folders.release(out)
    assert done.returncode == 2 and f"in use by PID {os.getpid()}" in done.stderr
    evolve(config, out, parallel=2, resume=False, overwrite=False)  # free again
    assert {r["folder"] for r in rows(out / "trials.csv")} <= {str(p) for p in (out / "trials").glob("g*/i*")}


# --------------------------------------------------------------------------- 4: killed early


def test_a_search_killed_in_generation_0_resumes_from_its_beginning(tmp_path, stand_in_phases):
    config = load_config(search_config(tmp_path, {"evolutionary": {"population_size": 6}}))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    evolve(config, straight, parallel=2, resume=False, overwrite=False)

    child = multiprocessing.get_context("fork").Process(target=evolve, args=(config, killed, 2, False, False))
    child.start()
    wait_for(lambda: any(killed.glob("trials/g0/*/result.json")))
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not (killed / "state.json").exists()

    evolve(config, killed, parallel=2, resume=True, overwrite=False)
    assert json.loads((killed / "hall_of_fame.json").read_text()) == json.loads(
        (straight / "hall_of_fame.json").read_text().replace(str(straight), str(killed)))
    assert without_seconds(rows(killed / "logbook.csv")) == without_seconds(rows(straight / "logbook.csv"))


# --------------------------------------------------------------------------- 7: divergence


def test_a_diverging_run_exits_2_naming_the_epoch_and_keeps_its_last_good_checkpoint(storms, tmp_path):
    config, base = storms
    run = tmp_path / "run"
    shutil.copytree(base, run, ignore=shutil.ignore_patterns(folders.LOCK_FILE, "pgm_params.pkl"))
    good = weights(run)
    payload = torch.load(run / "ckpt.pt", weights_only=True)
    payload["config"]["training"]["epochs"] = 3  # one more epoch, at a learning rate that diverges
    payload["config"]["training"]["lr"] = 1e30
    payload["train_state"]["optimizer"]["param_groups"][0]["lr"] = 1e30
    payload["train_state"]["optimizer"]["param_groups"][0]["initial_lr"] = 1e30
    payload["train_state"]["scheduler"]["base_lrs"] = [1e30]
    torch.save(payload, run / "ckpt.pt")
    kept = (run / "ckpt.pt").read_bytes()
    done = run_script("train_convlstm.py", "--config", config, "--save", str(run), "--resume")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: the training loss became") and "in epoch 3" in line
    assert "lower training.lr (now 1e+30)" in line and f"{run / 'ckpt.pt'} keeps epoch 2" in line
    assert "Traceback" not in done.stderr
    assert (run / "ckpt.pt").read_bytes() == kept and all(torch.equal(good[k], weights(run)[k]) for k in good)


# --------------------------------------------------------------------------- 9: npz folder names


def test_an_npz_name_never_leaves_processed_nor_replaces_a_built_in(storms, tmp_path):
    config, _ = storms
    root = Path(yaml.safe_load(Path(config).read_text())["data"]["root"])
    built_in = snapshot(root / "processed" / "storms")
    x = np.random.default_rng(0).normal(size=(6, 5, 3, 3, 1)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64)
    for name in ("storms.npz", "...npz"):
        path = tmp_path / name
        np.savez(path, X=x, Y=y)
        ok("tools/preprocess.py", "--config", config, "--set", "data.dataset=npz", "--set", f"data.path={path}",
           "--set", "data.T_window=3")
    made = sorted((root / "processed").iterdir())
    assert len(made) == 3 and all((folder / "meta.json").is_file() for folder in made)  # two of their own
    assert sorted(p.name for p in root.iterdir()) == ["processed"]  # nothing climbed out
    assert "storms" in [folder.name for folder in made]
    assert snapshot(root / "processed" / "storms") == built_in


# --------------------------------------------------------------------------- 10: the smaller ones


def test_a_trial_killed_like_the_out_of_memory_killer_does_is_not_retried(tmp_path, stand_in_phases):
    path = search_config(tmp_path, {"evolutionary": {
        "population_size": 4, "generations": 1, "trial_retries": 2,
        "search_space": {"training.lr": {"choice": [0.001, 0.005]}}}})
    evolve(load_config(path), tmp_path / "search", parallel=2, resume=False, overwrite=False)
    killed = [r for r in rows(tmp_path / "search" / "trials.csv") if r["values"] == '{"training.lr": 0.005}']
    assert killed and all(r["status"] == "out_of_memory" and r["attempts"] == "1" for r in killed)
    assert "out-of-memory killer" in killed[0]["reason"]


def test_interrupted_writes_are_cleaned_and_files_follow_the_umask(storms, tmp_path):
    config, base = storms
    run = tmp_path / "run"
    shutil.copytree(base, run, ignore=shutil.ignore_patterns(folders.LOCK_FILE))
    leftovers = [run / ".ckpt.pt.k2j3h4.regimen-tmp", run / "plots" / ".learning_curve.regimen-tmp.png"]
    (run / "plots").mkdir()
    for path in leftovers:
        path.write_bytes(b"half a file")
    kept = [run / "notes.tmp", run / ".mine.tmp",  # a user's files that merely look temporary
            run / "other" / ".ckpt.pt.x1y2.regimen-tmp"]  # in a subfolder another writer holds
    (run / "other").mkdir()
    (run / "other" / folders.LOCK_FILE).write_text("")
    for path in kept:
        path.write_text("keep me")
    ok("evaluate.py", "--config", config, "--ckpt", str(run / "best.pt"))
    assert not any(path.exists() for path in leftovers) and all(path.exists() for path in kept)
    for name in ("metrics.json", "plots/confusion_test.png"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o666 & ~_umask(), name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_empty_config_says_every_key_takes_its_default(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    done = run_script("tools/visualize.py", "--config", str(empty), "--set", f"data.root={tmp_path}")
    assert f"{empty} is empty: every key takes its default" in done.stderr
    assert done.returncode == 2 and "meta.json not found" in done.stderr  # and goes on to the next check


def test_the_processed_data_a_run_reads_is_checked_against_its_recorded_sha256(tmp_path):
    config = tiny_config(tmp_path)
    ok("tools/preprocess.py", "--config", config)
    split = tmp_path / "data" / "processed" / "storms" / "val.X.npy"
    payload = bytearray(split.read_bytes())
    payload[-100] ^= 0xFF  # one flipped bit inside the frames: the same size
    split.write_bytes(bytes(payload))
    done = run_script("train_convlstm.py", "--config", config, "--save", str(tmp_path / "run"))
    assert done.returncode == 2 and "val.X.npy: damaged (its size or sha256 differs from meta.json's)" in done.stderr
    assert not (tmp_path / "run").exists()
