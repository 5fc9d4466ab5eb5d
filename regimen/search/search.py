"""Phase 4's search, the parts its two loops share (`generational`, `steady_state`).

DEAP supplies the machinery: `creator` classes (module level, so workers can
unpickle them), a `toolbox` with tournament selection, `selNSGA2` for two or
more objectives, `HallOfFame` / `ParetoFront`. The loops are ours, like DEAP's
`eaSimple` with a checkpoint: the whole state is written (`state.json`, see
`regimen.search.search_state`) and `--resume` continues from it, ending exactly
where an uninterrupted run would. Trials are run by `regimen.search.scheduling`.

Fitness values are stored maximising: an objective where lower is better
(RMSE, ECE, latency, ...) is negated, and a failed trial gets -inf.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from deap import base, creator, tools

from regimen.core import files, folders, runs
from regimen.core.config import MAX_OBJECTIVES, Config, digest, to_dict
from regimen.core.errors import UserError
from regimen.search import search_state
from regimen.search.genome import Gene, crossover, genes_of, incumbent, mutate
from regimen.search.plots import plot_pareto
from regimen.search.scheduling import TrialScheduler
from regimen.search.search_state import WORST, SearchRecords
from regimen.search.trials import higher_is_better

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
    """What every evolutionary search shares: genes and objectives, DEAP's toolbox and hall of fame,
    trials, records and state; breeding, fitness, and the base config's score and best/ at the end.
    The loops are `generational.Generational` and `steady_state.SteadyState`.

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


    def _promoted(self, indices: list[int], results: list[dict], k: int) -> list[int]:
        """The best k of a rung's finished trials, in their original order."""
        finished = [(index, self._fitness(result)) for index, result in zip(indices, results)
                    if result["status"] == "ok"]
        return [finished[i][0] for i in self._best_of([fitness for _, fitness in finished], k)]


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


def search_hash(config: Config) -> str:
    """What a state.json must match to be resumed: the config without device and scheduler."""
    raw = to_dict(config)
    raw.pop("device")
    raw["evolutionary"].pop("scheduler")
    raw["evolutionary"].pop("devices")
    return digest(raw)
