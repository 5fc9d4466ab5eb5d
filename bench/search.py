"""Search methods at equal training epochs: the GA (generational and steady state, with and without
successive halving), random search (on the same fidelity schedule) and Optuna's TPE, every trial
through evolve.py's trial runner, on `storms` with a reduced epoch count, over several seeds.

    python bench/search.py [--seeds 3] [--epochs 4] [--budget 24] [--parallel 2] [--grid 32] [--out runs/bench_search]
    python bench/search.py --first-seed 2 --seeds 1 --save-results s2.json ...   # seeds side by side
    python bench/search.py --combine s0.json s1.json s2.json                      # then one table

Each method and seed may spend `budget x epochs` training epochs (the epochs its trials really
trained: a rung continued from its checkpoint counts only its extra epochs). Prints, per method,
the median [min-max] over the seeds of the best full-budget validation metric after 25, 50 and
100% of those epochs, the test metric of each seed's winner, the trial-seconds, and how much of
the search's wall time the slots sat idle. Needs Optuna (requirements-optuna.txt).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from regimen.core import runs
from regimen.core.config_file import load_config
from regimen.search import evolution
from regimen.search.genome import genes_of
from regimen.search.optuna_export import distributions, genome_of
from regimen.search.scheduling import TrialPool, TrialScheduler, slot_environment
from regimen.search.trials import PROJECT

SHARES = (0.25, 0.5, 1.0)
POPULATION, ELITISM = 6, 2
HALVING = {"eta": 3, "rungs": 3}


class RandomSearch(evolution.Generational):
    """Random search through the GA's own loop: every generation is new random genomes, so it
    shares the trial runner, the cache and the fidelity schedule (halving included)."""

    def _breed(self) -> None:
        self.islands = [[self._random_individual() for _ in island] for island in self.islands]


METHODS = {  # name: (evolutionary settings, search class)
    "GA": ({"mode": "generational", "fidelity": "generations"}, evolution.Generational),
    "GA + halving": ({"mode": "generational", "fidelity": "halving"}, evolution.Generational),
    "GA steady state": ({"mode": "steady_state", "fidelity": "generations"}, evolution.Generational),
    "GA steady state + halving": ({"mode": "steady_state", "fidelity": "halving"}, evolution.Generational),
    "random": ({"mode": "generational", "fidelity": "generations", "elitism": 0}, RandomSearch),
    "random + halving": ({"mode": "generational", "fidelity": "halving", "elitism": 0}, RandomSearch),
    "TPE (Optuna)": (None, None),
}


def base_raw(out: Path, seed: int, epochs: int, device: str, grid: int, threads) -> dict:
    return {"seed": seed, "device": device, "threads": threads,
            "data": {"root": str((out / "data").resolve()), "generator": {"height": grid, "width": grid}},
            "training": {"epochs": epochs},
            "evolutionary": {"population_size": POPULATION, "elitism": ELITISM, "low_fidelity": {"generations": 0},
                             "halving": HALVING}}


def generations_for(settings: dict, epochs: int, budget: int) -> int:
    """Enough generations to spend the budget (the curves are cut at it)."""
    per_generation = POPULATION - settings.get("elitism", ELITISM)
    cost = epochs if settings["fidelity"] == "generations" else (1 + epochs / HALVING["eta"])  # a rough bound
    trials = budget * epochs / cost
    return max(2, math.ceil((trials - POPULATION) / per_generation) + 1)


def run_ga(folder: Path, raw: dict, settings: dict, search_class, budget: int, parallel: int) -> Path:
    epochs = raw["training"]["epochs"]
    raw = json.loads(json.dumps(raw))
    raw["evolutionary"].update(settings, generations=generations_for(settings, epochs, budget))
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    evolution.Generational = search_class  # evolve() builds the generational search from this name
    try:
        evolution.evolve(load_config(folder / "config.yaml"), folder / "search", parallel, False, False)
    finally:
        evolution.Generational = METHODS["GA"][1]
    return folder / "search" / "trials.csv"


def run_tpe(folder: Path, raw: dict, budget: int, parallel: int, seed: int) -> list[dict]:
    """Optuna's TPE asking `parallel` genomes at a time, run by the same trial scheduler."""
    import optuna

    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(folder / "config.yaml")
    genes = genes_of(config)
    space = distributions(genes)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    rows, spent, batch = [], 0, 0
    with TrialPool(parallel, None) as pool:
        scheduler = TrialScheduler(config, genes, runs.SearchFolder(folder / "search"), pool.map,
                                   slot_environment(parallel, config, None))
        while spent < budget * config.training.epochs:
            asked = [study.ask(space) for _ in range(parallel)]
            genomes = [genome_of(trial.params, genes) for trial in asked]
            results, added = scheduler.run(batch, genomes, "full")
            for trial, result in zip(asked, results):
                ok = result["status"] == "ok"
                study.tell(trial, result["objectives"][0] if ok else None,
                           state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL)
            for _, record, result in added:
                rows.append({"fidelity": "full", "status": result["status"], "folder": record.folder,
                             "epochs": record.epochs, "epochs_trained": result.get("epochs_trained"),
                             "seconds": result.get("seconds"),
                             "objective_metric": (result["objectives"] or [None])[0]})
                spent += result.get("epochs_trained") or record.epochs
            batch += 1
    return rows


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def curve(rows: list[dict], epochs: int, budget: int) -> tuple[list[float], dict, float]:
    """The best full-budget metric after each share of the budget, the winner's row and the
    trial-seconds, within the budget."""
    spent, best, points, limit, seconds = 0, None, [], budget * epochs, 0.0
    marks = [share * limit for share in SHARES]
    for row in rows:
        spent += int(float(row["epochs_trained"] or row["epochs"] or epochs))
        if spent > limit:
            break
        seconds += float(row["seconds"] or 0)
        if row["fidelity"] == "full" and row["status"] == "ok":
            value = float(row["objective_metric"])
            if best is None or value > float(best["objective_metric"]):
                best = row
        while len(points) < len(marks) and spent >= marks[len(points)]:
            points.append(float(best["objective_metric"]) if best else float("nan"))
    while len(points) < len(marks):  # a search that spent less than the budget: its final best
        points.append(float(best["objective_metric"]) if best else float("nan"))
    return points, best, seconds


def test_metric(winner: dict, out: Path) -> float:
    """The winner's checkpoint on the test split (evaluate.py, as a user would)."""
    trial = runs.TrialFolder(winner["folder"])
    subprocess.run([sys.executable, str(PROJECT / "evaluate.py"), "--config", str(trial.config), "--ckpt",
                    str(trial.final.best), "--split", "test", "--out", str(out)], check=True, capture_output=True)
    evaluation = json.loads((out / "metrics.json").read_text())["evaluate_test"]
    return evaluation[evaluation["final"]][evaluation["metric"]]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} [{min(values):.4f}-{max(values):.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="training.epochs of a full-budget trial")
    parser.add_argument("--budget", type=int, default=24, help="full-budget trials' worth of epochs per method")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grid", type=int, default=32, help="storms' grid side (default 32, its own)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per trial (default: cores / slots)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--save-results", type=Path, metavar="JSON", help="also write the figures here")
    parser.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                        help="print one table from --save-results files of runs side by side, and stop")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_search"))
    args = parser.parse_args()
    if args.combine:
        saved = [json.loads(path.read_text()) for path in args.combine]
        results = {name: {key: sum((s["results"][name][key] for s in saved), []) for key in saved[0]["results"][name]}
                   for name in saved[0]["results"]}
        print_table(results, argparse.Namespace(**saved[0]["args"]), sum(s["seeds"] for s in saved))
        return
    if args.out.exists():
        parser.error(f"--out {args.out}: already exists; name a new folder (the benchmark writes its searches there)")
    logging.basicConfig(level=logging.WARNING)
    results = {name: {"points": [], "test": [], "seconds": [], "idle": []} for name in args.methods}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        raw = base_raw(args.out, seed, args.epochs, args.device, args.grid, args.threads)
        for name in args.methods:
            folder = args.out / f"s{seed}" / name.replace(" ", "_").replace("+", "and").replace("(", "").replace(")", "")
            folder.mkdir(parents=True)
            started = time.perf_counter()
            settings, search_class = METHODS[name]
            if settings is None:
                rows = run_tpe(folder, raw, args.budget, args.parallel, seed)
            else:
                rows = read_rows(run_ga(folder, raw, settings, search_class, args.budget, args.parallel))
            wall = time.perf_counter() - started
            points, winner, seconds = curve(rows, args.epochs, args.budget)
            run_seconds = sum(float(row["seconds"] or 0) for row in rows)
            entry = results[name]
            entry["points"].append(points)
            entry["test"].append(test_metric(winner, folder / "test") if winner else float("nan"))
            entry["seconds"].append(seconds)
            entry["idle"].append(max(0.0, 1 - run_seconds / (args.parallel * wall)))
            print(f"seed {seed} {name}: best val {points} test {entry['test'][-1]:.4f} "
                  f"trial-seconds {seconds:.0f} wall {wall:.0f}s", flush=True)
        print_table(results, args, seed + 1 - args.first_seed)
    if args.save_results:
        settings = {key: getattr(args, key) for key in ("grid", "epochs", "budget", "parallel")}
        args.save_results.write_text(json.dumps({"args": settings, "seeds": args.seeds, "results": results}))


def print_table(results: dict, args, seeds: int) -> None:
    print(f"\nstorms {args.grid}x{args.grid}, {args.epochs} epochs a full trial, budget {args.budget} full trials' "
          f"epochs ({args.budget * args.epochs}), {seeds} seeds, {args.parallel} slots; val mIoU: median [min-max]")
    header = [f"best val @{int(share * 100)}%" for share in SHARES] + ["winner's test", "trial-s", "slots idle"]
    print(f"{'method':<28}" + "".join(f"{h:>24}" for h in header))
    for name, entry in results.items():
        cells = [spread([p[i] for p in entry["points"]]) for i in range(len(SHARES))]
        cells += [spread(entry["test"]), f"{statistics.median(entry['seconds']):.0f}",
                  f"{statistics.median(entry['idle']):.1%}"]
        print(f"{name:<28}" + "".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
