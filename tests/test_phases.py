"""Phases 0-3 as a user runs them on a tiny grid: run folders, resume after SIGKILL, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from regimen.core import folders
from regimen.data.features import load_features
from conftest import ROOT, malicious_pickle, metrics_of, ok, phase_one, run_script, snapshot, tiny_config

@pytest.fixture(scope="module")
def storms(tmp_path_factory):
    """Phases 0 and 1 on tiny storms, once for the module: (config path, phase-1 folder)."""
    return phase_one(tmp_path_factory.mktemp("storms"))


def test_phases_1_to_3_leave_their_run_folders(storms, tmp_path):
    config, base = storms
    assert {"ckpt.pt", "best.pt", "features.pt", "history.jsonl", "learning_curve.png", "log.txt",
            "config.yaml", "metrics.json"} <= {p.name for p in base.iterdir()}
    phase1 = metrics_of(base)["train_convlstm"]
    assert phase1["metric"] == "miou" and 0 <= phase1["test"]["miou"] <= 1
    assert {"seed", "config_hash", "data_version", "split_sizes", "git_commit", "libraries", "device",
            "wall_time_s"} <= set(phase1["provenance"])
    history = [json.loads(line) for line in (base / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and all("lr" in r and "seconds" in r for r in history)
    features = load_features(base / "features.pt", "test")
    for split in ("train", "val", "test"):  # unaries stay aligned with the labels, window by window
        unaries, labels = features["splits"][split]["unaries"], features["splits"][split]["labels"]
        assert unaries.shape[:2] == labels.shape[:2] and unaries.shape[3:] == labels.shape[2:]

    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"))
    fitted = metrics_of(base)["fit_pgm"]
    assert fitted["pgm"] == "crf" and set(fitted["test"]) == {"unary", "pgm"}
    assert metrics_of(base)["train_convlstm"] == phase1  # phase 1's section is kept
    # the unary metrics phase 2 reports are phase 1's, recomputed from features.pt
    assert fitted["test"]["unary"]["miou"] == pytest.approx(phase1["test"]["miou"])

    for mode in ("alternating", "end_to_end"):
        joint = tmp_path / mode
        ok("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"),  # finds pgm_params.pkl
           "--save", str(joint), "--set", f"training.joint.mode={mode}")
        result = metrics_of(joint)["train_joint"]
        assert result["mode"] == mode and result["pgm"] == "crf"
        saved = torch.load(joint / "best.pt", weights_only=True)
        assert saved["kind"] == "joint" and saved["pgm"]["settings"]["type"] == "crf"
        # epoch 0 is phase 2's starting point, so the kept model is never worse on validation
        history = [json.loads(line) for line in (joint / "history.jsonl").read_text().splitlines()]
        assert history[0]["epoch"] == 0
        assert not [p.name for p in joint.iterdir() if folders.TEMPORARY.match(p.name)]  # no refit array left
        assert result["val"]["pgm"]["miou"] == pytest.approx(max(r["val"]["miou"] for r in history))
    # same seed, same weights: dropout in joint training is seeded too
    ok("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"), "--save", str(tmp_path / "again"))
    first, again = (torch.load(tmp_path / name / "ckpt.pt", weights_only=True)["net_state"]
                    for name in ("alternating", "again"))
    assert all(torch.equal(first[name], again[name]) for name in first)


@pytest.fixture(scope="module")
def regimes(tmp_path_factory):
    """Phases 0 and 1 on tiny regimes (tagging): (config path, phase-1 folder)."""
    folder = tmp_path_factory.mktemp("regimes")
    config = tiny_config(folder, {"data": {"dataset": "regimes", "task": "tagging"}, "training": {"epochs": 1}})
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(folder / "base"))
    return config, folder / "base"


@pytest.mark.parametrize("pgm_type", ["hmm", "chain_crf"])
def test_tagging_with_temporal_chains(regimes, tmp_path, pgm_type):
    config, base = regimes
    chosen = ["--set", f"model.pgm.type={pgm_type}"]
    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"), *chosen,
       "--save", str(tmp_path / "pgm"))
    fitted = metrics_of(tmp_path / "pgm")["fit_pgm"]
    assert fitted["metric"] == "accuracy" and fitted["pgm"] == pgm_type
    ok("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"), "--pgm",
       str(tmp_path / "pgm" / "pgm_params.pkl"), "--save", str(tmp_path / "joint"), *chosen,
       "--set", "training.joint.epochs=1")
    assert metrics_of(tmp_path / "joint")["train_joint"]["pgm"] == pgm_type


def test_stateful_features_give_phase_2_whole_sequences(regimes, tmp_path):
    """With evaluation.stateful phase 1 saves the unaries of each sequence read as one stream, and
    phase 2's figures decode whole sequences: they equal the fitted stack's stateful predictions
    computed here. Phase 2 told otherwise than phase 1 refuses, in one line."""
    from regimen.core import files
    from regimen.core.config_file import load_config
    from regimen.data.processed import load_task_data
    from regimen.train.inference import network_outputs, output_metrics
    from regimen.train.pgm import head_from_params
    from regimen.train.stack import stack_from_checkpoint

    config, _ = regimes
    stateful = ("--set", "evaluation.stateful=true", "--set", "model.pgm.type=hmm")
    base = tmp_path / "base"
    ok("train_convlstm.py", "--config", config, *stateful, "--save", str(base))
    assert load_features(base / "features.pt", "test")["stateful"]
    before = snapshot(base)
    done = run_script("fit_pgm.py", "--config", config, *stateful[2:], "--features", str(base / "features.pt"))
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: --features {base / 'features.pt'}: its unaries were saved with evaluation.stateful = true, the config "
        "has false; expected the same: run train_convlstm.py again with this config"]
    assert snapshot(base) == before
    ok("fit_pgm.py", "--config", config, *stateful, "--features", str(base / "features.pt"))
    fitted = metrics_of(base)["fit_pgm"]

    data = load_task_data(load_config(config, [stateful[1], stateful[3]]).data)
    stack = stack_from_checkpoint(torch.load(base / "best.pt", weights_only=True), "best.pt")
    stack.head = head_from_params(files.load_pgm_params(base / "pgm_params.pkl", "pgm"), "pgm")
    for split in ("val", "test"):
        outputs = list(network_outputs(stack, data, split, torch.device("cpu"), 4, stateful=True))
        assert all(out.pgm_labels is not None for out in outputs)  # decoded by whole sequences
        expected = output_metrics(outputs, "tagging", data.num_classes, {"unary": None, "pgm": stack.head})
        assert fitted[split]["unary"]["accuracy"] == pytest.approx(expected["unary"]["accuracy"], abs=1e-9)
        assert fitted[split]["pgm"]["accuracy"] == pytest.approx(expected["pgm"]["accuracy"], abs=1e-9)


def final_weights(folder):
    state = torch.load(folder / "ckpt.pt", weights_only=True)
    return state["net_state"], state["train_state"]["epoch"]


def test_resume_after_sigkill_ends_like_an_uninterrupted_run(storms, tmp_path):
    """The straight run reads windows in its own process, the killed and resumed one through two
    DataLoader workers: the same weights."""
    config, _ = storms
    ok("train_convlstm.py", "--config", config, "--set", "training.epochs=3", "--save", str(tmp_path / "straight"))
    longer = ["--config", config, "--set", "training.epochs=3", "--set", "data.loader.workers=2"]

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / "train_convlstm.py"), *longer, "--save", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT.parent)
    deadline = time.monotonic() + 120
    while not (killed / "history.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    _, epoch = final_weights(killed)  # the checkpoint on disk is whole and readable
    assert 1 <= epoch < 3

    done = run_script("train_convlstm.py", *longer, "--save", str(killed))
    assert done.returncode == 2 and "pass --resume" in done.stderr  # never silently restarted
    ok("train_convlstm.py", *longer, "--save", str(killed), "--resume")
    resumed, epoch = final_weights(killed)
    straight, _ = final_weights(tmp_path / "straight")
    assert epoch == 3
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    lines = (killed / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_a_malicious_pgm_params_file_runs_nothing(storms, tmp_path):
    config, base = storms
    marker = tmp_path / "pwned"
    bad = tmp_path / "pgm_params.pkl"
    bad.write_bytes(malicious_pickle(marker))
    before = snapshot(tmp_path)
    done = run_script("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"), "--pgm", str(bad),
                      "--save", str(tmp_path / "joint"))
    assert done.returncode == 2
    assert "refusing to load posix.system" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists() and snapshot(tmp_path) == before


def test_a_checkpoint_whose_weights_do_not_fit_its_model_is_named(storms, tmp_path):
    config, base = storms
    payload = torch.load(base / "ckpt.pt", weights_only=True)
    payload["net"]["hidden_sizes"] = [8, 6]
    torch.save(payload, tmp_path / "ckpt.pt")
    done = run_script("train_joint.py", "--config", config, "--resume", str(tmp_path / "ckpt.pt"),
                      "--save", str(tmp_path / "joint"))
    assert done.returncode == 2
    assert "parameter encoder.cells.0.conv_x.weight has shape (24, 1, 3, 3), the model needs (32, 1, 3, 3)" \
        in done.stderr


def other_data(tmp_path):
    """A config whose processed data differs (another seed): the earlier run's files do not fit it."""
    config = tiny_config(tmp_path, {"seed": 7}, name="other.yaml")
    ok("tools/preprocess.py", "--config", config)
    return config


BAD = {
    "features missing": ("fit_pgm.py", lambda b, t: ["--features", str(t / "nope.pt")], "nope.pt: file not found"),
    "features not a checkpoint": ("fit_pgm.py", lambda b, t: ["--features", str(b / "config.yaml")],
                                  "damaged or not a regimen checkpoint"),
    "features are a checkpoint": ("fit_pgm.py", lambda b, t: ["--features", str(b / "ckpt.pt")],
                                  "holds a convlstm checkpoint; expected features"),
    "unknown mode": ("train_joint.py", lambda b, t: ["--resume", str(b / "ckpt.pt"), "--set",
                                                     "training.joint.mode=sideways"],
                     "training.joint.mode = 'sideways': expected one of alternating, end_to_end"),
    "resume missing": ("train_joint.py", lambda b, t: ["--resume", str(t / "gone.pt")], "gone.pt: file not found"),
    "resume from features": ("train_joint.py", lambda b, t: ["--resume", str(b / "features.pt")],
                             "holds a features checkpoint; expected convlstm or joint"),
    "resume best.pt of phase 1": ("train_convlstm.py", lambda b, t: ["--resume", str(b / "best.pt")],
                                  "holds weights only; resume from"),
    "em for a crf": ("fit_pgm.py", lambda b, t: ["--features", str(b / "features.pt"), "--set", "model.pgm.fit=em"],
                     "model.pgm.fit = 'em': em (Baum-Welch) applies to model.pgm.type = hmm only"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_get_one_line_and_change_nothing(storms, tmp_path, case):
    config, base = storms
    script, arguments, message = BAD[case]
    before = snapshot(base.parent)
    done = run_script(script, "--config", config, *arguments(base, tmp_path), "--save", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(base.parent) == before and not (tmp_path / "out").exists()


def test_features_from_other_data_are_refused(storms, tmp_path):
    _, base = storms
    other = other_data(base.parent)
    for script, flag, path in (("fit_pgm.py", "--features", "features.pt"), ("train_joint.py", "--resume", "ckpt.pt")):
        done = run_script(script, "--config", other, flag, str(base / path), "--save", str(tmp_path / "out"))
        assert done.returncode == 2 and "was made from storms data (version" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_pgm_type_that_does_not_fit_the_task(regimes, tmp_path):
    config, base = regimes
    before = snapshot(base)
    done = run_script("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"),
                      "--set", "model.pgm.type=crf")
    assert done.returncode == 2
    assert "model.pgm.type = 'crf' does not fit task 'tagging': expected hmm or chain_crf" in done.stderr
    done = run_script("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"),
                      "--set", "model.pgm.type=hmm", "--set", "loss.unary=kl", "--save", str(tmp_path / "joint"))
    assert done.returncode == 2 and "loss.unary = 'kl' needs soft targets P" in done.stderr
    assert snapshot(base) == before and not (tmp_path / "joint").exists()


def test_regression_has_no_pgm(tmp_path):
    config = tiny_config(tmp_path, {"data": {"task": "regression"}, "training": {"epochs": 1}})
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "base"))
    assert metrics_of(tmp_path / "base")["train_convlstm"]["metric"] == "rmse"
    done = run_script("fit_pgm.py", "--config", config, "--features", str(tmp_path / "base" / "features.pt"))
    assert done.returncode == 2 and "task 'regression' has no PGM" in done.stderr
