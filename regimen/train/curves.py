"""The learning curve a training run draws into its folder after every epoch."""

from __future__ import annotations

from pathlib import Path

from regimen.core.figures import plt, save_figure


def plot_learning_curve(history: list[dict], metric: str, path: Path) -> None:
    """Training loss and the validation metric per epoch, from a run's history records."""
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    trained = [r for r in history if "loss" in r["train"]]
    loss_ax.plot([r["epoch"] for r in trained], [r["train"]["loss"] for r in trained], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss")
    metric_ax.plot([r["epoch"] for r in history], [r["val"][metric] for r in history], marker="o",
                   color="tab:green")
    metric_ax.set(xlabel="epoch", ylabel=f"val {metric}", title=f"validation {metric}")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))
