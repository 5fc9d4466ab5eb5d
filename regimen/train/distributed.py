"""Data-parallel training under torchrun: which process this is, and the few collectives phases 1
and 3 need.

    torchrun --nproc_per_node 8 train_convlstm.py --config config.yaml --save runs/final

`join(config)` reads torchrun's environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`). Without it
the world is this one process and every collective below returns its input, so the phases run
the same code either way. Under torchrun every process joins one process group (NCCL on GPUs,
Gloo on the CPU) and takes its own device (`cuda:LOCAL_RANK`); `training.batch_size` stays the
global batch, split over the processes. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from regimen.core import machine
from regimen.core.cli import environment_rank
from regimen.core.config import TrainingConfig
from regimen.core.errors import UserError
from regimen.train.stack import resolve_device

log = logging.getLogger(__name__)

# Rank 0 alone runs the alternating mode's PGM refit and the end-of-run predictions; the others
# wait for the refit at a broadcast, so the group waits longer than NCCL's 10 minutes by default.
TIMEOUT = timedelta(minutes=60)


@dataclass
class World:
    """The processes of one data-parallel job (one process without torchrun).

    Attributes:
        device: this process's device.
        size: processes in the job.
        rank: this process's place among them; rank 0 writes.
        backend: `nccl` or `gloo`; None for one process.
        devices: every process's `host/device`, in rank order (for provenance).
    """

    device: torch.device
    size: int = 1
    rank: int = 0
    backend: Optional[str] = None
    devices: list[str] = field(default_factory=list)

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> range:
        """This process's contiguous part of `count` items (near-equal parts in rank order)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every process's `tensor` (on this process's device)."""
        tensor = tensor.to(self.device)
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value) -> list:
        """Every process's `value` (picklable), in rank order."""
        if self.size == 1:
            return [value]
        values = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def merged(self, sums: dict) -> dict:
        """Per-name metric sums (`MetricSums`) added up over every process, in rank order, so
        every process gets the same exact figures of the whole split."""
        gathered = self.gather(sums)
        total = gathered[0]
        for other in gathered[1:]:
            for name, value in other.items():
                total[name].merge(value)
        return total

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers into every process's `module`."""
        if self.size > 1:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    @contextmanager
    def agreement(self) -> Iterator[None]:
        """Checks that may fail on some processes only (rank 0 claims the run folder): a UserError
        on any process stops every process with rank 0's line, before any of them works."""
        error = None
        try:
            yield
        except UserError as raised:
            error = str(raised)
        errors = [e for e in self.gather(error) if e is not None]
        if errors:
            raise UserError(errors[0]) from None

    def describe(self, batch_size: int, accumulate: int) -> dict:
        """What metrics.json records of the job: world size, backend, devices and the global batch."""
        micro = batch_size / (self.size * accumulate)
        return {"world_size": self.size, "backend": self.backend, "devices": self.devices or [str(self.device)],
                "global_batch": batch_size, "accumulate": accumulate, "micro_batch": round(micro, 3)}

    def close(self) -> None:
        """Leaves the process group and joins its threads. Drop every DistributedDataParallel
        wrapper first (`Trainer.fit` does): while anything holds the group its Gloo threads run
        on, and one that frees a collective's tensors while the interpreter shuts down needs the
        GIL there and aborts the process (SIGABRT, "terminate called without an active
        exception")."""
        if self.size > 1 and dist.is_initialized():
            gc.collect()  # the wrappers' reference cycles
            dist.destroy_process_group()


def join(device_name: str, training: TrainingConfig) -> World:
    """This process's `World`: one process, or under torchrun a member of its process group.
    Bad input (a world larger than the global batch, a device that does not fit) is refused on
    every process alike, before the group is joined."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        device = resolve_device(device_name)
        return World(device, devices=[f"{socket.gethostname()}/{device}"])
    if size * training.accumulate > training.batch_size:
        times = f" x training.accumulate {training.accumulate}" if training.accumulate > 1 else ""
        raise UserError(f"training.batch_size = {training.batch_size} is the global batch, split over the "
                        f"{size} processes of this torchrun job{times}: expected at least "
                        f"{size * training.accumulate} windows (raise training.batch_size, or start fewer "
                        "processes)")
    machine.die_with_parent()  # torchrun starts each process in a session of its own
    rank, local_rank = environment_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_of_rank(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Imported before the group exists: its functions take the world group as a default argument,
    # and imported later (DistributedDataParallel does) they would hold it past World.close().
    import torch.distributed.nn  # noqa: F401
    try:
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
    except (ValueError, RuntimeError) as error:  # torchrun's variables missing, or a rendezvous that failed
        raise UserError(f"WORLD_SIZE={size}: cannot join the job's process group ({error}); start the script "
                        "with torchrun") from None
    if rank != 0:  # one process speaks for the job
        logging.getLogger().setLevel(logging.WARNING)
    world = World(device, size, rank, backend)
    world.devices = world.gather(f"{socket.gethostname()}/{device}")
    log.info("data-parallel over %d processes (%s): %s", size, backend, ", ".join(world.devices))
    return world


def _device_of_rank(name: str, local_rank: int) -> torch.device:
    """Under torchrun each process takes the GPU of its LOCAL_RANK (or the CPU)."""
    if name not in ("auto", "cuda"):
        device = resolve_device(name)
        if device.type == "cuda":
            raise UserError(f"device = {name!r}: under torchrun every process takes the GPU of its LOCAL_RANK; "
                            "set device to auto or cuda (CUDA_VISIBLE_DEVICES picks the GPUs)")
        return device
    if not torch.cuda.is_available():
        return resolve_device(name)  # auto: the CPU; cuda: the error that names it
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"torchrun started process {local_rank} of this machine, but only "
                        f"{torch.cuda.device_count()} CUDA device(s) are visible: start at most that many "
                        "processes per node (--nproc_per_node)")
    return torch.device(f"cuda:{local_rank}")
