"""evolutionary.mode: generational: the whole population is evaluated, then bred, a generation
at a time, on islands that exchange migrants (`migRing`). With `fidelity: halving` each
generation's new genomes climb successive-halving rungs (`_halving`); with `fidelity:
generations` the first generations train at low fidelity and the survivors are promoted."""

from __future__ import annotations

import logging
import math
import random
import time

import numpy as np
import torch
from deap import tools
from tqdm import tqdm

from regimen.search.genome import incumbent
from regimen.search.scheduling import TrialRecord
from regimen.search.search import Search
from regimen.search.search_state import WORST

log = logging.getLogger(__name__)


class Generational(Search):
    """The generational search (see the module docstring)."""

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


    def _promote(self) -> None:
        """Leaving low fidelity: every individual bred from the low-fidelity generations, the
        elites (the best of them) included, is evaluated again at full fidelity."""
        for island in self.islands:
            for ind in island:
                if ind.fitness.valid:
                    del ind.fitness.values
        log.info("promoting the best %d per island (and their offspring) to full fidelity", self.evo.elitism)
