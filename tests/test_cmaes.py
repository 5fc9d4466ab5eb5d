"""CMA-ES fine-tuning: batched population losses equal one-at-a-time ones, pycma improves,
the script writes its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ok, run_script, snapshot, tiny_config
from models.convlstm import ConvLSTM
from regimen.search.cmaes import PopulationLoss, diagonal_for, kl_batchmean, run_cmaes


def readme_problem(seed=0):
    """The original README's objective: ConvLSTM 1 -> 8 channels, 3x3, batch 2, 4 frames, 8x8, uniform target."""
    torch.manual_seed(seed)
    model = ConvLSTM(1, [8], 3).eval()
    x = torch.randn(2, 4, 1, 8, 8)
    target = torch.full((1, 1, 8, 1, 1), 1 / 8)
    return model, x, lambda out: kl_batchmean(F.log_softmax(out[0], dim=2), target, dim=2)


def test_kl_batchmean_is_torchs_kl_div_batchmean():
    log_q = F.log_softmax(torch.randn(2, 3, 4, 5, 5), dim=2)
    target = F.softmax(torch.randn(2, 3, 4, 5, 5), dim=2)
    expected = F.kl_div(log_q.movedim(2, -1).reshape(-1, 4), target.movedim(2, -1).reshape(-1, 4),
                        reduction="batchmean")
    assert torch.allclose(kl_batchmean(log_q, target, dim=2), expected, atol=1e-7)


@pytest.mark.parametrize("mode", ["batched", "loop"])
def test_population_losses_equal_each_model_run_alone(mode):
    model, x, loss = readme_problem()
    names = [name for name, _ in model.named_parameters()]
    population = PopulationLoss(model, names, loss, (x,), mode=mode)
    x0 = population.start()
    assert len(x0) == 2624  # the README's weight count
    candidates = x0 + 0.1 * np.random.default_rng(0).standard_normal((5, len(x0)))
    losses = population(candidates)
    for vector, value in zip(candidates, losses):
        alone = ConvLSTM(1, [8], 3).eval()
        torch.nn.utils.vector_to_parameters(torch.as_tensor(vector, dtype=torch.float32), alone.parameters())
        with torch.no_grad():
            assert value == pytest.approx(float(loss(alone(x))), rel=1e-5)


def test_pycma_lowers_the_readme_kl():
    model, x, loss = readme_problem()
    population = PopulationLoss(model, [name for name, _ in model.named_parameters()], loss, (x,))
    x0 = population.start()
    start = float(population(x0[None])[0])
    _, final, records = run_cmaes(population, x0, 0.1, 16, 30, seed=1, diagonal=diagonal_for("auto", len(x0)))
    print(f"README objective: KL {start:.6f} -> {final:.6f} after 30 generations")  # pytest -s shows it
    assert final < start / 2 and len(records) == 30 and records[-1]["evaluations"] == 480
    assert [r["best_so_far"] for r in records] == sorted((r["best_so_far"] for r in records), reverse=True)


def test_evolve_cmaes_fine_tunes_a_checkpoint(tmp_path):
    config = tiny_config(tmp_path, {"evolutionary": {"cmaes": {"generations": 4, "population_size": 6,
                                                               "groups": ["head"], "batch_windows": 4}}})
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "base"))
    out = tmp_path / "cma"
    done = ok("evolve.py", "--config", config, "--strategy", "cmaes", "--ckpt", str(tmp_path / "base" / "best.pt"),
              "--out", str(out))
    assert "CMA-ES: kl" in done.stderr
    result = json.loads((out / "metrics.json").read_text())["cmaes"]
    assert result["final_loss"] <= result["start_loss"] and result["weights"] == 6 * 3 + 3  # 1x1 conv head
    assert (out / "cmaes_loss.png").stat().st_size > 1000 and len((out / "cmaes.csv").read_text().splitlines()) == 5
    saved = torch.load(out / "ckpt.pt", weights_only=True)
    assert saved["kind"] == "convlstm" and saved["cmaes"]["objective"] == "kl"
    ok("evaluate.py", "--config", config, "--ckpt", str(out / "ckpt.pt"), "--out", str(tmp_path / "eval"))

    before = snapshot(tmp_path)
    for args, expected in ((["--ckpt", str(tmp_path / "base" / "best.pt"), "--out", str(out)], "already holds a CMA-ES run ("),
                           ([], "--strategy cmaes needs --ckpt PATH"),
                           (["--ckpt", str(tmp_path / "base" / "best.pt"), "--out", str(tmp_path / "c2"),
                             "--set", "evolutionary.cmaes.groups=[encoder.cells.7]"], "matches no parameter")):
        done = run_script("evolve.py", "--config", config, "--strategy", "cmaes", *args)
        assert done.returncode == 2 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before
