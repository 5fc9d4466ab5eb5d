"""Pictures of data and predictions: sequences as a PNG grid and a GIF, and the evaluation's
confusion, verification, reliability and per-class F1 plots."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
from matplotlib import animation
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from regimen.core import folders
from regimen.core.figures import plt, save_figure
from regimen.data import processed


def class_colours(num_classes: int) -> ListedColormap:
    """Ten strong colours first, then their light twins (tab20 lists them in pairs)."""
    base = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return ListedColormap([base(order[i % 20]) for i in range(num_classes)])


class SequencePanel:
    """Draws the input channel and the label of `n` sequences for one split, and optionally a
    model's predicted labels (or values) and per-pixel confidence next to them.

    Args:
        split: a processed split's arrays.
        meta: its meta.json.
        count: sequences to show (the first window of each).
        channel: the input channel drawn.
        predict: optional `X [n, T, H, W, C] -> {"labels", "confidence"}` (or `{"values"}`); a
            forecast's from the first T_in frames of each window, drawn on the T_out after them.
    """

    def __init__(self, split: dict[str, np.ndarray], meta: dict, count: int, channel: int = 0,
                 predict: Optional[Callable[[np.ndarray], dict]] = None):
        # The first window of each of the first `count` distinct sequences.
        picks = np.sort(np.unique(split["sequence"], return_index=True)[1])[:count]
        self.x = split["X"][picks, ..., channel]  # (n, T, H, W)
        self.features = split["X"][picks, :, 0, 0, :]  # (n, T, C): what non-grid data draws
        self.y = split["Y"][picks]
        forecast = meta.get("forecast")
        self.first_predicted = forecast["input_frames"] if forecast else 0  # predictions start at this frame
        self.predicted = predict(split["X"][picks][:, :self.first_predicted or None]) if predict else None
        self.sequence_ids = split["sequence"][picks]
        self.meta = meta
        self.task = meta["task"]
        self.count, self.frames = self.x.shape[:2]
        k = meta["num_classes"] or 1
        self.cmap = class_colours(k)
        self.norm = BoundaryNorm(np.arange(k + 1) - 0.5, k)
        self.x_range = (float(np.percentile(self.x, 1)), float(np.percentile(self.x, 99)))

    def rows(self) -> list[tuple[str, Callable]]:
        """(title, draw(ax, i, t)) of each picture per frame: input, truth, and the model's."""
        rows = [("input", self.draw_input), (self.label_title(), self.draw_label)]
        if self.predicted is not None:
            rows.append(("predicted", self.draw_prediction))
            if "confidence" in self.predicted:
                rows.append(("confidence", self.draw_confidence))
        return rows

    def draw_input(self, ax, i: int, t: int) -> None:
        ax.imshow(self.x[i, t], cmap="gray", vmin=self.x_range[0], vmax=self.x_range[1])
        _bare(ax)

    def draw_label(self, ax, i: int, t: int, labels: Optional[np.ndarray] = None) -> None:
        labels = self.y if labels is None else labels
        if self.task == "segmentation":
            ax.imshow(labels[i, t], cmap=self.cmap, norm=self.norm, interpolation="nearest")
        elif self.task == "tagging":
            ax.imshow([[labels[i, t]]], cmap=self.cmap, norm=self.norm, aspect="auto")
            ax.text(0, 0, self.meta["class_names"][labels[i, t]], ha="center", va="center", fontsize=7)
        else:
            ax.imshow(labels[i, t, ..., 0], cmap="viridis")
        _bare(ax)

    def draw_prediction(self, ax, i: int, t: int) -> None:
        if t < self.first_predicted:  # an observed frame of a forecast
            return _bare(ax)
        self.draw_label(ax, i, t - self.first_predicted, self.predicted.get("labels", self.predicted.get("values")))

    def draw_confidence(self, ax, i: int, t: int) -> None:
        if t < self.first_predicted:
            return _bare(ax)
        confidence = self.predicted["confidence"][i, t - self.first_predicted]
        if self.task == "tagging":
            ax.imshow([[confidence]], cmap="magma", vmin=0, vmax=1, aspect="auto")
            ax.text(0, 0, f"{confidence:.2f}", ha="center", va="center", fontsize=7, color="cyan")
        else:
            ax.imshow(confidence, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        _bare(ax)

    def legend(self, fig) -> None:
        if self.task == "regression":
            return
        handles = [Patch(color=self.cmap(c), label=name) for c, name in enumerate(self.meta["class_names"])]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)

    def label_title(self) -> str:
        return {"segmentation": "labels", "tagging": "tag", "regression": "target"}[self.task]

    @property
    def non_grid(self) -> bool:
        """Features `[N, T, F]` taken as a 1 x 1 grid: nothing to draw as an image."""
        return self.x.shape[2:] == (1, 1)


def render_grid(panel: SequencePanel, path: Path) -> None:
    """A PNG: per sequence one row per picture kind (input, labels, ...), frames left to right."""
    rows = panel.rows()
    n = len(rows)
    fig, axes = plt.subplots(n * panel.count, panel.frames, squeeze=False,
                             figsize=(1.1 * panel.frames, 1.15 * n * panel.count + 0.6))
    for i in range(panel.count):
        for t in range(panel.frames):
            for r, (_, draw) in enumerate(rows):
                draw(axes[n * i + r, t], i, t)
            if i == 0:
                axes[0, t].set_title(f"t={t}", fontsize=8)
        for r, (title, _) in enumerate(rows):
            prefix = f"seq {panel.sequence_ids[i]}\n" if r == 0 else ""
            axes[n * i + r, 0].set_ylabel(prefix + title, fontsize=8)
    panel.legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90, format="png"))


def render_series(panel: SequencePanel, path: Path) -> None:
    """A PNG for non-grid data: per sequence, every feature against time, and beneath it the
    labels (and predictions) as coloured bands, or the target (and predicted) values as lines."""
    predicted = None if panel.predicted is None else panel.predicted.get("labels", panel.predicted.get("values"))
    rows = [("truth", panel.y)] + ([] if predicted is None else [("predicted", predicted)])
    fig, axes = plt.subplots(panel.count * 2, 1, squeeze=False, sharex=True,
                             figsize=(max(7.0, 0.35 * panel.frames + 1.5), 2.6 * panel.count + 0.6),
                             gridspec_kw={"height_ratios": [3, 0.4 + 0.35 * len(rows)] * panel.count})
    time = np.arange(panel.frames)
    names = panel.meta["channel_names"]
    for i in range(panel.count):
        top, bottom = axes[2 * i, 0], axes[2 * i + 1, 0]
        for c in range(panel.features.shape[-1]):
            top.plot(time, panel.features[i, :, c], linewidth=1, label=names[c])
        top.set_ylabel(f"seq {panel.sequence_ids[i]}\nfeatures", fontsize=8)
        top.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        top.grid(alpha=0.3)
        if panel.task == "regression":
            for name, values in rows:
                bottom.plot(time, values[i].reshape(panel.frames, -1)[:, 0], marker=".", label=name)
            bottom.legend(fontsize=6)
        else:
            labels = np.stack([values[i].reshape(panel.frames) for _, values in rows])  # (rows, T)
            bottom.imshow(labels, cmap=panel.cmap, norm=panel.norm, aspect="auto", interpolation="nearest",
                          extent=(-0.5, panel.frames - 0.5, len(rows) - 0.5, -0.5))
            bottom.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    axes[-1, 0].set_xlabel("t (frame)")
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    panel.legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90, format="png"))


def render_gif(panel: SequencePanel, path: Path, fps: int = 3) -> None:
    """An animated GIF: one frame per time step, each sequence's pictures side by side."""
    rows = panel.rows()
    fig, axes = plt.subplots(panel.count, len(rows), squeeze=False,
                             figsize=(2 * len(rows), 2 * panel.count + 0.5))

    def draw(t: int) -> None:
        for i in range(panel.count):
            for ax, (_, draw_one) in zip(axes[i], rows):
                ax.clear()
                draw_one(ax, i, t)
        for ax, (title, _) in zip(axes[0], rows):
            ax.set_title(f"{title}, t={t}" if title == "input" else title, fontsize=8)

    panel.legend(fig)
    movie = animation.FuncAnimation(fig, draw, frames=panel.frames)
    save_figure(fig, path, lambda target: movie.save(target, writer=animation.PillowWriter(fps=fps)))


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def visualize_split(folder: Path, split: str, count: int, out: Path,
                    predict: Optional[Callable[[np.ndarray], dict]] = None) -> list[Path]:
    """Render `count` sequences of a processed split to `<out>/<name>_<split>.{png,gif}`
    (`<name>_<split>_predicted.*` with a model's predictions); non-grid data: features against
    time, PNG only."""
    meta = processed.load_meta(folder)
    panel = SequencePanel(processed.first_windows(folder, split, meta, count), meta, count, predict=predict)
    folders.claim(out, "--out")
    stem = f"{meta['name']}_{split}" + ("_predicted" if predict else "")
    png, gif = out / f"{stem}.png", out / f"{stem}.gif"
    if panel.non_grid:
        render_series(panel, png)
        return [png]
    render_grid(panel, png)
    render_gif(panel, gif)
    return [png, gif]


def plot_confusion(matrix: list[list[int]], class_names: list[str], path: Path) -> None:
    """The confusion matrix normalised per true class (rows sum to 1), with the values written in."""
    counts = np.asarray(matrix, dtype=np.float64)
    rows = np.divide(counts, counts.sum(axis=1, keepdims=True), out=np.zeros_like(counts),
                     where=counts.sum(axis=1, keepdims=True) > 0)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.6 * k))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(class_names, fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))


def plot_verification(verification: dict, path: Path) -> None:
    """CSI and FSS against the frame (a forecast's lead time, else the frame of the window), one line
    per threshold (FSS: one line style per scale)."""
    fig, (csi, fss) = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    styles = ("-", "--", ":", "-.")
    frames_are = verification["frames_are"]
    for threshold, scores in verification["by_threshold"].items():
        lead = scores[frames_are]
        frames = np.arange(1, len(lead["csi"]) + 1)
        line, = csi.plot(frames, _defined(lead["csi"]), marker="o", markersize=3, label=f">= {threshold}")
        for i, (scale, values) in enumerate(lead["fss"].items()):
            fss.plot(frames, _defined(values), linestyle=styles[i % len(styles)], color=line.get_color(),
                     label=f">= {threshold}, {scale} px")
    xlabel = "lead time (steps after the last observed frame)" if frames_are == "lead_time" else "frame of the window"
    csi.set(xlabel=xlabel, ylabel="score", ylim=(0, 1), title="CSI")
    fss.set(xlabel=xlabel, title="FSS")
    for ax in (csi, fss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))


def _defined(values: list) -> np.ndarray:
    """Scores with None (0/0: no event) as NaN, which a line leaves out."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot_reliability(curves: dict[str, dict], path: Path, min_share: float = 1e-3) -> None:
    """Reliability diagram: accuracy against confidence per bin, one line per predictor (e.g.
    before and after calibration) with the ECE in the legend, each bin's marker sized by the
    nodes it holds; beneath, those counts. A bin with under `min_share` of the nodes is left
    out of the line (its accuracy rests on a handful of nodes) but counted below."""
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.2, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, curve in curves.items():
        reliability = curve["reliability"]
        count = np.asarray(reliability["count"], dtype=float)
        share = count / max(count.sum(), 1.0)
        shown = share >= min_share
        confidence, accuracy = np.asarray(reliability["confidence"]), np.asarray(reliability["accuracy"])
        line, = ax.plot(confidence[shown], accuracy[shown], linewidth=1, label=f"{name} (ECE {curve['ece']:.4f})")
        ax.scatter(confidence[shown], accuracy[shown], s=6 + 120 * np.sqrt(share[shown]), color=line.get_color(),
                   alpha=0.8, zorder=3)
        counts.bar((np.arange(len(count)) + 0.5) / len(count), count, width=1 / len(count), alpha=0.5,
                   color=line.get_color())
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title="reliability (marker area: nodes in the bin)")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    counts.set(yscale="log", xlabel="confidence", ylabel="nodes")
    counts.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))


def plot_per_class_f1(f1_by_predictor: dict[str, list[float]], class_names: list[str], path: Path) -> None:
    """Per-class F1 bars, one group per class and one bar per predictor."""
    k, n = len(class_names), len(f1_by_predictor)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * k * n, 3.2))
    for i, (name, f1) in enumerate(f1_by_predictor.items()):
        ax.bar(np.arange(k) + (i - (n - 1) / 2) * width, f1, width, label=name)
    ax.set(xticks=range(k), ylim=(0, 1), ylabel="F1", title="per-class F1")
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))
