"""Phases 1-3 from a validated config to a run folder.

`pretrain` (train_convlstm.py), `fit_structure` (fit_pgm.py) and `train_joint`
(train_joint.py) each check every input before writing anything, then write
their run folder through `regimen.core.runs`. Later phases rebuild the network from
the checkpoint they are given, not from the current config.

Under torchrun, phases 1 and 3 train data-parallel (`regimen.train.distributed`):
every process checks the inputs and trains; rank 0 alone claims and writes the
run folder, and after training it alone predicts the splits and writes the
metrics while the others end.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Optional

import torch

from regimen.core import files, folders, runs
from regimen.core.config import Config, config_hash, dump_config, from_dict, get_key, leaf_keys, to_dict
from regimen.core.config_file import load_config
from regimen.core.errors import UserError
from regimen.data.features import StoredArray, check_same_reading, load_features
from regimen.data.processed import TaskData, check_same_data, data_identity, load_checked_meta, load_task_data
from regimen.data.store import ArrayWriter
from regimen.scores.metrics import MAIN_METRIC
from regimen.train import distributed
from regimen.train.inference import (Outputs, SplitArray, compare_with_unaries, network_outputs, output_metrics,
                                     pgm_is_worse, save_features, split_metrics, stored_outputs)
from regimen.train.losses import Part, consistency, frames_guide, resolve_unary_loss, unary_loss
from regimen.train.pgm import PGMHead, check_pgm_task, fit_pgm, head_from_params, pgm_params, pgm_settings
from regimen.train.stack import Stack, check_fits_data, new_stack, precision, stack_from_checkpoint
from regimen.train.training import Schedule, Trainer, attach_log_file

log = logging.getLogger(__name__)

DEFAULT_JOINT_FOLDER = Path("runs/joint")


# --------------------------------------------------------------------------- phase 1


def pretrain(config: Config, save: Path, resume: Optional[Path], overwrite: bool,
             until_epoch: Optional[int] = None) -> Optional[dict]:
    """Train the ConvLSTM on the unary loss; write ckpt/best/features/metrics into `save`; its
    metrics (None on a torchrun process other than rank 0). `until_epoch`: pause after that epoch
    of `training.epochs` (successive halving's rungs)."""
    started = time.time()
    payload = None
    if resume is not None:
        run = runs.run_folder_of(resume)
        files.check_metrics(run.metrics)  # before anything is said of the resume
        payload, config = _resume_point(resume, run, config)
    else:
        run = runs.RunFolder(Path(save))
    fresh = payload is None
    if until_epoch is not None and not 1 <= until_epoch <= config.training.epochs:
        raise UserError(f"--until-epoch {until_epoch}: expected 1 to training.epochs ({config.training.epochs})")
    world = distributed.join(config.device, config.training)
    try:
        with world.agreement():
            _check_run_folder(run, "--save", fresh and resume is None, overwrite, world.writer)
            data = load_task_data(config.data, check_files=world.writer)
            unary = resolve_unary_loss(config.loss.unary, data.task, data.has_soft_targets)
            if payload is not None:
                check_same_data(payload["dataset"], data.meta, str(resume))
                stack = stack_from_checkpoint(payload, str(resume), config.training.mixed_precision)
            else:
                stack = new_stack(config, data)
        device = world.device

        if world.writer:
            _open_run(run, config, fresh)
        log.info("phase 1: %s on %s (%s loss, %d parameters) into %s", data.task, data.meta["name"], unary,
                 sum(p.numel() for p in stack.parameters()), run.root)

        def loss_fn(stack: Stack, batch: dict, part: Part):
            valid = batch.get("m")
            out = stack.unaries(batch["x"], **part.network_inputs(batch))
            return part.of_mean(valid) * unary_loss(unary, out, batch["y"], batch.get("p"), valid), {}

        trainer = Trainer(stack, data, Schedule.pretraining(config), loss_fn,
                          lambda s: split_metrics(s, data, "val", device, config.training.batch_size, world), run,
                          _info("convlstm", data, config), config.seed, device, config.data.augmentations,
                          world=world)
        summary = trainer.fit(payload, until_epoch)
    finally:
        world.close()
    if not world.writer:
        return None

    best = stack_from_checkpoint(files.load_checkpoint(run.best, run.best.name, ("convlstm",)), str(run.best),
                                 config.training.mixed_precision).to(device)
    scores = save_features(best, data, run, device, config.training.batch_size, config.training.save_feature_maps,
                           config.evaluation.stateful)
    metrics = {
        "task": data.task, "metric": MAIN_METRIC[data.task][0], "unary_loss": unary, **scores,
        "training": summary,
        "provenance": _provenance(config, data.meta, device, started, world),
    }
    files.update_metrics(run.metrics, "train_convlstm", metrics)
    return metrics


# --------------------------------------------------------------------------- phase 2


def fit_structure(config: Config, features_path: Path, save: Optional[Path], overwrite: bool = False) -> dict:
    """Fit `model.pgm` on saved unaries; write pgm_params.pkl and metrics before/after. A PGM
    of another type or other settings already in the folder is replaced only with `overwrite`."""
    started = time.time()
    features = load_features(features_path, "--features")
    meta = load_checked_meta(config.data)
    check_same_data(features["dataset"], meta, f"--features {features_path}")
    task, k = meta["task"], meta["num_classes"]
    check_pgm_task(config.model.pgm.type, task)
    check_same_reading(features, config.evaluation.stateful, features_path)
    run = runs.RunFolder(Path(save)) if save else runs.run_folder_of(features_path)
    folders.check_output(run.root, runs.RUN, "--save")
    files.check_metrics(run.metrics)
    settings = pgm_settings(config.model.pgm, task, k)
    if not overwrite:
        _check_not_replaced(run.pgm_params, settings)
    # An edge-aware CRF weighs its edges by the inputs, and stateful unaries are decoded by whole
    # sequences, which the windows' index gives; else the features' labels are the data's (same data
    # version), and the data is never read.
    guided = config.model.pgm.edge_aware and config.model.pgm.type == "crf"
    data = load_task_data(config.data) if guided or features["stateful"] else None
    folders.claim(run.root, "--save")

    head = PGMHead(settings)
    train = features["splits"]["train"]
    log.info("phase 2: fitting a %s on %d training windows", head.type, len(train["unaries"]))
    report = fit_pgm(head, train["unaries"], train["labels"], config.model.pgm, config.seed,
                     guide=SplitArray(data.windows("train"), "x") if guided else None, valid=train.get("valid"))
    metric = MAIN_METRIC[task][0]
    results = {split: _before_after(stored_outputs(features["splits"][split], config.training.batch_size,
                                                   SplitArray(data.windows(split), "x") if guided else None,
                                                   data.windows(split) if features["stateful"] else None, head),
                                    meta, head)
               for split in ("val", "test")}
    on_val = compare_with_unaries(task, results["val"]["unary"], results["val"]["pgm"])
    if not on_val["pgm_better"]:
        use = config.evaluation.use_pgm
        log.warning("%s; evaluate.py and export.py %s (evaluation.use_pgm: %s)", pgm_is_worse(head.type, "val", on_val),
                    "keep it" if use == "always" else "use the unaries alone", use)
    files.save_pgm_params(run.pgm_params, pgm_params(head, data_identity(meta)))
    metrics = {
        "task": task, "metric": metric, "pgm": head.type, "fit": report,
        "learned": _learned(head), **results, "pgm_better_on_val": on_val["pgm_better"],
        "gain": {split: results[split]["pgm"][metric] - results[split]["unary"][metric]
                 for split in results},
        "provenance": _provenance(config, meta, torch.device("cpu"), started),
    }
    files.update_metrics(run.metrics, "fit_pgm", metrics)
    return metrics


def _check_not_replaced(path: Path, settings: dict) -> None:
    """Trying a second PGM must not quietly replace the first one fitted into the same folder."""
    if not path.is_file():
        return
    try:
        held = files.load_pgm_params(path, "--save")
    except UserError as error:
        raise UserError(f"{error}; pass --overwrite to replace it") from None
    if held.get("settings") == settings:
        return  # the same PGM fitted again
    what = f"a {held['type']} fitted with other settings" if held["type"] == settings["type"] else f"a {held['type']}"
    raise UserError(f"{path}: holds {what}, which this {settings['type']} would replace; pass --save FOLDER "
                    "to keep both, or --overwrite to replace it")


# --------------------------------------------------------------------------- phase 3


def train_joint(config: Config, resume: Path, pgm_path: Optional[Path], save: Optional[Path],
                overwrite: bool) -> Optional[dict]:
    """Fine-tune network and PGM together (alternating or end to end) from a checkpoint; its metrics
    (None on a torchrun process other than rank 0)."""
    started = time.time()
    payload = files.load_checkpoint(resume, "--resume", ("convlstm", "joint"))
    continuing = payload["kind"] == "joint"
    if continuing:
        payload = _resumable(resume, ("joint",), payload)
        run = runs.RunFolder(Path(save)) if save else runs.run_folder_of(resume)
        files.check_metrics(run.metrics)
        config = _config_of(payload, config)
    else:
        run = runs.RunFolder(Path(save) if save else DEFAULT_JOINT_FOLDER)
    world = distributed.join(config.device, config.training)
    try:
        with world.agreement():
            _check_run_folder(run, "--save", not continuing, overwrite, world.writer)
            data = load_task_data(config.data, check_files=world.writer)
            unary = resolve_unary_loss(config.loss.unary, data.task, data.has_soft_targets)
            check_same_data(payload["dataset"], data.meta, f"--resume {resume}")
            stack = stack_from_checkpoint(payload, f"--resume {resume}", config.training.mixed_precision)
            check_fits_data(stack, data, f"--resume {resume}")
            if not continuing:
                stack.head = _initial_head(config, data, resume, pgm_path)
        device = world.device
        mode = config.training.joint.mode
        if mode == "alternating":
            stack.head.requires_grad_(False)  # fitted between network epochs, not by its gradient

        if world.writer:
            _open_run(run, config, not continuing)
        log.info("phase 3: %s joint training of the ConvLSTM and a %s into %s", mode, stack.head.type, run.root)

        def refit(epoch: int) -> dict:
            """Rank 0 refits the PGM (it writes the temporary unaries) and gives it to the others."""
            report = _refit(stack, data, run, config, device, config.seed + epoch) if world.writer else {}
            world.broadcast_module(stack.head)
            return report

        trainer = Trainer(stack, data, Schedule.joint(config), _joint_loss(unary, config),
                          lambda s: split_metrics(s, data, "val", device, config.training.batch_size, world), run,
                          _info("joint", data, config), config.seed, device, config.data.augmentations,
                          refit=refit if mode == "alternating" else None, validate_start=True, world=world)
        summary = trainer.fit(payload if continuing else None)
    finally:
        world.close()
    if not world.writer:
        return None

    best = stack_from_checkpoint(files.load_checkpoint(run.best, run.best.name, ("joint",)), str(run.best),
                                 config.training.mixed_precision).to(device)
    files.save_pgm_params(run.pgm_params, pgm_params(best.head, data.identity))
    results = _joint_results(best, data, device, config)
    metrics = {"task": data.task, "metric": MAIN_METRIC[data.task][0], "mode": mode,
               "pgm": best.head.type, "learned": _learned(best.head), **results, "training": summary,
               "provenance": _provenance(config, data.meta, device, started, world)}
    files.update_metrics(run.metrics, "train_joint", metrics)
    return metrics


def _joint_loss(unary: str, config: Config):
    """`alpha * unary + beta * structured NLL + gamma * consistency`."""
    weights = config.loss

    def loss_fn(stack: Stack, batch: dict, part: Part):
        out = stack.unaries(batch["x"], **part.network_inputs(batch))
        valid, guide = batch.get("m"), frames_guide(batch)
        # The CRF's NLL is a mean over observed nodes, a chain's over every node (missing labels summed out).
        structured_share = part.of_mean(valid) if stack.head.type == "crf" else part.windows
        parts = {"unary": part.of_mean(valid) * unary_loss(unary, out, batch["y"], batch.get("p"), valid),
                 "structured": structured_share * stack.head.nll(out, batch["y"], guide, valid)}
        if weights.gamma_consistency > 0:
            parts["consistency"] = part.windows * consistency(stack.head.log_marginals(out, guide, valid), guide)
        total = (weights.alpha_unary * parts["unary"] + weights.beta_structured * parts["structured"]
                 + weights.gamma_consistency * parts.get("consistency", 0.0))
        return total, {key: value.detach() for key, value in parts.items()}

    return loss_fn


def _initial_head(config: Config, data: TaskData, resume: Path, pgm_path: Optional[Path]) -> PGMHead:
    """The configured PGM, starting from phase 2's fitted parameters when they match."""
    settings = pgm_settings(config.model.pgm, data.task, data.num_classes)
    path = pgm_path or runs.run_folder_of(resume).pgm_params
    if pgm_path is None and not path.is_file():
        log.info("no %s next to the checkpoint: the %s starts from the config", path.name, settings["type"])
        return PGMHead(settings)
    params = files.load_pgm_params(path, "--pgm")
    check_same_data(params["dataset"], data.meta, f"--pgm {path}")
    if params["settings"] != settings:
        if pgm_path is not None:
            raise UserError(f"--pgm {path}: holds a {params['type']} with settings {params['settings']}, "
                            f"the config asks for {settings}")
        log.warning("%s was fitted with other settings; the %s starts from the config", path, settings["type"])
        return PGMHead(settings)
    log.info("starting from the PGM fitted in %s", path)
    return head_from_params(params, str(path))


# --------------------------------------------------------------------------- shared


def _joint_results(best: Stack, data: TaskData, device: torch.device, config: Config) -> dict:
    """Phase 3's val and test metrics of the unaries alone and through the PGM, which decodes whole
    sequences with `evaluation.stateful`."""
    return {split: _before_after(network_outputs(best, data, split, device, config.training.batch_size,
                                                 config.evaluation.stateful), data.meta, best.head)
            for split in ("val", "test")}


def _before_after(outputs: Iterable[Outputs], meta: dict, head: PGMHead) -> dict:
    """The metrics of a split's unaries alone and through the head, summed over its batches."""
    return output_metrics(outputs, meta["task"], meta["num_classes"], {"unary": None, "pgm": head})


def _refit(stack: Stack, data: TaskData, run: runs.RunFolder, config: Config, device: torch.device, seed: int
           ) -> dict:
    """The alternating mode's PGM step: the network's unaries of every training window (with
    `evaluation.stateful`, of each sequence read as one stream, as phase 2 fits on), written to a
    temporary array in the run folder (a split is never held whole), then `fit_pgm` on them."""
    windows = data.windows("train")
    writer = None
    try:
        for out in network_outputs(stack, data, "train", device, config.training.batch_size,
                                   config.evaluation.stateful, decoded=False):
            if writer is None:
                writer = ArrayWriter(run.root / "refit.unaries.npy", out.unaries.numpy().dtype,
                                     (len(windows), *out.unaries.shape[1:]))
            writer.append(out.unaries.numpy())
        writer.close()
        edge_aware = stack.head.settings.get("edge_aware", False)
        return fit_pgm(stack.head, StoredArray(writer.temporary), SplitArray(windows, "y"), config.model.pgm, seed,
                       guide=SplitArray(windows, "x") if edge_aware else None,
                       valid=SplitArray(windows, "m") if data.has_mask else None)
    finally:
        if writer is not None:
            writer.discard()


@torch.no_grad()
def _learned(head: PGMHead) -> dict:
    """The PGM's parameters in readable form (small ones only)."""
    if head.type == "crf":
        crf = head.model
        return {"spatial_weight": float(crf.spatial_weight), "temporal_weight": float(crf.temporal_weight),
                "compatibility": crf.compatibility_matrix().tolist()}
    scale = float(head.emission_scale)  # the network's weight against the transitions
    if head.type == "hmm":
        return {"transitions": head.model.log_trans.exp().tolist(), "prior": head.log_prior.exp().tolist(),
                "emission_scale": scale}
    return {"transitions": head.model.transitions.tolist(), "emission_scale": scale}


def _resumable(path: Path, kinds: tuple[str, ...], payload: Optional[dict] = None) -> dict:
    payload = payload or files.load_checkpoint(path, "--resume", kinds)
    if "train_state" not in payload:
        raise UserError(f"--resume {path}: holds weights only; resume from "
                        f"{runs.run_folder_of(path).checkpoint}")
    return payload


def _config_of(payload: dict, current: Config) -> Config:
    """The config a resumed run was started with (so it ends as it would have), on today's device."""
    saved = from_dict(payload["config"], "checkpoint")
    differs = [key for key in leaf_keys() if key != "device" and get_key(saved, key) != get_key(current, key)]
    if differs:
        log.warning("resuming with the checkpoint's config; the current one differs in %s", ", ".join(differs))
    saved.device = current.device
    return saved


def _resume_point(resume: Path, run: runs.RunFolder, current: Config) -> tuple[Optional[dict], Config]:
    """The checkpoint a phase-1 `--resume` continues from, with its config; or no checkpoint when
    the run was killed before its first one, and then the config it was started with (its folder's
    config.yaml), or the current one when it never got that far."""
    if resume != run.checkpoint or resume.exists():
        payload = _resumable(resume, ("convlstm",))
        return payload, _config_of(payload, current)
    if run.config.is_file():
        saved = load_config(run.config)
        saved.device = current.device
        log.warning("%s has no checkpoint yet (killed before its first epoch ended): starting that run "
                    "from its beginning with its %s", run.root, run.config.name)
        return None, saved
    log.warning("%s holds no run to continue: starting a new run there", run.root)
    return None, current


def _check_run_folder(run: runs.RunFolder, flag: str, fresh: bool, overwrite: bool, writer: bool = True) -> None:
    """Before any work: a new run goes into a folder without a run (or, with --overwrite, one that
    holds a run and nothing else). Then the writer (rank 0 under torchrun) claims the folder: a
    second writer is refused here. (A continued run's metrics.json is checked by the caller, before
    it says anything of the resume.)"""
    folders.check_output(run.root, runs.RUN, flag, overwrite=fresh and overwrite, fresh=fresh, resumable=True)
    if writer:
        folders.claim(run.root, flag)


def _open_run(run: runs.RunFolder, config: Config, fresh: bool) -> None:
    """Start writing the claimed folder: a new run first removes every file of an earlier one
    (nothing of it may be taken for the new run), then writes its config."""
    if fresh:
        folders.clear(run.root, runs.RUN)
    files.atomic_write_text(run.config, dump_config(config))
    attach_log_file(run)


def _info(kind: str, data: TaskData, config: Config) -> dict:
    return {"kind": kind, "dataset": data.identity, "config": to_dict(config)}


def _provenance(config: Config, meta: dict, device: torch.device, started: float,
                world: Optional[distributed.World] = None) -> dict:
    made = files.provenance(config_hash(config), config.seed, meta, str(device), started, time.time())
    if world is not None:  # phases 1 and 3: how the training was spread, and its arithmetic
        made["distributed"] = world.describe(config.training.batch_size, config.training.accumulate)
        made["precision"] = precision(device, config.training.mixed_precision)
    return made
