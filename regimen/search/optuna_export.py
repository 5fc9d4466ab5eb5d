"""A finished search's trials as an Optuna study in a journal file, for optuna-dashboard.

    python evolve.py --config config.yaml --out runs/evo_search --export-optuna runs/evo_search/optuna.log
    optuna-dashboard runs/evo_search/optuna.log

Each evolved genome is one Optuna trial: its parameters are the genes' values
(the search space as Optuna distributions), its values the full-fidelity
objectives. Its scores at low fidelity and at successive halving's rungs are its
intermediate values, at the epochs each trained (one objective); a genome that
never reached full fidelity is a pruned trial (it stopped early); a genome
that failed is a failed trial with the reason. Optuna is an
optional dependency: `pip install -r requirements-optuna.txt`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from regimen.core import folders, runs
from regimen.core.config import Config
from regimen.core.errors import UserError
from regimen.search.genome import Gene, genes_of
from regimen.search.trials import higher_is_better

INSTALL = "pip install -r requirements-optuna.txt"


def check_export_path(path: Path) -> None:
    """Before the search starts: Optuna is installed and the journal can be written as a new file."""
    if importlib.util.find_spec("optuna") is None:
        raise UserError(f"--export-optuna needs Optuna: {INSTALL}")
    path = Path(path)
    if path.exists():
        raise UserError(f"--export-optuna {path}: already exists; name a new file (the journal is written whole)")
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--export-optuna {path}: {parent} is not a writable folder")


def export_optuna(config: Config, search: runs.SearchFolder, path: Path) -> int:
    """Write the search's trials (its `trials.csv`) into a new Optuna journal at `path`; returns
    the number of Optuna trials."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    genes = genes_of(config)
    objectives = list(config.evolutionary.objectives)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{folders.TEMPORARY_MARK}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = JournalStorage(JournalFileBackend(str(temporary)))
        study = optuna.create_study(
            storage=storage, study_name=f"regimen {search.root.name}",
            directions=["maximize" if higher_is_better(name, config.data.task) else "minimize"
                        for name in objectives])
        study.set_user_attr("objectives", objectives)
        trials = [_trial(genome, genes, objectives) for genome in _genomes(search)]
        study.add_trials(trials)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(trials)


def _genomes(search: runs.SearchFolder) -> list[list[dict]]:
    """trials.csv's rows grouped by genome (its evolved values), in the order first evaluated."""
    grouped: dict[str, list[dict]] = {}
    with open(search.trials_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            grouped.setdefault(row["values"], []).append(row)
    return list(grouped.values())


def _trial(rows: list[dict], genes: list[Gene], objectives: list[str]):
    """One genome's Optuna trial from its trials.csv rows (one per fidelity)."""
    import optuna
    from optuna.trial import TrialState

    values = json.loads(rows[0]["values"])
    params = {gene.key: plain(values[gene.key]) for gene in genes}
    by_fidelity = {row["fidelity"]: row for row in rows}
    scores = {name: _objectives(row, objectives) for name, row in by_fidelity.items()}
    partial = {name: score for name, score in scores.items() if name != "full" and score}
    intermediate = ({int(by_fidelity[name]["epochs"]): score[0] for name, score in partial.items()}
                    if len(objectives) == 1 else {})
    attrs = {"generation": int(rows[0]["generation"]), "folder": rows[0]["folder"],
             "fidelities": sorted(by_fidelity), "seconds": sum(float(r["seconds"] or 0) for r in rows)}
    if scores.get("full"):
        state, result = TrialState.COMPLETE, scores["full"]
    elif "full" not in by_fidelity and partial:
        state, result = TrialState.PRUNED, None
        attrs["stopped_at"] = {name: dict(zip(objectives, score)) for name, score in partial.items()}
    else:
        state, result = TrialState.FAIL, None
        attrs["reason"] = "; ".join(f"{r['fidelity']}: {r['status']} {r['reason']}".strip() for r in rows)
    return optuna.trial.create_trial(state=state, params=params, distributions=distributions(genes),
                                     values=result, intermediate_values=intermediate, user_attrs=attrs)


def _objectives(row: dict, objectives: list[str]) -> list[float]:
    """A finished trial's objectives, or [] for one that failed."""
    if row["status"] != "ok":
        return []
    return [float(row[f"objective_{name}"]) for name in objectives]


def distributions(genes: list[Gene]) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    def distribution(gene: Gene):
        if gene.kind == "choice":
            return CategoricalDistribution([plain(option) for option in gene.options])
        if gene.kind == "int":
            return IntDistribution(int(gene.low), int(gene.high), log=gene.log)
        return FloatDistribution(gene.low, gene.high, log=gene.log)

    return {gene.key: distribution(gene) for gene in genes}


def genome_of(params: dict, genes: list[Gene]) -> list:
    """The genome of an Optuna trial's parameters (drawn from `distributions(genes)`)."""
    return [[plain(option) for option in gene.options].index(params[gene.key]) if gene.kind == "choice"
            else params[gene.key] for gene in genes]


def plain(value: Any) -> Any:
    """A choice Optuna can hold (None, bool, int, float, str); a list option becomes its JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)
