"""CMA-ES on the original README's ConvLSTM objective: ours against plain pycma and deap.cma.

    python bench/cmaes.py            # both problems, 3 repeats (deap.cma once: about 1 s per generation)
    python bench/cmaes.py --quick    # 1 repeat, deap.cma for 5 generations only
    python bench/cmaes.py --device cuda

The problem (the README's pseudocode): a ConvLSTM with 1 input channel, 8 hidden
channels and a 3x3 kernel (2,624 weights), a fixed random input, and the KL
divergence from a uniform target to `log_softmax` of its hidden outputs
(`batchmean`); population 16, 30 generations, sigma 0.1. "small" is batch 2,
4 frames, 8x8; "large" batch 8, 32x32. Methods:

- ours: what `evolve.py --strategy cmaes` does: pycma with `covariance: auto`
  (separable above 1000 weights, so here), the population scored by
  regimen.search.cmaes.PopulationLoss (one `torch.vmap`-ed `functional_call`, or one
  candidate after another where that measures faster on the first generation);
- ours, full: the same with pycma's full covariance (what batching alone gives);
- pycma: plain pycma (full covariance), candidates loaded into the model and run one at a time;
- deap.cma: `deap.cma.Strategy`, one candidate at a time.

Prints the median evaluations per second and final loss of each; ratios are
against plain pycma, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from deap import base
from deap import cma as deap_cma
from deap import creator

from models.convlstm import ConvLSTM
from regimen.search.cmaes import PopulationLoss, diagonal_for, kl_batchmean, run_cmaes

creator.create("BenchFitness", base.Fitness, weights=(-1.0,))
creator.create("BenchIndividual", list, fitness=creator.BenchFitness)

PROBLEMS = {"small": {"batch": 2, "frames": 4, "side": 8}, "large": {"batch": 8, "frames": 4, "side": 32}}
POPULATION, GENERATIONS, SIGMA, HIDDEN = 16, 30, 0.1, 8


def problem(size: dict, device: torch.device, seed: int = 0):
    """The model, its input and the loss of its output, all fixed by `seed`."""
    torch.manual_seed(seed)
    model = ConvLSTM(1, [HIDDEN], 3).to(device).eval()
    x = torch.randn(size["batch"], size["frames"], 1, size["side"], size["side"], device=device)
    target = torch.full((1, 1, HIDDEN, 1, 1), 1.0 / HIDDEN, device=device)  # softmax of zeros: uniform

    def loss(out) -> torch.Tensor:
        # out[0]: hidden outputs [B, T, hidden, H, W]; the KL over the hidden axis, batchmean over nodes
        return kl_batchmean(F.log_softmax(out[0], dim=2), target, dim=2)

    return model, x, loss


def one_at_a_time(model, x, loss):
    """Plain evaluation: each candidate copied into the model and run alone."""
    params = list(model.parameters())

    @torch.no_grad()
    def objective(candidates: np.ndarray) -> np.ndarray:
        losses = []
        for vector in candidates:
            torch.nn.utils.vector_to_parameters(torch.as_tensor(vector, dtype=torch.float32, device=x.device), params)
            losses.append(float(loss(model(x))))
        return np.array(losses)

    return objective


def timed(run) -> tuple[float, float]:
    started = time.perf_counter()
    final = run()
    return time.perf_counter() - started, final


def ours(size, device, seed, covariance="auto"):
    model, x, loss = problem(size, device)
    population = PopulationLoss(model, [name for name, _ in model.named_parameters()], loss, (x,))
    x0 = population.start()
    diagonal = diagonal_for(covariance, len(x0))
    return timed(lambda: run_cmaes(population, x0, SIGMA, POPULATION, GENERATIONS, seed, diagonal)[1])


def plain_pycma(size, device, seed):
    model, x, loss = problem(size, device)
    x0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().double().cpu().numpy()
    return timed(lambda: run_cmaes(one_at_a_time(model, x, loss), x0, SIGMA, POPULATION, GENERATIONS, seed)[1])


def deap_strategy(size, device, seed, generations):
    model, x, loss = problem(size, device)
    objective = one_at_a_time(model, x, loss)
    x0 = torch.nn.utils.parameters_to_vector(model.parameters()).detach().double().cpu().numpy()
    np.random.seed(seed)  # deap.cma samples with numpy's global generator

    def run() -> float:
        strategy = deap_cma.Strategy(centroid=list(x0), sigma=SIGMA, lambda_=POPULATION)
        best = float("inf")
        for _ in range(generations):
            population = strategy.generate(creator.BenchIndividual)
            losses = objective(np.array(population))
            for ind, value in zip(population, losses):
                ind.fitness.values = (value,)
            strategy.update(population)
            best = min(best, float(losses.min()))
        return best

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    repeats = 1 if args.quick else 3
    deap_generations = 5 if args.quick else GENERATIONS
    model, x, loss = problem(PROBLEMS["small"], device)
    with torch.no_grad():
        start = float(loss(model(x)))
    print(f"ConvLSTM 1->{HIDDEN}, 3x3: {sum(p.numel() for p in model.parameters())} weights; "
          f"population {POPULATION}, {GENERATIONS} generations, sigma {SIGMA}; device {device}; "
          f"start KL small {start:.6f}")
    print(f"{'problem':<8} {'method':<11} {'evals/s':>9} {'final KL':>10} {'evals/s vs pycma':>17}")
    for name, size in PROBLEMS.items():
        rows = {}
        for method, run in (("ours", lambda s: ours(size, device, s)),
                            ("ours, full", lambda s: ours(size, device, s, "full")),
                            ("pycma", lambda s: plain_pycma(size, device, s))):
            results = [run(seed) for seed in range(1, repeats + 1)]
            seconds = statistics.median(r[0] for r in results)
            rows[method] = (POPULATION * GENERATIONS / seconds, statistics.median(r[1] for r in results))
        seconds, final = deap_strategy(size, device, 1, deap_generations)
        rows["deap.cma"] = (POPULATION * deap_generations / seconds, final)
        for method, (rate, final) in rows.items():
            note = "" if method != "deap.cma" or deap_generations == GENERATIONS else f" ({deap_generations} gens)"
            print(f"{name:<8} {method:<11} {rate:>9.1f} {final:>10.6f} {rate / rows['pycma'][0]:>16.2f}x{note}")


if __name__ == "__main__":
    main()
