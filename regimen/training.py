"""The training loop of phases 1 and 3.

`Trainer.fit` runs AdamW with a linear-warmup cosine schedule (per step),
mixed precision, gradient clipping, the on-the-fly augmentations and early
stopping on the validation metric. After every epoch it writes the run
folder's `ckpt.pt` (model, optimizer, scheduler, scaler, counters, history
and every RNG state), `best.pt` when the metric improved, `history.jsonl` and
the learning curve, each atomically. Resuming from `ckpt.pt` replays the
remaining epochs exactly: a run killed at any moment and resumed ends with the
weights an uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from tqdm import tqdm

from regimen import files, machine, runs
from regimen.augment import Augmenter, Batch
from regimen.config import Config
from regimen.errors import UserError
from regimen.metrics import MAIN_METRIC
from regimen.plots import plot_learning_curve
from regimen.processed import TaskData
from regimen.progress import track
from regimen.stack import Stack, model_input, needs_grad_scaler
from regimen.windows import ShuffledBatches

log = logging.getLogger(__name__)


def is_better(value: float, best: Optional[float], task: str) -> bool:
    if best is None:
        return True
    higher = MAIN_METRIC[task][1]
    return value > best if higher else value < best


@dataclass
class Schedule:
    """The optimisation settings of one phase."""

    epochs: int
    lr: float
    warmup_epochs: int
    weight_decay: float
    grad_clip: float
    mixed_precision: bool
    patience: int
    batch_size: int
    lr_key: str  # the config key of `lr`, for messages

    @classmethod
    def pretraining(cls, config: Config) -> "Schedule":
        t = config.training
        return cls(t.epochs, t.lr, t.warmup_epochs, t.weight_decay, t.grad_clip, t.mixed_precision,
                   t.early_stopping_patience, t.batch_size, "training.lr")

    @classmethod
    def joint(cls, config: Config) -> "Schedule":
        t = config.training
        return cls(t.joint.epochs, t.joint.lr, min(t.warmup_epochs, t.joint.epochs - 1), t.weight_decay,
                   t.grad_clip, t.mixed_precision, t.early_stopping_patience, t.batch_size, "training.joint.lr")


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per step: linear warmup to 1, then cosine decay to 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


LossFn = Callable[[Stack, Batch], tuple[torch.Tensor, dict[str, float]]]


class Trainer:
    """Trains a `Stack` epoch by epoch, checkpointing into a run folder.

    Args:
        stack: the model; parameters with `requires_grad` are optimised.
        data: the splits.
        schedule: epochs, learning rate, clipping, patience, batch size.
        loss_fn: `(stack, batch) -> (loss, parts)`; the batch is on the device,
            `x` in model layout.
        validate: `stack -> metrics` on the validation split (holds the task's main metric).
        run: the run folder written to.
        info: what every checkpoint also records (kind, data identity, config).
        seed: seeds the batch order and the augmentations.
        device: where training runs.
        refit: optional `epoch -> log fields`, run before the first validation and
            after every training epoch (the alternating mode's PGM fit).
        validate_start: validate (and keep as best) the starting weights, so
            fine-tuning never ends worse on validation than it started.
    """

    def __init__(self, stack: Stack, data: TaskData, schedule: Schedule, loss_fn: LossFn,
                 validate: Callable[[Stack], dict], run: runs.RunFolder, info: dict, seed: int,
                 device: torch.device, augmentations, refit: Optional[Callable[[int], dict]] = None,
                 validate_start: bool = False):
        self.stack, self.data, self.schedule = stack.to(device), data, schedule
        self.loss_fn, self.validate, self.run, self.info = loss_fn, validate, run, info
        self.device, self.refit, self.validate_start = device, refit, validate_start
        self.metric = MAIN_METRIC[data.task][0]
        decay, no_decay = [], []
        for name, p in stack.named_parameters():
            if p.requires_grad:
                (no_decay if name.startswith("head.") else decay).append(p)
        groups = [{"params": decay, "weight_decay": schedule.weight_decay}]
        if no_decay:  # the PGM's weights have their own prior; no decay towards 0
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=schedule.lr)
        self.order = torch.Generator().manual_seed(seed + 1)
        self.batches = ShuffledBatches(len(data.windows("train")), schedule.batch_size, self.order)
        self.loader = data.loader("train", self.batches, pin_memory=device.type == "cuda")
        steps = len(self.batches)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(schedule.warmup_epochs * steps, schedule.epochs * steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, schedule.mixed_precision))
        self.augmenter = Augmenter(augmentations, data.meta["spatial_invariant"], seed + 2)
        self.epoch, self.best, self.since_best, self.history = 0, None, 0, []

    # ------------------------------------------------------------------ public

    def fit(self, resume: Optional[dict] = None, until_epoch: Optional[int] = None) -> dict:
        """Train to the end (or early stop), or only up to `until_epoch` of the schedule's epochs
        (a later resume continues where it paused, as if never paused); returns a summary for
        metrics.json."""
        fit_started = time.time()
        if self.device.type == "cpu" and machine.chosen_threads:
            log.info("training on the CPU with %d threads (%s; set threads in the config to change it)",
                     *machine.chosen_threads)
            hint = machine.shared_cores_hint(machine.chosen_threads[0])
            if hint:
                log.warning(hint)
        if resume is not None:
            self._restore(resume["train_state"])
            log.info("resumed after epoch %d of %d", self.epoch, self.schedule.epochs)
        elif self.validate_start or self.refit:
            self._start()
        first, last = self.epoch, min(self.schedule.epochs, until_epoch or self.schedule.epochs)
        bar = tqdm(total=last, initial=self.epoch, desc="epochs", unit="epoch", disable=None)
        while self.epoch < last and self.since_best < self.schedule.patience:
            started = time.perf_counter()
            train = self._train_epoch()
            record = {"epoch": self.epoch + 1, "lr": self.scheduler.get_last_lr()[0], "train": train}
            if self.refit:
                record["refit"] = self.refit(self.epoch + 1)
            record["val"] = self.validate(self.stack)
            self.epoch += 1
            record["seconds"] = round(time.perf_counter() - started, 3)
            self._end_epoch(record)
            bar.update(1)
            bar.set_postfix({self.metric: f"{record['val'][self.metric]:.4f}"})
        bar.close()
        stopped_early = self.epoch < self.schedule.epochs and self.since_best >= self.schedule.patience
        if stopped_early:
            log.info("early stop after epoch %d: no better val %s for %d epochs",
                     self.epoch, self.metric, self.since_best)
        elif self.epoch < self.schedule.epochs:
            log.info("paused after epoch %d of %d (--until-epoch): --resume continues", self.epoch,
                     self.schedule.epochs)
        return {"epochs_run": self.epoch, "epochs_this_run": self.epoch - first, "stopped_early": stopped_early,
                f"best_val_{self.metric}": self.best, "started_unix": fit_started}

    # ------------------------------------------------------------------ epochs

    def _start(self) -> None:
        """Epoch 0: the starting weights (after a first PGM fit), validated and kept as best."""
        record = {"epoch": 0, "lr": 0.0, "train": {}}
        if self.refit:
            record["refit"] = self.refit(0)
        record["val"] = self.validate(self.stack)
        record["seconds"] = 0.0
        self._end_epoch(record)

    def _train_epoch(self) -> dict[str, float]:
        self.stack.train()
        totals: dict[str, float] = {}
        for batch in track(self.loader, f"epoch {self.epoch + 1}", "batches"):
            rows = len(batch["x"])
            batch = self.augmenter(batch)
            batch = {key: a.to(self.device, non_blocking=True) for key, a in batch.items()}
            batch["x"] = model_input(batch["x"])
            loss, parts = self.loss_fn(self.stack, batch)
            if not torch.isfinite(loss):
                self._diverged(float(loss), parts)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.schedule.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.stack.parameters(), self.schedule.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value * rows
        return {key: value / self.batches.count for key, value in totals.items()}

    def _diverged(self, loss: float, parts: dict[str, float]) -> None:
        """A loss that is no longer finite is the config's outcome, not a crash: say what to change."""
        kept = (f"{self.run.checkpoint} keeps epoch {self.epoch}" if self.run.checkpoint.is_file()
                else "no epoch finished, so there is no checkpoint")
        terms = ", ".join(f"{k} {v:.3g}" for k, v in parts.items())
        raise UserError(f"the training loss became {loss} in epoch {self.epoch + 1}"
                        f"{f' ({terms})' if terms else ''}: training diverged; lower {self.schedule.lr_key} "
                        f"(now {self.schedule.lr:g}) or the loss weights (loss.*) and start again with "
                        f"--overwrite; {kept}")

    def _end_epoch(self, record: dict) -> None:
        value = record["val"][self.metric]
        improved = is_better(value, self.best, self.data.task)
        if improved:
            self.best, self.since_best = value, 0
            files.save_checkpoint(self.run.best, {**self.info, **self.stack.payload(),
                                                 "epoch": self.epoch, "val": record["val"]})
        else:
            self.since_best += 1
        record["best"] = improved
        self.history.append(record)
        # best.pt first, then ckpt.pt: a kill in between replays this epoch identically.
        files.save_checkpoint(self.run.checkpoint, {**self.info, **self.stack.payload(),
                                                   "train_state": self._train_state()})
        files.write_history(self.run.history, self.history)
        plot_learning_curve(self.history, self.metric, self.run.learning_curve)
        parts = " ".join(f"{k}={v:.4f}" for k, v in record["train"].items())
        log.info("epoch %d: %s val %s=%.4f%s (%.1fs)", record["epoch"], parts, self.metric, value,
                 " best" if improved else "", record["seconds"])

    # ------------------------------------------------------------------ resume

    def _train_state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "order": self.order.get_state(),
               "augment": self.augmenter.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": self.epoch, "best": self.best,
                "since_best": self.since_best, "history": self.history, "rng": rng}

    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.best, self.since_best = state["epoch"], state["best"], state["since_best"]
        self.history = list(state["history"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        self.order.set_state(rng["order"])
        self.augmenter.generator.set_state(rng["augment"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def attach_log_file(run: runs.RunFolder) -> None:
    """Also log to the run folder's `log.txt` (appended, so a resumed run keeps its past)."""
    handler = logging.FileHandler(run.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
