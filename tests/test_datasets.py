"""Built-in generators and the npz reader."""

from __future__ import annotations

import numpy as np
import pytest

from regimen.core.errors import UserError
from regimen.core.config import Config
from regimen.core.config_file import load_config
from regimen.data.datasets import load_dataset, storm_baselines, storm_classes
from regimen.data.npz import load_npz
from regimen.scores.metrics import mean_iou

from conftest import ROOT

CASES = [("storms", "segmentation"), ("storms", "regression"), ("digits", "segmentation"),
         ("digits", "tagging"), ("digits", "regression"), ("regimes", "tagging")]


def small(dataset: str, task: str, **generator) -> Config:
    config = Config()
    config.data.dataset, config.data.task = dataset, task
    g = config.data.generator
    g.num_sequences, g.sequence_length, g.height, g.width = 6, 9, 20, 20
    for key, value in generator.items():
        setattr(g, key, value)
    return config


@pytest.mark.parametrize("dataset, task", CASES)
def test_same_seed_same_bytes_other_seed_other_data(dataset, task):
    config = small(dataset, task)
    a, b, c = (load_dataset(config.data, seed) for seed in (1, 1, 2))
    assert a.X.tobytes() == b.X.tobytes() and a.Y.tobytes() == b.Y.tobytes()
    assert a.X.tobytes() != c.X.tobytes()


@pytest.mark.parametrize("dataset, task", CASES)
def test_layout_and_dtypes(dataset, task):
    d = load_dataset(small(dataset, task).data, 0)
    assert d.X.shape == (6, 9, 20, 20, 1) and d.X.dtype == np.float32
    expected = {"segmentation": (6, 9, 20, 20), "tagging": (6, 9), "regression": (6, 9, 20, 20, 1)}[task]
    assert d.Y.shape == expected
    if task == "regression":
        assert d.Y.dtype == np.float32 and d.num_classes is None
    else:
        assert d.Y.dtype == np.int64
        assert d.Y.min() >= 0 and d.Y.max() < d.num_classes == len(d.class_names)
    assert np.isfinite(d.X).all()


def test_storm_soft_targets_are_distributions_agreeing_with_labels():
    d = load_dataset(small("storms", "segmentation").data, 3)
    assert d.P.shape == d.Y.shape + (3,)
    assert (d.P >= 0).all()
    np.testing.assert_allclose(d.P.sum(-1), 1.0, atol=1e-6)
    agreement = (d.P.argmax(-1) == d.Y).mean()
    assert agreement > 0.9


def test_storms_baseline_gap_is_at_least_ten_points_at_the_default_config():
    config = load_config(ROOT / "config.yaml")
    d = load_dataset(config.data, config.seed)
    gap = d.baselines["smoothing_gap_points"]
    assert gap >= 10.0, d.baselines
    assert gap == pytest.approx(d.baselines["threshold_smoothed_miou"]
                                - d.baselines["threshold_per_frame_miou"], abs=0.02)


def test_storm_baselines_measure_what_they_say():
    labels = np.zeros((1, 3, 6, 6), dtype=np.int64)
    labels[..., :3] = 2
    clean = np.where(labels == 2, 1.5, 0.0)
    baselines = storm_baselines(clean.astype(np.float32), labels)
    # A noise-free field thresholds perfectly (classes 0 and 2 present, 1 absent).
    assert baselines["threshold_per_frame_miou"] == 100.0
    assert mean_iou(labels, storm_classes(clean), 3) == 1.0


def test_digits_regression_target_is_the_next_clean_frame():
    config = small("digits", "regression")
    config.data.generator.digits.noise_std = 0.0
    d = load_dataset(config.data, 5)
    np.testing.assert_array_equal(d.Y[:, :-1], d.X[:, 1:])


def test_digits_segmentation_marks_exactly_the_ink():
    config = small("digits", "segmentation")
    config.data.generator.digits.noise_std = 0.0
    d = load_dataset(config.data, 5)
    np.testing.assert_array_equal(d.Y > 0, d.X[..., 0] > 0.3)


def test_regimes_follow_their_dynamics_and_a_sticky_chain():
    config = small("regimes", "tagging", num_sequences=40, sequence_length=30)
    config.data.generator.regimes.noise_std = 0.0
    d = load_dataset(config.data, 0)
    x, y = d.X[..., 0], d.Y
    previous, current, label = x[:, :-1], x[:, 1:], y[:, 1:]
    east = np.roll(previous, 1, axis=3)
    south = np.roll(previous, 1, axis=2)
    error_east = ((current - east) ** 2).mean(axis=(2, 3))
    error_south = ((current - south) ** 2).mean(axis=(2, 3))
    assert (error_east[label == 0] < error_south[label == 0]).all()
    assert (error_south[label == 1] < error_east[label == 1]).all()
    stay = (y[:, 1:] == y[:, :-1]).mean()
    assert abs(stay - 0.9) < 0.05


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def npz_config(path, task="segmentation", **data) -> Config:
    config = Config()
    config.data.dataset, config.data.path, config.data.task = "npz", str(path), task
    for key, value in data.items():
        setattr(config.data, key, value)
    return config


def test_npz_reads_grid_channels_first_and_non_grid(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 4, 6, 2)).astype(np.float64)
    y = rng.integers(0, 3, size=(3, 5, 4, 6))
    d = load_npz(npz_config(save_npz(tmp_path / "a.npz", X=x, Y=y)).data)
    assert d.X.dtype == np.float32 and d.X.shape == x.shape and d.num_classes == 3

    d = load_npz(npz_config(save_npz(tmp_path / "b.npz", X=x.transpose(0, 1, 4, 2, 3), Y=y),
                                format="NTCHW").data)
    np.testing.assert_array_equal(d.X, x.astype(np.float32))

    features = rng.normal(size=(3, 5, 7))
    tags = rng.integers(0, 4, size=(3, 5))
    d = load_npz(npz_config(save_npz(tmp_path / "c.npz", X=features, Y=tags), "tagging").data)
    assert d.X.shape == (3, 5, 1, 1, 7) and d.num_classes == 4


def test_npz_names_its_classes_and_channels(tmp_path):
    x, y = np.zeros((2, 3, 2, 2, 2)), np.arange(24).reshape(2, 3, 2, 2) % 3
    names = {"class_names": np.array(["land", "water", "cloud"]), "channel_names": np.array(["vv", "vh"])}
    d = load_npz(npz_config(save_npz(tmp_path / "named.npz", X=x, Y=y, **names)).data)
    assert d.class_names == ["land", "water", "cloud"] and d.channel_names == ["vv", "vh"]
    d = load_npz(npz_config(save_npz(tmp_path / "plain.npz", X=x, Y=y)).data)
    assert d.class_names == ["0", "1", "2"] and d.channel_names == ["channel_0", "channel_1"]
    with pytest.raises(UserError, match=r"bad.npz: class_names has shape \(2,\) and dtype <U5; expected 3 strings, "
                                        "one per class"):
        load_npz(npz_config(save_npz(tmp_path / "bad.npz", X=x, Y=y, class_names=np.array(["land", "water"])))
                     .data)


def test_npz_says_what_an_ambiguous_shape_is_taken_for(tmp_path, caplog):
    rng = np.random.default_rng(0)
    channels_first = rng.normal(size=(2, 3, 2, 12, 20))  # [N, T, C, H, W] with the default NTHWC
    with pytest.raises(UserError, match=r"expects \[N, T, H, W\] = \(2, 3, 2, 12\) to match X \(2, 3, 2, 12, 20\) "
                                        r"\(X \(2, 3, 2, 12, 20\) is read as \[N, T, H, W, C\]: a 2 x 12 grid with 20 "
                                        r"channels; if it is \[N, T, C, H, W\], set data.format: NTCHW\)"):
        load_npz(npz_config(save_npz(tmp_path / "cf.npz", X=channels_first,
                                         Y=np.zeros((2, 3, 12, 20), int))).data)
    load_npz(npz_config(save_npz(tmp_path / "sensors.npz", X=rng.normal(size=(2, 5, 6)),
                                     Y=rng.integers(0, 3, size=(2, 5)))).data)
    assert ("non-grid X (2, 5, 6): each frame is a 1 x 1 grid with one label; data.task: tagging says so"
            in caplog.text)


def test_npz_soft_targets_are_checked(tmp_path):
    x = np.zeros((2, 3, 2, 2, 1))
    y = np.zeros((2, 3, 2, 2), dtype=int)
    p = np.full((2, 3, 2, 2, 2), 0.5)
    d = load_npz(npz_config(save_npz(tmp_path / "ok.npz", X=x, Y=y, P=p), num_classes=2).data)
    assert d.P.shape == (2, 3, 2, 2, 2)
    with pytest.raises(UserError, match="P must hold class distributions"):
        load_npz(npz_config(save_npz(tmp_path / "bad.npz", X=x, Y=y, P=p * 2), num_classes=2).data)


GOOD_X = np.zeros((2, 4, 3, 3, 1), dtype=np.float32)
GOOD_Y = np.zeros((2, 4, 3, 3), dtype=np.int64)


@pytest.mark.parametrize("arrays, task, message", [
    ({"Y": GOOD_Y}, "segmentation", "no array 'X' (found: Y)"),
    ({"X": GOOD_X}, "segmentation", "no array 'Y' (found: X)"),
    ({"X": GOOD_X[..., 0], "Y": GOOD_Y}, "segmentation", "X has rank 4 (shape (2, 4, 3, 3)); expected rank 5"),
    ({"X": GOOD_X, "Y": GOOD_Y[:, :3]}, "segmentation", "Y has shape (2, 3, 3, 3); segmentation expects [N, T, H, W] = (2, 4, 3, 3)"),
    ({"X": GOOD_X, "Y": GOOD_Y}, "tagging", "Y has shape (2, 4, 3, 3); tagging expects [N, T] = (2, 4)"),
    ({"X": np.where(np.arange(72).reshape(GOOD_X.shape) == 5, np.nan, GOOD_X), "Y": GOOD_Y},
     "segmentation", "X has 1 NaN/Inf value(s), the first at index (0, 0, 1, 2, 0)"),
    ({"X": GOOD_X, "Y": np.where(np.arange(72).reshape(GOOD_Y.shape) == 7, 5, GOOD_Y)},
     "segmentation", "Y has label 5 at index (0, 0, 2, 1); expected labels in [0, 3)"),
    ({"X": GOOD_X, "Y": GOOD_Y + 0.5}, "segmentation", "expected integer class labels"),
    ({"X": GOOD_X.astype(str), "Y": GOOD_Y}, "segmentation", "X has dtype <U32; expected real numbers"),
    ({"X": np.where(np.arange(72).reshape(GOOD_X.shape) == 5, 1e39, GOOD_X.astype(np.float64)), "Y": GOOD_Y},
     "segmentation", "X holds 1e+39 at index (0, 0, 1, 2, 0), beyond float32's range (+-3.403e+38) that the "
     "phases compute in; rescale the data"),
    ({"X": GOOD_X, "Y": np.full(GOOD_X.shape, -1e300)}, "regression", "Y holds -1e+300 at index (0, 0, 0, 0, 0)"),
    ({"X": GOOD_X, "Y": GOOD_X[:, :, :2]}, "regression", "Y has shape (2, 4, 2, 3, 1); expected [N, T, H, W, C']"),
])
def test_npz_violations_are_named(tmp_path, arrays, task, message):
    path = save_npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(UserError) as raised:
        load_npz(npz_config(path, task, num_classes=3).data)
    assert message in str(raised.value) and "mine.npz" in str(raised.value)


def test_npz_missing_or_not_an_archive(tmp_path):
    with pytest.raises(UserError, match="data.path: .*gone.npz not found"):
        load_npz(npz_config(tmp_path / "gone.npz").data)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(UserError, match="junk.npz: not a readable .npz file"):
        load_npz(npz_config(junk).data)
