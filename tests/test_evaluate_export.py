"""evaluate.py and export.py as a user runs them on a tiny grid: metrics, plots, the bundle, bad inputs."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, assert_same_figures, malicious_pickle, metrics_of, ok, phase_one, run_script, snapshot
from regimen.core import folders


@pytest.fixture(scope="module")
def phase2(tmp_path_factory):
    """Phases 0-2 on tiny storms, once: (config path, run folder with best.pt and pgm_params.pkl)."""
    config, base = phase_one(tmp_path_factory.mktemp("evaluate"))
    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"))
    return config, base


@pytest.fixture(scope="module")
def bundle(phase2, tmp_path_factory):
    config, base = phase2
    out = tmp_path_factory.mktemp("export") / "artifacts"
    ok("export.py", "--config", config, "--ckpt", str(base / "best.pt"), "--out", str(out))
    return out


def test_evaluate_reports_unaries_and_pgm_with_plots(phase2, tmp_path):
    config, base = phase2
    done = ok("evaluate.py", "--config", config, "--ckpt", str(base / "best.pt"), "--out", str(tmp_path),
              "--set", "evaluation.thresholds=[1, 2]", "--set", "evaluation.scales=[1, 5]")
    assert "test pgm (final): miou" in done.stderr and "  >= 2: CSI " in done.stderr
    result = metrics_of(tmp_path)["evaluate_test"]
    assert result["final"] == "pgm" and result["pgm_type"] == "crf"
    nodes = 0
    for name in ("unary", "pgm"):
        metrics = result[name]
        assert {"accuracy", "miou", "macro_precision", "macro_recall", "macro_f1", "auroc", "kl", "nll",
                "calibration", "boundary", "temporal"} <= set(metrics)
        nodes = sum(metrics["per_class"]["support"])
        assert sum(map(sum, metrics["confusion"])) == nodes == sum(metrics["calibration"]["reliability"]["count"])
        assert 0 <= metrics["calibration"]["ece"] <= metrics["calibration"]["mce"] <= 1
    assert result["calibrated"]["method"] in ("temperature", "isotonic")
    assert result["model"]["parameters"] > 0 and result["model"]["latency_ms_per_window"] > 0
    assert {"seed", "config_hash", "data_version", "git_commit"} <= set(result["provenance"])
    for name in ("learning_curve.png", "confusion_test.png", "reliability_test.png", "per_class_f1_test.png",
                 "verification_test.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    for name in ("unary", "pgm"):  # forecast verification of both predictors, per frame of the window
        scores = result[name]["verification"]["by_threshold"]
        assert set(scores) == {"1", "2"} and set(scores["2"]["fss"]) == {"1", "5"}
        assert len(scores["1"]["frame"]["csi"]) == 4 and 0 <= scores["1"]["csi"] <= 1  # T_window 4
        assert scores["1"]["hits"] + scores["1"]["misses"] + scores["1"]["false_alarms"] + \
            scores["1"]["correct_negatives"] == nodes


def test_a_pgm_worse_than_the_unaries_is_said_and_left_out(phase2, tmp_path):
    config, base = phase2
    smoothed = tmp_path / "oversmoothed"  # a Potts CRF this strong paints every window one label
    done = ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"), "--save", str(smoothed),
              "--set", "model.pgm.compatibility=potts", "--set", "model.pgm.pairwise_weight=50",
              "--set", "model.pgm.fit_lr=1e-9")
    fit = metrics_of(smoothed)["fit_pgm"]
    unary, pgm = fit["val"]["unary"]["miou"], fit["val"]["pgm"]["miou"]
    assert pgm < unary and fit["pgm_better_on_val"] is False
    warning = (f"WARNING the crf does not beat the unaries on val: miou {unary:.4f} -> {pgm:.4f} "
               f"({100 * (pgm - unary):+.2f} points); evaluate.py and export.py use the unaries alone "
               "(evaluation.use_pgm: auto)")
    assert warning in done.stderr

    pgm_file = ["--ckpt", str(base / "best.pt"), "--pgm", str(smoothed / "pgm_params.pkl")]
    done = ok("evaluate.py", "--config", config, *pgm_file, "--out", str(tmp_path / "auto"))
    result = metrics_of(tmp_path / "auto")["evaluate_test"]
    assert result["final"] == "unary" and result["choice"]["val"]["pgm_better"] is False
    assert result["choice"]["val"]["unary"] == unary and result["choice"]["val"]["pgm"] == pgm
    assert "test unary (final): miou" in done.stderr and "does not beat the unaries on val" in done.stderr
    ok("evaluate.py", "--config", config, *pgm_file, "--out", str(tmp_path / "always"),
       "--set", "evaluation.use_pgm=always")
    assert metrics_of(tmp_path / "always")["evaluate_test"]["final"] == "pgm"

    ok("export.py", "--config", config, *pgm_file, "--out", str(tmp_path / "bundle"))
    exported = metrics_of(tmp_path / "bundle")["export"]
    assert not (tmp_path / "bundle" / "pgm_params.pkl").exists() and exported["pgm_type"] is None
    assert exported["test"]["uncalibrated"]["miou"] == result["unary"]["miou"]


def test_a_second_pgm_type_never_replaces_the_first(phase2, tmp_path):
    config, base = phase2
    folder = tmp_path / "run"
    shutil.copytree(base, folder)
    features = ["--config", config, "--features", str(folder / "features.pt")]
    before = snapshot(folder)
    done = run_script("fit_pgm.py", *features, "--set", "model.pgm.type=hmm")
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {folder / 'pgm_params.pkl'}: holds a crf, which this hmm would replace; pass --save FOLDER to keep "
        "both, or --overwrite to replace it")
    done = run_script("fit_pgm.py", *features, "--set", "model.pgm.pairwise_weight=0.2")
    assert done.returncode == 2 and "holds a crf fitted with other settings, which this crf" in done.stderr
    assert snapshot(folder) == before
    ok("fit_pgm.py", *features)  # the same PGM fitted again replaces itself
    ok("fit_pgm.py", *features, "--set", "model.pgm.type=hmm", "--overwrite")
    assert metrics_of(folder)["fit_pgm"]["pgm"] == "hmm"


def test_visualize_draws_a_checkpoints_predictions(phase2, tmp_path):
    config, base = phase2
    ok("tools/visualize.py", "--config", config, "--split", "test", "--count", "1", "--ckpt",
       str(base / "best.pt"), "--out", str(tmp_path))
    assert set(folders.contents(tmp_path)) == {"storms_test_predicted.png", "storms_test_predicted.gif"}


def test_the_bundle_verifies_and_reproduces_its_metrics_in_a_fresh_process(phase2, bundle):
    config, _ = phase2
    assert set(folders.contents(bundle)) == {"model.pt", "pgm_params.pkl", "config.yaml",
                                                   "calibration.npz", "metrics.json", "MANIFEST.json"}
    manifest = json.loads((bundle / "MANIFEST.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    assert "files match MANIFEST.json and the bundle loads" in ok("export.py", "--verify", str(bundle)).stderr
    exported = metrics_of(bundle)["export"]
    test = exported["test"]
    assert test["calibrated"]["calibration"]["ece"] <= test["uncalibrated"]["calibration"]["ece"] + 1e-9
    code = (
        "import json, sys\n"
        "from regimen.train.stack import resolve_device\n"
        "from regimen.evaluate.bundle import load_bundle\n"
        "from regimen.core.config_file import load_config\n"
        "from regimen.data.processed import load_task_data\n"
        "bundle = load_bundle(sys.argv[1])\n"
        "config = load_config(sys.argv[2])\n"
        "device = resolve_device(config.device)  # the export's device: cuda:0 where there is one\n"
        "print(json.dumps(bundle.report(load_task_data(config.data), 'test', config.evaluation, device)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(bundle), config], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == test  # exactly, every number


def test_predict_on_raw_windows_in_one_call(phase2, bundle):
    import numpy as np

    from regimen.evaluate.bundle import predict
    x = np.random.default_rng(0).normal(size=(2, 4, 12, 12, 1))
    out = predict(bundle, x)
    assert out["labels"].shape == (2, 4, 12, 12) and out["probs"].shape == (2, 4, 12, 12, 3)
    assert np.allclose(out["probs"].sum(-1), 1, atol=1e-5)


def test_verify_names_a_changed_byte_and_a_missing_file(bundle, tmp_path):
    for name in ("model.pt", "calibration.npz", "config.yaml"):
        copy = tmp_path / name.replace(".", "_")
        shutil.copytree(bundle, copy)
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 1
        (copy / name).write_bytes(bytes(data))
        done = run_script("export.py", "--verify", str(copy))
        assert done.returncode == 2 and f"{copy / name}: sha256" in done.stderr
        assert "differs from MANIFEST.json" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    missing = tmp_path / "missing"
    shutil.copytree(bundle, missing)
    (missing / "calibration.npz").unlink()
    done = run_script("export.py", "--verify", str(missing))
    assert done.returncode == 2 and f"{missing / 'calibration.npz'}: missing" in done.stderr


def test_a_malicious_pgm_params_in_a_bundle_runs_nothing(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    marker = tmp_path / "pwned"
    payload = malicious_pickle(marker)
    (copy / "pgm_params.pkl").write_bytes(payload)
    manifest = json.loads((copy / "MANIFEST.json").read_text())  # a forger fixes the hash too
    manifest["files"]["pgm_params.pkl"] = hashlib.sha256(payload).hexdigest()
    (copy / "MANIFEST.json").write_text(json.dumps(manifest))
    done = run_script("export.py", "--verify", str(copy))
    assert done.returncode == 2 and "refusing to load posix.system" in done.stderr
    assert not marker.exists()


@pytest.fixture(scope="module")
def digits_config(phase2, tmp_path_factory):
    """Tiny digits (11 classes) next to the storms data."""
    config, _ = phase2
    ok("tools/preprocess.py", "--config", config, "--set", "data.dataset=digits", "--set",
       "data.generator.digits.digit_scale=1")
    return ["--set", "data.dataset=digits", "--set", "data.generator.digits.digit_scale=1"]


BAD = {
    "missing checkpoint": (["evaluate.py", "--ckpt", "{tmp}/nowhere.pt"], "--ckpt {tmp}/nowhere.pt: file not found"),
    "export of a missing checkpoint": (["export.py", "--ckpt", "{tmp}/nowhere.pt", "--out", "{tmp}/art"],
                                       "--ckpt {tmp}/nowhere.pt: file not found"),
    "another dataset's class count": (["evaluate.py", "--ckpt", "{base}/best.pt", "DIGITS"],
                                      "a segmentation model for 3 classes (storms), the configured data is "
                                      "segmentation with 11 classes (digits)"),
    "unknown split": (["evaluate.py", "--ckpt", "{base}/best.pt", "--split", "dev"],
                      "--split 'dev': expected one of train, val, test"),
    "evaluate --out a file": (["evaluate.py", "--ckpt", "{base}/best.pt", "--out", "{tmp}/file.txt"],
                              "--out {tmp}/file.txt: is a file; expected a folder"),
    "export --out a file": (["export.py", "--ckpt", "{base}/best.pt", "--out", "{tmp}/file.txt"],
                            "--out {tmp}/file.txt: is a file; expected a folder"),
    "export over a bundle": (["export.py", "--ckpt", "{base}/best.pt", "--out", "{tmp}/full"],
                             "--out {tmp}/full: already holds files (keep.txt); pass --overwrite"),
    "verify a folder without a manifest": (["export.py", "--verify", "{tmp}/full"],
                                           "{tmp}/full/MANIFEST.json: missing"),
    "export without --ckpt": (["export.py"], "give --ckpt PATH to export, or --verify FOLDER"),
    "a threshold above the classes": (["evaluate.py", "--ckpt", "{base}/best.pt", "--set",
                                       "evaluation.thresholds=[1, 3]"],
                                      "evaluation.thresholds = [1.0, 3.0]: 3.0 is outside the classes; expected "
                                      "thresholds in (0, 2] (an event is a label >= it)"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(case, phase2, digits_config, tmp_path):
    config, base = phase2
    args, expected = BAD[case]
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    fill = {"tmp": tmp_path, "base": base}
    argv = [a.format(**fill) for a in args if a != "DIGITS"] + (digits_config if "DIGITS" in args else [])
    before, run_before = snapshot(tmp_path), snapshot(base)
    done = run_script(argv[0], "--config", config, *argv[1:])
    assert done.returncode == 2, done.stderr
    assert expected.format(**fill) in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before and snapshot(base) == run_before


def test_streamed_reports_equal_the_whole_splits_figures(phase2, monkeypatch):
    """evaluate.py and export.py sum their metrics over batches of windows as they stream: the
    figures of the whole split at once, the PGM's and the calibrated ones included. A split of
    more nodes than the cap is sampled by windows for the AUROC and the calibrator's fit only."""
    import numpy as np
    import torch

    from regimen.evaluate import evaluation
    from regimen.evaluate.calibration import Calibrator
    from regimen.core.config_file import load_config
    from regimen.evaluate.evaluation import split_reports, split_sample, validate, load_evaluated
    from regimen.evaluate.predictions import class_probs, predictions
    from regimen.train.inference import network_outputs, predict
    from regimen.scores.metrics import boundary_f1, calibration, class_report, flicker
    from regimen.train.stack import model_input
    from regimen.scores.verification import VerificationSums

    config_path, base = phase2
    config, data, stack = load_evaluated(load_config(config_path), base / "best.pt", None)
    cpu = torch.device("cpu")
    windows = data.windows("test")
    whole = windows[np.arange(len(windows))]
    unaries = predict(stack, whole["x"], cpu, 16)[0]
    truth, soft = whole["y"].numpy(), whole["p"].numpy().reshape(-1, 3)
    calibrator = Calibrator("temperature", {"temperature": np.array([1.7])})
    predictors = {"unary": None, "pgm": stack.head}
    config.evaluation.thresholds = [1, 2]
    streamed = split_reports(network_outputs(stack, data, "test", cpu, 3), data, predictors, config.evaluation,
                             split_sample(data, "test", 0), ("pgm", calibrator))
    for name, head in predictors.items():
        predicted = predictions(unaries, "segmentation", head, model_input(whole["x"]))
        probs = predicted.flat_probs()
        expected = {**class_report(truth.ravel(), predicted.labels.ravel(), probs, 3, soft),
                    "calibration": calibration(probs.max(1), probs.argmax(1) == truth.ravel(), config.evaluation.bins),
                    "boundary": boundary_f1(truth, predicted.labels, (2, 3), config.evaluation.boundary_tolerance),
                    "temporal": flicker(truth, predicted.labels)}
        assert_same_figures({key: streamed[name][key] for key in expected}, expected, 1e-9, name)
        verified = VerificationSums([1, 2], config.evaluation.scales, truth.shape[1])
        verified.add(truth, predicted.labels)
        assert_same_figures(streamed[name]["verification"], verified.result(), 1e-9, name)
    after = calibrator(predictions(unaries, "segmentation", stack.head, model_input(whole["x"])).flat_probs())
    assert streamed["calibrated"]["nll"] == pytest.approx(class_report(truth.ravel(), after.argmax(1), after, 3)["nll"])

    val = validate(stack, data, config, cpu)
    assert val.nodes == truth.size  # val is as large as test here: every node, under the cap
    monkeypatch.setattr(evaluation, "SAMPLE_NODES", 3 * truth[0].size)  # three windows' nodes
    sample = split_sample(data, "val", config.seed)
    assert sample.sum() == 3 and np.array_equal(sample, split_sample(data, "val", config.seed))
    sampled = validate(stack, data, config, cpu)
    assert sampled.nodes == 3 * truth[0].size and sampled.choice == val.choice  # the choice sees every window
    rows = np.flatnonzero(sample)
    final = {"unary": None, "pgm": stack.head}[val.choice["final"]]
    x = data.windows("val").read("x", rows)
    probs = class_probs(predict(stack, x, cpu, 16)[0], final, model_input(x)).reshape(-1, 3)
    refit = evaluation.choose_calibrator(probs, data.windows("val").read("y", rows).numpy().ravel(),
                                         config.evaluation.calibration, config.evaluation.bins)
    assert sampled.val_ece == refit[1]
