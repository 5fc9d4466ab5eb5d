"""What the pictures draw: reliability bins by their count, fidelities apart, non-grid data against time."""

from __future__ import annotations

import numpy as np
import pytest

from regimen.evaluate import plots
from regimen.search import plots as search_plots
from regimen.scores.metrics import calibration


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions would save, kept open to look at."""
    figures = []
    for module in (plots, search_plots):
        monkeypatch.setattr(module, "save_figure", lambda fig, path, write: figures.append(fig))
    return figures


def test_a_near_empty_reliability_bin_is_counted_but_not_drawn_as_a_point(drawn, tmp_path):
    rng = np.random.default_rng(0)
    confidence = np.concatenate([rng.uniform(0.4, 1.0, 5000), [0.05]])  # one node alone in the first bin
    curve = calibration(confidence, rng.random(5001) < confidence, 15)
    plots.plot_reliability({"pgm": curve}, tmp_path / "r.png")
    accuracy_axes, count_axes = drawn[0].axes
    line = accuracy_axes.lines[1]  # after the diagonal
    assert min(line.get_xdata()) > 0.4 and len(line.get_xdata()) == 9
    assert [bar.get_height() for bar in count_axes.patches] == curve["reliability"]["count"]


def test_fitness_draws_low_and_full_fidelity_apart_on_whole_generations(drawn, tmp_path):
    logbook = [{"generation": g, "island": 0, "fidelity": f, "max": m, "min": 0.1, "mean": m - 0.1}
               for g, f, m in ((0, "low", 0.5), (1, "full", 0.8), (2, "full", 0.82))]
    search_plots.plot_fitness(logbook, "metric", True, tmp_path / "f.png")
    ax = drawn[0].axes[0]
    spans = [set(line.get_xdata()) for line in ax.lines]
    assert {0} in spans and {1, 2} in spans and not any({0, 1} <= span for span in spans)
    assert all(float(tick).is_integer() for tick in ax.get_xticks())


def test_non_grid_sequences_draw_every_feature_against_time(drawn, tmp_path):
    rng = np.random.default_rng(0)
    split = {"X": rng.normal(size=(4, 6, 1, 1, 3)).astype(np.float32), "Y": rng.integers(0, 2, size=(4, 6)),
             "sequence": np.array([0, 0, 1, 1])}
    meta = {"task": "tagging", "num_classes": 2, "class_names": ["calm", "storm"], "channel_names": ["a", "b", "c"],
            "name": "sensors"}
    panel = plots.SequencePanel(split, meta, 2, predict=lambda x: {"labels": np.zeros(x.shape[:2], int),
                                                                   "confidence": np.ones(x.shape[:2])})
    assert panel.non_grid
    plots.render_series(panel, tmp_path / "s.png")
    features, bands = drawn[0].axes[:2]
    assert [line.get_label() for line in features.lines] == ["a", "b", "c"]
    np.testing.assert_array_equal(features.lines[1].get_ydata(), split["X"][0, :, 0, 0, 1])
    np.testing.assert_array_equal(bands.images[0].get_array(), np.stack([split["Y"][0], np.zeros(6, int)]))
