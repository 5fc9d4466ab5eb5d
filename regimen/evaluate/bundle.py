"""Phase 5: export a checkpoint as a bundle someone else can verify, load and predict with.

A bundle (`regimen.core.runs.BundleFolder`) holds `model.pt` (network weights, what
rebuilds the network, and how raw inputs are prepared), `pgm_params.pkl` (when
there is a PGM and it beats the unaries on val, see `evaluation.use_pgm`), the resolved `config.yaml`, `calibration.npz` (fitted on
val), `metrics.json` (test metrics before and after calibration, with
provenance) and `MANIFEST.json` (the sha256 of each, config hash, data
version, git commit, library versions).

    from regimen.evaluate.bundle import predict
    out = predict("artifacts/", X)   # X [N, T, H, W, C] raw -> labels and calibrated probabilities

A forecast bundle (`data.forecast`) takes the T_in past frames `[N, T_in, H, W, C]`
and returns the T_out future frames' labels and probabilities, or values.

The export computes its test metrics through `Bundle.predict`, the same call a
user makes, so loading the bundle in a fresh process and predicting on the
test split gives back `metrics.json` exactly (on the same kind of device).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from regimen.core import files, folders, runs
from regimen.core.config import Config, EvaluationConfig, config_hash, dump_config
from regimen.core.errors import UserError
from regimen.data.preprocess import add_static_features
from regimen.data.processed import TaskData
from regimen.evaluate.calibration import Calibrator
from regimen.evaluate.evaluation import keep_the_better, load_evaluated, split_reports, split_sample
from regimen.evaluate.forecast import ForecastReport
from regimen.evaluate.predictions import predictions
from regimen.scores.metrics import MAIN_METRIC
from regimen.train.inference import network_outputs
from regimen.train.inference import predict as predict_unaries
from regimen.train.pgm import head_from_params, pgm_params
from regimen.train.stack import Stack, model_input, resolve_device, stack_from_checkpoint

log = logging.getLogger(__name__)


class Bundle:
    """A loaded model: network, optional PGM, calibrator and the input preparation.

    Args:
        stack: the network and its PGM head.
        calibrator: maps the final predictor's probabilities to calibrated ones.
        preparation: task, classes, static features and normalisation of the training data.
        batch_size: windows per forward pass.
    """

    def __init__(self, stack: Stack, calibrator: Calibrator, preparation: dict, batch_size: int):
        self.stack, self.calibrator = stack, calibrator
        self.preparation, self.batch_size = preparation, batch_size
        self.task = preparation["task"]

    def prepare(self, x: np.ndarray) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Raw windows `[N, T, H, W, C]` (or `[N, T, F]`) -> the static features and
        normalisation the model was trained with, as `[N, T, H, W, C']`, and where the model was
        trained with `data.missing: mask`, the pixels observed `[N, T, H, W]` (NaN/Inf missing,
        filled with the training mean as phase 0 does; else None and NaN is refused)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, :, None, None, :]
        raw = self.preparation["raw_channels"]
        if x.ndim != 5 or x.shape[-1] != raw:
            raise UserError(f"X has shape {tuple(x.shape)}; the model expects raw windows [N, T, H, W, {raw}]")
        self.check_past_frames(x.shape[1])
        finite = np.isfinite(x)
        observed = None
        if self.preparation.get("missing") == "mask":
            observed, x = finite.all(-1), np.where(finite, x, np.float32(0))
        elif not finite.all():
            raise UserError("X holds NaN or Inf values (the model was trained without data.missing: mask)")
        x = np.stack([add_static_features(window, self.preparation["static_features"])[0] for window in x])
        norm = self.preparation["normalisation"]
        mean, std = np.asarray(norm["mean"], np.float32), np.asarray(norm["std"], np.float32)
        x = ((x - mean) / std).astype(np.float32)
        if observed is None:
            return torch.from_numpy(x), None
        x[~observed] = 0.0
        return torch.from_numpy(x), torch.from_numpy(observed) if self.task == "segmentation" else None

    def check_past_frames(self, frames: int) -> None:
        """A forecast reads exactly its T_in past frames: more would hand it the future."""
        forecast = self.preparation.get("forecast")
        if forecast and frames != forecast["input_frames"]:
            raise UserError(f"X holds {frames} frames per window; this model forecasts {forecast['output_frames']} "
                            f"frames from the {forecast['input_frames']} past frames before them: pass exactly "
                            f"those [N, {forecast['input_frames']}, H, W, C]")

    def predict(self, x, normalized: bool = False, calibrated: bool = True, device: str | torch.device = "cpu") -> dict:
        """Labels `[N, T(, H, W)]` and class probabilities `[..., K]` (calibrated unless told not to);
        regression: predicted `values`. `normalized=True` takes already-processed windows
        (a split file's `X`). A window may be any number of frames: a whole sequence is read as one
        stream and its PGM decodes it whole. A forecast: the past frames `[N, T_in, ...]` in, the T_out
        future frames' predictions out."""
        device = torch.device(device)
        x, valid = (torch.as_tensor(x, dtype=torch.float32), None) if normalized else self.prepare(x)
        self.check_past_frames(x.shape[1])
        if self.preparation.get("forecast"):
            valid = None  # the mask of past frames says nothing of the future ones
        unaries, _ = predict_unaries(self.stack.to(device), x, device, self.batch_size)
        predicted = predictions(unaries, self.task, self.stack.head, model_input(x), valid)
        if self.task == "regression":
            return {"values": predicted.probs}
        probs = predicted.probs
        if calibrated:
            probs = self.calibrator(predicted.flat_probs()).reshape(probs.shape)
        return {"labels": predicted.labels, "probs": probs}

    def report(self, data: TaskData, split: str, settings: EvaluationConfig, device="cpu", seed: int = 0) -> dict:
        """Metrics on a processed split before and after calibration (what `metrics.json` holds),
        summed as its windows stream (`seed` draws the AUROC's sample of a large split); with
        `settings.stateful`, each sequence read as one stream and its PGM decoded whole."""
        device = torch.device(device)
        batches = network_outputs(self.stack.to(device), data, split, device, self.batch_size, settings.stateful)
        calibrated = ("bundle", self.calibrator) if self.task != "regression" else None
        forecast = ForecastReport(data, settings, ["bundle"]) if data.forecast else None
        reports = split_reports(batches, data, {"bundle": self.stack.head}, settings, split_sample(data, split, seed),
                                calibrated, forecast)
        report = {"uncalibrated": reports["bundle"]}
        if calibrated is not None:
            report["calibrated"] = {"method": self.calibrator.method, **reports["calibrated"]}
        if forecast is not None:
            report["forecast"] = forecast.result()
        return report


def preparation(meta: dict) -> dict:
    """What turns a user's raw windows into the model's input."""
    static = list(meta["static_features"])
    # Static channels come after the raw ones (`add_static_features` names them edges_*, motion_*, mask).
    raw = len([c for c in meta["channel_names"] if not c.startswith(("edges_", "motion_")) and c != "mask"])
    return {"task": meta["task"], "num_classes": meta["num_classes"], "class_names": meta["class_names"],
            "channel_names": meta["channel_names"], "raw_channels": raw, "static_features": static,
            "normalisation": meta["normalisation"], "T_window": meta["T_window"],
            "missing": (meta.get("masks") or {}).get("missing", "refuse"), "forecast": meta.get("forecast")}


# --------------------------------------------------------------------------- export.py


def export(config: Config, ckpt: Path, out: Path, overwrite: bool, pgm_path: Optional[Path]) -> dict:
    """Calibrate on val, measure on test, and write the bundle into `out` (all files or none)."""
    started = time.time()
    _check_out(out, overwrite)
    folders.claim(out, "--out")
    made_with, data, stack = load_evaluated(config, ckpt, pgm_path)
    device = resolve_device(config.device)
    validation = keep_the_better(stack, data, device, config)
    bundle = Bundle(stack, validation.calibrator, preparation(data.meta), config.training.batch_size)
    if data.task != "regression":
        log.info("calibration: %s (val ECE %s)", bundle.calibrator.method,
                 ", ".join(f"{k} {v:.4f}" for k, v in validation.val_ece.items()))
    test = bundle.report(data, "test", config.evaluation, device, config.seed)
    stack.cpu()
    metrics = {"export": {
        "task": data.task, "metric": MAIN_METRIC[data.task][0],
        "pgm_type": None if stack.head is None else stack.head.type, "pgm_choice": validation.choice,
        "checkpoint": str(ckpt),
        "calibration": {"method": bundle.calibrator.method, "fitted_on": "val", "val_ece": validation.val_ece,
                        "val_nodes": validation.nodes},
        "test": test,
        "provenance": files.provenance(config_hash(made_with), made_with.seed, data.meta, str(device), started,
                                      time.time()),
    }}
    model = {"kind": "model", "dataset": data.identity, "net": dict(stack.spec),
             "net_state": stack.net.state_dict(), "mixed_precision": stack.mixed_precision,
             "preparation": bundle.preparation, "batch_size": bundle.batch_size}
    names = runs.BundleFolder(Path(out))
    payloads = {names.model.name: files.checkpoint_bytes(model), names.config.name: dump_config(made_with).encode(),
                names.calibration.name: bundle.calibrator.to_npz(),
                names.metrics.name: (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode()}
    if stack.head is not None:
        payloads[names.pgm_params.name] = files.pgm_params_bytes(pgm_params(stack.head, data.identity))
    manifest = {"files": {name: files.sha256_bytes(payload) for name, payload in sorted(payloads.items())},
                "config_hash": config_hash(made_with), "data_version": data.meta["data_version"],
                "dataset": data.meta["name"], "git_commit": metrics["export"]["provenance"]["git_commit"],
                "libraries": metrics["export"]["provenance"]["libraries"],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    payloads[names.manifest.name] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    folders.write_staged(names.root, payloads)
    return metrics["export"]


def _check_out(out: Path, overwrite: bool) -> None:
    """A bundle replaces only a bundle (with --overwrite), and is swapped in beside it: the folder
    above must be writable too."""
    folders.check_output(out, runs.BUNDLE, "--out", overwrite, fresh=True)
    parent = Path(os.path.abspath(out)).parent
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable (the bundle is written beside it, then "
                        "swapped in)")


# --------------------------------------------------------------------------- loading and verifying


def verify(folder: Path) -> dict:
    """Check every file's sha256 against MANIFEST.json; a UserError names the first bad file."""
    bundle = runs.BundleFolder(Path(folder))
    if not bundle.root.is_dir():
        raise UserError(f"{bundle.root}: not a folder; expected an export bundle")
    if not bundle.manifest.is_file():
        raise UserError(f"{bundle.manifest}: missing; {bundle.root} is not an export bundle")
    try:
        manifest = json.loads(bundle.manifest.read_text())
        listed = dict(manifest["files"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UserError(f"{bundle.manifest}: not a readable manifest (JSON with a 'files' table)") from None
    for name in runs.BundleFolder.FILES:
        if name not in listed and name != bundle.pgm_params.name:  # a model without a PGM has none
            raise UserError(f"{bundle.manifest}: does not list {name}; the bundle is incomplete")
    for name, expected in listed.items():
        path = bundle.root / name
        if name not in runs.BundleFolder.FILES:
            raise UserError(f"{bundle.manifest}: lists an unknown file {name!r}")
        if not path.is_file():
            raise UserError(f"{path}: missing (listed in {bundle.manifest.name})")
        actual = files.sha256_file(path)
        if actual != expected:
            raise UserError(f"{path}: sha256 {actual[:16]}... differs from {bundle.manifest.name} "
                            f"({expected[:16]}...); the file changed after export")
    return manifest


def load_bundle(folder: str | Path, check: bool = True) -> Bundle:
    """Load an export bundle (after checking its hashes, unless `check=False`)."""
    bundle = runs.BundleFolder(Path(folder))
    manifest = verify(bundle.root) if check else json.loads(bundle.manifest.read_text())
    model = files.load_checkpoint(bundle.model, "bundle", ("model",))
    stack = stack_from_checkpoint(model, str(bundle.model), model["mixed_precision"])
    if bundle.pgm_params.name in manifest["files"]:
        params = files.load_pgm_params(bundle.pgm_params, "bundle")
        if params["dataset"] != model["dataset"]:
            raise UserError(f"{bundle.pgm_params}: fitted on other data than {bundle.model.name}")
        stack.head = head_from_params(params, str(bundle.pgm_params))
    return Bundle(stack, Calibrator.from_npz(bundle.calibration), model["preparation"], model["batch_size"])


def predict(folder: str | Path, x, normalized: bool = False) -> dict:
    """Load the bundle in `folder` and predict on `x` in one call (see `Bundle.predict`)."""
    return load_bundle(folder).predict(x, normalized=normalized)

