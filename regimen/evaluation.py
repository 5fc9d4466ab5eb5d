"""evaluate.py: the full metric suite of a checkpoint on one split, with its pictures.

A checkpoint of any phase is rebuilt from itself. Its PGM is the one it holds
(phase 3), or the `pgm_params.pkl` next to it (phase 2), or `--pgm`. The
unaries are reported alone and, when there is a PGM, after it. The final
predictor is the PGM only when it beats the unaries on validation
(`evaluation.use_pgm: auto`); it is also calibrated on the validation split (`evaluation.calibration`),
so the reliability diagram shows before and after.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from regimen import files, folders, runs
from regimen.calibration import choose_calibrator
from regimen.config import Config, EvaluationConfig, config_hash, from_dict
from regimen.errors import UserError
from regimen.losses import class_last
from regimen.metrics import (MAIN_METRIC, boundary_f1, calibration, class_report, flicker,
                             probability_metrics, regression_report)
from regimen.pgm import PGMHead, head_from_params
from regimen.plots import plot_confusion, plot_learning_curve, plot_per_class_f1, plot_reliability
from regimen.inference import choose_predictor, decode, guide_of, marginals, predict, predict_stateful
from regimen.processed import TaskData, check_same_data, load_task_data
from regimen.stack import Stack, check_fits_data, model_input, resolve_device, stack_from_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_KINDS = ("convlstm", "joint")


@dataclass
class Predictions:
    """One predictor's output on a split: decoded labels `[N, T(, H, W)]` and class
    probabilities with the class axis last `[N, T(, H, W), K]`; for regression the
    predicted values `[N, T, H, W, C]` (labels None)."""

    probs: np.ndarray
    labels: Optional[np.ndarray] = None

    def flat_probs(self) -> np.ndarray:
        return self.probs.reshape(-1, self.probs.shape[-1])


def predictions(unaries: torch.Tensor, task: str, head: Optional[PGMHead] = None,
                guide: Optional[torch.Tensor] = None) -> Predictions:
    """The unaries' softmax and argmax, or the head's marginals and joint decoding (`guide`: the
    input windows in model layout, for an edge-aware CRF)."""
    if task == "regression":
        return Predictions(class_last(unaries).numpy())
    return Predictions(class_probs(unaries, head, guide), decode(head, unaries, guide).numpy())


def class_probs(unaries: torch.Tensor, head: Optional[PGMHead], guide: Optional[torch.Tensor] = None
                ) -> np.ndarray:
    """Class probabilities, class axis last: the unaries' softmax, or the head's marginals."""
    probs = F.softmax(unaries.float(), dim=2) if head is None else marginals(head, unaries, guide)
    return class_last(probs).numpy()


def report(data: TaskData, split: str, predicted: Predictions, settings: EvaluationConfig) -> dict:
    """Every metric of one predictor on one split (see `regimen.metrics`)."""
    truth = data.splits[split]["y"].numpy()
    if data.task == "regression":
        return regression_report(truth, predicted.probs)
    probs = predicted.flat_probs()
    result = class_report(truth.ravel(), predicted.labels.ravel(), probs, data.num_classes, _soft(data, split))
    result["calibration"] = calibration(probs.max(axis=1), probs.argmax(axis=1) == truth.ravel(), settings.bins)
    axes = (2, 3) if data.task == "segmentation" else (1,)
    result["boundary"] = boundary_f1(truth, predicted.labels, axes, settings.boundary_tolerance)
    result["temporal"] = flicker(truth, predicted.labels)
    return result


def probability_report(data: TaskData, split: str, probs: np.ndarray, settings: EvaluationConfig) -> dict:
    """The metrics that depend on the probabilities only: calibration, NLL, KL, AUROC."""
    truth = data.splits[split]["y"].numpy().ravel()
    return {"calibration": calibration(probs.max(axis=1), probs.argmax(axis=1) == truth, settings.bins),
            **probability_metrics(truth, probs, data.num_classes, _soft(data, split))}


def _soft(data: TaskData, split: str) -> Optional[np.ndarray]:
    soft = data.splits[split].get("p")
    return None if soft is None else soft.numpy().reshape(-1, data.num_classes)


# --------------------------------------------------------------------------- loading


def load_evaluated(config: Config, ckpt: Path, pgm_path: Optional[Path], payload: Optional[dict] = None
                   ) -> tuple[Config, TaskData, Stack]:
    """The config the checkpoint was made with, the configured data, and the checkpoint's stack
    with its PGM. The data must be the data the checkpoint was trained on. `payload`: the
    checkpoint when the caller has read it already."""
    payload = payload or files.load_checkpoint(ckpt, "--ckpt", CHECKPOINT_KINDS)
    data = load_task_data(config)
    made = payload["dataset"]
    if (made["task"], made["num_classes"]) != (data.task, data.num_classes):
        raise UserError(f"--ckpt {ckpt}: a {made['task']} model for {made['num_classes']} classes "
                        f"({made['name']}), the configured data is {data.task} with {data.num_classes} "
                        f"classes ({data.meta['name']})")
    check_same_data(made, data.meta, f"--ckpt {ckpt}")
    stack = stack_from_checkpoint(payload, f"--ckpt {ckpt}", config.training.mixed_precision)
    check_fits_data(stack, data, f"--ckpt {ckpt}")
    if pgm_path is not None or (stack.head is None and data.task != "regression"):
        stack.head = _pgm_next_to(ckpt, pgm_path, data) or stack.head
    made_with = from_dict(payload["config"], f"--ckpt {ckpt}") if "config" in payload else config
    made_with.evaluation = config.evaluation
    return made_with, data, stack


def _pgm_next_to(ckpt: Path, pgm_path: Optional[Path], data: TaskData) -> Optional[PGMHead]:
    """Phase 2's PGM for a phase-1 checkpoint: `--pgm`, else `pgm_params.pkl` beside the checkpoint."""
    path = pgm_path or runs.run_folder_of(ckpt).pgm_params
    if pgm_path is None and not path.is_file():
        log.debug("no PGM in %s and no %s beside it: unaries only", ckpt, path.name)
        return None
    params = files.load_pgm_params(path, "--pgm")
    check_same_data(params["dataset"], data.meta, f"--pgm {path}")
    head = head_from_params(params, f"--pgm {path}")
    if head.settings["num_classes"] != data.num_classes or head.settings["task"] != data.task:
        raise UserError(f"--pgm {path}: a {head.settings['task']} PGM with {head.settings['num_classes']} "
                        f"classes, the data has {data.task} with {data.num_classes}")
    log.info("PGM from %s", path)
    return head


# --------------------------------------------------------------------------- evaluate.py


def evaluate(config: Config, ckpt: Path, split: str, out: Optional[Path], pgm_path: Optional[Path]) -> dict:
    """Metrics of the unaries (and the PGM) on `split`, calibration before/after, plots; into `out`."""
    started = time.time()
    if split not in runs.SPLITS:
        raise UserError(f"--split {split!r}: expected one of {', '.join(runs.SPLITS)}")
    out = runs.RunFolder(folders.check_output(out or runs.run_folder_of(ckpt).root, runs.RUN, "--out"))
    files.check_metrics(out.metrics)
    folders.claim(out.root, "--out")
    history_file = runs.run_folder_of(ckpt).history
    history = files.read_history(history_file) if history_file.is_file() else None
    _, data, stack = load_evaluated(config, ckpt, pgm_path)
    device = resolve_device(config.device)
    stack.to(device)
    settings = config.evaluation
    log.info("evaluating %s on the %s split (%s)", ckpt, split, "unaries + " + stack.head.type
             if stack.head is not None else "unaries")

    if settings.stateful and stack.net.encoder.backward_cells is not None:
        raise UserError(f"--ckpt {ckpt}: evaluation.stateful: a bidirectional ConvLSTM also reads each window "
                        "backwards, so it cannot carry its state from one window to the next; set it to false")
    if settings.stateful:
        unaries = {s: predict_stateful(stack, data, s, device, config.training.batch_size) for s in {split, "val"}}
    else:
        unaries = {s: predict(stack, data.splits[s]["x"], device, config.training.batch_size)[0]
                   for s in {split, "val"}}
    predictors = {"unary": None} if stack.head is None else {"unary": None, "pgm": stack.head}
    predicted = {name: predictions(unaries[split], data.task, head, guide_of(data, split))
                 for name, head in predictors.items()}
    choice = choose_predictor(stack.head, data, unaries["val"], settings.use_pgm)
    final = choice["final"]
    result = {"split": split, "task": data.task, "metric": MAIN_METRIC[data.task][0], "final": final,
              "stateful": settings.stateful,
              "pgm_type": None if stack.head is None else stack.head.type, "choice": choice,
              **{name: report(data, split, p, settings) for name, p in predicted.items()}}
    if data.task != "regression":
        val_probs = class_probs(unaries["val"], predictors[final], guide_of(data, "val"))  # no decoding needed
        calibrator, val_ece = choose_calibrator(val_probs.reshape(-1, data.num_classes),
                                                data.splits["val"]["y"].numpy().ravel(),
                                                settings.calibration, settings.bins)
        calibrated = calibrator(predicted[final].flat_probs())
        result["calibrated"] = {"method": calibrator.method, "val_ece": val_ece,
                                **probability_report(data, split, calibrated, settings)}
    result["model"] = model_cost(stack, data.splits[split]["x"], device, config.training.batch_size)
    result["provenance"] = files.provenance(config_hash(config), config.seed, data.meta, str(device),
                                           started, time.time())
    result["plots"] = write_plots(result, data, history, out, split)
    files.update_metrics(out.metrics, f"evaluate_{split}", result)
    return result


def write_plots(result: dict, data: TaskData, history: Optional[list[dict]], out: runs.RunFolder, split: str
                ) -> list[str]:
    """Confusion matrix, reliability before/after calibration, per-class F1, learning curve (of the
    checkpoint's run `history`, when it has one)."""
    out.plots.mkdir(parents=True, exist_ok=True)
    written = []
    if history is not None:
        path = out.plot("learning_curve")
        plot_learning_curve(history, MAIN_METRIC[data.task][0], path)
        written.append(path)
    if data.task != "regression":
        final = result[result["final"]]
        names = data.meta["class_names"]
        paths = {kind: out.plot(f"{kind}_{split}") for kind in ("confusion", "reliability", "per_class_f1")}
        plot_confusion(final["confusion"], names, paths["confusion"])
        curves = {result["final"]: final["calibration"]}
        if "calibrated" in result:
            curves[f"{result['final']}, {result['calibrated']['method']}"] = result["calibrated"]["calibration"]
        plot_reliability(curves, paths["reliability"])
        plot_per_class_f1({name: result[name]["per_class"]["f1"] for name in ("unary", "pgm") if name in result},
                          names, paths["per_class_f1"])
        written += list(paths.values())
    return [str(p) for p in written]


@torch.no_grad()
def model_cost(stack: Stack, x: torch.Tensor, device: torch.device, batch_size: int, repeats: int = 5) -> dict:
    """Parameter count, median inference latency per window (network + PGM decoding) and peak memory."""
    batch = model_input(x[:batch_size]).to(device)
    stack.eval()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = stack.unaries(batch)
        if stack.head is not None:
            stack.head.decode(out, batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:  # the process's peak resident memory (Linux reports KiB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"parameters": sum(p.numel() for p in stack.parameters()),
            "latency_ms_per_window": 1000 * statistics.median(seconds) / len(batch),
            "peak_memory_mb": round(peak, 1),
            "memory_kind": "cuda_allocated" if device.type == "cuda" else "process_rss"}


def keep_the_better(stack: Stack, data: TaskData, device: torch.device, config: Config) -> dict:
    """Choose the final predictor (`choose_predictor`) on val; the stack drops a PGM that is not
    chosen. Returns the choice."""
    if stack.head is None:
        return {"final": "unary", "use_pgm": config.evaluation.use_pgm}
    val_unaries, _ = predict(stack.to(device), data.splits["val"]["x"], device, config.training.batch_size)
    choice = choose_predictor(stack.head, data, val_unaries, config.evaluation.use_pgm)
    if choice["final"] == "unary":
        log.info("predicting with the network alone, without the %s", stack.head.type)
        stack.head = None
    return choice


def window_predictor(config: Config, ckpt: Path, pgm_path: Optional[Path] = None):
    """`X [n, T, H, W, C]` (processed windows) -> predicted `labels` and top-label `confidence`
    (or `values` for regression), by the final predictor evaluate.py reports (the checkpoint's
    PGM when it has one that beats the unaries on val); for pictures."""
    _, data, stack = load_evaluated(config, ckpt, pgm_path)
    device = resolve_device(config.device)
    stack.to(device)
    keep_the_better(stack, data, device, config)

    def predict_windows(x: np.ndarray) -> dict:
        unaries, _ = predict(stack, torch.from_numpy(x), device, config.training.batch_size)
        predicted = predictions(unaries, data.task, stack.head, model_input(torch.from_numpy(x)))
        if data.task == "regression":
            return {"values": predicted.probs}
        return {"labels": predicted.labels, "confidence": predicted.probs.max(axis=-1)}

    return predict_windows
