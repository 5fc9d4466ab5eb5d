"""CMA-ES fine-tuning of a trained model's weights (evolve.py --strategy cmaes).

pycma (the `cma` package) runs the strategy; it is the reference CMA-ES and,
unlike `deap.cma.Strategy`, does not recompute a full eigendecomposition every
generation. Each generation's candidates are scored together: the chosen
weights are stacked `[P, ...]` and `torch.func.functional_call` under
`torch.vmap` runs the model once for the whole population instead of P times.
The objective is `evolutionary.cmaes.objective`: the original README's KL
divergence (`log_softmax` of the outputs against a target distribution,
`batchmean`), the NLL, or the task's metric (not differentiable; negated to
be minimised).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Optional

import cma
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from regimen.core import files, folders, runs
from regimen.core.config import CMAESConfig, Config, config_hash
from regimen.core.errors import UserError
from regimen.core.progress import track
from regimen.evaluate.evaluation import CHECKPOINT_KINDS, load_evaluated
from regimen.scores.metrics import MAIN_METRIC, label_metrics, regression_metrics
from regimen.search.plots import plot_cmaes
from regimen.train.losses import class_last
from regimen.train.stack import Stack, model_input, resolve_device

log = logging.getLogger(__name__)


class PopulationLoss:
    """Losses of many weight vectors for the named parameters of `module`.

    The population is evaluated batched: the candidates' weights stacked `[P, ...]` and one
    `torch.vmap`-ed `functional_call`. Where the convolutions are compute-bound (large grids
    on a CPU) vmap's grouped convolutions are slower than one candidate after another, so
    `mode="auto"` times both on the first generation and keeps the faster (both give the same
    losses to float rounding).

    Args:
        module: evaluated with `functional_call`; its other parameters and buffers stay fixed.
        names: the parameters a candidate vector holds, flattened in this order.
        loss: `module output -> scalar loss` for one candidate.
        inputs: the module's positional inputs, shared by every candidate.
        vmap_loss: whether `loss` runs under vmap too; if not (a metric with argmax and counts), the
            outputs are computed batched and the loss one candidate at a time.
        mode: batched, loop or auto.
        chunk: candidates per vmapped call (bounds the memory).
    """

    def __init__(self, module: nn.Module, names: list[str], loss: Callable[[torch.Tensor], torch.Tensor],
                 inputs: tuple, vmap_loss: bool = True, mode: str = "auto", chunk: int = 64):
        self.module, self.names, self.loss, self.inputs, self.chunk = module.eval(), names, loss, inputs, chunk
        self.vmap_loss, self.mode = vmap_loss, mode
        params = dict(module.named_parameters())
        self.shapes = [params[name].shape for name in names]
        self.sizes = [params[name].numel() for name in names]
        self.fixed = {name: p.detach() for name, p in params.items() if name not in names}
        self.fixed.update(dict(module.named_buffers()))
        self.device = next(iter(params.values())).device

    def start(self) -> np.ndarray:
        params = dict(self.module.named_parameters())
        return torch.cat([params[name].detach().flatten() for name in self.names]).double().cpu().numpy()

    def unflatten(self, vectors: torch.Tensor) -> dict[str, torch.Tensor]:
        """`[P, D]` -> {name: `[P, *shape]`}."""
        parts = vectors.split(self.sizes, dim=1)
        return {name: part.reshape(len(vectors), *shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    @torch.no_grad()
    def __call__(self, candidates: np.ndarray) -> np.ndarray:
        """Loss of each row of `candidates` `[P, D]`."""
        vectors = torch.as_tensor(np.asarray(candidates), dtype=torch.float32, device=self.device)
        if self.mode == "auto":
            self.mode = min(("batched", "loop"), key=lambda mode: self._seconds(mode, vectors))
            log.info("population evaluation: %s (the faster here)", self.mode)
        losses = self._batched(vectors) if self.mode == "batched" else self._loop(vectors)
        return losses.double().cpu().numpy()

    def _one(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(self.module, {**self.fixed, **weights}, self.inputs)

    def _batched(self, vectors: torch.Tensor) -> torch.Tensor:
        losses = []
        for i in range(0, len(vectors), self.chunk):
            weights = self.unflatten(vectors[i:i + self.chunk])
            if self.vmap_loss:
                losses.append(torch.vmap(lambda w: self.loss(self._one(w)))(weights))
            else:
                losses.append(torch.stack([self.loss(out) for out in torch.vmap(self._one)(weights)]))
        return torch.cat(losses)

    def _loop(self, vectors: torch.Tensor) -> torch.Tensor:
        weights = self.unflatten(vectors)
        return torch.stack([self.loss(self._one({name: w[p] for name, w in weights.items()}))
                            for p in range(len(vectors))])

    def _seconds(self, mode: str, vectors: torch.Tensor) -> float:
        run = self._batched if mode == "batched" else self._loop
        run(vectors)  # warm-up
        if vectors.is_cuda:
            torch.cuda.synchronize(vectors.device)
        started = time.perf_counter()
        run(vectors)
        if vectors.is_cuda:
            torch.cuda.synchronize(vectors.device)
        return time.perf_counter() - started


def kl_batchmean(log_q: torch.Tensor, target: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(target || q) summed over the class axis `dim` and averaged over every other position:
    `F.kl_div(log_q, target, reduction="batchmean")` of the nodes-by-classes matrix. Written out
    because `kl_div` has no vmap batching rule, and along `dim` so no class-last copy is made."""
    return (torch.xlogy(target, target) - target * log_q).sum(dim).mean()


# Above this many weights "auto" uses the separable (diagonal) CMA-ES: the full covariance costs
# O(n^2) per candidate (about 30 ms per generation at 2,624 weights, more than the evaluations).
DIAGONAL_ABOVE = 1000


def diagonal_for(covariance: str, weights: int) -> bool:
    return covariance == "diagonal" or (covariance == "auto" and weights > DIAGONAL_ABOVE)


def run_cmaes(objective: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, sigma: float, population: int,
              generations: int, seed: int, diagonal: bool = False) -> tuple[np.ndarray, float, list[dict]]:
    """pycma from `x0` (separable when `diagonal`); returns the best vector evaluated, its loss and
    per-generation records. Runs all `generations`: pycma's early-stopping tolerances are off."""
    options = {"popsize": population, "seed": seed, "verbose": -9, "maxiter": generations,
               "CMA_diagonal": diagonal, "tolx": 0, "tolfun": 0, "tolflatfitness": generations,
               "tolfunhist": 0, "tolstagnation": generations + 1}
    strategy = cma.CMAEvolutionStrategy(x0, sigma, options)
    records, best_x, best_loss = [], x0, float("inf")
    for generation in track(range(generations), "cma-es", "generations"):
        started = time.perf_counter()
        candidates = strategy.ask()
        losses = objective(np.asarray(candidates))
        strategy.tell(candidates, losses.tolist())
        i = int(np.argmin(losses))
        if losses[i] < best_loss:
            best_x, best_loss = np.asarray(candidates[i]), float(losses[i])
        records.append({"generation": generation + 1, "best": float(losses.min()),
                        "median": float(np.median(losses)), "best_so_far": best_loss, "sigma": float(strategy.sigma),
                        "evaluations": (generation + 1) * population,
                        "seconds": round(time.perf_counter() - started, 4)})
    return best_x, best_loss, records


# --------------------------------------------------------------------------- evolve.py --strategy cmaes


class _Scorer(nn.Module):
    """The stack's log class probabilities (through the PGM when there is one); for functional_call."""

    def __init__(self, stack: Stack):
        super().__init__()
        self.stack = stack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stack.net(x)  # fp32: CMA-ES ranks candidates by small loss differences
        if self.stack.head is not None:
            return self.stack.head.log_marginals(out, guide=x)
        return out if self.stack.spec["task"] == "regression" else F.log_softmax(out, dim=2)


def selected_parameters(stack: Stack, groups: list[str]) -> list[str]:
    """The parameter names of `evolutionary.cmaes.groups` (all, head, pgm or name prefixes)."""
    names = [name for name, _ in stack.named_parameters()]
    prefixes = {"all": "", "head": "net.head.", "pgm": "head."}
    chosen = []
    for group in groups:
        prefix = prefixes.get(group, group)
        matched = [name for name in names if name.startswith(prefix)]
        if not matched:
            tops = sorted({name.rsplit(".", 2)[0] for name in names})
            raise UserError(f"evolutionary.cmaes.groups: {group!r} matches no parameter; use all, head, pgm "
                            f"or a prefix such as {', '.join(tops[:4])}")
        chosen += [name for name in matched if name not in chosen]
    return [f"stack.{name}" for name in chosen]


def fine_tune(config: Config, ckpt: Path, out: Path, overwrite: bool) -> dict:
    """CMA-ES on the checkpoint's chosen weights against a validation objective; writes into `out`."""
    started = time.time()
    settings: CMAESConfig = config.evolutionary.cmaes
    folder = runs.RunFolder(folders.check_output(out, runs.CMAES, "--out", overwrite, fresh=True))
    folders.claim(folder.root, "--out")
    payload = files.load_checkpoint(ckpt, "--ckpt", CHECKPOINT_KINDS)
    _, data, stack = load_evaluated(config, ckpt, None, payload)
    if data.has_mask:
        raise UserError(f"--ckpt {ckpt}: the data marks missing nodes (data.mask, data.missing or "
                        "data.ignore_label), which the CMA-ES objective does not leave out yet; fine-tune on "
                        "data without them")
    if data.task == "regression" and settings.objective != "metric":
        raise UserError(f"evolutionary.cmaes.objective = {settings.objective!r} needs class labels; "
                        "use metric (RMSE) for regression")
    device = resolve_device(config.device)
    stack.to(device)
    names = selected_parameters(stack, settings.groups)
    windows = data.windows("val")
    val = windows[np.arange(min(settings.batch_windows, len(windows)))]  # the first windows only
    x = model_input(val["x"]).to(device)
    y = val["y"].to(device)
    soft = val.get("p")
    target = (soft.to(device) if soft is not None
              else F.one_hot(y, data.num_classes).float()) if data.task != "regression" else None
    loss, vmappable = _objective(settings.objective, data.task, data.num_classes, y, target)
    objective = PopulationLoss(_Scorer(stack), names, loss, (x,), vmap_loss=vmappable)
    x0 = objective.start()
    log.info("CMA-ES over %d weights (%s), objective %s on %d validation windows", len(x0),
             ", ".join(settings.groups), settings.objective, len(x))
    diagonal = diagonal_for(settings.covariance, len(x0))
    folders.clear(folder.root, runs.CMAES)
    best_x, best_loss, records = run_cmaes(objective, x0, settings.sigma, settings.population_size,
                                           settings.generations, config.seed, diagonal)
    start_loss = float(objective(x0[None])[0])  # after the first generation chose the evaluation mode
    improved = best_loss < start_loss
    if improved:
        weights = objective.unflatten(torch.as_tensor(best_x[None], dtype=torch.float32, device=device))
        params = dict(stack.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name.removeprefix("stack.")].copy_(value[0])
    else:
        log.warning("no candidate beat the starting weights (%.6f); the checkpoint keeps them", start_loss)
    result = {"objective": settings.objective, "groups": settings.groups, "weights": len(x0),
              "start_loss": start_loss, "final_loss": min(best_loss, start_loss), "improved": improved,
              "generations": settings.generations, "population_size": settings.population_size,
              "covariance": "diagonal" if diagonal else "full", "evaluation": objective.mode,
              "checkpoint": str(folder.checkpoint), "from": str(ckpt),
              "provenance": files.provenance(config_hash(config), config.seed, data.meta, str(device), started,
                                            time.time())}
    stack.cpu()
    kept = {key: value for key, value in payload.items() if key not in ("format", "train_state")}
    files.save_checkpoint(folder.checkpoint, {**kept, **stack.payload(), "cmaes": {
        key: result[key] for key in ("objective", "groups", "start_loss", "final_loss")}})
    files.atomic_write_text(folder.root / runs.CMAES_TABLE, files.csv_text(records))
    plot_cmaes(records, settings.objective, folder.root / runs.CMAES_PLOT)
    files.update_metrics(folder.metrics, "cmaes", result)
    return result


def _objective(kind: str, task: str, num_classes: Optional[int], y: torch.Tensor, target: Optional[torch.Tensor]
               ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """`model output -> loss` of one candidate, and whether it can run under vmap."""
    if kind == "kl":
        target = target.movedim(-1, 2)  # class axis where the outputs have it: [B, T, K(, H, W)]
        return (lambda log_q: kl_batchmean(log_q, target, dim=2)), True
    if kind == "nll":
        return (lambda log_q: F.nll_loss(log_q.movedim(2, 1), y)), True  # nll_loss wants [B, K, ...]
    metric, higher = MAIN_METRIC[task]
    truth = y.cpu().numpy()

    def negated_metric(out: torch.Tensor) -> torch.Tensor:
        """mIoU, accuracy (negated) or RMSE of one candidate: not differentiable, not vmappable."""
        if task == "regression":
            value = regression_metrics(truth, class_last(out).cpu().numpy())[metric]
        else:
            value = label_metrics(truth, out.argmax(dim=2).cpu().numpy(), num_classes, task)[metric]
        return torch.tensor(-value if higher else value)

    return negated_metric, False
