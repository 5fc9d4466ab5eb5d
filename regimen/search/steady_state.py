"""evolutionary.mode: steady_state: no slot waits for the slowest trial of a generation.

The population starts as the generational one does (the base config's genome
and random ones). Whenever a slot is free it runs the next child, bred at once
from the population as it stands (tournament, crossover, mutation as in the
generations); when a result arrives the child joins the population and the
worst leaves (NSGA-II's choice with several objectives). With
`fidelity: halving` a child's trial climbs the rungs asynchronously (as ASHA):
it continues from its checkpoint to the next rung when its score is among the
best 1/eta of the scores that rung has seen, else it stops there.

What happens depends on the order in which results arrive, so that order is
recorded (`arrivals.csv`, and `state.json` after every arrival): `--resume`
continues from the last arrival, re-running only what was in flight, and
`--replay-arrivals` makes a search take results in the order another one
did, which gives that search's result exactly.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from regimen.core import files, runs
from regimen.core.errors import UserError
from regimen.search.genome import incumbent
from regimen.search.scheduling import Rung, TrialPool
from regimen.search.search import Search
from regimen.search.search_state import WORST
from regimen.search.trials import run_trial

log = logging.getLogger(__name__)


class SteadyState(Search):
    """The steady-state search (see the module docstring); `pool` runs the trials, and `replay`
    is an arrival order to follow ((child, fidelity) pairs), or None."""

    def __init__(self, config, out: Path, pool: TrialPool, slot_env, replay: Optional[list] = None):
        super().__init__(config, out, pool.map, slot_env, pool.slots if pool.executor else None)
        self.pool, self.replay = pool, replay
        self.rungs = self.trials.rungs() if self.evo.fidelity == "halving" else [Rung(0, "full", None)]
        # Everything a resume needs beyond the population (saved in state.json):
        self.flow = {"initial": [], "children": 0, "arrivals": [], "in_flight": [], "rung_scores": [],
                     "block": {"started": None, "finals": 0, "failures": 0, "seconds": 0.0}}

    @property
    def budget(self) -> int:
        """Children in all: the population, then as many as the generations would breed."""
        n = self.evo.population_size
        return n + (self.evo.generations - 1) * (n - self.evo.elitism)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict:
        if not self.flow["initial"]:
            for seed in (random.seed, np.random.seed, torch.manual_seed):
                seed(self.config.seed)
            initial = [self._random_individual() for _ in range(self.evo.population_size)]
            initial[0] = self.individual(incumbent(self.genes, self.config, self.rng))
            self.flow["initial"], self.islands = [list(ind) for ind in initial], [[]]
            self.flow["rung_scores"] = [[] for _ in self.rungs]
        self.flow["block"]["started"] = self.flow["block"]["started"] or time.time()
        running: dict[tuple[int, int], tuple[dict, object]] = {}  # (child, rung) -> (work, future or result)
        for work in self.flow["in_flight"]:  # what a killed search had running: again (finished ones return at once)
            running[self._name(work)] = (work, self._launch(work, running))
        while True:
            while len(running) < self.pool.slots and self._may_breed():
                work = self._next_child()
                running[self._name(work)] = (work, self._launch(work, running))
            if not running:
                break
            name = self._next_arrival(running)
            work, future = running.pop(name)
            result = future if isinstance(future, dict) else future.result()
            if self._arrive(work, result):  # promoted to the next rung: the same child, in the slot it freed
                running[self._name(work)] = (work, self._launch(work, running))
            self._save_steady_state(running)
        if self.flow["block"]["finals"]:
            self._record_block()
        self._save_steady_state(running)
        return self._finish(self._score_base())

    def _may_breed(self) -> bool:
        if self.flow["children"] >= self.budget:
            return False
        return self.flow["children"] < self.evo.population_size or bool(self.islands[0])

    def _next_child(self) -> dict:
        child = self.flow["children"]
        genome = self.flow["initial"][child] if child < self.evo.population_size else self._bred()
        self.flow["children"] += 1
        generation, index = self._place(child)
        return {"child": child, "genome": genome, "rung": 0, "generation": generation, "index": index, "slot": None}

    def _bred(self) -> list:
        """A child of the population as it stands: tournament (random pairs with several objectives),
        crossover and mutation, as in the generations. Every draw comes from the search's own PRNG:
        Dask's threads in this process draw from the `random` module whenever they like."""
        population, k = self.islands[0], 1 if self.multi_objective else self.evo.tournament_k
        parents = [max((self.rng.choice(population) for _ in range(k)), key=lambda ind: ind.fitness)
                   for _ in range(2)]
        return list(self._vary(parents)[0])

    def _place(self, child: int) -> tuple[int, int]:
        """The generation and index a child's trial is filed under (its folder, its trials.csv row):
        the population is generation 0, then every population_size - elitism children one more."""
        n, per = self.evo.population_size, self.evo.population_size - self.evo.elitism
        return (0, child) if child < n else (1 + (child - n) // per, (child - n) % per)

    @staticmethod
    def _name(work: dict) -> tuple[int, int]:
        return work["child"], work["rung"]

    def _launch(self, work: dict, running: dict):
        """Start a child's trial at its rung in the first free slot: its future, or its result when known."""
        busy = {other["slot"] for other, _ in running.values()}
        work["slot"] = next(slot for slot in range(len(busy) + 1) if slot not in busy)
        rung = self.rungs[work["rung"]] if self.evo.fidelity == "halving" else None
        record, known, spec, new = self.trials.start(work["generation"], work["index"], work["genome"],
                                                     self.rungs[work["rung"]].fidelity, rung, work["slot"])
        work["record"], work["ran"] = record, spec is not None
        if new and known is not None:  # a genome no repair makes valid
            self.records.log_trial(work["generation"], work["index"], record, known)
        return known if known is not None else self.pool.submit(run_trial, spec)

    def _next_arrival(self, running: dict) -> tuple[int, int]:
        """The next result to take: the replayed order's next, else the first done (the lowest child
        among those done together)."""
        if self.replay and len(self.flow["arrivals"]) < len(self.replay):
            child, fidelity = self.replay[len(self.flow["arrivals"])]
            name = next((n for n, (work, _) in running.items()
                         if work["child"] == child and self.rungs[work["rung"]].fidelity == fidelity), None)
            if name is None:
                raise UserError(f"--replay-arrivals: arrival {len(self.flow['arrivals'])} is child {child} at "
                                f"{fidelity}, which this search is not running: the searches differ")
            return name
        futures = [f for _, f in running.values() if not isinstance(f, dict)]
        if futures and not any(isinstance(f, dict) or f.done() for _, f in running.values()):
            self.pool.first_done(futures)
        return min(name for name, (_, f) in running.items() if isinstance(f, dict) or f.done())

    def _arrive(self, work: dict, result: dict) -> bool:
        """Take a result: record its arrival; promote it to the next rung (True), or let the child
        join the population, the worst leaving."""
        record = work.pop("record")
        if work.pop("ran"):  # else the result was known: its row is written already
            result = self.trials.finish(record, result)
            self.records.log_trial(work["generation"], work["index"], record, result)
        fidelity = self.rungs[work["rung"]].fidelity
        self.flow["arrivals"].append({"order": len(self.flow["arrivals"]), "child": work["child"],
                                      "fidelity": fidelity, "slot": work["slot"], "status": result["status"],
                                      "finished_unix": round(time.time(), 3)})
        fitness = self._fitness(result)
        block = self.flow["block"]
        block["seconds"] += result.get("seconds") or 0.0
        if work["rung"] < len(self.rungs) - 1 and result["status"] == "ok" and self._promotes(work["rung"], fitness):
            work["rung"] += 1
            return True
        ind = self.individual(work["genome"])
        ind.fitness.values, ind.fidelity = fitness, fidelity
        population = self.islands[0] + [ind]
        if len(population) > self.evo.population_size:  # the worst leaves
            kept = self._best_of([member.fitness.values for member in population], self.evo.population_size)
            population = [population[i] for i in kept]
        self.islands[0] = population
        if fidelity == "full" and fitness[0] > WORST:
            self.hall.update([ind])
        block["finals"] += 1
        block["failures"] += result["status"] != "ok"
        per = self.evo.population_size if self.generation == 0 else self.evo.population_size - self.evo.elitism
        if block["finals"] == per:
            self._record_block()
        return False

    def _promotes(self, rung: int, fitness: tuple) -> bool:
        """ASHA's rule: among the best 1/eta of every score this rung has seen, this one included."""
        scores = self.flow["rung_scores"][rung]
        scores.append(list(fitness))
        return len(scores) - 1 in self._best_of(scores, math.ceil(len(scores) / self.evo.halving.eta))

    # ------------------------------------------------------------------ records

    def _record_block(self) -> None:
        """A logbook row for every population_size - elitism children taken (population_size first)."""
        block = self.flow["block"]
        seconds = round(time.time() - block["started"], 3)
        busy = None if not self.slots or seconds <= 0 else round(min(1.0, block["seconds"] / (self.slots * seconds)), 3)
        self.records.record_generation(self.generation, 0, self.islands[0], "full", block["failures"],
                                       block["finals"], seconds, "", busy)
        best = self.records.natural(self._best(), 0)
        log.info("steady state: %d children taken, best %s %s, slots %s busy", self.flow["children"],
                 self.objectives[0], "n/a" if best is None else f"{best:.4f}",
                 "n/a" if busy is None else f"{busy:.0%}")
        self.generation += 1
        self.flow["block"] = {"started": time.time(), "finals": 0, "failures": 0, "seconds": 0.0}

    def _save_steady_state(self, running: dict) -> None:
        self.flow["in_flight"] = [{k: v for k, v in work.items() if k not in ("record", "ran")}
                                  for work, _ in running.values()]
        files.atomic_write_text(self.folder.arrivals, files.csv_text(self.flow["arrivals"]))
        self._save_state()


def read_arrivals(path: Path) -> list[tuple[int, str]]:
    """The (child, fidelity) order of a steady-state search's arrivals.csv (or its folder's)."""
    path = Path(path)
    if path.is_dir():
        path = runs.SearchFolder(path).arrivals
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        rows = None
    if not rows:
        raise UserError(f"--replay-arrivals {path}: expected the arrivals.csv of a steady-state search")
    try:
        return [(int(row["child"]), row["fidelity"]) for row in rows]
    except (KeyError, ValueError):
        raise UserError(f"--replay-arrivals {path}: expected columns child and fidelity, one arrival a row") from None


def check_replay(replay: list[tuple[int, str]], state: Optional[dict]) -> None:
    """Before a resumed search starts: the arrivals it took so far are the replayed order's first."""
    taken = [(a["child"], a["fidelity"]) for a in ((state or {}).get("steady_state") or {}).get("arrivals", [])]
    if taken != replay[:len(taken)]:
        raise UserError("--replay-arrivals: this search already took its results in another order; replay "
                        "into a new --out")
