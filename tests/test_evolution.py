"""evolve.py: genes and repairs, a whole tiny search, SIGKILL and resume, injected faults, bad inputs."""

from __future__ import annotations

import csv
import multiprocessing
import os
import json
import random
import signal
import threading
import time

import pytest

from conftest import merge, run_script, snapshot, tiny_config
from regimen.core import folders, runs
from regimen.core.errors import UserError
from regimen.core.config import from_dict
from regimen.core.config_file import load_config
from regimen.search.evolution import evolve
from regimen.search.genome import Gene, crossover, decode, diversity, genes_of, incumbent, mutate

SPACE = {"model.convlstm.num_layers": {"type": "int", "low": 1, "high": 3},
         "model.convlstm.kernel_size": {"choice": [3, 5]},
         "training.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 2.0}}


def test_random_mutated_and_crossed_genomes_stay_inside_their_genes():
    genes = genes_of(from_dict({"evolutionary": {"search_space": SPACE}}))
    rng = random.Random(0)
    for _ in range(300):
        a, b = [g.random(rng) for g in genes], [g.random(rng) for g in genes]
        crossover(a, b, rng)
        mutate(genes, a, 1.0, rng)
        for gene, value in zip(genes, a):
            if gene.kind == "choice":
                assert value in range(len(gene.options))
            else:
                assert gene.low <= value <= gene.high and isinstance(value, int if gene.kind == "int" else float)
    corners = [[0 if g.kind == "choice" else g.low for g in genes],
               [len(g.options) - 1 if g.kind == "choice" else g.high for g in genes]]
    assert diversity(genes, [a, list(a)]) == 0.0 and diversity(genes, corners) == pytest.approx(1.0)


def test_crossover_swaps_whole_genes():
    a, b = [1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60]
    crossover(a, b, random.Random(3))
    assert sorted(a + b) == [1, 2, 3, 4, 5, 6, 10, 20, 30, 40, 50, 60]
    assert all({x, y} == {v, 10 * v} for x, y, v in zip(a, b, range(1, 7)))


def test_decode_repairs_layers_against_hidden_sizes_and_even_kernels():
    base = from_dict({"model": {"convlstm": {"num_layers": 2, "hidden_sizes": [16, 8]}}})
    genes = [Gene("model.convlstm.num_layers", "int", 1, 3), Gene("model.convlstm.kernel_size", "int", 2, 6)]
    config, values, repairs = decode(genes, [3, 4], base)
    assert config.model.convlstm.hidden_sizes == [16, 8, 8] and config.model.convlstm.kernel_size == 5
    assert values == {"model.convlstm.num_layers": 3, "model.convlstm.kernel_size": 4} and len(repairs) == 2
    config, _, _ = decode(genes, [1, 3], base)
    assert config.model.convlstm.hidden_sizes == [16]


def search_config(folder, extra):
    evo = {"population_size": 4, "generations": 2, "elitism": 1, "low_fidelity": {"generations": 0},
           "search_space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                            "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 2.0}}}
    space = extra.get("evolutionary", {}).pop("search_space", None)
    raw = merge({"training": {"epochs": 1}, "evolutionary": evo}, extra)
    if space is not None:  # replaced whole, not merged gene by gene
        raw["evolutionary"]["search_space"] = space
    return tiny_config(folder, raw)


DASK = "Dask is optional: pip install -r requirements-dask.txt"
BASE_VALUES = {"model.convlstm.num_layers": 2, "model.convlstm.kernel_size": 3, "training.lr": 2e-3,
               "model.pgm.pairwise_weight": 0.7}  # the tiny config's own values of SPACE


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def without_seconds(table):
    """The rows but for what a run's costs are (a killed attempt's epochs were trained once already)."""
    costs = ("seconds", "overhead_s", "slot_busy", "epochs_trained")
    return [{k: v for k, v in row.items() if k not in costs} for row in table]


@pytest.mark.slow
def test_a_tiny_search_leaves_every_output(tmp_path):
    """Population 2, 2 generations (the first at low fidelity), 2 islands, 2 slots, real training."""
    config = search_config(tmp_path, {"evolutionary": {
        "population_size": 2, "generations": 2, "n_islands": 2, "migration_interval": 1,
        "low_fidelity": {"generations": 1, "max_epochs": 1}, "search_space": SPACE}})
    out = tmp_path / "search"
    done = run_script("evolve.py", "--config", config, "--out", "search", "--parallel", "2", cwd=tmp_path)
    assert done.returncode == 0 and "best:" in done.stderr, done.stderr
    for name in ("state.json", "logbook.csv", "trials.csv", "hall_of_fame.json", "fitness.png", "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    assert {"ckpt.pt", "best.pt", "config.yaml", "metrics.json"} <= {p.name for p in (out / "best").iterdir()}
    logbook = rows(out / "logbook.csv")
    assert [(r["generation"], r["island"], r["fidelity"]) for r in logbook] == [
        ("0", "0", "low"), ("0", "1", "low"), ("1", "0", "full"), ("1", "1", "full")]
    assert "migration" in logbook[-1]["event"]
    assert all(0 < float(r["slot_busy"]) <= 1 for r in logbook)  # the two slots' share of time in trials
    table = rows(out / "trials.csv")
    assert all(r["status"] == "ok" for r in table)
    keys = [(r["key"], r["fidelity"]) for r in table]
    assert len(keys) == len(set(keys))  # no genome trained twice at one fidelity
    for row in table:
        trial = out / "trials" / f"g{row['generation']}" / f"i{row['index']}"
        assert {"trial.yaml", "config.yaml", "metrics.json", "result.json", "train_convlstm.log"} <= {
            p.name for p in trial.iterdir()}
    hall = json.loads((out / "hall_of_fame.json").read_text())
    best = json.loads((out / "best" / "metrics.json").read_text())["evaluate_val"]
    assert best[best["final"]]["miou"] == hall[0]["objectives"]["metric"]  # best/ is the hall of fame's first
    base = [r for r in table if r["fidelity"] == "full" and json.loads(r["values"]) == BASE_VALUES]
    assert len(base) == 1 and base[0]["status"] == "ok"  # the base config scored once at full fidelity
    assert ("no genome beat the base config" in done.stderr
            or f"against the base config's {float(base[0]['objective_metric']):.4f}" in done.stderr)
    state = json.loads((out / "state.json").read_text())
    assert state["generation"] == 2 and len(state["islands"]) == 2 and {"random", "numpy", "torch"} <= set(state["rng"])


def test_two_objectives_select_by_nsga2_and_write_the_pareto_front(tmp_path, stand_in_phases):
    path = search_config(tmp_path, {"evolutionary": {
        "population_size": 8, "generations": 3, "objectives": ["metric", "latency"],
        "search_space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2},
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 2.0}}}})
    out = tmp_path / "search"
    evolve(load_config(path), out, parallel=2, resume=False, overwrite=False)
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["objectives"] == ["metric", "latency"] and pareto["front"]
    front = [(e["objectives"]["metric"], e["objectives"]["latency"]) for e in pareto["front"]]
    for m, p in front:  # no member of the front is dominated by another
        assert not any(m2 >= m and p2 <= p and (m2, p2) != (m, p) for m2, p2 in front)
    assert (out / "pareto.png").stat().st_size > 1000
    state = json.loads((out / "state.json").read_text())
    assert all(len(island) == 8 for island in state["islands"])  # NSGA-II keeps n of parents + offspring


def kill_when(child, done, deadline_s=120):
    deadline = time.time() + deadline_s
    while not done() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.join()


def same_search(killed, straight):
    """The hall of fame, the logbook and trials.csv of two searches agree (but for the times)."""
    def moved(text):
        return text.replace(str(straight), str(killed))

    assert json.loads((killed / "hall_of_fame.json").read_text()) == json.loads(
        moved((straight / "hall_of_fame.json").read_text()))
    assert without_seconds(rows(killed / "logbook.csv")) == without_seconds(rows(straight / "logbook.csv"))
    assert without_seconds(rows(killed / "trials.csv")) == without_seconds(
        [{k: moved(v) for k, v in r.items()} for r in rows(straight / "trials.csv")])


@pytest.mark.parametrize("fidelity", ["generations", "halving"])
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tmp_path, stand_in_phases, fidelity):
    """Killed mid-generation (a forked evolve with stand-in phases, SIGKILL), then resumed."""
    path = search_config(tmp_path, {"training": {"epochs": 4}, "evolutionary": {
        "population_size": 6, "generations": 4, "n_islands": 2, "migration_interval": 1,
        "low_fidelity": {"generations": 1}, "stagnation": {"generations": 1},
        "fidelity": fidelity, "halving": {"eta": 2, "rungs": 2},
        "search_space": {"training.lr": {"choice": [0.001, 0.005, 0.006, 0.007]},
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 0.3}}}})
    config = load_config(path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    evolve(config, straight, parallel=2, resume=False, overwrite=False)

    child = multiprocessing.get_context("fork").Process(target=evolve, args=(config, killed, 2, False, False))
    child.start()
    kill_when(child, lambda: any(killed.glob("trials/g2/*/result*.json")))
    assert json.loads((killed / "state.json").read_text())["generation"] == 2  # generation 2 was cut short
    finished = {p: p.stat().st_mtime_ns for p in killed.glob("trials/*/*/result*.json")}
    assert any(path.parent.parent.name == "g2" for path in finished)

    with pytest.raises(UserError, match="pass --resume"):
        evolve(config, killed, parallel=2, resume=False, overwrite=False)
    evolve(config, killed, parallel=2, resume=True, overwrite=False)
    for path, mtime in finished.items():  # no finished trial (or rung) ran again
        assert path.stat().st_mtime_ns == mtime
    same_search(killed, straight)
    assert "stagnation" in "".join(r["event"] for r in rows(straight / "logbook.csv"))
    assert ("rung0" in {r["fidelity"] for r in rows(killed / "trials.csv")}) == (fidelity == "halving")


@pytest.mark.parametrize("fidelity", ["generations", "halving"])
def test_a_steady_state_search_killed_and_resumed_ends_like_the_run_whose_arrivals_it_replays(
        tmp_path, stand_in_phases, fidelity):
    """Steady state: results are taken as they arrive (arrivals.csv). A search replaying another's
    arrivals, SIGKILLed after some of them and resumed, ends with the other's hall of fame."""
    path = search_config(tmp_path, {"training": {"epochs": 4}, "evolutionary": {
        "mode": "steady_state", "population_size": 6, "generations": 4, "elitism": 2,
        "fidelity": fidelity, "halving": {"eta": 2, "rungs": 2},
        "low_fidelity": {"generations": 1},  # config.yaml's; a generational key that steady state ignores
        "search_space": {"training.lr": {"choice": [0.001, 0.006, 0.007, 0.008]},
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 0.3}}}})
    config = load_config(path)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    evolve(config, straight, parallel=2, resume=False, overwrite=False)
    arrivals = rows(straight / "arrivals.csv")
    children = {r["child"] for r in arrivals}
    assert len(children) == 6 + 3 * 4 and {r["slot"] for r in arrivals} == {"0", "1"}
    assert ("rung0" in {r["fidelity"] for r in arrivals}) == (fidelity == "halving")
    assert "low" not in {r["fidelity"] for r in arrivals}
    assert [r["generation"] for r in rows(straight / "logbook.csv")] == ["0", "1", "2", "3"]
    folders.check_output(straight, runs.SEARCH, "--out", overwrite=True, fresh=True)  # all of it is the search's

    child = multiprocessing.get_context("fork").Process(
        target=evolve, args=(config, killed, 2, False, False), kwargs={"replay_arrivals": straight})
    child.start()
    kill_when(child, lambda: (killed / "state.json").is_file() and len(
        json.loads((killed / "state.json").read_text())["steady_state"]["arrivals"]) >= 9)
    state = json.loads((killed / "state.json").read_text())["steady_state"]
    assert 9 <= len(state["arrivals"]) < len(arrivals) and state["in_flight"]
    with pytest.raises(UserError, match="another order"):  # its own order is not the replayed one
        evolve(config, killed, parallel=2, resume=True, overwrite=False,
               replay_arrivals=_reordered(tmp_path, straight))
    evolve(config, killed, parallel=2, resume=True, overwrite=False, replay_arrivals=straight)
    same_search(killed, straight)
    assert rows(killed / "arrivals.csv") and [(r["child"], r["fidelity"]) for r in rows(killed / "arrivals.csv")] == [
        (r["child"], r["fidelity"]) for r in arrivals]


def _reordered(tmp_path, search):
    """A copy of a search's arrivals.csv with its first two arrivals swapped."""
    lines = (search / "arrivals.csv").read_text().splitlines()
    lines[1], lines[2] = lines[2], lines[1]
    (tmp_path / "swapped.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "swapped.csv"


def test_successive_halving_promotes_the_best_third_from_their_checkpoints(tmp_path, stand_in_phases):
    """9 new genomes, eta 3, 9 epochs: rungs of 1, 3 and 9 epochs; 3 continue, then 1."""
    path = search_config(tmp_path, {"training": {"epochs": 9}, "evolutionary": {
        "population_size": 9, "generations": 1, "fidelity": "halving", "halving": {"eta": 3, "rungs": 3},
        "search_space": {"training.lr": {"choice": [0.001, 0.006, 0.007, 0.008, 0.009, 0.01]},
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 0.3}}}})
    out = tmp_path / "search"
    evolve(load_config(path), out, parallel=3, resume=False, overwrite=False)
    table = [r for r in rows(out / "trials.csv") if r["generation"] == "0"]
    by_rung = {name: [r for r in table if r["fidelity"] == name] for name in ("rung0", "rung1", "full")}
    assert [len(by_rung[name]) for name in by_rung] == [len({r["key"] for r in by_rung["rung0"]}), 3, 1]
    assert {r["epochs"] for r in table} == {"1", "3", "9"} and {r["fidelity"] for r in table} == set(by_rung)

    def genome(row):
        return row["values"]

    def best(rung_rows, k):
        return sorted(rung_rows, key=lambda r: -float(r["objective_metric"]))[:k]

    assert {genome(r) for r in by_rung["rung1"]} == {genome(r) for r in best(by_rung["rung0"], 3)}
    assert [genome(r) for r in by_rung["full"]] == [genome(r) for r in best(by_rung["rung1"], 1)]
    winner = by_rung["full"][0]
    rungs_of_winner = [r for r in table if genome(r) == genome(winner)]
    assert len({r["folder"] for r in rungs_of_winner}) == 1  # one folder, continued rung by rung
    assert [r["epochs_trained"] for r in rungs_of_winner] == ["1", "2", "6"]  # only the extra epochs
    trial = out / "trials" / "g0" / f"i{winner['index']}"
    assert {"result.rung0.json", "result.rung1.json", "result.json", "train_convlstm.rung1.log"} <= {
        p.name for p in trial.iterdir()}
    hall = json.loads((out / "hall_of_fame.json").read_text())
    full = {genome(r) for r in rows(out / "trials.csv") if r["fidelity"] == "full"}
    assert hall and all(json.dumps(entry["values"]) in full for entry in hall)  # full budgets only
    assert hall[0]["objectives"]["metric"] == pytest.approx(float(winner["objective_metric"]))


def test_two_objectives_promote_rungs_by_non_dominated_sorting(tmp_path, stand_in_phases):
    path = search_config(tmp_path, {"training": {"epochs": 4}, "evolutionary": {
        "population_size": 8, "generations": 1, "objectives": ["metric", "latency"], "fidelity": "halving",
        "halving": {"eta": 2, "rungs": 2},
        "search_space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2},
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 2.0}}}})
    out = tmp_path / "search"
    evolve(load_config(path), out, parallel=2, resume=False, overwrite=False)
    table = [r for r in rows(out / "trials.csv") if r["generation"] == "0" and r["status"] == "ok"]
    first = {r["values"]: (float(r["objective_metric"]), float(r["objective_latency"]))
             for r in table if r["fidelity"] == "rung0"}
    promoted = {r["values"] for r in table if r["fidelity"] == "full"}
    assert len(promoted) == -(-len(first) // 2)

    def dominated(a, b):  # a by b: metric higher is better, latency lower
        return b[0] >= a[0] and b[1] <= a[1] and a != b

    left = set(first) - promoted
    assert not any(dominated(first[p], first[q]) for p in promoted for q in left)
    front = {v for v in first if not any(dominated(first[v], first[w]) for w in first)}
    assert front <= promoted or promoted <= front  # the first front goes first


def test_faulty_trials_get_the_worst_fitness_and_a_reason(tmp_path, stand_in_phases):
    path = search_config(tmp_path, {"evolutionary": {
        "population_size": 12, "generations": 1, "trial_timeout_s": 3, "trial_retries": 1,
        "search_space": {"training.lr": {"choice": [0.001, 0.002, 0.003, 0.004]}}}})
    result = evolve(load_config(path), tmp_path / "search", parallel=4, resume=False, overwrite=False)
    assert result["best"]["values"] == {"training.lr": 0.001}
    reasons = {json.loads(r["values"])["training.lr"]: r for r in rows(tmp_path / "search" / "trials.csv")}
    assert reasons[0.001]["status"] == "ok"
    assert reasons[0.002]["status"] == "crashed" and "train_convlstm exited 1" in reasons[0.002]["reason"]
    assert reasons[0.002]["attempts"] == "2"  # one retry
    assert reasons[0.003]["status"] == "timeout" and "after the trial's 3 s" in reasons[0.003]["reason"]
    assert reasons[0.004]["status"] == "nan" and "not finite" in reasons[0.004]["reason"]
    logbook = rows(tmp_path / "search" / "logbook.csv")  # counts individuals, duplicates included
    population = json.loads((tmp_path / "search" / "state.json").read_text())["islands"][0]
    assert int(logbook[0]["failures"]) == sum(ind["fitness"] == [None] for ind in population) >= 3


BAD = {
    "empty search space": ({"evolutionary": {"search_space": {}}}, [], "evolutionary.search_space is empty"),
    "malformed gene": ({"evolutionary": {"search_space": {"training.lr": 0.1}}}, [],
                       "evolutionary.search_space.training.lr = 0.1: expected {choice: [...]}"),
    "key not in the config": ({"evolutionary": {"search_space": {"training.rate": {"choice": [1]}}}}, [],
                              "'training.rate' is not a config key; did you mean 'training.lr'?"),
    "low above high": ({"evolutionary": {"search_space": {"training.lr": {"type": "float", "low": 0.1,
                                                                          "high": 0.01}}}}, [],
                       "low (0.1) is greater than high (0.01)"),
    "choice without options": ({"evolutionary": {"search_space": {"training.lr": {"choice": []}}}}, [],
                               "expected a non-empty list"),
    "no slots": ({}, ["--parallel", "0"], "--parallel 0: must be >= 1"),
    "resume without a state": ({}, ["--resume"], "holds no search (no config.yaml)"),
    "resume a state of another config": ({}, ["--resume", "--set", "seed=7"], "was made with another config"),
    "replay without steady state": ({}, ["--replay-arrivals", "nowhere"], "only a steady-state search"),
    "replay of no arrivals": ({"evolutionary": {"mode": "steady_state"}}, ["--replay-arrivals", "nowhere.csv"],
                              "--replay-arrivals nowhere.csv: expected the arrivals.csv of a steady-state search"),
    "steady state with islands": ({"evolutionary": {"mode": "steady_state", "n_islands": 2}}, [],
                                  "evolutionary.n_islands = 2: steady_state mode evolves one population"),
    "resume without a state, a search space that logs": (
        {"evolutionary": {"search_space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2},
                                           "loss.beta_structured": {"type": "float", "low": 0.0, "high": 1.0}}}},
        ["--resume"], "holds no search (no config.yaml)"),
    "halving eta of 1": ({"evolutionary": {"fidelity": "halving", "halving": {"eta": 1}}}, [],
                         "evolutionary.halving.eta = 1: expected an integer >= 2"),
    "unknown mode": ({"evolutionary": {"mode": "async"}}, [], "evolutionary.mode = 'async': expected one of"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_inputs_exit_2_with_one_line_and_overwrite_nothing(case, tmp_path):
    extra, args, expected = BAD[case]
    config = search_config(tmp_path, json.loads(json.dumps(extra)))
    out = tmp_path / "search"
    out.mkdir()
    if "another config" in case:
        state = {"format": 1, "config_hash": "0" * 64, "generation": 1}
        (out / "state.json").write_text(json.dumps(state))
    if "without a state" in case:
        out = tmp_path / "empty"
        out.mkdir()
    before = snapshot(tmp_path)
    done = run_script("evolve.py", "--config", config, "--out", str(out), *args)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_a_dask_cluster_runs_the_same_search_and_survives_a_killed_worker(tmp_path):
    """Two Dask workers; one is killed while a trial runs; results equal the local pool's."""
    distributed = pytest.importorskip("distributed", reason=DASK)
    path = search_config(tmp_path, {"evolutionary": {"population_size": 2, "generations": 1}})
    config = load_config(path)
    evolve(config, tmp_path / "local", parallel=2, resume=False, overwrite=False)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}) as cluster:
        outcome = {}
        search = threading.Thread(target=lambda: outcome.update(
            result=evolve(config, tmp_path / "dask", 2, False, False, scheduler=cluster.scheduler_address)))
        search.start()
        with distributed.Client(cluster) as client:
            deadline = time.time() + 120
            while not list((tmp_path / "dask").glob("trials/g0/*/train_convlstm.log")) and time.time() < deadline:
                time.sleep(0.1)
            busy = [address for address, tasks in client.processing().items() if tasks]
            assert busy  # a worker is running a trial right now
            os.kill(client.run(os.getpid)[busy[0]], signal.SIGKILL)
        search.join(timeout=600)
    assert "result" in outcome  # the search completed
    local, dask = rows(tmp_path / "local" / "trials.csv"), rows(tmp_path / "dask" / "trials.csv")
    assert [(r["key"], r["status"], r["objective_metric"]) for r in dask] == [
        (r["key"], r["status"], r["objective_metric"]) for r in local]
    assert json.loads((tmp_path / "dask" / "hall_of_fame.json").read_text()) == json.loads(
        (tmp_path / "local" / "hall_of_fame.json").read_text().replace(str(tmp_path / "local"), str(tmp_path / "dask")))


def test_a_steady_state_search_runs_on_dask_and_replays_the_local_ones_arrivals(tmp_path, stand_in_phases):
    distributed = pytest.importorskip("distributed", reason=DASK)
    path = search_config(tmp_path, {"evolutionary": {
        "mode": "steady_state", "population_size": 4, "generations": 3,
        "search_space": {"training.lr": {"choice": [0.001, 0.006, 0.007, 0.008]},
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 0.3}}}})
    config = load_config(path)
    evolve(config, tmp_path / "local", parallel=2, resume=False, overwrite=False)
    # Worker threads in this process, so they run the stand-in phases too.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        free = evolve(config, tmp_path / "free", 2, False, False, scheduler=cluster.scheduler_address)
        evolve(config, tmp_path / "dask", 2, False, False, scheduler=cluster.scheduler_address,
               replay_arrivals=tmp_path / "local")
    assert len({r["child"] for r in rows(tmp_path / "free" / "arrivals.csv")}) == 4 + 2 * 3 and free["best"]
    same_search(tmp_path / "dask", tmp_path / "local")


def test_only_genes_that_act_in_a_trial_are_searched(caplog):
    space = {"loss.beta_structured": {"type": "float", "low": 0.0, "high": 1.0},
             "model.pgm.pseudo_count": {"type": "float", "low": 0.0, "high": 2.0}, **SPACE}
    config = from_dict({"evolutionary": {"search_space": space}})
    caplog.set_level("INFO")
    assert [g.key for g in genes_of(config, say=True)] == list(SPACE)
    assert ("loss.beta_structured is left out: it acts in joint training (phase 3) only, which trials skip "
            "(evolutionary.trial_joint: false)") in caplog.text
    assert "model.pgm.pseudo_count is left out: it does not act on model.pgm.type 'crf'" in caplog.text
    joint_hmm = from_dict({"model": {"pgm": {"type": "hmm"}},
                           "evolutionary": {"search_space": space, "trial_joint": True}})
    assert [g.key for g in genes_of(joint_hmm)] == ["loss.beta_structured", "model.pgm.pseudo_count",
                                                    "model.convlstm.num_layers", "model.convlstm.kernel_size",
                                                    "training.lr"]
    with pytest.raises(UserError, match="none of loss.beta_structured acts in a trial"):
        genes_of(from_dict({"evolutionary": {"search_space": {"loss.beta_structured": space["loss.beta_structured"]}}}))


def test_trials_on_unchanged_data_read_the_base_configs_processed_data(tmp_path):
    from regimen.search.scheduling import TrialScheduler
    for dataset, low_root in (("npz", tmp_path / "data"), ("storms", None)):
        config = from_dict({"data": {"dataset": dataset, "path": "floods.npz" if dataset == "npz" else None,
                                     "root": str(tmp_path / "data")}, "evolutionary": {"search_space": SPACE}})
        scheduler = TrialScheduler(config, genes_of(config), runs.SearchFolder(tmp_path / "search"), map,
                                   lambda slot: {})
        genome = incumbent(scheduler.genes, config, random.Random(0))
        for fidelity, expected in (("full", tmp_path / "data"), ("low", low_root)):
            _, trial = scheduler._prepare(0, 0, genome, fidelity, None)
            if expected is None:  # a coarser grid of a built-in dataset is new data, in the search's folder
                assert trial.data.root.startswith(str(tmp_path / "search")) and trial.data.generator.height == 16
            else:  # the same arrays: no copy
                assert trial.data.root == str(expected) and trial.training.epochs == (
                    2 if fidelity == "low" else config.training.epochs)


def test_the_first_individual_is_the_base_configs_own():
    config = from_dict({"training": {"lr": 2e-3}, "model": {"convlstm": {"kernel_size": 5}},
                        "evolutionary": {"search_space": SPACE}})
    genome = incumbent(genes_of(config), config, random.Random(0))
    assert genome == [2, 1, 2e-3, 0.7]  # num_layers, index of kernel 5, lr, pairwise_weight
    decoded, values, repairs = decode(genes_of(config), genome, config)
    assert values == {"model.convlstm.num_layers": 2, "model.convlstm.kernel_size": 5, "training.lr": 2e-3,
                      "model.pgm.pairwise_weight": 0.7} and repairs == []


@pytest.mark.parametrize("fidelity", ["generations", "halving"])
def test_a_search_exports_its_trials_to_an_optuna_journal(tmp_path, stand_in_phases, fidelity):
    optuna = pytest.importorskip("optuna", reason="Optuna is optional: pip install -r requirements-optuna.txt")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState
    from regimen.search.optuna_export import genome_of

    path = search_config(tmp_path, {"training": {"epochs": 4}, "evolutionary": {
        "population_size": 4, "generations": 3, "low_fidelity": {"generations": 1, "max_epochs": 1},
        "fidelity": fidelity, "halving": {"eta": 2, "rungs": 2},
        "search_space": {"training.lr": {"choice": [0.001, 0.002, 0.006]},  # 0.002: the stand-in fails
                         "model.pgm.pairwise_weight": {"type": "float", "low": 0.1, "high": 2.0}}}})
    out, journal = tmp_path / "search", tmp_path / "optuna.log"
    summary = evolve(load_config(path), out, parallel=2, resume=False, overwrite=False, optuna_journal=journal)
    study = optuna.load_study(study_name="regimen search", storage=JournalStorage(JournalFileBackend(str(journal))))
    table = rows(out / "trials.csv")
    by_genome = {}
    for row in table:
        by_genome.setdefault(row["values"], {})[row["fidelity"]] = row
    assert len(study.trials) == len(by_genome) == summary["optuna_trials"]
    assert ("rung0" in {r["fidelity"] for r in table}) == (fidelity == "halving")
    states = set()
    genes = genes_of(load_config(path))
    for trial, (values, fidelities) in zip(study.trials, by_genome.items()):
        assert trial.params == json.loads(values)
        genome = genome_of(trial.params, genes)  # and back, as bench/search.py's TPE runs its asks
        assert {gene.key: gene.decode(v) for gene, v in zip(genes, genome)} == json.loads(values)
        full = fidelities.get("full")
        partial = {int(r["epochs"]): float(r["objective_metric"]) for name, r in fidelities.items()
                   if name != "full" and r["status"] == "ok"}
        states.add(trial.state)
        if full is not None and full["status"] == "ok":
            assert trial.state == TrialState.COMPLETE and trial.values == [float(full["objective_metric"])]
        elif full is None and partial:
            assert trial.state == TrialState.PRUNED
        else:
            assert trial.state == TrialState.FAIL and "exited 1: injected failure" in trial.user_attrs["reason"]
        assert trial.intermediate_values == partial  # low fidelity's and the rungs' scores at their epochs
    assert TrialState.COMPLETE in states and TrialState.FAIL in states
    assert study.best_trial.values[0] == max(float(r["objective_metric"]) for r in table
                                             if r["fidelity"] == "full" and r["status"] == "ok")
    with pytest.raises(UserError, match="optuna.log: already exists; name a new file"):
        evolve(load_config(path), out, parallel=1, resume=True, overwrite=False, optuna_journal=journal)
    again = evolve(load_config(path), out, parallel=1, resume=True, overwrite=False,  # a finished search
                   optuna_journal=tmp_path / "again.log")
    assert again["optuna_trials"] == summary["optuna_trials"] and rows(out / "trials.csv") == table


def test_the_optuna_export_is_checked_before_the_search(tmp_path, monkeypatch):
    from regimen.search import optuna_export
    monkeypatch.setattr(optuna_export.importlib.util, "find_spec", lambda name: None)  # Optuna absent
    with pytest.raises(UserError, match="--export-optuna needs Optuna: pip install -r requirements-optuna.txt"):
        optuna_export.check_export_path(tmp_path / "new.log")
    monkeypatch.setattr(optuna_export.importlib.util, "find_spec", lambda name: object())  # installed
    (tmp_path / "taken.log").write_text("")
    with pytest.raises(UserError, match="taken.log: already exists; name a new file"):
        optuna_export.check_export_path(tmp_path / "taken.log")
    with pytest.raises(UserError, match="nowhere is not a writable folder"):
        optuna_export.check_export_path(tmp_path / "nowhere" / "optuna.log")
    optuna_export.check_export_path(tmp_path / "new.log")


def test_trials_on_the_cpu_share_its_cores_even_where_gpus_are_listed():
    from regimen.search.scheduling import slot_environment
    config = from_dict({"device": "cpu", "evolutionary": {"devices": [0, 1]}})
    env = slot_environment(2, config, None)(1)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert slot_environment(2, from_dict({"evolutionary": {"devices": [0, 1]}}), None)(1) == {"CUDA_VISIBLE_DEVICES": "1"}


def test_the_forecaster_and_its_sampling_schedule_are_genes():
    space = {"model.convlstm.forecaster": {"choice": ["encoder_forecaster", "autoregressive"]},
             "training.scheduled_sampling.decay_epochs": {"type": "int", "low": 0, "high": 8}}
    labelling = from_dict({"evolutionary": {"search_space": space}})
    with pytest.raises(UserError, match="it acts on forecasts only"):
        genes_of(labelling)
    storms = {"data": {"forecast": {"input_frames": 4, "output_frames": 4}}, "evolutionary": {"search_space": space}}
    genes = genes_of(from_dict(storms))
    assert [gene.key for gene in genes] == list(space)
    config, _, repairs = decode(genes, [1, 2], from_dict(storms))  # autoregressive; segmentation cannot feed back
    assert config.model.convlstm.forecaster == "encoder_forecaster" and "autoregressive feeds back" in repairs[0]
    regression = merge(storms, {"data": {"task": "regression"}})
    config, _, repairs = decode(genes, [1, 2], from_dict(regression))
    assert config.model.convlstm.forecaster == "autoregressive" and not repairs
    assert config.training.scheduled_sampling.decay_epochs == 2
