"""Forecasts as a user runs them: T_in frames in, T_out out, through every phase, with no future
frame reaching the network, and the baselines and lead times they are judged by."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from conftest import metrics_of, ok, run_script, snapshot, tiny_config
from regimen.core import runs
from regimen.core.config_file import load_config
from regimen.data.preprocess import preprocess
from regimen.data.processed import load_task_data
from regimen.evaluate.bundle import load_bundle

FORECAST = {"data": {"forecast": {"input_frames": 4, "output_frames": 6}, "stride": 10},
            "evaluation": {"thresholds": [1, 2], "scales": [1, 3]}}
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
    """Trained with scheduled sampling (true future frames fed in training), evaluated and exported
    on garbage future inputs: the same figures."""
    config = tiny_config(tmp_path, {**FORECAST, "data": {**FORECAST["data"], "task": "regression"},
                                    "evaluation": {"thresholds": [0.5], "scales": [1]},
                                    "model": {"convlstm": {"forecaster": "autoregressive"}}})
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "base"))
    ckpt = str(tmp_path / "base" / "best.pt")
    results = []
    for attempt in ("clean", "garbage"):
        ok("evaluate.py", "--config", config, "--ckpt", ckpt, "--out", str(tmp_path / attempt))
        ok("export.py", "--config", config, "--ckpt", ckpt, "--out", str(tmp_path / f"bundle_{attempt}"))
        results.append((_without_timings(metrics_of(tmp_path / attempt)["evaluate_test"]),
                        metrics_of(tmp_path / f"bundle_{attempt}")["export"]["test"]))
        if attempt == "clean":
            _corrupt_future_inputs(config)
    assert results[0] == results[1]
    scores = results[0][0]["forecast"]["scores"]
    assert set(scores) == {"unary", "persistence", "extrapolation"} and len(scores["unary"]["per_lead"]["mse"]) == 6
    skill = results[0][0]["forecast"]["skill"]["unary"]["per_lead"]["mse"]
    assert skill == [pytest.approx(1 - a / b) for a, b in zip(scores["unary"]["per_lead"]["mse"],
                                                                scores["persistence"]["per_lead"]["mse"])]
