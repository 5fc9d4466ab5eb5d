"""Phase 4: the DEAP search over the whole stack (evolve.py): `evolve` checks the request, claims
the folder and runs the generational loop (`regimen.search.generational`) or the steady-state one
(`regimen.search.steady_state`), fresh or from the state a killed search left."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Optional

from regimen.core import files, folders, runs
from regimen.core.config import Config, dump_config
from regimen.core.config_file import load_config
from regimen.core.errors import UserError
from regimen.search import search_state
from regimen.search.generational import Generational
from regimen.search.genome import genes_of
from regimen.search.optuna_export import check_export_path, export_optuna
from regimen.search.scheduling import TrialPool, slot_environment
from regimen.search.search import search_hash
from regimen.search.steady_state import SteadyState, check_replay, read_arrivals

log = logging.getLogger(__name__)


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
        replay = read_arrivals(replay_arrivals)
    state = load_state(search, config) if resume else None
    if replay is not None:
        check_replay(replay, state)
    genes_of(config, say=True)  # checked last (it logs what it leaves out), before anything is written
    if config.evolutionary.mode == "steady_state" and config.evolutionary.low_fidelity.generations:
        log.info("evolutionary.low_fidelity.generations (%d) is for generational searches: a steady-state search "
                 "has no generations to run cheaply, and runs every trial at full fidelity (or climbs "
                 "halving's rungs)", config.evolutionary.low_fidelity.generations)
    slot_env = slot_environment(parallel, config, scheduler)
    folders.claim(search.root, "--out")
    if not resume:
        folders.clear(search.root, runs.SEARCH)
    files.atomic_write_text(search.config, dump_config(config))
    with TrialPool(parallel, scheduler) as pool:
        if config.evolutionary.mode == "steady_state":
            evolution = SteadyState(config, search.root, pool, slot_env, replay)
        else:
            evolution = Generational(config, search.root, pool.map, slot_env, None if scheduler else parallel)
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
