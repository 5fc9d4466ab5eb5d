"""The batches of training: an epoch's global batches, this process's shares of them, and the
micro-batches of a share, each with its `Part` of the global batch."""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from regimen.data.augment import Batch
from regimen.data.processed import TaskData
from regimen.data.windows import SequenceBatches, ShardedBatches, Share, SharedWindows, ShuffledBatches, window_loader
from regimen.train.distributed import World
from regimen.train.losses import Part
from regimen.train.stack import model_input
from regimen.train.tbptt import StateCarrier


def micro_batches(batch: Batch, share: Share, seeds: list[int], teacher: Optional[torch.Tensor],
                  observed: Optional[float], device: torch.device, carrier: Optional[StateCarrier] = None
                  ) -> Iterator[tuple[Batch, Part]]:
    """This process's micro-batches of a share, on the device with the inputs in model layout, each
    with its `Part` of the global batch (`observed`: the global batch's observed nodes, with a mask).
    With a `carrier` (training.stateful) each part carries its windows' starting state, and once the
    last micro-batch has run, the carrier keeps their final states for the next batch."""
    carries = carrier.carries(share, device) if carrier is not None else None
    pieces = {key: a.split(share.sizes) for key, a in batch.items()}
    first = 0
    for i, values in enumerate(zip(*pieces.values())):
        rows = dict(zip(pieces, values))
        size = len(rows["x"])
        part = Part(windows=0.0 if share.stand_in else size / share.batch,
                    observed=0.0 if share.stand_in or not observed else float(rows["m"].sum()) / observed,
                    dropout_seeds=seeds[first:first + size],
                    teacher=None if teacher is None else teacher[first:first + size].to(device),
                    carry=None if carries is None else carries[i])
        first += size
        rows = {key: a.to(device, non_blocking=True) for key, a in rows.items()}
        for key in ("x", "x_future"):
            if key in rows:
                rows[key] = model_input(rows[key])
        yield rows, part
    if carrier is not None:
        carrier.keep(share, carries)


def epoch_batches(data: TaskData, schedule, order: torch.Generator) -> Sampler:
    """An epoch's global batches in `order`: shuffled windows, or with `schedule.stateful` the
    windows of chunks of sequences in step (`SequenceBatches`). `len` is the steps of an epoch;
    `count` its windows."""
    windows = data.windows("train")
    if schedule.stateful:
        return SequenceBatches(windows.sequence, schedule.batch_size, order)
    return ShuffledBatches(len(windows), schedule.batch_size, order)


def share_loader(data: TaskData, batches: Sampler, schedule, world: World, device: torch.device) -> DataLoader:
    """The loader of this process's shares of the global `batches`."""
    shares = ShardedBatches(batches, world.rank, world.size, schedule.accumulate)
    return window_loader(SharedWindows(data.windows("train")), shares, data.loader_config,
                         pin_memory=device.type == "cuda")
