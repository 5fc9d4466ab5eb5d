"""evaluate.py: the full metric suite of a checkpoint on one split, with its pictures.

A checkpoint of any phase is rebuilt from itself. Its PGM is the one it holds
(phase 3), or the `pgm_params.pkl` next to it (phase 2), or `--pgm`. The
unaries are reported alone and, when there is a PGM, after it. The final
predictor is the PGM only when it beats the unaries on validation
(`evaluation.use_pgm: auto`); it is also calibrated on the validation split (`evaluation.calibration`),
so the reliability diagram shows before and after.

The split streams batch by batch and every metric is a sum over them
(`regimen.scores.metrics.ReportSums`), equal to the whole split's. The AUROC and the
calibrators' fit need their nodes at once: they see every node of a split of
at most `SAMPLE_NODES` nodes, else those of a seeded sample of its windows.
"""

from __future__ import annotations

import logging
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from regimen.core import files, folders, runs
from regimen.core.config import Config, EvaluationConfig, config_hash, from_dict
from regimen.core.errors import UserError
from regimen.data.processed import TaskData, check_same_data, load_task_data
from regimen.evaluate.baselines import gaussian_baselines
from regimen.evaluate.calibration import Calibrator, choose_calibrator
from regimen.evaluate.forecast import ForecastReport
from regimen.evaluate.forecast_plots import log_forecast, write_forecast_plots
from regimen.evaluate.plots import plot_confusion, plot_per_class_f1, plot_reliability, plot_verification
from regimen.evaluate.predictions import output_labels, output_predictions, predictions, sampled_probs
from regimen.scores.metrics import MAIN_METRIC, MetricSums, ProbabilitySums, ReportSums
from regimen.scores.verification import VerificationSums
from regimen.train.curves import plot_learning_curve
from regimen.train.inference import Outputs, choose_predictor, network_outputs, numpy_of, predict
from regimen.train.pgm import PGMHead, head_from_params
from regimen.train.stack import Stack, check_fits_data, model_input, resolve_device, stack_from_checkpoint

log = logging.getLogger(__name__)

CHECKPOINT_KINDS = ("convlstm", "joint")
SAMPLE_NODES = 2 ** 21  # nodes of a split at most for the AUROC and the calibrators' fit


def sampled_windows(count: int, nodes_per_window: int, seed: int) -> np.ndarray:
    """Which of a split's `count` windows give the nodes that the AUROC and the calibrators see
    (`[count]` bools): all of them up to `SAMPLE_NODES` nodes, else a uniform sample of windows
    holding about that many, drawn with `seed`."""
    keep = max(1, SAMPLE_NODES // nodes_per_window)
    if keep >= count:
        return np.ones(count, dtype=bool)
    sample = np.zeros(count, dtype=bool)
    sample[np.random.default_rng(seed).choice(count, keep, replace=False)] = True
    return sample


def split_sample(data: TaskData, split: str, seed: int) -> np.ndarray:
    """`sampled_windows` of a processed split."""
    window = data.meta["shapes"][split]["Y"][1:]
    nodes = int(np.prod(window if data.task != "regression" else window[:-1]))
    return sampled_windows(len(data.windows(split)), nodes, seed)


def split_reports(batches: Iterable[Outputs], data: TaskData, predictors: dict[str, Optional[PGMHead]],
                  settings: EvaluationConfig, sample: np.ndarray, calibrated: Optional[tuple[str, Calibrator]] = None,
                  forecast: Optional[ForecastReport] = None) -> dict:
    """Every metric of each predictor (None: the unaries alone) on a split's batches (see
    `regimen.scores.metrics`), and with `calibrated` (a predictor's name and its calibrator) the
    probability metrics of its calibrated probabilities as "calibrated"; `forecast` collects the
    lead-time scores of each predictor and of the baselines."""
    sums = {name: ReportSums(data.task, data.num_classes, settings.bins, settings.boundary_tolerance)
            for name in predictors}
    frames, frames_are = (data.forecast[1], "lead_time") if data.forecast else (int(data.meta["T_window"]), "frame")
    verified = {name: VerificationSums(settings.thresholds, settings.scales, frames, frames_are)
                for name in predictors if settings.thresholds and data.task != "tagging"}
    after = ProbabilitySums(data.num_classes, settings.bins) if calibrated else None
    for out in batches:
        truth, soft, valid = out.y.numpy(), None if out.p is None else out.p.numpy(), numpy_of(out.valid)
        keep = sample[out.rows]
        forecasts = {}
        for name, head in predictors.items():
            predicted = output_predictions(out, data.task, head)
            forecasts[name] = predicted.labels if data.task != "regression" else predicted.probs
            sums[name].add(truth, forecasts[name], predicted.probs, soft, keep, valid)
            if name in verified:  # label fields, or the (single) regression channel in its own units
                verified[name].add(*((truth, predicted.labels) if data.task != "regression"
                                     else (truth[..., 0], predicted.probs[..., 0])), valid)
            if after is not None and name == calibrated[0]:
                nodes = (truth.ravel(), calibrated[1](predicted.flat_probs()),
                         None if soft is None else soft.reshape(-1, data.num_classes), np.repeat(keep, truth[0].size))
                if valid is not None:
                    nodes = tuple(None if a is None else a[valid.ravel()] for a in nodes)
                after.add(*nodes)
        if forecast is not None:
            forecast.add(out, forecasts)
    reports = {name: total.result() for name, total in sums.items()}
    for name, scores in verified.items():
        reports[name]["verification"] = scores.result()
    if after is not None:
        reports["calibrated"] = after.result()
    return reports


@dataclass
class Validation:
    """What the validation split decides: the final predictor (`choose_predictor`) and its
    calibrator, with the validation ECE of each candidate and the nodes it was fitted on."""

    choice: dict
    calibrator: Calibrator
    val_ece: dict
    nodes: int = 0


@torch.no_grad()
def validate(stack: Stack, data: TaskData, config: Config, device: torch.device, stateful: bool = False
             ) -> Validation:
    """One pass over the validation windows: the task metric of the unaries and of the PGM (which
    is final), and the sampled nodes' probabilities of both, on which the final one's calibrator
    (`evaluation.calibration`) is fitted."""
    settings = config.evaluation
    if data.task == "regression":  # no PGM, nothing to calibrate
        return Validation(choose_predictor(None, data.task, None, settings.use_pgm), Calibrator("none"), {})
    predictors = {"unary": None} if stack.head is None else {"unary": None, "pgm": stack.head}
    # The choice compares the unaries with the PGM: without a PGM there is nothing to score.
    scores = {name: MetricSums(data.task, data.num_classes) for name in predictors} if stack.head is not None else {}
    probs: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    labels = []
    sample = split_sample(data, "val", config.seed)
    for out in network_outputs(stack, data, "val", device, config.training.batch_size, stateful):
        keep = torch.from_numpy(sample[out.rows])
        for name, head in predictors.items():
            if name in scores:
                scores[name].add(out.y.numpy(), output_labels(out, head), numpy_of(out.valid))
            if keep.any():
                nodes = sampled_probs(out, head, keep).reshape(-1, data.num_classes)
                probs[name].append(nodes if out.valid is None else nodes[out.valid[keep].numpy().ravel()])
        observed = out.y[keep] if out.valid is None else out.y[keep][out.valid[keep]]
        labels.append(observed.numpy().ravel())
    val = {name: score.result() for name, score in scores.items()}
    choice = choose_predictor(stack.head, data.task, val, settings.use_pgm)
    chosen, truth = np.concatenate(probs[choice["final"]]), np.concatenate(labels)
    calibrator, val_ece = choose_calibrator(chosen, truth, settings.calibration, settings.bins)
    return Validation(choice, calibrator, val_ece, len(truth))


# --------------------------------------------------------------------------- loading


def load_evaluated(config: Config, ckpt: Path, pgm_path: Optional[Path], payload: Optional[dict] = None
                   ) -> tuple[Config, TaskData, Stack]:
    """The config the checkpoint was made with, the configured data, and the checkpoint's stack
    with its PGM. The data must be the data the checkpoint was trained on. `payload`: the
    checkpoint when the caller has read it already."""
    payload = payload or files.load_checkpoint(ckpt, "--ckpt", CHECKPOINT_KINDS)
    data = load_task_data(config.data)
    made = payload["dataset"]
    if (made["task"], made["num_classes"]) != (data.task, data.num_classes):
        raise UserError(f"--ckpt {ckpt}: a {made['task']} model for {made['num_classes']} classes "
                        f"({made['name']}), the configured data is {data.task} with {data.num_classes} "
                        f"classes ({data.meta['name']})")
    check_same_data(made, data.meta, f"--ckpt {ckpt}")
    check_thresholds(config.evaluation, data)
    stack = stack_from_checkpoint(payload, f"--ckpt {ckpt}", config.training.mixed_precision)
    check_fits_data(stack, data, f"--ckpt {ckpt}")
    if config.evaluation.stateful and stack.net.encoder.backward_cells is not None:
        raise UserError(f"--ckpt {ckpt}: evaluation.stateful: a bidirectional ConvLSTM also reads each window "
                        "backwards, so it cannot carry its state from one window to the next; set it to false")
    if pgm_path is not None or (stack.head is None and data.task != "regression"):
        stack.head = _pgm_next_to(ckpt, pgm_path, data) or stack.head
    made_with = from_dict(payload["config"], f"--ckpt {ckpt}") if "config" in payload else config
    made_with.evaluation = config.evaluation
    return made_with, data, stack


def check_thresholds(settings: EvaluationConfig, data: TaskData) -> None:
    """A UserError when `evaluation.thresholds` cannot score the data's forecasts: no spatial fields
    (tagging), a class threshold that is not a class above 0, or several regression channels."""
    if not settings.thresholds:
        return
    if data.task == "tagging":
        raise UserError(f"evaluation.thresholds = {settings.thresholds}: forecast verification scores fields "
                        "(segmentation or regression); the data is tagging: set it to []")
    if data.task == "segmentation":
        outside = [t for t in settings.thresholds if not 0 < t < data.num_classes]
        if outside:
            raise UserError(f"evaluation.thresholds = {settings.thresholds}: {outside[0]} is outside the classes; "
                            f"expected thresholds in (0, {data.num_classes - 1}] (an event is a label >= it)")
    elif data.num_outputs != 1:
        raise UserError(f"evaluation.thresholds = {settings.thresholds}: the regression target has "
                        f"{data.num_outputs} channels; verification scores a single one")


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

    validation = validate(stack, data, config, device, settings.stateful)
    final = validation.choice["final"]
    predictors = {"unary": None} if stack.head is None else {"unary": None, "pgm": stack.head}
    batches = network_outputs(stack, data, split, device, config.training.batch_size, settings.stateful)
    calibrated = (final, validation.calibrator) if data.task != "regression" else None
    forecast = ForecastReport(data, settings, list(predictors)) if data.forecast else None
    reports = split_reports(batches, data, predictors, settings, split_sample(data, split, config.seed), calibrated,
                            forecast)
    result = {"split": split, "task": data.task, "metric": MAIN_METRIC[data.task][0], "final": final,
              "stateful": settings.stateful,
              "pgm_type": None if stack.head is None else stack.head.type, "choice": validation.choice,
              **{name: reports[name] for name in predictors}}
    if calibrated:
        result["calibrated"] = {"method": validation.calibrator.method, "val_ece": validation.val_ece,
                                "val_nodes": validation.nodes, **reports["calibrated"]}
    if forecast is not None:
        result["forecast"] = forecast.result()
        log_forecast(result["forecast"], final)
    elif settings.baselines and data.task == "tagging":
        result["baselines"] = gaussian_baselines(data.folder, data.meta, split)
    first = data.windows(split).read("x", np.arange(min(config.training.batch_size, len(data.windows(split)))))
    result["model"] = model_cost(stack, first, device)
    result["provenance"] = files.provenance(config_hash(config), config.seed, data.meta, str(device),
                                           started, time.time())
    result["plots"] = write_plots(result, data, history, out, split)
    if forecast is not None:
        result["plots"] += write_forecast_plots(result["forecast"], forecast.example, final, out, split)
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
    verification = result[result["final"]].get("verification")
    if verification is not None:
        path = out.plot(f"verification_{split}")
        plot_verification(verification, path)
        written.append(path)
    return [str(p) for p in written]


@torch.no_grad()
def model_cost(stack: Stack, x: torch.Tensor, device: torch.device, repeats: int = 5) -> dict:
    """Parameter count, median inference latency per window (network + PGM decoding) on the windows
    `x` `[B, T, H, W, C]`, and peak memory."""
    batch = model_input(x).to(device)
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


def keep_the_better(stack: Stack, data: TaskData, device: torch.device, config: Config) -> Validation:
    """`validate` (stateful with `evaluation.stateful`); the stack drops a PGM that is not chosen."""
    validation = validate(stack.to(device), data, config, device, config.evaluation.stateful)
    if validation.choice["final"] == "unary" and stack.head is not None:
        log.info("predicting with the network alone, without the %s", stack.head.type)
        stack.head = None
    return validation


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
