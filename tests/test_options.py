"""Model options reachable from config.yaml, each changing what the scripts produce."""

from __future__ import annotations

import pytest
import numpy as np
import torch

from conftest import metrics_of, ok, phase_one
from regimen.core import files
from regimen.core.config_file import load_config
from regimen.data.features import load_features
from regimen.train.inference import SplitArray, decode
from regimen.train.pgm import PGMHead, head_from_params
from regimen.data.processed import load_task_data


@pytest.fixture(scope="module")
def storms(tmp_path_factory):
    return phase_one(tmp_path_factory.mktemp("storms"))


def fitted(config: str, base, folder, *settings: str) -> dict:
    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"), "--save", str(folder),
       *[arg for setting in settings for arg in ("--set", setting)])
    return files.load_pgm_params(folder / "pgm_params.pkl", "test")


def test_loopy_belief_propagation_labels_otherwise_than_mean_field(storms, tmp_path):
    config, base = storms
    params = fitted(config, base, tmp_path / "bp", "model.pgm.inference=loopy_bp")
    assert params["settings"]["inference"] == "loopy_bp"
    stored = load_features(base / "features.pt", "test")["splits"]["val"]["unaries"]
    unaries = stored[np.arange(len(stored))]
    bp = head_from_params(params, "bp")
    mean_field = PGMHead({**params["settings"], "inference": "mean_field"})
    mean_field.load_state_dict(bp.state_dict())
    assert (decode(bp, unaries) != decode(mean_field, unaries)).any()  # same parameters, other labelling
    ok("evaluate.py", "--config", config, "--ckpt", str(base / "best.pt"), "--pgm", str(tmp_path / "bp" /
       "pgm_params.pkl"), "--out", str(tmp_path / "bp"), "--set", "model.pgm.inference=loopy_bp")
    assert metrics_of(tmp_path / "bp")["evaluate_test"]["pgm_type"] == "crf"


def test_damping_changes_what_loopy_bp_fits(storms, tmp_path):
    config, base = storms
    plain = fitted(config, base, tmp_path / "plain", "model.pgm.inference=loopy_bp")
    damped = fitted(config, base, tmp_path / "damped", "model.pgm.inference=loopy_bp", "model.pgm.damping=0.5")
    assert damped["settings"]["damping"] == 0.5
    assert metrics_of(tmp_path / "plain")["fit_pgm"]["learned"] != metrics_of(tmp_path / "damped")["fit_pgm"]["learned"]
    assert any((plain["params"][k] != damped["params"][k]).any() for k in plain["params"])


def test_gradient_checkpointing_trains_the_same_weights(storms, tmp_path):
    config, base = storms
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "checkpointed"),
       "--set", "model.convlstm.checkpoint_steps=true")
    ours = torch.load(tmp_path / "checkpointed" / "ckpt.pt", weights_only=True)
    theirs = torch.load(base / "ckpt.pt", weights_only=True)
    assert ours["net"]["checkpoint_steps"] is True and theirs["net"]["checkpoint_steps"] is False
    for name, tensor in theirs["net_state"].items():  # recomputing the steps changes memory, not the result
        torch.testing.assert_close(ours["net_state"][name], tensor, rtol=1e-5, atol=1e-6)


def test_an_edge_aware_crf_weighs_its_edges_by_the_input_window(storms, tmp_path):
    config, base = storms
    params = fitted(config, base, tmp_path / "edges", "model.pgm.edge_aware=true")
    assert params["settings"]["edge_aware"] and "model.raw_bandwidth" in params["params"]
    edges = head_from_params(params, "edges")
    plain = PGMHead({**params["settings"], "edge_aware": False})
    plain.load_state_dict({k: v for k, v in edges.state_dict().items() if k != "model.raw_bandwidth"})
    data = load_task_data(load_config(config).data)
    stored = load_features(base / "features.pt", "test")["splits"]["val"]["unaries"]
    unaries = stored[np.arange(len(stored))]
    guide = SplitArray(data.windows("val"), "x")[np.arange(len(stored))]
    assert (decode(edges, unaries, guide) != decode(plain, unaries, guide)).any()
    ok("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"), "--pgm",
       str(tmp_path / "edges" / "pgm_params.pkl"), "--save", str(tmp_path / "joint"),
       "--set", "model.pgm.edge_aware=true", "--set", "training.joint.mode=end_to_end")
    ok("export.py", "--config", config, "--ckpt", str(tmp_path / "joint" / "best.pt"), "--out", str(tmp_path / "b"))
    assert metrics_of(tmp_path / "joint")["train_joint"]["pgm"] == "crf"
