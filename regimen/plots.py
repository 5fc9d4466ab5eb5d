"""Pictures of sequences: inputs and labels side by side, as a PNG grid and a GIF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import animation  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from regimen import runs  # noqa: E402


def class_colours(num_classes: int) -> ListedColormap:
    """Ten strong colours first, then their light twins (tab20 lists them in pairs)."""
    base = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return ListedColormap([base(order[i % 20]) for i in range(num_classes)])


class SequencePanel:
    """Draws the input channel and the label of `n` sequences for one split."""

    def __init__(self, split: dict[str, np.ndarray], meta: dict, count: int, channel: int = 0):
        # The first window of each of the first `count` distinct sequences.
        picks = np.sort(np.unique(split["sequence"], return_index=True)[1])[:count]
        self.x = split["X"][picks, ..., channel]  # (n, T, H, W)
        self.y = split["Y"][picks]
        self.sequence_ids = split["sequence"][picks]
        self.meta = meta
        self.task = meta["task"]
        self.count, self.frames = self.x.shape[:2]
        k = meta["num_classes"] or 1
        self.cmap = class_colours(k)
        self.norm = BoundaryNorm(np.arange(k + 1) - 0.5, k)
        self.x_range = (float(np.percentile(self.x, 1)), float(np.percentile(self.x, 99)))

    def draw_input(self, ax, i: int, t: int) -> None:
        ax.imshow(self.x[i, t], cmap="gray", vmin=self.x_range[0], vmax=self.x_range[1])
        _bare(ax)

    def draw_label(self, ax, i: int, t: int) -> None:
        if self.task == "segmentation":
            ax.imshow(self.y[i, t], cmap=self.cmap, norm=self.norm, interpolation="nearest")
        elif self.task == "tagging":
            ax.imshow([[self.y[i, t]]], cmap=self.cmap, norm=self.norm, aspect="auto")
            ax.text(0, 0, self.meta["class_names"][self.y[i, t]], ha="center", va="center", fontsize=7)
        else:
            ax.imshow(self.y[i, t, ..., 0], cmap="viridis")
        _bare(ax)

    def legend(self, fig) -> None:
        if self.task == "regression":
            return
        handles = [Patch(color=self.cmap(c), label=name) for c, name in enumerate(self.meta["class_names"])]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)

    def label_title(self) -> str:
        return {"segmentation": "labels", "tagging": "tag", "regression": "target"}[self.task]


def render_grid(panel: SequencePanel, path: Path) -> None:
    """A PNG: per sequence one row of inputs and one of labels, frames left to right."""
    fig, axes = plt.subplots(2 * panel.count, panel.frames, squeeze=False,
                             figsize=(1.1 * panel.frames, 2.3 * panel.count + 0.6))
    for i in range(panel.count):
        for t in range(panel.frames):
            panel.draw_input(axes[2 * i, t], i, t)
            panel.draw_label(axes[2 * i + 1, t], i, t)
            if i == 0:
                axes[0, t].set_title(f"t={t}", fontsize=8)
        axes[2 * i, 0].set_ylabel(f"seq {panel.sequence_ids[i]}\ninput", fontsize=8)
        axes[2 * i + 1, 0].set_ylabel(panel.label_title(), fontsize=8)
    panel.legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _save(fig, path, lambda target: fig.savefig(target, dpi=90, format="png"))


def render_gif(panel: SequencePanel, path: Path, fps: int = 3) -> None:
    """An animated GIF: one frame per time step, each sequence's input next to its label."""
    fig, axes = plt.subplots(panel.count, 2, squeeze=False, figsize=(4, 2 * panel.count + 0.5))

    def draw(t: int) -> None:
        for i in range(panel.count):
            for ax in axes[i]:
                ax.clear()
            panel.draw_input(axes[i, 0], i, t)
            panel.draw_label(axes[i, 1], i, t)
        axes[0, 0].set_title(f"input, t={t}", fontsize=8)
        axes[0, 1].set_title(panel.label_title(), fontsize=8)

    panel.legend(fig)
    movie = animation.FuncAnimation(fig, draw, frames=panel.frames)
    _save(fig, path, lambda target: movie.save(target, writer=animation.PillowWriter(fps=fps)))


def _save(fig, path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename into place."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
        plt.close(fig)


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def visualize_split(folder: Path, split: str, count: int, out: Path) -> tuple[Path, Path]:
    """Render `count` sequences of a processed split to `<out>/<name>_<split>.{png,gif}`."""
    meta = runs.load_meta(folder)
    panel = SequencePanel(runs.load_split(folder, split), meta, count)
    out = runs.ensure_writable_dir(out, "--out")
    png, gif = out / f"{meta['name']}_{split}.png", out / f"{meta['name']}_{split}.gif"
    render_grid(panel, png)
    render_gif(panel, gif)
    return png, gif


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
    _save(fig, path, lambda target: fig.savefig(target, dpi=90))
