"""Phase 4: the DEAP search over the whole stack (evolve.py).

DEAP supplies the machinery: `creator` classes (module level, so workers can
unpickle them), a `toolbox` with tournament selection, `selNSGA2` for two or
more objectives, `migRing` between islands, `HallOfFame` / `ParetoFront`,
`Statistics` and `Logbook`. The loop is ours, like DEAP's `eaSimple` with a
checkpoint: after every generation it writes the whole state (`state.json`,
see `regimen.search_state`) and `--resume` continues from it, ending exactly
where an uninterrupted run would. Trials are run by `regimen.scheduling`. With
`fidelity: halving` each generation's new genomes climb successive-halving
rungs (`_halving`); `regimen.steady_state` is the loop without generations.

Fitness values are stored maximising: an objective where lower is better
(RMSE, ECE, latency, ...) is negated, and a failed trial gets -inf.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from deap import base, creator, tools
from tqdm import tqdm

from regimen import files, folders, runs, search_state
from regimen.config import MAX_OBJECTIVES, Config, digest, dump_config, to_dict
from regimen.config_file import load_config
from regimen.errors import UserError
from regimen.genome import Gene, crossover, genes_of, incumbent, mutate
from regimen.optuna_export import check_export_path, export_optuna
from regimen.plots import plot_pareto
from regimen.scheduling import TrialPool, TrialRecord, TrialScheduler, slot_environment
from regimen.search_state import WORST, SearchRecords
from regimen.trials import higher_is_better

log = logging.getLogger(__name__)

for _n in range(1, MAX_OBJECTIVES + 1):  # one fitness class per objective count, all maximising
    creator.create(f"Fitness{_n}", base.Fitness, weights=(1.0,) * _n)
    creator.create(f"Individual{_n}", list, fitness=getattr(creator, f"Fitness{_n}"))


@dataclass
class Stagnation:
    """The best fitness so far, and what a search that stopped improving does about it."""

    best: Optional[float]
    stagnant: int
    mutation_rate: float
    immigrants_due: int = 0

    def update(self, best: float, settings) -> str:
        """After a full-fidelity generation: the event for the logbook ("" when none)."""
        if self.best is None or best > self.best:
            self.best, self.stagnant, self.mutation_rate = best, 0, settings.mutation_rate
            return ""
        self.stagnant += 1
        if self.stagnant < settings.stagnation.generations:
            return ""
        self.mutation_rate = min(1.0, self.mutation_rate * settings.stagnation.mutation_boost)
        self.immigrants_due = min(settings.stagnation.immigrants, settings.population_size - settings.elitism)
        self.stagnant = 0
        return f"stagnation: mutation rate {self.mutation_rate:.3f}, {self.immigrants_due} immigrants per island next"


class Search:
    """One evolutionary search from a validated config into `out`.

    Args:
        config: the base config; genomes overwrite its `search_space` keys.
        out: the output folder.
        mapper: `map(function, specs)` that runs trials (local slots or a Dask client) and yields
            their results in order.
        slot_env: `i -> environment` of parallel slot i (devices, threads).
        slots: the number of local slots, to measure how busy they are (None on a cluster).
    """

    def __init__(self, config: Config, out: Path, mapper: Callable, slot_env: Callable[[int], dict],
                 slots: Optional[int] = None):
        self.config, self.evo, self.slots = config, config.evolutionary, slots
        self.folder = runs.SearchFolder(out)
        self.genes: list[Gene] = genes_of(config)
        self.objectives = list(self.evo.objectives)
        self.signs = [1.0 if higher_is_better(name, config.data.task) else -1.0 for name in self.objectives]
        self.individual = getattr(creator, f"Individual{len(self.objectives)}")
        self.rng = random.Random(config.seed)
        self.toolbox = base.Toolbox()  # its default `clone` is a deep copy, fitness included
        if self.multi_objective:
            self.toolbox.register("select", tools.selNSGA2)
            self.hall = tools.ParetoFront()
        else:
            self.toolbox.register("select", tools.selTournament, tournsize=self.evo.tournament_k)
            self.hall = tools.HallOfFame(max(1, self.evo.elitism))
        self.trials = TrialScheduler(config, self.genes, self.folder, mapper, slot_env)
        self.records = SearchRecords(self.genes, self.objectives, self.signs)
        self.stagnation = Stagnation(None, 0, self.evo.mutation_rate)
        self.islands: list[list] = []
        self.generation = 0  # generations completed

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        if self.generation == 0 and not self.islands:
            for seed in (random.seed, np.random.seed, torch.manual_seed):
                seed(self.config.seed)
            self.islands = [[self._random_individual() for _ in range(self.evo.population_size)]
                            for _ in range(self.evo.n_islands)]
            self.islands[0][0] = self.individual(incumbent(self.genes, self.config, self.rng))
            self._generation(0)
        bar = tqdm(total=self.evo.generations, initial=self.generation, desc="generations", unit="gen",
                   disable=None)
        while self.generation < self.evo.generations:
            self._breed()
            self._generation(self.generation)
            bar.update(1)
        bar.close()
        return self._finish(self._score_base())

    def _generation(self, generation: int) -> None:
        """Evaluate, select survivors, keep the hall of fame, migrate, record and save the state."""
        started, began = time.perf_counter(), time.time()
        fidelity = self.trials.fidelity(generation)
        if fidelity == "full" and generation == self.evo.low_fidelity.generations and generation > 0:
            self._promote()
        failures, evaluated, trial_seconds = self._evaluate(generation, fidelity, began)
        if self.multi_objective:  # NSGA-II keeps the best n of parents and offspring
            self.islands = [self.toolbox.select(island, self.evo.population_size) for island in self.islands]
        event = ""
        if fidelity == "full":
            self.hall.update([ind for island in self.islands for ind in island
                              if ind.fidelity == "full" and ind.fitness.values[0] > WORST])
            if not self.multi_objective:
                event = self.stagnation.update(self._best(), self.evo)
        if self.evo.n_islands > 1 and generation > 0 and generation % self.evo.migration_interval == 0:
            tools.migRing(self.islands, self.evo.migrants, tools.selBest)
            event = (event + "; " if event else "") + f"migration of {self.evo.migrants}"
        seconds = round(time.perf_counter() - started, 3)
        # The share of the slots' time spent in trials (local slots only: a cluster's size is its own).
        busy = None if not self.slots or seconds <= 0 else round(min(1.0, trial_seconds / (self.slots * seconds)), 3)
        for i, island in enumerate(self.islands):
            self.records.record_generation(generation, i, island, fidelity, failures[i], evaluated[i], seconds, event,
                                           busy)
        self.generation = generation + 1
        self._save_state()
        best = self.records.natural(self._best(), 0)
        log.info("generation %d (%s fidelity): best %s %s, %d failed, %.1fs%s", generation, fidelity,
                 self.objectives[0], "n/a" if best is None else f"{best:.4f}", sum(failures), seconds,
                 f" [{event}]" if event else "")

    def _evaluate(self, generation: int, fidelity: str, began: float) -> tuple[list[int], list[int], float]:
        """Fitness for every individual without one; failures and evaluations per island, and the
        seconds of the trials that ran since `began` (not those a resume read back)."""
        pending = [(i, ind) for i, island in enumerate(self.islands) for ind in island if not ind.fitness.valid]
        genomes = [list(ind) for _, ind in pending]
        if fidelity == "full" and self.evo.fidelity == "halving":
            results, fidelities, added = self._halving(generation, genomes)
        else:
            (results, added), fidelities = self.trials.run(generation, genomes, fidelity), [fidelity] * len(genomes)
        trial_seconds = sum(result.get("seconds") or 0.0 for _, _, result in added
                            if (result.get("started_unix") or 0) >= began)
        for index, record, result in added:
            self.records.log_trial(generation, index, record, result)
        failures, evaluated = [0] * len(self.islands), [0] * len(self.islands)
        for (island, ind), result, reached in zip(pending, results, fidelities):
            ind.fitness.values = self._fitness(result)
            ind.fidelity = reached
            failures[island] += result["status"] != "ok"
            evaluated[island] += 1
        return failures, evaluated, trial_seconds

    def _halving(self, generation: int, genomes: list[list]
                 ) -> tuple[list[dict], list[str], list[tuple[int, TrialRecord, dict]]]:
        """Successive halving over a generation's new genomes: all train for the first rung's epochs,
        and the best 1/eta of each rung continue from their own checkpoint to the next. Returns each
        genome's result at the last rung it reached, that rung's fidelity, and the trials added.
        A genome already scored at full fidelity skips the rungs."""
        full = self.trials.rungs()[-1].fidelity
        known = [i for i, genome in enumerate(genomes) if self.trials.key(genome, full) in self.trials.cache]
        known_results, added = self.trials.run(generation, [genomes[i] for i in known], full, known)
        results = dict(zip(known, known_results))
        reached = dict.fromkeys(known, full)
        alive = [i for i in range(len(genomes)) if i not in reached]
        for rung in self.trials.rungs():
            if not alive:
                break
            rung_results, rung_added = self.trials.run(generation, [genomes[i] for i in alive], rung.fidelity,
                                                        alive, rung)
            added += rung_added
            results.update(zip(alive, rung_results))
            reached.update(dict.fromkeys(alive, rung.fidelity))
            trained = len(alive)
            alive = self._promoted(alive, rung_results, math.ceil(len(alive) / self.evo.halving.eta))
            if rung.fidelity != full:
                log.info("%s (%d of %d epochs): %d trained, %d continue", rung.fidelity, rung.epochs,
                         self.config.training.epochs, trained, len(alive))
        order = range(len(genomes))
        return [results[i] for i in order], [reached[i] for i in order], added

    def _promoted(self, indices: list[int], results: list[dict], k: int) -> list[int]:
        """The best k of a rung's finished trials, in their original order."""
        finished = [(index, self._fitness(result)) for index, result in zip(indices, results)
                    if result["status"] == "ok"]
        return [finished[i][0] for i in self._best_of([fitness for _, fitness in finished], k)]

    def _best_of(self, fitnesses: list, k: int) -> list[int]:
        """The places of the best k fitnesses, ascending: by `selBest`, or with several objectives by
        non-dominated sorting and crowding distance (`selNSGA2`)."""
        candidates = []
        for place, values in enumerate(fitnesses):
            ind = self.individual([place])
            ind.fitness.values = tuple(values)
            candidates.append(ind)
        best = tools.selNSGA2(candidates, k) if self.multi_objective else tools.selBest(candidates, k)
        return sorted(ind[0] for ind in best)

    def _breed(self) -> None:
        """The next generation of each island: elites, then selection, crossover and mutation, and
        random immigrants in place of the worst when the search stagnates."""
        immigrants, self.stagnation.immigrants_due = self.stagnation.immigrants_due, 0
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
            mutate(self.genes, ind, self.stagnation.mutation_rate, self.rng)
        for ind, parent in zip(offspring, parents):
            if list(ind) != list(parent):
                del ind.fitness.values
        return offspring

    def _promote(self) -> None:
        """Leaving low fidelity: every individual bred from the low-fidelity generations, the
        elites (the best of them) included, is evaluated again at full fidelity."""
        for island in self.islands:
            for ind in island:
                if ind.fitness.valid:
                    del ind.fitness.values
        log.info("promoting the best %d per island (and their offspring) to full fidelity", self.evo.elitism)

    # ------------------------------------------------------------------ fitness, state, the end

    def _fitness(self, result: dict) -> tuple:
        if result["status"] != "ok":
            return (WORST,) * len(self.objectives)
        return tuple(sign * value for sign, value in zip(self.signs, result["objectives"]))

    def _best(self) -> float:
        return max(ind.fitness.values[0] for island in self.islands for ind in island)

    def _random_individual(self):
        return self.individual(gene.random(self.rng) for gene in self.genes)

    def _hall_entry(self, ind) -> dict:
        return self.records.hall_entry(ind, self.trials.key(list(ind), "full"), self.trials.cache)

    def _save_state(self) -> None:
        self.records.write_tables(self.folder, [self._hall_entry(ind) for ind in self.hall])
        state = search_state.state_of(self, search_hash(self.config))
        files.atomic_write_json(self.folder.state, state)  # last: it vouches for the tables

    def _score_base(self) -> dict:
        """The base config's own values at full fidelity: the yardstick of the search, and a
        contender for best/. One more trial (after the last generation, in its own generation
        folder) unless a generation ran it already."""
        genome = incumbent(self.genes, self.config, random.Random(self.config.seed))
        results, added = self.trials.run(self.generation, [genome], "full")
        for index, record, result in added:
            self.records.log_trial(self.generation, index, record, result)
        base = self.individual(genome)
        base.fitness.values, base.fidelity = self._fitness(results[0]), "full"
        if base.fitness.values[0] > WORST:
            self.hall.update([base])
        if added:
            self._save_state()
        return {"values": self.trials.values(genome), "objectives": results[0]["objectives"],
                "status": results[0]["status"]}

    def _finish(self, base: dict) -> dict:
        """best/ (the winner's config, checkpoint and metrics), pareto.json with its plot; `base`:
        the base config's result, for the comparison."""
        rows = self.records.trial_rows
        if not len(self.hall):
            raise UserError("no trial finished at full fidelity; see trials.csv for the reasons")
        if self.multi_objective:
            front = [self._hall_entry(ind) for ind in self.hall]
            files.atomic_write_json(self.folder.pareto, {"objectives": self.objectives, "front": front})
            full = [row for row in rows if row["fidelity"] == "full" and row["status"] == "ok"]
            plot_pareto(full, front, self.objectives, self.folder.pareto_plot)
        entry = self._hall_entry(max(self.hall, key=lambda ind: ind.fitness.values[0]))
        self._copy_best(Path(self.trials.cache[entry["key"]].get("folder") or entry["trial"]))
        return {"best": entry, "base": base, "objectives": self.objectives, "generations": self.generation,
                "trials": len(rows),
                "failures": sum(row["status"] != "ok" for row in rows), "best_folder": str(self.folder.best)}

    def _copy_best(self, trial: Path) -> None:
        """best/: the winner's model, PGM, metrics and history, with the trial's config."""
        source, best = runs.TrialFolder(trial), runs.RunFolder(self.folder.best)
        entries = {path.name: path for path in (source.final.best, source.final.pgm_params, source.final.metrics,
                                                source.final.history) if path.is_file()}
        entries[best.config.name] = source.config
        if source.final.best.is_file():  # evaluate.py / export.py --ckpt best/ckpt.pt
            entries[best.checkpoint.name] = source.final.best
        folders.write_staged(best.root, entries)


# --------------------------------------------------------------------------- entry points


def search_hash(config: Config) -> str:
    """What a state.json must match to be resumed: the config without device and scheduler."""
    raw = to_dict(config)
    raw.pop("device")
    raw["evolutionary"].pop("scheduler")
    raw["evolutionary"].pop("devices")
    return digest(raw)


def evolve(config: Config, out: Path, parallel: int, resume: bool, overwrite: bool,
           scheduler: Optional[str] = None, optuna_journal: Optional[Path] = None,
           replay_arrivals: Optional[Path] = None) -> dict:
    """Run (or resume) the search; returns a summary. `optuna_journal`: also write the trials
    into this new Optuna journal file at the end. `replay_arrivals`: a steady-state search takes
    its results in the order this other search's arrivals.csv (or folder) recorded."""
    if parallel < 1:
        raise UserError(f"--parallel {parallel}: must be >= 1 (the number of trials run at once)")
    if not config.evolutionary.enabled:
        raise UserError("evolutionary.enabled is false: set it to true to run the search")
    folders.check_output(out, runs.SEARCH, "--out", overwrite and not resume, fresh=not resume, resumable=True)
    search = runs.SearchFolder(Path(out).resolve())  # trials and Dask workers run elsewhere: absolute paths
    genes_of(config, say=True)  # a search space with nothing to act is refused before anything is written
    scheduler = scheduler or config.evolutionary.scheduler
    if scheduler:
        require_dask()
    if optuna_journal is not None:
        check_export_path(optuna_journal)
    replay = None
    if replay_arrivals is not None:
        if config.evolutionary.mode != "steady_state":
            raise UserError("--replay-arrivals: only a steady-state search (evolutionary.mode: steady_state) "
                            "depends on the order its results arrive in")
        from regimen.steady_state import read_arrivals
        replay = read_arrivals(replay_arrivals)
    state = load_state(search, config) if resume else None
    if replay is not None:
        from regimen.steady_state import check_replay
        check_replay(replay, state)
    slot_env = slot_environment(parallel, config, scheduler)
    folders.claim(search.root, "--out")
    if not resume:
        folders.clear(search.root, runs.SEARCH)
    files.atomic_write_text(search.config, dump_config(config))
    with TrialPool(parallel, scheduler) as pool:
        if config.evolutionary.mode == "steady_state":
            from regimen.steady_state import SteadyState
            evolution = SteadyState(config, search.root, pool, slot_env, replay)
        else:
            evolution = Search(config, search.root, pool.map, slot_env, None if scheduler else parallel)
        if state is not None:
            search_state.restore(evolution, state)
            log.info("resuming after generation %d of %d", evolution.generation - 1,
                     config.evolutionary.generations)
        summary = evolution.run()
    if optuna_journal is not None:
        summary["optuna_trials"] = export_optuna(config, search, optuna_journal)
        summary["optuna_journal"] = str(optuna_journal)
    return summary


def load_state(search: runs.SearchFolder, config: Config) -> Optional[dict]:
    """The state to resume from; None when the search was killed before its first generation ended
    (then it starts from the beginning, with its trials' finished results reused)."""
    if not search.state.is_file():
        if not search.config.is_file():
            raise UserError(f"--resume: {search.root} holds no search (no {search.config.name}); start the "
                            "search without --resume")
        if search_hash(load_config(search.config)) != search_hash(config):
            raise UserError(f"--resume: {search.root} was started with another config; resume with the config "
                            f"in {search.config}, or start a new search with another --out")
        log.warning("%s has no %s yet (killed in generation 0): starting the search from its beginning",
                    search.root, search.state.name)
        return None
    state = files.read_json(search.state, "evolve.py --overwrite")
    if not isinstance(state, dict) or state.get("format") != search_state.STATE_FORMAT:
        raise UserError(f"--resume: {search.state} is not a regimen search state "
                        f"(format {search_state.STATE_FORMAT})")
    if state.get("config_hash") != search_hash(config):
        raise UserError(f"--resume: {search.state} was made with another config; resume with the config in "
                        f"{search.config}, or start a new search with another --out")
    return state


def require_dask() -> None:
    if importlib.util.find_spec("distributed") is None:
        raise UserError("--scheduler needs Dask: pip install -r requirements-dask.txt")
