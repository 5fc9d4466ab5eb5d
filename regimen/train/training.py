"""The training loop of phases 1 and 3.

`Trainer.fit` runs AdamW with a linear-warmup cosine schedule (per step),
mixed precision, gradient clipping, the on-the-fly augmentations and early
stopping on the validation metric. Under torchrun it is data-parallel
(DistributedDataParallel over a `World`): every process draws the same batch
order, augmentations and dropout seeds for the whole global batch and works on
its `Share` of it, in `training.accumulate` micro-batches whose losses are
weighted by their share of the batch (`Part`), so 1 or 16 processes take the
same steps; validation is summed over every process, and rank 0 alone writes.
After every epoch it writes the run folder's `ckpt.pt` (model, optimizer,
scheduler, scaler, counters, history and every RNG state), `best.pt` when the
metric improved, `history.jsonl` and the learning curve, each atomically. Resuming from `ckpt.pt` replays the
remaining epochs exactly: a run killed at any moment and resumed ends with the
weights an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from regimen.core import files, machine, runs
from regimen.core.config import Config
from regimen.core.errors import UserError
from regimen.core.progress import track
from regimen.data.augment import Augmenter, Batch, part_of
from regimen.data.processed import TaskData
from regimen.data.windows import Share
from regimen.scores.metrics import MAIN_METRIC
from regimen.train.batches import epoch_batches, micro_batches, share_loader
from regimen.train.curves import plot_learning_curve
from regimen.train.distributed import World
from regimen.train.losses import Part
from regimen.train.random_state import rng_state, set_rng_state
from regimen.train.sampling import ScheduledSampling
from regimen.train.stack import Stack, needs_grad_scaler, precision
from regimen.train.tbptt import StateCarrier

SEED_RANGE = 2 ** 62  # dropout seeds per window

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
    batch_size: int  # the global batch
    lr_key: str  # the config key of `lr`, for messages
    accumulate: int = 1  # micro-batches per process and step
    sampling: tuple[float, int] = (0.0, 0)  # scheduled sampling: the first chance of the truth, epochs to 0
    stateful: bool = False  # truncated backpropagation through time across a sequence's windows

    @classmethod
    def pretraining(cls, config: Config) -> "Schedule":
        t = config.training
        return cls(t.epochs, t.lr, t.warmup_epochs, t.weight_decay, t.grad_clip, t.mixed_precision,
                   t.early_stopping_patience, t.batch_size, "training.lr", t.accumulate,
                   (t.scheduled_sampling.start, t.scheduled_sampling.decay_epochs), t.stateful)

    @classmethod
    def joint(cls, config: Config) -> "Schedule":
        t = config.training
        return cls(t.joint.epochs, t.joint.lr, min(t.warmup_epochs, t.joint.epochs - 1), t.weight_decay,
                   t.grad_clip, t.mixed_precision, t.early_stopping_patience, t.batch_size, "training.joint.lr",
                   t.accumulate, stateful=t.stateful)


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR factor per step: linear warmup to 1, then cosine decay to 0 at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


LossFn = Callable[[Stack, Batch, Part], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def adamw(stack: Stack, schedule: Schedule) -> tuple[torch.optim.AdamW, list[nn.Parameter]]:
    """AdamW over the trained parameters, the PGM head's without weight decay (its weights have
    their own prior); and the parameters the clipping measures (a frozen PGM keeps its refit's
    last gradients, which must not count)."""
    decay, no_decay = [], []
    for name, p in stack.named_parameters():
        if p.requires_grad:
            (no_decay if name.startswith("head.") else decay).append(p)
    groups = [{"params": decay, "weight_decay": schedule.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=schedule.lr), decay + no_decay


def log_cpu_training(device: torch.device, mixed_precision: bool) -> None:
    """Training on the CPU: the threads chosen, shared cores, and bf16 that is not native."""
    if not machine.chosen_threads:
        return
    log.info("training on the CPU with %d threads (%s; set threads in the config to change it)",
             *machine.chosen_threads)
    hint = machine.shared_cores_hint(machine.chosen_threads[0])
    if hint:
        log.warning(hint)
    if mixed_precision and precision(device, True) == "fp32":
        log.info("training.mixed_precision: this CPU has no native bf16 (AVX512-BF16 or AMX), "
                 "so the network runs in fp32, which is faster here than emulated bf16")


class _Loss(nn.Module):
    """The stack and its loss as one module: what DistributedDataParallel wraps (its forward
    must run the whole graph whose gradients it reduces)."""

    def __init__(self, stack: Stack, loss_fn: LossFn):
        super().__init__()
        self.stack, self.loss_fn = stack, loss_fn

    def forward(self, batch: Batch, part: Part) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss_fn(self.stack, batch, part)


class Trainer:
    """Trains a `Stack` epoch by epoch, checkpointing into a run folder.

    Args:
        stack: the model; parameters with `requires_grad` are optimised.
        data: the splits.
        schedule: epochs, learning rate, clipping, patience, batch size.
        loss_fn: `(stack, batch, part) -> (loss, parts)`: a micro-batch's loss terms, each
            weighted by its `part` of the global batch (the batch is on the device, `x` in model
            layout; `parts`: the named terms, detached).
        validate: `stack -> metrics` on the validation split (holds the task's main metric).
        run: the run folder written to.
        info: what every checkpoint also records (kind, data identity, config).
        seed: seeds the batch order and the augmentations.
        device: where training runs.
        refit: optional `epoch -> log fields`, run before the first validation and
            after every training epoch (the alternating mode's PGM fit).
        validate_start: validate (and keep as best) the starting weights, so
            fine-tuning never ends worse on validation than it started.
        world: the processes of a torchrun job (default: this one); `validate` and `refit` give
            every process the same result, and only rank 0 writes.
    """

    def __init__(self, stack: Stack, data: TaskData, schedule: Schedule, loss_fn: LossFn,
                 validate: Callable[[Stack], dict], run: runs.RunFolder, info: dict, seed: int,
                 device: torch.device, augmentations, refit: Optional[Callable[[int], dict]] = None,
                 validate_start: bool = False, world: Optional[World] = None):
        self.stack, self.data, self.schedule = stack.to(device), data, schedule
        self.validate, self.run, self.info = validate, run, info
        self.device, self.refit, self.validate_start = device, refit, validate_start
        self.world = world or World(device)
        self.model = data_parallel(_Loss(stack, loss_fn), self.world, device)
        self.metric = MAIN_METRIC[data.task][0]
        self.optimizer, self.trained = adamw(stack, schedule)
        self.order = torch.Generator().manual_seed(seed + 1)
        self.batches = epoch_batches(data, schedule, self.order)
        steps = len(self.batches)
        self.sampling = ScheduledSampling.of(stack, schedule.sampling, steps, seed + 4)
        data.windows("train").future_inputs = self.sampling is not None  # before its loader's workers copy it
        self.loader = share_loader(data, self.batches, schedule, self.world, device)
        self.carrier = StateCarrier.of(data, self.world) if schedule.stateful else None
        self.dropout_seeds = torch.Generator().manual_seed(seed + 3)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(schedule.warmup_epochs * steps, schedule.epochs * steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, schedule.mixed_precision))
        self.augmenter = Augmenter(augmentations, data.meta["spatial_invariant"], seed + 2, schedule.stateful)
        self.epoch, self.best, self.since_best, self.history = 0, None, 0, []

    # ------------------------------------------------------------------ public

    def fit(self, resume: Optional[dict] = None, until_epoch: Optional[int] = None) -> dict:
        """Train to the end (or early stop), or only up to `until_epoch` of the schedule's epochs
        (a later resume continues where it paused, as if never paused); returns a summary for
        metrics.json. Either way the DistributedDataParallel wrapper is dropped after, as
        `World.close` needs."""
        try:
            return self._fit(resume, until_epoch)
        finally:
            if isinstance(self.model, DistributedDataParallel):
                self.model = self.model.module

    def _fit(self, resume: Optional[dict], until_epoch: Optional[int]) -> dict:
        fit_started = time.time()
        if self.device.type == "cpu":
            log_cpu_training(self.device, self.schedule.mixed_precision)
        if resume is not None:
            self._restore(resume["train_state"])
            log.info("resumed after epoch %d of %d", self.epoch, self.schedule.epochs)
        elif self.validate_start or self.refit:
            self._start()
        first, last = self.epoch, min(self.schedule.epochs, until_epoch or self.schedule.epochs)
        bar = tqdm(total=last, initial=self.epoch, desc="epochs", unit="epoch",
                   disable=None if self.world.writer else True)
        while self.epoch < last and self.since_best < self.schedule.patience:
            started = time.perf_counter()
            train = self._train_epoch()
            record = {"epoch": self.epoch + 1, "lr": self.scheduler.get_last_lr()[0], "train": train,
                      "train_seconds": round(time.perf_counter() - started, 3)}
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
        for batch, share in track(self.loader, f"epoch {self.epoch + 1}", "batches"):
            # Drawn for the whole global batch on every process, used for this process's windows.
            plan = self.augmenter.draw((share.batch, *batch["x"].shape[1:]))
            seeds = torch.randint(SEED_RANGE, (share.batch,), generator=self.dropout_seeds).tolist()
            batch = self.augmenter.apply(batch, part_of(plan, share.offset, len(share.rows)))
            mine = slice(share.offset, share.offset + len(share.rows))
            teacher = None
            if self.sampling is not None:
                teacher = self.sampling.draw(share.batch, batch["x_future"].shape[1], self.scheduler.last_epoch)[mine]
            for key, value in self._step(batch, share, seeds[mine], teacher).items():
                totals[key] = totals.get(key, 0.0) + value * share.batch
        return {key: value / self.batches.count for key, value in totals.items()}

    def _step(self, batch: Batch, share: Share, seeds: list[int], teacher: Optional[torch.Tensor] = None
              ) -> dict[str, float]:
        """One optimizer step on this process's share of a global batch: its micro-batches'
        gradients accumulate (reduced over the processes on the last one), then clipping and the
        step. Returns the global batch's loss and its terms, summed over every process."""
        observed = None
        if "m" in batch:  # the global batch's observed nodes: the denominator of masked means
            mine = 0.0 if share.stand_in else float(batch["m"].sum())
            observed = float(self.world.sum(torch.tensor(mine, dtype=torch.float64)))
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        for i, (rows, part) in enumerate(micro_batches(batch, share, seeds, teacher, observed, self.device,
                                                       self.carrier)):
            last = i == len(share.sizes) - 1  # each micro-batch reaches the device only when its turn comes
            with contextlib.nullcontext() if last or self.world.size == 1 else self.model.no_sync():
                loss, parts = self.model(rows, part)
                # DistributedDataParallel averages the processes' gradients: their shares add up.
                self.scaler.scale(loss * self.world.size).backward()
            for key, value in {"loss": loss.detach(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value.float()
        terms = dict(zip(sums, self.world.sum(torch.stack(list(sums.values()))).tolist()))
        if not math.isfinite(terms["loss"]):
            loss = terms.pop("loss")
            raise divergence(loss, terms, self.epoch, self.run.checkpoint, self.schedule)
        if self.schedule.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.trained, self.schedule.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return terms

    def _end_epoch(self, record: dict) -> None:
        """Every process keeps the same counters; rank 0 writes the files."""
        value = record["val"][self.metric]
        improved = is_better(value, self.best, self.data.task)
        if improved:
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1
        record["best"] = improved
        self.history.append(record)
        if not self.world.writer:
            return
        if improved:
            files.save_checkpoint(self.run.best, {**self.info, **self.stack.payload(),
                                                 "epoch": self.epoch, "val": record["val"]})
        # best.pt first, then ckpt.pt: a kill in between replays this epoch identically.
        files.save_checkpoint(self.run.checkpoint, {**self.info, **self.stack.payload(),
                                                   "train_state": self._train_state()})
        files.write_history(self.run.history, self.history)
        plot_learning_curve(self.history, self.metric, self.run.learning_curve)
        parts = " ".join(f"{k}={v:.4f}" for k, v in record["train"].items())
        log.info("epoch %d: %s val %s=%.4f%s (%.1fs)", record["epoch"], parts, self.metric, value,
                 " best" if improved else "", record["seconds"])

    # ------------------------------------------------------------------ resume

    def _generators(self) -> dict[str, torch.Generator]:
        generators = {"order": self.order, "augment": self.augmenter.generator, "dropout": self.dropout_seeds}
        return generators if self.sampling is None else {**generators, "teacher": self.sampling.generator}

    def _train_state(self) -> dict:
        rng = rng_state(self._generators())
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
        set_rng_state(self._generators(), state["rng"])


def data_parallel(model: "_Loss", world: World, device: torch.device) -> nn.Module:
    """The loss module, under DistributedDataParallel in a world of several processes."""
    if world.size == 1:
        return model
    head = model.stack.head  # a trained PGM head need not reach every parameter (temporal weight, ...)
    trains_head = head is not None and any(p.requires_grad for p in head.parameters())
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=trains_head)


def divergence(loss: float, parts: dict[str, float], epoch: int, checkpoint: Path, schedule: Schedule) -> UserError:
    """A loss that is no longer finite is the config's outcome, not a crash: say what to change."""
    kept = (f"{checkpoint} keeps epoch {epoch}" if checkpoint.is_file()
            else "no epoch finished, so there is no checkpoint")
    terms = ", ".join(f"{k} {v:.3g}" for k, v in parts.items())
    return UserError(f"the training loss became {loss} in epoch {epoch + 1}"
                     f"{f' ({terms})' if terms else ''}: training diverged; lower {schedule.lr_key} "
                     f"(now {schedule.lr:g}) or the loss weights (loss.*) and start again with "
                     f"--overwrite; {kept}")


def attach_log_file(run: runs.RunFolder) -> None:
    """Also log to the run folder's `log.txt` (appended, so a resumed run keeps its past)."""
    handler = logging.FileHandler(run.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.getLogger().addHandler(handler)
