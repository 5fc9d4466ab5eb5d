"""The pictures and log lines of a forecast evaluation: scores against lead time for the model and
the baselines, and one window's observed frames, truth, forecast and error per lead time (PNG and
an animated GIF)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from regimen.core.figures import plt, save_figure
from regimen.core.runs import RunFolder

log = logging.getLogger(__name__)


def headline(scores: dict) -> dict[str, float]:
    """The figures a log line and the score picture give of one forecaster, averaged over lead
    times: CSI per threshold (where there are thresholds), else MSE and MAE or the label metrics."""
    mean = scores["mean"]
    if "csi" in mean:
        return {f"csi>={name}": value for name, value in mean["csi"].items()}
    return {name: value for name, value in mean.items() if name != "rmse"}


def log_forecast(report: dict, final: str) -> None:
    lead = report["lead_times"]
    minutes = f" ({lead['minutes'][0]:g} to {lead['minutes'][-1]:g} min)" if lead["minutes"] else ""
    log.info("forecast, %d frames in, %d out, averaged over lead times 1 to %d%s; final predictor %s:",
             report["input_frames"], report["output_frames"], report["output_frames"], minutes, final)
    for name, scores in report["scores"].items():
        figures = ", ".join(f"{key} {value:.4f}" for key, value in headline(scores).items() if value is not None)
        log.info("  %-13s %s", name, figures)


def write_forecast_plots(report: dict, example: Optional[dict], final: str, out: RunFolder, split: str
                         ) -> list[str]:
    """`forecast_scores_<split>.png`, and with an example window `forecast_<split>.png` and `.gif`."""
    out.plots.mkdir(parents=True, exist_ok=True)
    written = [out.plot(f"forecast_scores_{split}")]
    plot_lead_time_scores(report, written[0])
    if example is not None:
        picture = out.plot(f"forecast_{split}")
        plot_example(example, final, picture)
        animation = picture.with_suffix(".gif")
        animate_example(example, final, animation)
        written += [picture, animation]
    return [str(p) for p in written]


def plot_lead_time_scores(report: dict, path: Path) -> None:
    """One panel per headline score, a line per forecaster against lead time."""
    scores = report["scores"]
    lead = report["lead_times"]
    x, label = (lead["minutes"], "lead time (minutes)") if lead["minutes"] else (lead["steps"], "lead time (steps)")
    names = list(headline(next(iter(scores.values()))))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for forecaster, result in scores.items():
            values = _per_lead(result, name)
            ax.plot(x, [np.nan if v is None else v for v in values], marker="o", markersize=3, label=forecaster,
                    linestyle="--" if forecaster in ("persistence", "extrapolation") else "-")
        ax.set(xlabel=label, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=90))


def _per_lead(result: dict, name: str) -> list:
    if name.startswith("csi>="):
        return result["verification"]["by_threshold"][name[5:]]["lead_time"]["csi"]
    return result["per_lead"][name]


def _fields(example: dict, final: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Observed `[T_in, H, W]`, truth, forecast and error `[T_out, H, W]` (values: the first channel)."""
    truth, forecast = example["truth"], example["forecasts"][final]
    if truth.ndim == 4:  # values [T, H, W, C]
        truth, forecast = truth[..., 0], forecast[..., 0]
        return example["observed"], truth, forecast, forecast - truth
    return example["observed"], truth, forecast, (forecast != truth).astype(np.float32)


def plot_example(example: dict, final: str, path: Path) -> None:
    """Rows: observed frames, truth, forecast, error; a column per frame (lead time for the last three)."""
    observed, truth, forecast, error = _fields(example, final)
    columns = max(len(observed), len(truth))
    fig, axes = plt.subplots(4, columns, figsize=(1.3 * columns, 5.6), squeeze=False)
    limits = _limits(truth, forecast)
    rows = [("observed", observed, "viridis", None), ("truth", truth, "viridis", limits),
            (f"forecast ({final})", forecast, "viridis", limits), ("error", error, "coolwarm", _symmetric(error))]
    for r, (name, frames, colours, bounds) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_axis_off()
            if c < len(frames):
                ax.imshow(frames[c], cmap=colours, vmin=bounds and bounds[0], vmax=bounds and bounds[1])
                ax.set_title(f"t-{len(frames) - 1 - c}" if r == 0 else f"+{c + 1}", fontsize=7)
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, lambda target: fig.savefig(target, dpi=80))


def animate_example(example: dict, final: str, path: Path) -> None:
    """An animated GIF: the observed frames, then truth, forecast and error side by side per lead time."""
    observed, truth, forecast, error = _fields(example, final)
    limits, spread = _limits(truth, forecast), _symmetric(error)
    fig, axes = plt.subplots(1, 3, figsize=(6, 2.3))
    images = []
    for t in range(len(observed) + len(truth)):
        lead = t - len(observed)
        panels = [(observed[t], "observed", "viridis", None), None, None] if lead < 0 else [
            (truth[lead], f"truth +{lead + 1}", "viridis", limits),
            (forecast[lead], f"forecast +{lead + 1}", "viridis", limits),
            (error[lead], "error", "coolwarm", spread)]
        for ax, panel in zip(axes, panels):
            ax.clear()
            ax.set_axis_off()
            if panel is not None:
                frame, title, colours, bounds = panel
                ax.imshow(frame, cmap=colours, vmin=bounds and bounds[0], vmax=bounds and bounds[1])
                ax.set_title(title, fontsize=8)
        fig.canvas.draw()
        images.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()))

    def write(target: Path) -> None:
        images[0].save(target, format="GIF", save_all=True, append_images=images[1:], duration=400, loop=0)

    save_figure(fig, path, write)


def _limits(*fields: np.ndarray) -> tuple[float, float]:
    return float(min(f.min() for f in fields)), float(max(f.max() for f in fields))


def _symmetric(error: np.ndarray) -> tuple[float, float]:
    bound = max(float(np.abs(error).max()), 1e-6)
    return -bound, bound
