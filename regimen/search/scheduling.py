"""Which trials a generation runs, and where: specs from genomes, the trial cache, local slots or Dask.

`TrialScheduler.run` turns genomes into trial specs (decoded and repaired
configs, at the generation's fidelity, with their processed data prepared
once per distinct data section), skips what the cache already holds (the same
genome at the same fidelity never trains twice, a genome twice in one
generation runs once), runs the rest through `map` (local slots or a Dask
client) and returns one result per genome, in order.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from regimen.core import runs
from regimen.core.config import FILE_DATASETS, Config, digest, dump_config, to_dict
from regimen.core.errors import UserError
from regimen.core.progress import track
from regimen.data.preprocess import preprocess
from regimen.search.genome import Gene, decode
from regimen.search.trials import TrialSpec, run_trial


@dataclass
class TrialRecord:
    """What the search records of a trial beside its result (trials.csv)."""

    folder: str
    key: str
    fidelity: str
    values: dict
    repairs: list[str]
    epochs: Optional[int] = None  # phase 1's epoch budget


@dataclass
class Rung:
    """One rung of successive halving: its epochs of `training.epochs`, its fidelity (rung0,
    rung1, ..., full for the last) and the fidelity of the rung before, whose trial folders it
    continues (None for the first)."""

    epochs: int
    fidelity: str
    previous: Optional[str]


log = logging.getLogger(__name__)


class TrialScheduler:
    """Runs the trials of a search's generations (see the module docstring).

    Args:
        config: the base config; genomes overwrite its `search_space` keys.
        genes: the genes of `search_space`.
        folder: the search folder.
        mapper: `map(function, specs)` yielding results in the order of `specs`.
        slot_env: `i -> environment` of parallel slot i (devices, threads).
    """

    def __init__(self, config: Config, genes: list[Gene], folder: runs.SearchFolder, mapper: Callable,
                 slot_env: Callable[[int], dict]):
        self.config, self.evo, self.genes, self.folder = config, config.evolutionary, genes, folder
        self.map, self.slot_env = mapper, slot_env
        self.cache: dict[str, dict] = {}  # trial key -> result, saved with the search's state

    def fidelity(self, generation: int) -> str:
        return "low" if generation < self.evo.low_fidelity.generations else "full"

    def rungs(self) -> list[Rung]:
        """Successive halving's rungs: epochs training.epochs / eta^(rungs-1), ..., training.epochs
        (rounded, at least 1, each budget once)."""
        halving, epochs = self.evo.halving, self.config.training.epochs
        budgets = sorted({max(1, round(epochs / halving.eta ** (halving.rungs - 1 - r))) for r in range(halving.rungs)})
        names = [f"rung{r}" for r in range(len(budgets) - 1)] + ["full"]
        return [Rung(e, name, names[r - 1] if r else None) for r, (e, name) in enumerate(zip(budgets, names))]

    def values(self, genome: list) -> dict:
        """The config values a genome sets."""
        return {gene.key: gene.decode(value) for gene, value in zip(self.genes, genome)}

    def key(self, genome: list, fidelity: str) -> str:
        """The trial cache's key: the genome's config values and the fidelity."""
        return digest({"values": self.values(genome), "fidelity": fidelity})[:16]

    def run(self, generation: int, genomes: list[list], fidelity: str, indices: Optional[list[int]] = None,
            rung: Optional[Rung] = None) -> tuple[list[dict], list[tuple[int, TrialRecord, dict]]]:
        """Each genome's result, in order, and the trials this call added (index, record, result:
        genomes no repair makes valid, then the trials that ran), for trials.csv. `indices`: the
        genomes' places in the generation, which name their trial folders (default 0, 1, ...);
        `rung`: train only to its epochs, continuing the previous rung's folders."""
        added, work = [], {}
        keys = []
        for index, genome in zip(indices or range(len(genomes)), genomes):
            record, config = self._prepare(generation, index, genome, fidelity, rung)
            keys.append(record.key)
            if config is None and record.key not in self.cache:  # a genome no repair makes valid
                added.append((index, record, self._invalid(record)))
            elif record.key not in self.cache and record.key not in work:  # twice in one generation: once
                work[record.key] = (index, record, config)
        for _, _, config in work.values():
            self._prepare_data(config)
        specs = [self._spec(record, config, slot, rung) for slot, (_, record, config) in enumerate(work.values())]
        finished = track(self.map(run_trial, specs), f"generation {generation}", "trials", total=len(specs))
        for (index, record, _), result in zip(work.values(), finished):
            added.append((index, record, self.finish(record, result)))
        return [self.cache[key] for key in keys], added

    def start(self, generation: int, index: int, genome: list, fidelity: str, rung: Optional[Rung], slot: int
              ) -> tuple[TrialRecord, Optional[dict], Optional[TrialSpec], bool]:
        """One trial on its own (the steady state): its record, and either its result (known, or
        invalid) or the spec to run; and whether the record is new (a row for trials.csv)."""
        record, config = self._prepare(generation, index, genome, fidelity, rung)
        if record.key in self.cache:
            return record, self.cache[record.key], None, False
        if config is None:
            return record, self._invalid(record), None, True
        self._prepare_data(config)
        return record, None, self._spec(record, config, slot, rung), True

    def finish(self, record: TrialRecord, result: dict) -> dict:
        """Keep a finished trial's result in the cache (with its folder)."""
        self.cache[record.key] = {**result, "folder": record.folder}
        return self.cache[record.key]

    def _invalid(self, record: TrialRecord) -> dict:
        """The result of a genome no repair makes valid."""
        self.cache[record.key] = {"status": "invalid", "reason": record.repairs[-1], "objectives": None,
                                  "folder": "", "key": record.key}
        return self.cache[record.key]

    def _prepare(self, generation: int, index: int, genome: list, fidelity: str, rung: Optional[Rung]
                 ) -> tuple[TrialRecord, Optional[Config]]:
        key = self.key(genome, fidelity)
        if rung is not None and rung.previous is not None:  # the folder the rung before trained in
            folder = self.cache[self.key(genome, rung.previous)]["folder"]
        else:
            folder = str(self.folder.trial(generation, index))
        try:
            config, values, repairs = decode(self.genes, genome, self.config)
        except UserError as error:
            values = {g.key: g.decode(v) for g, v in zip(self.genes, genome)}
            return TrialRecord(folder, key, fidelity, values, [str(error)]), None
        if fidelity == "low":
            self._lower_fidelity(config)
        config.data.root = str(self._data_root(config))
        if config.data.path:
            config.data.path = str(Path(config.data.path).resolve())
        config.evolutionary.search_space = {}  # a trial's config is a plain run
        epochs = config.training.epochs if rung is None else rung.epochs
        return TrialRecord(folder, key, fidelity, values, repairs, epochs), config

    def _spec(self, record: TrialRecord, config: Config, slot: int, rung: Optional[Rung]) -> TrialSpec:
        spec = TrialSpec(record.folder, record.key, dump_config(config), config.data.task != "regression",
                         self.evo.trial_joint, list(self.evo.objectives), self.evo.trial_timeout_s,
                         self.evo.trial_retries, self.slot_env(slot), processes=self.evo.gpus_per_trial)
        if rung is not None:
            last = rung.fidelity == "full"
            spec.until_epoch, spec.stage = (None, "") if last else (rung.epochs, rung.fidelity)
            spec.continues = rung.previous is not None
        return spec

    def _lower_fidelity(self, config: Config) -> None:
        """Fewer epochs; and a built-in dataset generated on a coarser grid (the user's files stay as they are)."""
        low = self.evo.low_fidelity
        if config.data.dataset not in FILE_DATASETS:
            generator = config.data.generator
            generator.height = max(4, generator.height // low.downsample_factor)
            generator.width = max(4, generator.width // low.downsample_factor)
        config.training.epochs = min(config.training.epochs, low.max_epochs)
        config.training.joint.epochs = min(config.training.joint.epochs, low.max_epochs)

    def _data_root(self, config: Config) -> Path:
        """The base config's processed data when the trial's data is the same (nothing is copied),
        else the search's own folder per distinct data section, shared by the trials that use it."""
        section = digest(to_dict(config)["data"] | {"seed": config.seed})
        if section == digest(to_dict(self.config)["data"] | {"seed": self.config.seed}):
            return Path(self.config.data.root).resolve()
        return self.folder.data / section[:12]

    @staticmethod
    def _prepare_data(config: Config) -> None:
        """Phase 0 once for each data section the pending trials need (before they start)."""
        folder = runs.processed_dir(config.data.root, runs.dataset_name(config.data))
        if not runs.meta_path(folder).is_file():
            log.info("preprocessing %s into %s", runs.dataset_name(config.data), folder)
            preprocess(config)


class TrialPool:
    """A context over `parallel` local slots or a Dask cluster that runs trials two ways: `map`
    (an iterator of the results in the order of the items, each as soon as it and those before it
    are done: the generations) and `submit` with `first_done` (the steady state)."""

    def __init__(self, parallel: int, scheduler: Optional[str]):
        self.parallel, self.scheduler = parallel, scheduler
        self.executor = self.client = None

    def __enter__(self) -> "TrialPool":
        if self.scheduler:
            from dask.distributed import Client

            try:
                # not the process's default scheduler: a search leaves the caller's Dask settings as they were
                self.client = Client(self.scheduler, timeout=30, set_as_default=False)
            except OSError as error:
                raise UserError(f"--scheduler {self.scheduler}: cannot connect ({error})") from None
        else:  # each slot only waits on its trial's subprocess, so threads are enough to run N trials at once
            self.executor = ThreadPoolExecutor(self.parallel)
        return self

    def __exit__(self, *exc):
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.client is not None:
            self.client.close()

    @property
    def slots(self) -> int:
        """Trials that run at once: the local slots, or the cluster's worker threads."""
        return sum(self.client.nthreads().values()) if self.client else self.parallel

    def map(self, fn: Callable, items: list) -> Iterator:
        if self.client:  # results in submission order, so they (and a resume) do not depend on the workers
            return (future.result() for future in self.client.map(fn, items, pure=False))
        return self.executor.map(fn, items)

    def submit(self, fn: Callable, item) -> Any:
        return self.client.submit(fn, item, pure=False) if self.client else self.executor.submit(fn, item)

    def first_done(self, futures: list) -> None:
        """Wait until one of `futures` is done."""
        if self.client:  # on this client's loop: it is not the process's default client
            from dask.distributed import as_completed

            next(as_completed(futures, loop=self.client.loop))
        else:
            futures_wait(futures, return_when=FIRST_COMPLETED)


def slot_environment(parallel: int, config: Config, scheduler: Optional[str]) -> Callable[[int], dict]:
    """Slot i's environment: `evolutionary.gpus_per_trial` GPUs round-robin over
    `evolutionary.devices` (default every visible GPU), else a share of the CPU cores. On a cluster
    each worker pins its own GPUs. More GPUs per trial than there are: a UserError."""
    per_trial = config.evolutionary.gpus_per_trial
    if scheduler:
        return lambda slot: {}
    devices = config.evolutionary.devices
    if config.device == "cpu":  # trials on the CPU on a GPU machine: share the cores
        devices = []
    elif devices is None:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if per_trial > max(1, len(devices)):
        there = (f"evolutionary.devices lists {len(devices)}" if config.evolutionary.devices else
                 f"{len(devices)} are visible" if devices else
                 "device: cpu runs the trials on the CPU" if config.device == "cpu" else
                 "no GPU is visible, so the trials run on the CPU")
        raise UserError(f"evolutionary.gpus_per_trial = {per_trial}: more GPUs than the trials have ({there}); "
                        f"expected at most {len(devices) or 1}")
    if devices:
        return lambda slot: {"CUDA_VISIBLE_DEVICES": ",".join(str(devices[(slot * per_trial + i) % len(devices)])
                                                              for i in range(per_trial))}
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return lambda slot: {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
