"""The run-folder module: checkpoints, the restricted unpickler, metrics sections, provenance."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import malicious_pickle
from regimen.core import files
from regimen.core.errors import UserError


def test_checkpoints_round_trip_and_name_their_kind(tmp_path):
    path = tmp_path / "ckpt.pt"
    files.save_checkpoint(path, {"kind": "convlstm", "w": torch.arange(3.0), "history": [{"epoch": 1}]})
    loaded = files.load_checkpoint(path, "--resume", ("convlstm",))
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["history"] == [{"epoch": 1}]
    with pytest.raises(UserError, match="holds a convlstm checkpoint; expected features"):
        files.load_checkpoint(path, "--features", ("features",))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left behind


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError, match="damaged or not a regimen checkpoint"):
        files.load_checkpoint(tmp_path / "text.pt", "--resume", ("convlstm",))
    torch.save({"weights": torch.ones(1)}, tmp_path / "plain.pt")  # a checkpoint of someone else's
    with pytest.raises(UserError, match="not a regimen checkpoint"):
        files.load_checkpoint(tmp_path / "plain.pt", "--resume", ("convlstm",))
    with pytest.raises(UserError, match="missing.pt: file not found"):
        files.load_checkpoint(tmp_path / "missing.pt", "--resume", ("convlstm",))


def test_pgm_params_round_trip_through_the_restricted_unpickler(tmp_path):
    params = {"type": "hmm", "settings": {"num_classes": 3, "task": "tagging"},
              "params": {"log_trans": np.log(np.full((3, 3), 1 / 3)), "counts": np.arange(4, dtype=np.int64)},
              "dataset": {"name": "regimes"}, "nested": [1, 2.5, None, True, ("a", "b")]}
    files.save_pgm_params(tmp_path / "p.pkl", params)
    loaded = files.load_pgm_params(tmp_path / "p.pkl", "--pgm")
    assert loaded["settings"] == params["settings"] and loaded["nested"] == params["nested"]
    np.testing.assert_array_equal(loaded["params"]["log_trans"], params["params"]["log_trans"])
    assert loaded["params"]["counts"].dtype == np.int64


def test_a_pickle_that_would_run_a_command_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(malicious_pickle(marker))
    with pytest.raises(UserError, match=r"evil.pkl: not a plain PGM parameter file \(refusing to load posix.system\)"):
        files.load_pgm_params(tmp_path / "evil.pkl", "--pgm")
    assert not marker.exists()
    (tmp_path / "class.pkl").write_bytes(pickle.dumps({"type": "crf", "params": OrderedDict(a=1)}))
    with pytest.raises(UserError, match="refusing to load collections.OrderedDict"):
        files.load_pgm_params(tmp_path / "class.pkl", "--pgm")


def test_metrics_sections_are_kept_and_provenance_is_complete(tmp_path):
    path = tmp_path / "metrics.json"
    files.update_metrics(path, "train_convlstm", {"test": {"miou": 0.5}})
    files.update_metrics(path, "fit_pgm", {"test": {"miou": 0.6}})
    assert json.loads(path.read_text()) == {"train_convlstm": {"test": {"miou": 0.5}},
                                            "fit_pgm": {"test": {"miou": 0.6}}}
    meta = {"data_version": "abc", "name": "storms", "splits": {"train": {"windows": 3}}}
    made = files.provenance("hash", 42, meta, "cpu", 10.0, 12.5)
    assert made["wall_time_s"] == 2.5 and made["seed"] == 42 and made["data_version"] == "abc"
    assert {"python", "torch", "numpy", "scikit-learn"} <= set(made["libraries"])
    assert made["git_commit"] != ""


def test_history_is_rewritten_whole(tmp_path):
    path = tmp_path / "history.jsonl"
    files.write_history(path, [{"epoch": 1}, {"epoch": 2}])
    files.write_history(path, [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2, 3]
