"""Phase 4: the DEAP search over the whole stack (evolve.py).

DEAP supplies the machinery: `creator` classes (module level, so workers can
unpickle them), a `toolbox` with tournament selection, `selNSGA2` for two or
more objectives, `migRing` between islands, `HallOfFame` / `ParetoFront`,
`Statistics` and `Logbook`. The loop is ours, because after every generation it
writes the whole state (`state.json`: populations, fitnesses, hall of fame,
logbook, the trial cache and every PRNG state) and `--resume` continues from
it, ending exactly where an uninterrupted run would.

Fitness values are stored maximising: an objective where lower is better
(RMSE, ECE, latency, ...) is negated, and a failed trial gets -inf.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import time
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from deap import base, creator, tools
from tqdm import tqdm

from regimen import folders, runs, trials
from regimen.config import Config, dump_config, load_config, to_dict
from regimen.data import preprocess
from regimen.errors import UserError
from regimen.genome import Gene, crossover, decode, diversity, genes_of, incumbent, mutate
from regimen.plots import plot_fitness, plot_pareto
from regimen.trials import higher_is_better, run_trial

log = logging.getLogger(__name__)

STATE_FORMAT = 1
MAX_OBJECTIVES = 5
for _n in range(1, MAX_OBJECTIVES + 1):  # one fitness class per objective count, all maximising
    creator.create(f"Fitness{_n}", base.Fitness, weights=(1.0,) * _n)
    creator.create(f"Individual{_n}", list, fitness=getattr(creator, f"Fitness{_n}"))
WORST = -math.inf


class Search:
    """One evolutionary search from a validated config into `out`.

    Args:
        config: the base config; genomes overwrite its `search_space` keys.
        out: the output folder.
        mapper: `map(function, specs)` that runs trials (local slots or a Dask client) and yields
            their results in order.
        slot_env: `i -> environment` of parallel slot i (devices, threads).
    """

    def __init__(self, config: Config, out: Path, mapper: Callable, slot_env: Callable[[int], dict]):
        self.config, self.evo = config, config.evolutionary
        self.files = runs.SearchFolder(out)
        self.genes: list[Gene] = genes_of(config)
        self.map, self.slot_env = mapper, slot_env
        self.objectives = list(self.evo.objectives)
        self.task = config.data.task
        self.signs = [1.0 if higher_is_better(name, self.task) else -1.0 for name in self.objectives]
        self.individual = getattr(creator, f"Individual{len(self.objectives)}")
        self.rng = random.Random(config.seed)
        self.toolbox = base.Toolbox()  # its default `clone` is a deep copy, fitness included
        if self.multi_objective:
            self.toolbox.register("select", tools.selNSGA2)
            self.hall = tools.ParetoFront()
        else:
            self.toolbox.register("select", tools.selTournament, tournsize=self.evo.tournament_k)
            self.hall = tools.HallOfFame(max(1, self.evo.elitism))
        self.logbook = tools.Logbook()
        self.islands: list[list] = []
        self.generation = 0  # generations completed
        self.cache: dict[str, dict] = {}
        self.trial_rows: list[dict] = []
        self.best_so_far, self.stagnant, self.mutation_rate = None, 0, self.evo.mutation_rate
        self.immigrants_due = 0

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        if self.generation == 0 and not self.islands:
            self._seed_random_states()
            self.islands = [[self._random_individual() for _ in range(self.evo.population_size)]
                            for _ in range(self.evo.n_islands)]
            self.islands[0][0] = self.individual(incumbent(self.genes, self.config, self.rng))
            self._evaluate_generation(0)
        bar = tqdm(total=self.evo.generations, initial=self.generation, desc="generations", unit="gen",
                   disable=None)
        while self.generation < self.evo.generations:
            self._breed()
            self._evaluate_generation(self.generation)
            bar.update(1)
        bar.close()
        return self._finish()

    def _evaluate_generation(self, generation: int) -> None:
        """Evaluate every individual without a valid fitness, record, migrate, save the state."""
        started = time.perf_counter()
        fidelity = self.fidelity(generation)
        if fidelity == "full" and generation == self.evo.low_fidelity.generations and generation > 0:
            self._promote()
        pending = [(i, ind) for i, island in enumerate(self.islands) for ind in island if not ind.fitness.valid]
        results = self._run_trials(generation, [ind for _, ind in pending], fidelity)
        failures, evaluated = [0] * len(self.islands), [0] * len(self.islands)
        for (island, ind), result in zip(pending, results):
            ind.fitness.values = self._fitness(result)
            ind.fidelity = fidelity
            failures[island] += result["status"] != "ok"
            evaluated[island] += 1
        if self.multi_objective:  # NSGA-II keeps the best n of parents and offspring
            self.islands = [self.toolbox.select(island, self.evo.population_size) for island in self.islands]
        if fidelity == "full":
            self.hall.update([ind for island in self.islands for ind in island
                              if ind.fidelity == "full" and ind.fitness.values[0] > WORST])
        event = self._check_stagnation(fidelity)
        if self.evo.n_islands > 1 and generation > 0 and generation % self.evo.migration_interval == 0:
            tools.migRing(self.islands, self.evo.migrants, tools.selBest)
            event = (event + "; " if event else "") + f"migration of {self.evo.migrants}"
        seconds = round(time.perf_counter() - started, 3)
        for i, island in enumerate(self.islands):
            self._record(generation, i, island, fidelity, failures[i], evaluated[i], seconds, event)
        self.generation = generation + 1
        self._save_state()
        best = self._natural(max(ind.fitness.values[0] for island in self.islands for ind in island), 0)
        log.info("generation %d (%s fidelity): best %s %s, %d failed, %.1fs%s", generation, fidelity,
                 self.objectives[0], "n/a" if best is None else f"{best:.4f}", sum(failures), seconds,
                 f" [{event}]" if event else "")

    def _breed(self) -> None:
        """The next generation of each island: elites, then selection, crossover and mutation, and
        random immigrants in place of the worst when the search stagnates."""
        immigrants, self.immigrants_due = self.immigrants_due, 0
        for i, island in enumerate(self.islands):
            n = len(island)
            newcomers = [self._random_individual() for _ in range(immigrants)]
            if self.multi_objective:  # after evaluation selNSGA2 keeps n of parents + offspring
                self.islands[i] = island + self._vary(tools.selRandom(island, n - immigrants)) + newcomers
            else:
                parents = tools.selBest(island, n - immigrants)  # the worst make room for the immigrants
                elites = [self.toolbox.clone(ind) for ind in parents[:self.evo.elitism]]
                chosen = self.toolbox.select(parents, n - len(elites) - immigrants)
                self.islands[i] = elites + self._vary(chosen) + newcomers

    def _vary(self, parents: list) -> list:
        """Copies of `parents` after crossover and mutation; a changed genome loses its fitness."""
        offspring = [self.toolbox.clone(ind) for ind in parents]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if self.rng.random() < self.evo.crossover_rate:
                crossover(a, b, self.rng)
        for ind in offspring:
            mutate(self.genes, ind, self.mutation_rate, self.rng)
        for ind, parent in zip(offspring, parents):
            if list(ind) != list(parent):
                del ind.fitness.values
        return offspring

    # ------------------------------------------------------------------ trials

    def fidelity(self, generation: int) -> str:
        return "low" if generation < self.evo.low_fidelity.generations else "full"

    def _run_trials(self, generation: int, individuals: list, fidelity: str) -> list[dict]:
        """Results of the individuals' trials, from the cache where the genome and fidelity ran before."""
        specs, results = {}, {}
        for index, ind in enumerate(individuals):
            spec = self._trial_spec(generation, index, list(ind), fidelity)
            if spec["config"] is None and spec["key"] not in self.cache:  # a genome no repair makes valid
                self.cache[spec["key"]] = {"status": "invalid", "reason": spec["repairs"][-1], "objectives": None,
                                           "folder": "", "key": spec["key"]}
                self._log_trial(generation, index, spec, self.cache[spec["key"]])
            if spec["key"] in self.cache:
                results[index] = {**self.cache[spec["key"]], "cached": True}
            elif spec["key"] not in {s["key"] for s in specs.values()}:
                specs[index] = spec
            else:  # the same genome twice in one generation runs once
                results[index] = spec["key"]
        self._prepare_data([spec["config"] for spec in specs.values()])
        work = list(specs.values())
        for slot, spec in enumerate(work):
            spec["env"] = self.slot_env(slot)
        finished = tqdm(self.map(run_trial, [{k: v for k, v in s.items() if k != "config"} for s in work]),
                        total=len(work), desc=f"generation {generation} trials", unit="trial", leave=False,
                        disable=None)
        for (index, spec), result in zip(specs.items(), finished):
            result = {**result, "folder": spec["folder"]}
            self.cache[spec["key"]] = result
            results[index] = result
            self._log_trial(generation, index, spec, result)
        return [self.cache[results[i]] if isinstance(results[i], str) else results[i]
                for i in range(len(individuals))]

    def _trial_spec(self, generation: int, index: int, genome: list, fidelity: str) -> dict:
        try:
            config, values, repairs = decode(self.genes, genome, self.config)
        except UserError as error:
            config, values, repairs = None, {g.key: g.decode(v) for g, v in zip(self.genes, genome)}, [str(error)]
        spec = {"folder": str(self.files.trial(generation, index)), "key": self._key(genome, fidelity),
                "values": values, "repairs": repairs, "fidelity": fidelity, "objectives": self.objectives,
                "timeout_s": self.evo.trial_timeout_s, "retries": self.evo.trial_retries}
        if config is None:
            return {**spec, "config": None, "config_yaml": "", "has_pgm": False, "joint": False}
        if fidelity == "low":
            self._lower_fidelity(config)
        config.data.root = str(self._data_root(config))
        if config.data.path:
            config.data.path = str(Path(config.data.path).resolve())
        config.evolutionary.search_space = {}  # a trial's config is a plain run
        return {**spec, "config": config, "config_yaml": dump_config(config),
                "has_pgm": config.data.task != "regression", "joint": self.evo.trial_joint}

    def _key(self, genome: list, fidelity: str) -> str:
        """The trial cache's key: the genome's config values and the fidelity."""
        values = {gene.key: gene.decode(value) for gene, value in zip(self.genes, genome)}
        return hashlib.sha256(json.dumps({"values": values, "fidelity": fidelity}, sort_keys=True,
                                         default=str).encode()).hexdigest()[:16]

    def _lower_fidelity(self, config: Config) -> None:
        low = self.evo.low_fidelity
        generator = config.data.generator
        generator.height = max(4, generator.height // low.downsample_factor)
        generator.width = max(4, generator.width // low.downsample_factor)
        config.training.epochs = min(config.training.epochs, low.max_epochs)
        config.training.joint.epochs = min(config.training.joint.epochs, low.max_epochs)

    def _data_root(self, config: Config) -> Path:
        """Processed data per distinct data section, shared by the trials that use it."""
        digest = hashlib.sha256(json.dumps(to_dict(config)["data"] | {"seed": config.seed}, sort_keys=True,
                                           default=str).encode()).hexdigest()[:12]
        return self.files.data / digest

    def _prepare_data(self, configs: list[Config]) -> None:
        """Run phase 0 once for each data section the pending trials need (before they start)."""
        for config in configs:
            folder = runs.processed_dir(config.data.root, runs.dataset_name(config))
            if not runs.meta_path(folder).is_file():
                log.info("preprocessing %s into %s", runs.dataset_name(config), folder)
                preprocess(config)

    def _fitness(self, result: dict) -> tuple:
        if result["status"] != "ok":
            return (WORST,) * len(self.objectives)
        return tuple(sign * value for sign, value in zip(self.signs, result["objectives"]))

    def _natural(self, value: float, objective: int) -> Optional[float]:
        return None if value == WORST else self.signs[objective] * value

    # ------------------------------------------------------------------ promotion, stagnation

    def _promote(self) -> None:
        """Leaving low fidelity: every individual bred from the low-fidelity generations, the
        elites (the best of them) included, is evaluated again at full fidelity."""
        for island in self.islands:
            for ind in island:
                if ind.fitness.valid:
                    del ind.fitness.values
        log.info("promoting the best %d per island (and their offspring) to full fidelity", self.evo.elitism)

    def _check_stagnation(self, fidelity: str) -> str:
        if fidelity != "full" or self.multi_objective:
            return ""
        best = max(ind.fitness.values[0] for island in self.islands for ind in island)
        if self.best_so_far is None or best > self.best_so_far:
            self.best_so_far, self.stagnant, self.mutation_rate = best, 0, self.evo.mutation_rate
            return ""
        self.stagnant += 1
        if self.stagnant < self.evo.stagnation.generations:
            return ""
        self.mutation_rate = min(1.0, self.mutation_rate * self.evo.stagnation.mutation_boost)
        self.immigrants_due = min(self.evo.stagnation.immigrants, self.evo.population_size - self.evo.elitism)
        self.stagnant = 0
        return f"stagnation: mutation rate {self.mutation_rate:.3f}, {self.immigrants_due} immigrants per island next"

    def _random_individual(self):
        return self.individual(gene.random(self.rng) for gene in self.genes)

    # ------------------------------------------------------------------ records

    def _record(self, generation: int, island: int, population: list, fidelity: str, failures: int,
                evaluated: int, seconds: float, event: str) -> None:
        values = [self._natural(ind.fitness.values[0], 0) for ind in population]
        values = [v for v in values if v is not None]
        self.logbook.record(generation=generation, island=island, fidelity=fidelity,
                            min=min(values) if values else None, mean=float(np.mean(values)) if values else None,
                            max=max(values) if values else None,
                            diversity=round(diversity(self.genes, population), 6), failures=failures,
                            evaluated=evaluated, seconds=seconds, event=event)

    def _log_trial(self, generation: int, index: int, spec: dict, result: dict) -> None:
        self.trial_rows.append({
            "generation": generation, "index": index, "folder": spec["folder"], "fidelity": spec["fidelity"],
            "status": result["status"], "reason": "; ".join(result.get("reasons") or [result["reason"]]),
            "attempts": result.get("attempts", 1), "seconds": result.get("seconds"),
            "overhead_s": result.get("overhead_s"),
            **{f"objective_{name}": (None if result["objectives"] is None else result["objectives"][i])
               for i, name in enumerate(self.objectives)},
            "values": json.dumps(spec["values"], default=str), "repairs": "; ".join(spec["repairs"]),
            "key": spec["key"]})

    def _individual_record(self, ind) -> dict:
        return {"genome": list(ind), "fitness": [None if v == WORST else v for v in ind.fitness.values]
                if ind.fitness.valid else None, "fidelity": getattr(ind, "fidelity", None)}

    def _save_state(self) -> None:
        state = {
            "format": STATE_FORMAT, "config_hash": search_hash(self.config), "generation": self.generation,
            "islands": [[self._individual_record(ind) for ind in island] for island in self.islands],
            "hall_of_fame": [self._individual_record(ind) for ind in self.hall],
            "logbook": list(self.logbook), "cache": self.cache, "trials": self.trial_rows,
            "stagnation": {"best": self.best_so_far, "stagnant": self.stagnant,
                           "mutation_rate": self.mutation_rate, "immigrants_due": self.immigrants_due},
            "rng": {"search": _state_to_json(self.rng.getstate()), "random": _state_to_json(random.getstate()),
                    "numpy": _numpy_state_to_json(), "torch": torch.get_rng_state().tolist()},
        }
        self._write_tables()
        runs.atomic_write_json(self.files.state, state)  # last: it vouches for the tables

    def _write_tables(self) -> None:
        runs.atomic_write_text(self.files.trials_csv, runs.csv_text(self.trial_rows))
        runs.atomic_write_text(self.files.logbook, runs.csv_text(list(self.logbook)))
        runs.atomic_write_json(self.files.hall_of_fame, [self._hall_entry(ind) for ind in self.hall])
        plot_fitness(list(self.logbook), self.objectives[0], self.signs[0] > 0, self.files.fitness_plot)

    def _hall_entry(self, ind) -> dict:
        key = self._key(list(ind), "full")
        result = self.cache.get(key, {})
        return {"values": {g.key: g.decode(v) for g, v in zip(self.genes, ind)}, "genome": list(ind),
                "objectives": dict(zip(self.objectives, result.get("objectives") or [])),
                "trial": result.get("folder", ""), "key": key}

    def restore(self, state: dict) -> None:
        """Continue from `state.json` (checked against the config by `load_state`)."""
        self.generation = state["generation"]
        self.islands = [[self._individual_from(record) for record in island] for island in state["islands"]]
        self.hall.update([self._individual_from(record) for record in state["hall_of_fame"]])
        for record in state["logbook"]:
            self.logbook.record(**record)
        self.cache, self.trial_rows = dict(state["cache"]), list(state["trials"])
        self.best_so_far = state["stagnation"]["best"]
        self.stagnant, self.mutation_rate = state["stagnation"]["stagnant"], state["stagnation"]["mutation_rate"]
        self.immigrants_due = state["stagnation"]["immigrants_due"]
        rng = state["rng"]
        self.rng.setstate(_state_from_json(rng["search"]))
        random.setstate(_state_from_json(rng["random"]))
        np.random.set_state(_numpy_state_from_json(rng["numpy"]))
        torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))

    def _individual_from(self, record: dict):
        ind = self.individual(record["genome"])
        if record["fitness"] is not None:
            ind.fitness.values = tuple(WORST if v is None else v for v in record["fitness"])
        ind.fidelity = record["fidelity"]
        return ind

    def _seed_random_states(self) -> None:
        random.seed(self.config.seed)
        np.random.seed(self.config.seed)
        torch.manual_seed(self.config.seed)

    # ------------------------------------------------------------------ the end

    def _finish(self) -> dict:
        """best/ (the winner's config, checkpoint and metrics), pareto.json with its plot."""
        full = [row for row in self.trial_rows if row["fidelity"] == "full" and row["status"] == "ok"]
        if not len(self.hall):
            raise UserError("no trial finished at full fidelity; see trials.csv for the reasons")
        if self.multi_objective:
            front = [self._hall_entry(ind) for ind in self.hall]
            runs.atomic_write_json(self.files.pareto, {"objectives": self.objectives, "front": front})
            plot_pareto(full, front, self.objectives, self.files.pareto_plot)
        winner = max(self.hall, key=lambda ind: ind.fitness.values[0])
        entry = self._hall_entry(winner)
        trial = Path(self.cache[entry["key"]].get("folder") or entry["trial"])
        self._copy_best(trial)
        failures = sum(row["status"] != "ok" for row in self.trial_rows)
        return {"best": entry, "generations": self.generation, "trials": len(self.trial_rows),
                "failures": failures, "best_folder": str(self.files.best)}

    def _copy_best(self, trial: Path) -> None:
        staging = self.files.best_staging
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        source = trial / "joint" if (trial / "joint" / "best.pt").is_file() else trial
        for name in ("best.pt", "pgm_params.pkl", "config.yaml", "metrics.json", "history.jsonl"):
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        shutil.copy2(trials.trial_config(trial), staging / "config.yaml")
        if (staging / "best.pt").is_file():  # evaluate.py / export.py --ckpt best/ckpt.pt
            shutil.copy2(staging / "best.pt", staging / "ckpt.pt")
        shutil.rmtree(self.files.best, ignore_errors=True)
        staging.rename(self.files.best)


# --------------------------------------------------------------------------- entry points


def search_hash(config: Config) -> str:
    """What a state.json must match to be resumed: the config without device and scheduler."""
    raw = to_dict(config)
    raw.pop("device")
    raw["evolutionary"].pop("scheduler")
    raw["evolutionary"].pop("devices")
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()


def evolve(config: Config, out: Path, parallel: int, resume: bool, overwrite: bool,
           scheduler: Optional[str] = None) -> dict:
    """Run (or resume) the search; returns a summary."""
    if parallel < 1:
        raise UserError(f"--parallel {parallel}: must be >= 1 (the number of trials run at once)")
    if not config.evolutionary.enabled:
        raise UserError("evolutionary.enabled is false: set it to true to run the search")
    folders.check_output(out, runs.SEARCH, "--out", overwrite and not resume)
    files = runs.SearchFolder(Path(out).resolve())  # trials and Dask workers run elsewhere: absolute paths
    genes_of(config)  # an empty search space is refused before anything is written
    scheduler = scheduler or config.evolutionary.scheduler
    if scheduler:
        require_dask()
    state = load_state(files, config) if resume else None
    held = folders.holds(files.root, runs.SEARCH)
    if not resume and held and not overwrite:
        raise UserError(f"{files.root} already holds a search ({', '.join(held[:3])}); pass --resume to "
                        "continue it, --overwrite to start again, or another --out folder")
    folders.claim(files.root, "--out")
    if not resume:
        folders.clear(files.root, runs.SEARCH)
    runs.atomic_write_text(files.config, dump_config(config))
    with trial_mapper(parallel, scheduler) as mapper:
        search = Search(config, files.root, mapper, slot_environment(parallel, config, scheduler))
        if state is not None:
            search.restore(state)
            log.info("resuming after generation %d of %d", search.generation - 1, config.evolutionary.generations)
        return search.run()


def load_state(files: runs.SearchFolder, config: Config) -> Optional[dict]:
    """The state to resume from; None when the search was killed before its first generation ended
    (then it starts from the beginning, with its trials' finished results reused)."""
    if not files.state.is_file():
        if not files.config.is_file():
            raise UserError(f"--resume: {files.root} holds no search (no {files.config.name}); start the "
                            "search without --resume")
        if search_hash(load_config(files.config)) != search_hash(config):
            raise UserError(f"--resume: {files.root} was started with another config; resume with the config "
                            f"in {files.config}, or start a new search with another --out")
        log.warning("%s has no %s yet (killed in generation 0): starting the search from its beginning",
                    files.root, files.state.name)
        return None
    state = runs.read_json(files.state, "evolve.py --overwrite")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise UserError(f"--resume: {files.state} is not a regimen search state (format {STATE_FORMAT})")
    if state.get("config_hash") != search_hash(config):
        raise UserError(f"--resume: {files.state} was made with another config; resume with the config in "
                        f"{files.config}, or start a new search with another --out")
    return state


def require_dask() -> None:
    if importlib.util.find_spec("distributed") is None:
        raise UserError("--scheduler needs Dask: pip install -r requirements-dask.txt")


class trial_mapper:
    """A context giving `map(function, items)` over `parallel` local slots, or a Dask cluster: an
    iterator of the results in the order of `items`, each as soon as it and those before it are done."""

    def __init__(self, parallel: int, scheduler: Optional[str]):
        self.parallel, self.scheduler = parallel, scheduler
        self.pool = self.client = None

    def __enter__(self):
        if self.scheduler:
            from dask.distributed import Client

            try:
                self.client = Client(self.scheduler, timeout=30)
            except OSError as error:
                raise UserError(f"--scheduler {self.scheduler}: cannot connect ({error})") from None
            # Results in submission order, so they (and a resume) do not depend on which worker ran what.
            return lambda fn, items: (future.result() for future in self.client.map(fn, items, pure=False))
        # Each slot only waits on its trial's subprocesses, so threads are enough to run N trials at once.
        self.pool = ThreadPool(self.parallel)
        return lambda fn, items: self.pool.imap(fn, items, chunksize=1)

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        if self.client is not None:
            self.client.close()


def slot_environment(parallel: int, config: Config, scheduler: Optional[str]) -> Callable[[int], dict]:
    """Slot i's environment: one GPU round-robin over `evolutionary.devices` (default every visible
    GPU), else a share of the CPU cores. On a cluster each worker pins its own GPU."""
    if scheduler:
        return lambda slot: {}
    devices = config.evolutionary.devices
    if devices is None and torch.cuda.is_available():
        devices = list(range(torch.cuda.device_count()))
    if devices:
        return lambda slot: {"CUDA_VISIBLE_DEVICES": str(devices[slot % len(devices)])}
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return lambda slot: {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


# --------------------------------------------------------------------------- JSON helpers


def _state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _state_from_json(state: list) -> tuple:
    return state[0], tuple(state[1]), state[2]


def _numpy_state_to_json() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_json(state: list) -> tuple:
    return state[0], np.array(state[1], dtype=np.uint32), state[2], state[3], state[4]
