"""Missing data: masked nodes change no loss, no PGM data term and no metric (proven by filling
them with garbage), a chain's missing labels are summed out exactly, and phase 0 turns NaN, a mask
dataset and an ignored label into the same mask."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import FAST, merge, ok, run_script, snapshot
from regimen.core import files, runs
from regimen.core.config_file import load_config
from regimen.core.config import DataConfig, GeneratorConfig, PGMConfig
from regimen.data.datasets import load_dataset
from regimen.train.losses import unary_loss
from regimen.scores.metrics import MetricSums, ReportSums
from regimen.data.features import load_features
from regimen.train.pgm import PGMHead, fit_pgm, pgm_settings
from regimen.scores.verification import VerificationSums

B, T, K, H, W = 2, 4, 3, 5, 6
CASES = [("crf", "segmentation"), ("hmm", "segmentation"), ("chain_crf", "segmentation"),
         ("hmm", "tagging"), ("chain_crf", "tagging")]


def node_shape(task: str) -> tuple[int, ...]:
    return (B, T, H, W) if task != "tagging" else (B, T)


def batch(task: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Unaries `[B, T, K(, H, W)]`, labels, soft targets and a mask with about 30% missing nodes."""
    g = torch.Generator().manual_seed(seed)
    nodes = node_shape(task)
    unaries = torch.randn(nodes[:2] + (K,) + nodes[2:], generator=g)
    soft = torch.softmax(torch.randn(nodes + (K,), generator=g), dim=-1)
    return {"unaries": unaries, "labels": torch.randint(K, nodes, generator=g), "soft": soft,
            "valid": torch.rand(nodes, generator=g) > 0.3}


def spoiled(b: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """The same batch with every missing node's unaries, labels and soft targets replaced by garbage."""
    g = torch.Generator().manual_seed(seed)
    missing = ~b["valid"]
    unaries = torch.where(missing.unsqueeze(2), 100 * torch.randn(b["unaries"].shape, generator=g), b["unaries"])
    labels = torch.where(missing, torch.randint(K, b["labels"].shape, generator=g), b["labels"])
    soft = torch.where(missing[..., None], torch.softmax(torch.randn(b["soft"].shape, generator=g), -1), b["soft"])
    return {**b, "unaries": unaries, "labels": labels, "soft": soft}


@pytest.mark.parametrize("kind", ["ce", "kl", "mse", "l1"])
def test_masked_garbage_changes_no_unary_loss(kind):
    b = batch("segmentation")
    regression = kind in ("mse", "l1")
    target = b["soft"] if regression else b["labels"]  # mse, l1: a K-channel regression target
    g = spoiled(b)
    garbage_target = g["soft"] if regression else g["labels"]
    loss = unary_loss(kind, b["unaries"], target, b["soft"], b["valid"])
    assert torch.equal(loss, unary_loss(kind, g["unaries"], garbage_target, g["soft"], g["valid"]))
    assert not torch.equal(loss, unary_loss(kind, b["unaries"], target, b["soft"]))  # the mask does something


@pytest.mark.parametrize("pgm_type,task", CASES)
def test_masked_garbage_changes_no_pgm_output_nor_nll(pgm_type, task):
    torch.manual_seed(0)
    head = PGMHead(pgm_settings(PGMConfig(type=pgm_type), task, K))
    b, g = batch(task), spoiled(batch(task))
    torch.testing.assert_close(head.log_marginals(b["unaries"], valid=b["valid"]),
                               head.log_marginals(g["unaries"], valid=g["valid"]), rtol=0, atol=1e-6)
    assert torch.equal(head.decode(b["unaries"], valid=b["valid"]), head.decode(g["unaries"], valid=g["valid"]))
    torch.testing.assert_close(head.nll(b["unaries"], b["labels"], valid=b["valid"]),
                               head.nll(g["unaries"], g["labels"], valid=g["valid"]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("pgm_type,task,fit", [("crf", "segmentation", "mle"), ("hmm", "segmentation", "mle"),
                                               ("hmm", "tagging", "em"), ("chain_crf", "tagging", "mle")])
def test_masked_garbage_changes_no_fitted_parameter(pgm_type, task, fit):
    pgm = PGMConfig(type=pgm_type, fit=fit, fit_steps=5)
    b, g = batch(task), spoiled(batch(task))
    fitted = []
    for x in (b, g, {**g, "valid": None}):
        torch.manual_seed(0)  # the chain CRF starts from random transitions
        head = PGMHead(pgm_settings(pgm, task, K))
        fit_pgm(head, x["unaries"], x["labels"], pgm, seed=0, batch_size=2, valid=x["valid"])
        fitted.append(head.state_dict())
    for name, value in fitted[0].items():
        torch.testing.assert_close(value, fitted[1][name], rtol=0, atol=1e-6)
    assert any(not torch.allclose(value, fitted[2][name]) for name, value in fitted[0].items())  # unmasked: differs


@pytest.mark.parametrize("pgm_type", ["hmm", "chain_crf"])
def test_a_chains_missing_labels_are_summed_out_exactly(pgm_type):
    """`nll` with a missing middle node equals brute force over every path: the missing node has no
    emission and any label."""
    torch.manual_seed(4)
    head = PGMHead(pgm_settings(PGMConfig(type=pgm_type), "tagging", 3))
    if pgm_type == "hmm":
        head.model.log_start.copy_(torch.tensor([0.6, 0.3, 0.1]).log())
        head.model.log_trans.copy_(torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]]).log())
    unaries, tags = torch.randn(1, 4, 3), torch.tensor([[0, 2, 2, 1]])
    valid = torch.tensor([[True, False, True, True]])
    emissions = head.emissions(unaries)[0] * valid[0, :, None]
    model = head.model

    def score(path):
        if pgm_type == "hmm":
            total = model.log_start[path[0]]
            moves = sum(model.log_trans[a, b] for a, b in zip(path, path[1:]))
        else:
            total = model.start_transitions[path[0]] + model.end_transitions[path[-1]]
            moves = sum(model.transitions[a, b] for a, b in zip(path, path[1:]))
        return total + moves + sum(emissions[t, y] for t, y in enumerate(path))

    every = list(itertools.product(range(3), repeat=4))
    log_z = torch.logsumexp(torch.stack([score(p) for p in every]), 0)
    agreeing = torch.logsumexp(torch.stack([score(p) for p in every if (p[0], p[2], p[3]) == (0, 2, 1)]), 0)
    torch.testing.assert_close(head.nll(unaries, tags, valid=valid), -(agreeing - log_z) / 4)


@pytest.mark.parametrize("task", ["segmentation", "tagging"])
def test_masked_garbage_changes_no_metric(task):
    b, g = batch(task), spoiled(batch(task))

    def report(x):
        sums = ReportSums(task, K, bins=10, tolerance=1)
        probs = torch.softmax(x["unaries"], dim=2).movedim(2, -1).numpy()
        sums.add(x["labels"].numpy(), x["unaries"].argmax(2).numpy(), probs, x["soft"].numpy(),
                 valid=x["valid"].numpy())
        quick = MetricSums(task, K)
        quick.add(x["labels"].numpy(), x["unaries"].argmax(2).numpy(), x["valid"].numpy())
        return {**sums.result(), **quick.result()}

    assert report(b) == report(g)
    assert sum(map(sum, report(b)["confusion"])) == int(b["valid"].sum())
    if task == "segmentation":
        scores = []
        for x in (b, g):
            verification = VerificationSums([1, 2], [1, 3], T)
            verification.add(x["labels"].numpy(), x["unaries"].argmax(2).numpy(), x["valid"].numpy())
            scores.append(verification.result())
        assert scores[0] == scores[1]


def test_masked_garbage_changes_no_regression_metric():
    b, g = batch("segmentation"), spoiled(batch("segmentation"))
    results = []
    for x in (b, g):
        sums = ReportSums("regression", None, bins=10, tolerance=1)
        sums.add(x["soft"].numpy(), x["unaries"].movedim(2, -1).numpy(), valid=x["valid"].numpy())
        results.append(sums.result())
    assert results[0] == results[1]


# --------------------------------------------------------------------------- phase 0 and the pipeline


def storms_with_gaps(folder: Path, seed: int) -> Path:
    """Built-in storms (8 sequences of 10 frames, 12x12) as HDF5 with 20% of the input pixels NaN,
    a mask dataset `valid` that marks the first column missing, and label 255 on the first row:
    three ways of missing data."""
    data = load_dataset(DataConfig(generator=GeneratorConfig(num_sequences=8, sequence_length=10, height=12,
                                                             width=12)), 0)
    x, y = data.X.copy(), data.Y.astype(np.int64)
    x[np.random.default_rng(seed).random(x.shape[:4]) < 0.2] = np.nan
    valid = np.ones(y.shape, np.uint8)
    valid[:, :, :, 0] = 0
    y[:, :, 0, :] = 255
    path = folder / "storms.h5"
    with h5py.File(path, "w") as f:
        f["X"], f["Y"], f["valid"] = x, y, valid
    return path


def masked_config(folder: Path, path: Path, extra: dict | None = None) -> str:
    raw = merge(merge({"data": {"root": str(folder / "data"), "dataset": "hdf5", "path": str(path),
                                "num_classes": 3, "T_window": 4, "stride": 3, "mask": "valid", "missing": "mask",
                                "ignore_label": 255}}, FAST), extra or {})
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return str(config)


def stored(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    processed = next((folder / "data" / "processed").iterdir())
    arrays = {f"{s}.{a}": np.load(runs.store_path(processed, s, a)) for s in runs.SPLITS for a in ("X", "Y", "M")}
    return arrays, json.loads(runs.meta_path(processed).read_text())


def test_phase_0_marks_nan_the_mask_dataset_and_the_ignored_label(tmp_path):
    ok("tools/preprocess.py", "--config", masked_config(tmp_path, storms_with_gaps(tmp_path, 5)))
    arrays, meta = stored(tmp_path)
    for split in runs.SPLITS:
        x, y, m = arrays[f"{split}.X"], arrays[f"{split}.Y"], arrays[f"{split}.M"]
        assert not m[:, :, 0].any() and not m[:, 0, :].any()  # the mask dataset's column, the ignored row
        # missing inputs take the mean (the ignored row's inputs are observed), ignored labels class 0
        assert (x[:, 1:][~m[:, 1:]] == 0).all() and (x[:, 0] != 0).any() and (y[:, 0] == 0).all()
        assert 0.15 < 1 - m[:, 1:, 1:].mean() < 0.25  # the NaN pixels: 20%
        assert meta["splits"][split]["masked_nodes"] == int((~m).sum())
    assert meta["masks"] == {"mask": "valid", "missing": "mask", "ignore_label": 255}
    # the training statistics count the observed inputs only: not NaN, not under the mask dataset
    with h5py.File(tmp_path / "storms.h5") as f:
        x = f["X"][sorted(s["index"] for s in meta["sequences"]["train"])][:, :, :, 1:]
    observed = x[np.isfinite(x)]
    np.testing.assert_allclose(meta["normalisation"]["mean"] + meta["normalisation"]["std"],
                               [observed.mean(dtype=np.float64), observed.std(dtype=np.float64)], rtol=1e-6)


def test_garbage_under_the_mask_dataset_changes_no_stored_value(tmp_path):
    made = []
    for name, garbage in (("a", None), ("b", -7.0)):
        folder = tmp_path / name
        folder.mkdir()
        path = storms_with_gaps(folder, 5)
        if garbage is not None:  # rewrite the masked column of inputs and labels only
            with h5py.File(path, "r+") as f:
                x, y = f["X"][()], f["Y"][()]
                x[:, :, :, 0], y[:, :, 1:, 0] = garbage, 2
                f["X"][...], f["Y"][...] = x, y
        ok("tools/preprocess.py", "--config", masked_config(folder, path))
        made.append(stored(folder)[0])
    for key in made[0]:
        assert np.array_equal(made[0][key], made[1][key]), key


@pytest.mark.slow  # phases 1 and 2 and evaluate.py on masked data (about a minute)
def test_the_pipeline_scores_observed_nodes_only(tmp_path):
    config = masked_config(tmp_path, storms_with_gaps(tmp_path, 5), {"evaluation": {"thresholds": [1]}})
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "base"))
    ok("fit_pgm.py", "--config", config, "--features", str(tmp_path / "base" / "features.pt"))
    # phase 2 fitted the CRF on the observed nodes only
    loaded = load_config(config)
    train = load_features(tmp_path / "base" / "features.pt", "--features")["splits"]["train"]
    head = PGMHead(pgm_settings(loaded.model.pgm, "segmentation", 3))
    fit_pgm(head, train["unaries"], train["labels"], loaded.model.pgm, loaded.seed, valid=train["valid"])
    fitted = files.load_pgm_params(tmp_path / "base" / "pgm_params.pkl", "pgm")["params"]
    for name, value in head.state_dict().items():
        np.testing.assert_allclose(fitted[name], value.numpy(), rtol=1e-4, atol=1e-6)
    ok("evaluate.py", "--config", config, "--ckpt", str(tmp_path / "base" / "best.pt"))
    arrays, _ = stored(tmp_path)
    report = json.loads((tmp_path / "base" / "metrics.json").read_text())["evaluate_test"]
    index = np.load(next((tmp_path / "data" / "processed").iterdir()) / "test.windows.npy")
    observed = sum(int(arrays["test.M"][row:row + 4].sum()) for row in index[:, 2])
    for name in ("unary", "pgm"):
        assert sum(map(sum, report[name]["confusion"])) == observed
        table = report[name]["verification"]["by_threshold"]["1"]
        assert sum(table[key] for key in ("hits", "misses", "false_alarms", "correct_negatives")) == observed
    # CMA-ES does not leave missing nodes out of its objective yet: it refuses the data
    done = run_script("evolve.py", "--config", config, "--strategy", "cmaes",
                      "--ckpt", str(tmp_path / "base" / "best.pt"), "--out", str(tmp_path / "cmaes"))
    assert done.returncode == 2 and "the CMA-ES objective does not leave out yet" in done.stderr, done.stderr
    assert not (tmp_path / "cmaes").exists()


def test_a_mask_of_another_shape_exits_2_and_writes_nothing(tmp_path):
    path = storms_with_gaps(tmp_path, 5)
    with h5py.File(path, "r+") as f:
        del f["valid"]
        f["valid"] = np.ones((8, 10, 12, 11), np.uint8)
    config = masked_config(tmp_path, path)
    before = snapshot(tmp_path)
    done = run_script("tools/preprocess.py", "--config", config)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert (f"{path}: dataset 'valid' (mask) has shape (8, 10, 12, 11); expected (8, 10, 12, 12) (axes NTHW"
            in done.stderr)
    assert snapshot(tmp_path) == before
