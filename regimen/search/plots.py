"""Pictures of a search: fitness per generation, the Pareto front, and CMA-ES's progress."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import MaxNLocator

from regimen.core.figures import plt, save_figure


def plot_fitness(logbook: list[dict], objective: str, higher_is_better: bool, path: Path) -> None:
    """Best and mean fitness per generation, one line pair per island. Low-fidelity generations
    are shaded and drawn apart from the full-fidelity ones: their scores come from fewer epochs
    (and a coarser grid), so a line across the switch would show a jump evolution did not make."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    islands = sorted({r["island"] for r in logbook})
    best = "max" if higher_is_better else "min"
    for island in islands:
        label = f" (island {island})" if len(islands) > 1 else ""
        colour = f"C{islands.index(island)}"
        for fidelity, marker in (("low", "s"), ("full", "o")):
            rows = [r for r in logbook if r["island"] == island and r["fidelity"] == fidelity and r[best] is not None]
            if not rows:
                continue
            generations = [r["generation"] for r in rows]
            ax.plot(generations, [r[best] for r in rows], marker=marker, color=colour,
                    label=f"best{label}" if fidelity == "full" else None)
            ax.plot(generations, [r["mean"] for r in rows], linestyle="--", color=colour, alpha=0.6,
                    label=f"mean{label}" if fidelity == "full" else None)
    low = [r["generation"] for r in logbook if r["fidelity"] == "low"]
    if low:
        ax.axvspan(min(low) - 0.5, max(low) + 0.5, color="grey", alpha=0.15, label="low fidelity (not comparable)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="generation", ylabel=f"val {objective}", title="fitness over generations")
    if logbook:  # a steady-state search writes the plot before its first logbook row too
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))


def plot_pareto(trials: list[dict], front: list[dict], objectives: list[str], path: Path) -> None:
    """Every full-fidelity trial on the first two objectives, the Pareto front highlighted."""
    first, second = objectives[:2]
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.scatter([t[f"objective_{first}"] for t in trials], [t[f"objective_{second}"] for t in trials],
               s=14, color="grey", alpha=0.6, label="trials")
    points = sorted((entry["objectives"][first], entry["objectives"][second]) for entry in front
                    if entry["objectives"])
    if points:
        ax.plot(*zip(*points), marker="o", color="tab:red", label="Pareto front")
    ax.set(xlabel=f"val {first}", ylabel=f"val {second}", title="trade-off")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))


def plot_cmaes(records: list[dict], objective: str, path: Path) -> None:
    """CMA-ES loss per generation: the generation's best and median, and the best so far."""
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    generations = [r["generation"] for r in records]
    ax.plot(generations, [r["median"] for r in records], label="median", color="tab:grey")
    ax.plot(generations, [r["best"] for r in records], label="best of generation", color="tab:blue")
    ax.plot(generations, [r["best_so_far"] for r in records], label="best so far", color="tab:red")
    ax.set(xlabel="generation", ylabel=f"{objective} loss", title="CMA-ES")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))
