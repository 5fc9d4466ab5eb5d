"""Forecasts as a user runs them: T_in frames in, T_out out, through every phase, with no future
frame reaching the network, and the baselines and lead times they are judged by."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from conftest import metrics_of, ok, run_script, snapshot, tiny_config
from regimen.core import runs
from regimen.core.config_file import load_config
from regimen.core.errors import UserError
from regimen.data.processed import load_task_data
from regimen.data.windows import WindowDataset
from regimen.evaluate.bundle import load_bundle
from regimen.evaluate.forecast import lead_times
from regimen.evaluate.forecast_baselines import extrapolation, has_pysteps, persistence
from test_splits import processed

FORECAST = {"data": {"forecast": {"input_frames": 4, "output_frames": 6}, "stride": 10},
            "evaluation": {"thresholds": [1, 2], "scales": [1, 3]}, "training": {"epochs": 1}}
FUTURE = slice(4, 10)  # the frames of each 10-frame sequence after its 4 inputs


def _corrupt_future_inputs(config: str) -> None:
    """Garbage in every window's future input frames, the store's record made to match (a user
    could not tell): one window per sequence (stride 10 = T_in + T_out), so no future frame is
    another window's input."""
    data = load_task_data(load_config(config).data)
    meta_file = runs.meta_path(data.folder)
    meta = json.loads(meta_file.read_text())
    for split in runs.SPLITS:
        path = runs.store_path(data.folder, split, "X")
        x = np.load(path, mmap_mode="r+")
        for first in data.windows(split).index[:, 2]:
            x[first + FUTURE.start:first + FUTURE.stop] = 1e3 * np.sin(np.arange(x[0].size)).reshape(x[0].shape)
        x.flush()
        del x
        meta["files"][split]["X"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    meta_file.write_text(json.dumps(meta))


def _without_timings(result: dict) -> dict:
    result = dict(result)
    for key in ("provenance", "model", "plots"):
        result.pop(key, None)
    return result


@pytest.fixture(scope="module")
def nowcast(tmp_path_factory):
    """Storms as a segmentation nowcast, phases 0-2 and an evaluation and export, then every future
    input turned to garbage: (config, folder, evaluation before, export before)."""
    folder = tmp_path_factory.mktemp("nowcast")
    config = tiny_config(folder, FORECAST)
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(folder / "base"))
    ok("fit_pgm.py", "--config", config, "--features", str(folder / "base" / "features.pt"))
    ok("evaluate.py", "--config", config, "--ckpt", str(folder / "base" / "best.pt"), "--out", str(folder / "eval"))
    ok("export.py", "--config", config, "--ckpt", str(folder / "base" / "best.pt"), "--out", str(folder / "bundle"))
    before = metrics_of(folder / "eval")["evaluate_test"], metrics_of(folder / "bundle")["export"]["test"]
    _corrupt_future_inputs(config)
    return config, folder, before


def test_no_future_input_changes_training_evaluation_or_export(nowcast):
    config, folder, (evaluated, exported) = nowcast
    ok("train_convlstm.py", "--config", config, "--save", str(folder / "again"))
    weights = [torch.load(folder / run / "best.pt", weights_only=False)["net_state"] for run in ("base", "again")]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    ok("evaluate.py", "--config", config, "--ckpt", str(folder / "base" / "best.pt"), "--out", str(folder / "eval2"))
    assert _without_timings(metrics_of(folder / "eval2")["evaluate_test"]) == _without_timings(evaluated)
    ok("export.py", "--config", config, "--ckpt", str(folder / "base" / "best.pt"), "--out", str(folder / "bundle2"))
    assert metrics_of(folder / "bundle2")["export"]["test"] == exported


def test_the_nowcast_reports_every_forecaster_per_lead_time(nowcast):
    _, folder, (evaluated, exported) = nowcast
    report = evaluated["forecast"]
    assert report["lead_times"] == {"steps": [1, 2, 3, 4, 5, 6], "minutes": None}
    assert set(report["scores"]) == {"unary", "pgm", "persistence", "extrapolation"}
    for name, scores in report["scores"].items():
        csi = scores["verification"]["by_threshold"]["1"]["lead_time"]["csi"]
        assert len(csi) == 6 and len(scores["per_lead"]["miou"]) == 6
        assert scores["mean"]["csi"]["1"] == pytest.approx(np.mean([c for c in csi if c is not None]))
    persistence = report["scores"]["persistence"]["verification"]["by_threshold"]["2"]["lead_time"]["csi"]
    skill = report["skill"]["pgm"]["per_lead"]["csi"]["2"]
    ours = report["scores"]["pgm"]["verification"]["by_threshold"]["2"]["lead_time"]["csi"]
    assert skill == [None if a is None or b is None else pytest.approx(a - b) for a, b in zip(ours, persistence)]
    assert evaluated[evaluated["final"]]["verification"]["frames_are"] == "lead_time"
    assert set(exported["forecast"]["scores"]) == {"bundle", "persistence", "extrapolation"}
    for picture in ("forecast_scores_test.png", "forecast_test.png", "forecast_test.gif"):
        assert (folder / "eval" / "plots" / picture).stat().st_size > 1000


def test_a_forecast_bundle_predicts_t_out_frames_from_t_in_past_frames(nowcast):
    config, folder, _ = nowcast
    bundle = load_bundle(folder / "bundle")
    data = load_task_data(load_config(config).data)
    past = data.windows("test").read("x", [0]).numpy()
    out = bundle.predict(past, normalized=True)
    assert out["labels"].shape == (1, 6, 12, 12) and out["probs"].shape == (1, 6, 12, 12, 3)
    whole = data.windows("test").read_window("x", [0]).numpy()  # past and future frames
    with pytest.raises(Exception, match=r"holds 10 frames per window; this model forecasts 6 frames from the 4"):
        bundle.predict(whole, normalized=True)


def test_autoregressive_forecasts_read_no_future_input_outside_training(tmp_path):
    """Trained with scheduled sampling (true future frames fed in training), evaluated on garbage
    future inputs: the same figures (an export scores through the same reader, see the nowcast's)."""
    config = tiny_config(tmp_path, {**FORECAST, "data": {**FORECAST["data"], "task": "regression"},
                                    "evaluation": {"thresholds": [0.5], "scales": [1]},
                                    "model": {"convlstm": {"forecaster": "autoregressive"}}})
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "base"))
    ckpt = str(tmp_path / "base" / "best.pt")
    results = []
    for attempt in ("clean", "garbage"):
        ok("evaluate.py", "--config", config, "--ckpt", ckpt, "--out", str(tmp_path / attempt))
        results.append(_without_timings(metrics_of(tmp_path / attempt)["evaluate_test"]))
        if attempt == "clean":
            _corrupt_future_inputs(config)
    assert results[0] == results[1]
    scores = results[0]["forecast"]["scores"]
    assert set(scores) == {"unary", "persistence", "extrapolation"} and len(scores["unary"]["per_lead"]["mse"]) == 6
    skill = results[0]["forecast"]["skill"]["unary"]["per_lead"]["mse"]
    assert skill == [pytest.approx(1 - a / b) for a, b in zip(scores["unary"]["per_lead"]["mse"],
                                                                scores["persistence"]["per_lead"]["mse"])]


# --------------------------------------------------------------------------- windows, splits, lead times


def test_forecast_windows_stay_inside_time_split_pieces_with_lead_minutes(tmp_path):
    """One 5-minute record cut into overlapping events, split by time: every forecast window is
    T_in + T_out consecutive frames of one piece, its inputs the first T_in, its targets the rest."""
    folder, meta = processed(tmp_path, "forecast", split_by="time", forecast={"input_frames": 3, "output_frames": 2})
    assert meta["forecast"]["frame_step"] == 300.0 and meta["forecast"]["frame_step_unit"] == "seconds"
    assert lead_times(meta) == {"steps": [1, 2], "minutes": [5.0, 10.0]}
    windows, latest = {}, -1
    for split in runs.SPLITS:
        data = WindowDataset(folder, split, meta)
        frames = data.read_window("x", np.arange(len(data)))[..., 0, 0, 0].numpy().astype(int)  # record frames
        assert (np.diff(frames, axis=1) == 1).all()
        batch = data[np.arange(len(data))]
        assert torch.equal(batch["x"], data.read_window("x", np.arange(len(data)))[:, :3])
        assert torch.equal(batch["y"], data.read_window("y", np.arange(len(data)))[:, 3:])
        assert torch.equal(batch["last"][:, 0], data.read_window("y", np.arange(len(data)))[:, 2])
        assert "x_future" not in batch
        assert frames.min() > latest  # time order: no frame of a later split before an earlier one's
        latest = frames.max()
        windows[split] = frames
    assert {len(w[0]) for w in windows.values()} == {5}


def test_a_forecast_needs_enough_frames_after_each_cut(tmp_path):
    with pytest.raises(AssertionError, match="split 'test' gets no window of 9 frames \\(data.forecast: 5 in, 4 out\\)"):
        processed(tmp_path, "late", split_by="time", split_times=["2021-05-01T06:00", "2021-05-01T09:30"],
                  forecast={"input_frames": 5, "output_frames": 4})


def test_next_frame_targets_of_a_forecast_are_the_future_frames_themselves(tmp_path):
    """`data.labels: next_frame` targets the next frame of a labelled window; in a forecast window
    the targets are the T_out frames after the inputs, so a target is its own frame's inputs."""
    folder, meta = processed(tmp_path, "next", labels="next_frame", task="regression", num_classes=None,
                             forecast={"input_frames": 3, "output_frames": 2})
    data = WindowDataset(folder, "train", meta)
    batch = data[np.arange(len(data))]
    whole = data.read_window("x", np.arange(len(data)))
    assert torch.equal(batch["y"], whole[:, 3:]) and torch.equal(batch["last"][:, 0], whole[:, 2])


# --------------------------------------------------------------------------- baselines


def test_persistence_holds_the_last_observed_targets():
    last = np.arange(2 * 12).reshape(2, 1, 3, 4)
    held = persistence(last, 3)
    assert held.shape == (2, 3, 3, 4) and all((held[:, t] == last[:, 0]).all() for t in range(3))


@pytest.mark.skipif(not has_pysteps(), reason="pysteps not installed (requirements-pysteps.txt)")
def test_extrapolation_is_pysteps_advection_along_proesmans_motion():
    from pysteps.extrapolation.semilagrangian import extrapolate
    from pysteps.motion.proesmans import proesmans

    yy, xx = np.mgrid[:32, :32]
    blob = [np.exp(-((yy - 12 - t) ** 2 + (xx - 10 - 2 * t) ** 2) / 18.0) for t in range(2)]
    observed = np.stack(blob)[None, :, None].astype(np.float32)  # (1, T_in 2, C 1, 32, 32): 2 px right, 1 down
    values = observed[:, -1:, 0, :, :, None]  # (1, 1, H, W, 1): the last frame's values
    motion = proesmans(np.stack(blob).astype(np.float64), num_levels=5, verbose=False)
    assert np.allclose(motion[:, 8:16, 8:18].mean(axis=(1, 2)), [2, 1], atol=0.3)
    direct = extrapolate(values[0, 0, ..., 0].astype(np.float64), motion, 3, outval=np.nan)
    ours = extrapolation(observed, values, 3, None)
    assert ours.shape == (1, 3, 32, 32, 1)
    assert np.allclose(ours[0, ..., 0], np.where(np.isfinite(direct), direct, values.min()), atol=1e-6)
    labels = (values[..., 0] > 0.5).astype(np.int64)  # (1, 1, H, W)
    one_hot = [extrapolate((labels[0, 0] == k).astype(np.float64), motion, 3, outval=np.nan) for k in (0, 1)]
    expected = np.nan_to_num(np.stack(one_hot), nan=0.0).argmax(axis=0)
    assert np.array_equal(extrapolation(observed, labels, 3, 2)[0], expected)
    # The blob's centre moves 2 px right and 1 down a step.
    assert np.unravel_index(ours[0, 2, ..., 0].argmax(), (32, 32)) == (12 + 1 + 3, 10 + 2 + 6)


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("settings, message", [
    (["data.forecast.output_frames=0"], "data.forecast.output_frames = 0: must be >= 2"),
    (["data.forecast.input_frames=8", "data.forecast.output_frames=4"],
     "data.forecast.input_frames = 8: input_frames + output_frames (12) must be <= "
     "data.generator.sequence_length (10)"),
    (["model.convlstm.forecaster=autoregressive"], "model.convlstm.forecaster = 'autoregressive': autoregressive "
     "feeds each predicted frame back as the next input"),
    (["evaluation.stateful=true"], "evaluation.stateful = True: with data.forecast, each forecast starts from its "
     "own T_in frames"),
    (["model.convlstm.bidirectional=true"], "model.convlstm.bidirectional = True: with data.forecast"),
    (["data.forecast=5"], "data.forecast = 5: expected a section"),
])
def test_a_forecast_it_cannot_make_is_refused_naming_the_key(tmp_path, settings, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(tiny_config(tmp_path, FORECAST), settings)


def test_a_refused_forecast_exits_2_with_one_line_and_writes_nothing(tmp_path):
    config = tiny_config(tmp_path)
    before = snapshot(tmp_path)
    done = run_script("tools/preprocess.py", "--config", config, "--set", "model.convlstm.forecaster=autoregressive")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "set data.forecast {input_frames: T_in, output_frames: T_out}" in done.stderr
    assert snapshot(tmp_path) == before
