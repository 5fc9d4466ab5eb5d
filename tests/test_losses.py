"""The unary, structured and consistency losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from regimen.core.errors import UserError
from regimen.train.losses import consistency, resolve_unary_loss, unary_loss


def test_cross_entropy_over_every_pixel():
    outputs = torch.zeros(1, 1, 2, 1, 2)  # B, T, K, H, W
    outputs[0, 0, 0, 0, 0] = math.log(3.0)  # pixel 0: p(class 0) = 3/4
    labels = torch.tensor([[[[0, 1]]]])  # pixel 1 is uniform: p = 1/2
    expected = -(math.log(0.75) + math.log(0.5)) / 2
    assert unary_loss("ce", outputs, labels).item() == pytest.approx(expected)


def test_kl_is_batchmean_over_nodes():
    outputs = torch.zeros(1, 2, 2)  # tagging: B, T, K (uniform predictions)
    soft = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    expected = (math.log(2.0) + 0.0) / 2  # KL(one-hot || uniform) = log 2; KL(uniform || uniform) = 0
    assert unary_loss("kl", outputs, torch.zeros(1, 2, dtype=torch.long), soft).item() == pytest.approx(expected)


def test_mse_compares_in_the_target_layout():
    outputs = torch.zeros(1, 1, 2, 1, 1)  # B, T, C', H, W
    outputs[0, 0, 1] = 2.0
    target = torch.tensor([[[[[0.0, 1.0]]]]])  # B, T, H, W, C'
    assert unary_loss("mse", outputs, target).item() == pytest.approx((0.0 + 1.0) / 2)
    outputs[0, 0, 1] = 3.0
    assert unary_loss("l1", outputs, target).item() == pytest.approx((0.0 + 2.0) / 2)  # |3 - 1| = 2, not 4


def test_consistency_counts_only_where_the_input_stays():
    log_q = torch.log(torch.tensor([[[0.9, 0.1], [0.1, 0.9]]]))  # tagging, B=1, T=2: the label flips
    still, moving = torch.zeros(1, 2, 1, 5, 5), torch.zeros(1, 2, 1, 5, 5)
    moving[:, 1] = 3.0
    flip = (0.8 ** 2) * 2
    assert consistency(log_q, still).item() == pytest.approx(flip)
    assert consistency(log_q, moving).item() == pytest.approx(flip * math.exp(-9.0))
    steady = torch.log(torch.full((1, 3, 2, 4, 4), 0.5))
    assert consistency(steady, torch.randn(1, 3, 1, 4, 4)).item() == 0.0


def test_the_unary_loss_must_fit_the_task():
    assert resolve_unary_loss("auto", "regression", False) == "mse"
    assert resolve_unary_loss("auto", "tagging", False) == "ce"
    with pytest.raises(UserError, match="loss.unary = 'kl' needs soft targets P"):
        resolve_unary_loss("kl", "segmentation", False)
    with pytest.raises(UserError, match="loss.unary = 'ce' does not fit task 'regression'"):
        resolve_unary_loss("ce", "regression", False)
    assert resolve_unary_loss("l1", "regression", False) == "l1"
    with pytest.raises(UserError, match=r"loss.unary = 'l1' does not fit task 'tagging': expected ce or kl \(or auto\)"):
        resolve_unary_loss("l1", "tagging", False)
