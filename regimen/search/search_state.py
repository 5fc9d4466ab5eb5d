"""What a search has done: trials.csv rows, the logbook, the hall of fame's entries, and state.json.

`SearchRecords` keeps the rows and writes the tables and the fitness plot.
`state_of` and `restore` turn a search into the JSON of `state.json` and back
(populations, fitnesses, hall of fame, logbook, trial cache, stagnation and
every PRNG state), so a resumed search ends exactly where an uninterrupted one
would. Fitness values are stored maximising; a failed trial's -inf is null.
"""

from __future__ import annotations

import json
import math
import random
from typing import Optional

import numpy as np
import torch
from deap import tools

from regimen.core import files, runs
from regimen.search.genome import Gene, diversity
from regimen.search.plots import plot_fitness
from regimen.search.scheduling import TrialRecord

STATE_FORMAT = 1
WORST = -math.inf  # the fitness of a failed trial


class SearchRecords:
    """The rows of trials.csv and the logbook, in natural units (lower-is-better objectives un-negated).

    Args:
        genes: the search's genes.
        objectives: the objective names.
        signs: +1 for an objective where higher is better, -1 where lower is.
    """

    def __init__(self, genes: list[Gene], objectives: list[str], signs: list[float]):
        self.genes, self.objectives, self.signs = genes, objectives, signs
        self.logbook = tools.Logbook()
        self.trial_rows: list[dict] = []

    def natural(self, value: float, objective: int) -> Optional[float]:
        return None if value == WORST else self.signs[objective] * value

    def log_trial(self, generation: int, index: int, record: TrialRecord, result: dict) -> None:
        self.trial_rows.append({
            "generation": generation, "index": index, "folder": record.folder, "fidelity": record.fidelity,
            "epochs": record.epochs, "epochs_trained": result.get("epochs_trained"),
            "status": result["status"], "reason": "; ".join(result.get("reasons") or [result["reason"]]),
            "attempts": result.get("attempts", 1), "seconds": result.get("seconds"),
            "overhead_s": result.get("overhead_s"),
            **{f"objective_{name}": (None if result["objectives"] is None else result["objectives"][i])
               for i, name in enumerate(self.objectives)},
            "values": json.dumps(record.values, default=str), "repairs": "; ".join(record.repairs),
            "key": record.key})

    def record_generation(self, generation: int, island: int, population: list, fidelity: str, failures: int,
                          evaluated: int, seconds: float, event: str, slot_busy: Optional[float] = None) -> None:
        values = [self.natural(ind.fitness.values[0], 0) for ind in population]
        values = [v for v in values if v is not None]
        self.logbook.record(generation=generation, island=island, fidelity=fidelity,
                            min=min(values) if values else None, mean=float(np.mean(values)) if values else None,
                            max=max(values) if values else None,
                            diversity=round(diversity(self.genes, population), 6), failures=failures,
                            evaluated=evaluated, seconds=seconds, slot_busy=slot_busy, event=event)

    def hall_entry(self, ind, key: str, cache: dict) -> dict:
        result = cache.get(key, {})
        return {"values": {g.key: g.decode(v) for g, v in zip(self.genes, ind)}, "genome": list(ind),
                "objectives": dict(zip(self.objectives, result.get("objectives") or [])),
                "trial": result.get("folder", ""), "key": key}

    def write_tables(self, folder: runs.SearchFolder, hall_entries: list[dict]) -> None:
        files.atomic_write_text(folder.trials_csv, files.csv_text(self.trial_rows))
        files.atomic_write_text(folder.logbook, files.csv_text(list(self.logbook)))
        files.atomic_write_json(folder.hall_of_fame, hall_entries)
        plot_fitness(list(self.logbook), self.objectives[0], self.signs[0] > 0, folder.fitness_plot)


def state_of(search, search_hash: str) -> dict:
    """The JSON of state.json for a `regimen.search.evolution.Search`."""
    return {
        "format": STATE_FORMAT, "config_hash": search_hash, "generation": search.generation,
        "islands": [[_individual_record(ind) for ind in island] for island in search.islands],
        "hall_of_fame": [_individual_record(ind) for ind in search.hall],
        "logbook": list(search.records.logbook), "cache": search.trials.cache, "trials": search.records.trial_rows,
        "stagnation": dict(vars(search.stagnation)), "steady_state": getattr(search, "flow", None),
        "rng": {"search": _state_to_json(search.rng.getstate()), "random": _state_to_json(random.getstate()),
                "numpy": _numpy_state_to_json(), "torch": torch.get_rng_state().tolist()},
    }


def restore(search, state: dict) -> None:
    """Put a search back where `state` (checked by `regimen.search.evolution.load_state`) left it."""
    search.generation = state["generation"]
    search.islands = [[_individual_from(search.individual, r) for r in island] for island in state["islands"]]
    search.hall.update([_individual_from(search.individual, r) for r in state["hall_of_fame"]])
    for record in state["logbook"]:
        search.records.logbook.record(**record)
    search.trials.cache, search.records.trial_rows = dict(state["cache"]), list(state["trials"])
    vars(search.stagnation).update(state["stagnation"])
    if state.get("steady_state") is not None:
        search.flow = state["steady_state"]
    rng = state["rng"]
    search.rng.setstate(_state_from_json(rng["search"]))
    random.setstate(_state_from_json(rng["random"]))
    np.random.set_state(_numpy_state_from_json(rng["numpy"]))
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))


def _individual_record(ind) -> dict:
    return {"genome": list(ind), "fitness": [None if v == WORST else v for v in ind.fitness.values]
            if ind.fitness.valid else None, "fidelity": getattr(ind, "fidelity", None)}


def _individual_from(individual: type, record: dict):
    ind = individual(record["genome"])
    if record["fitness"] is not None:
        ind.fitness.values = tuple(WORST if v is None else v for v in record["fitness"])
    ind.fidelity = record["fidelity"]
    return ind


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
