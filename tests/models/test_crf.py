"""Space-time CRF: mean-field fixed points, exact marginals by enumeration, loopy BP."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.crf import SpaceTimeCRF, shift
from reference_models import crf_energy


def grid_edges(t: int, h: int, w: int, temporal: bool):
    """Undirected 4-neighbour (and temporal) edges of a T x H x W grid, as (node, node, kind)."""
    nodes = list(itertools.product(range(t), range(h), range(w)))
    edges = []
    for a, (ti, i, j) in enumerate(nodes):
        for b, (tk, k, l) in enumerate(nodes):
            if b <= a:
                continue
            if ti == tk and abs(i - k) + abs(j - l) == 1:
                edges.append((a, b, "spatial"))
            elif temporal and i == k and j == l and abs(ti - tk) == 1:
                edges.append((a, b, "temporal"))
    return nodes, edges


def exact_marginals(crf: SpaceTimeCRF, unaries: torch.Tensor) -> torch.Tensor:
    """Marginals `[1, T, K, H, W]` by summing over every labelling."""
    _, t, k, h, w = unaries.shape
    nodes, edges = grid_edges(t, h, w, bool(crf.temporal_offsets))
    mu = crf.compatibility_matrix().detach()
    weight = {"spatial": crf.spatial_weight.detach(), "temporal": crf.temporal_weight.detach()}
    log_p, labellings = [], list(itertools.product(range(k), repeat=len(nodes)))
    for labels in labellings:
        energy = -sum(unaries[0, ti, labels[n], i, j] for n, (ti, i, j) in enumerate(nodes))
        energy = energy + sum(weight[kind] * mu[labels[a], labels[b]] for a, b, kind in edges)
        log_p.append(-energy)
    log_p = torch.stack(log_p)
    p = torch.softmax(log_p, 0)
    out = torch.zeros_like(unaries)
    for prob, labels in zip(p, labellings):
        for n, (ti, i, j) in enumerate(nodes):
            out[0, ti, labels[n], i, j] += prob
    return out


def test_shift_moves_values_from_the_neighbour():
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).view(1, 2, 1, 3, 4)
    y = shift(x, (0, 0, 1))
    assert torch.equal(y[0, 0, 0, :, :3], x[0, 0, 0, :, 1:]) and (y[..., 3] == 0).all()
    y = shift(x, (-1, 1, 0))
    assert torch.equal(y[0, 1, 0, :2], x[0, 0, 0, 1:]) and (y[:, 0] == 0).all()


@pytest.mark.parametrize("frames, temporal", [(1, False), (2, True)])
@pytest.mark.parametrize("compatibility", ["potts", "learned"])
def test_mean_field_reaches_a_fixed_point(frames, temporal, compatibility):
    torch.manual_seed(0)
    crf = SpaceTimeCRF(3, temporal_links=temporal, iterations=200, pairwise_weight=0.4,
                       compatibility=compatibility).double()
    if compatibility == "learned":
        with torch.no_grad():
            crf.compatibility.add_(0.3 * torch.randn(3, 3, dtype=torch.float64))
    unaries = torch.randn(2, frames, 3, 2, 2, dtype=torch.float64)
    q = torch.softmax(crf(unaries), dim=2)
    weights = crf.edge_weights(unaries)
    again = torch.softmax(unaries - crf._pairwise_field(q, weights, crf.compatibility_matrix()), dim=2)
    assert (q - again).abs().max() < 1e-6


@pytest.mark.parametrize("frames, temporal", [(1, False), (2, True)])
def test_mean_field_is_closer_to_the_exact_marginals_than_the_unaries(frames, temporal):
    wins = 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        # A smoothing problem: a clean 2-class labelling seen through noisy unaries.
        truth = torch.randint(2, (1,), generator=g).item()
        unaries = torch.zeros(1, frames, 2, 2, 2, dtype=torch.float64)
        unaries[:, :, truth] = 0.5
        unaries = unaries + 0.8 * torch.randn(unaries.shape, generator=g, dtype=torch.float64)
        crf = SpaceTimeCRF(2, temporal_links=temporal, iterations=50, pairwise_weight=0.5).double()
        exact = exact_marginals(crf, unaries)
        with torch.no_grad():
            mean_field = torch.softmax(crf(unaries), dim=2)
        unary_only = torch.softmax(unaries, dim=2)
        wins += (mean_field - exact).abs().sum() < (unary_only - exact).abs().sum()
    assert wins == 10


def test_zero_pairwise_weight_returns_the_unaries():
    unaries = torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(SpaceTimeCRF(4, pairwise_weight=0.0)(unaries), unaries)


def test_gradcheck_through_the_unrolled_iterations():
    torch.manual_seed(0)
    crf = SpaceTimeCRF(3, neighbourhood=8, iterations=3, pairwise_weight=0.5, compatibility="learned",
                       edge_aware=True).double()
    unaries = torch.randn(1, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(1, 2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, g: crf(u, g), (unaries, guide))
    crf(unaries, guide).sum().backward()
    for p in crf.parameters():
        assert p.grad is not None


def test_weights_stay_positive_and_edges_follow_the_guide():
    crf = SpaceTimeCRF(2, pairwise_weight=0.5, edge_aware=True)
    with torch.no_grad():
        crf.raw_spatial.fill_(-50.0)
    assert crf.spatial_weight > 0
    guide = torch.zeros(1, 1, 1, 1, 3)
    guide[..., 2] = 5.0  # a strong edge between columns 1 and 2
    weights = crf.edge_weights(torch.zeros(1, 1, 2, 1, 3), guide)
    right = weights[(0, 0, 1)][0, 0, 0, 0]
    assert right[0] > 100 * right[1]
    with pytest.raises(ValueError, match="edge_aware needs a guide image"):
        crf.edge_weights(torch.zeros(1, 1, 2, 1, 3))


def test_constructor_validation():
    with pytest.raises(ValueError, match="neighbourhood must be 4 or 8"):
        SpaceTimeCRF(3, neighbourhood=6)
    with pytest.raises(ValueError, match="pairwise_weight must be >= 0"):
        SpaceTimeCRF(3, pairwise_weight=-1)
    with pytest.raises(ValueError, match=r"unaries must be \[B, T, 3, H, W\]"):
        SpaceTimeCRF(3)(torch.zeros(1, 2, 4, 3, 3))


@pytest.mark.parametrize("seed", range(3))
def test_loopy_bp_on_a_strip_is_exact(seed):
    g = torch.Generator().manual_seed(seed)
    width = 5
    crf = SpaceTimeCRF(3, temporal_links=False, iterations=width + 1, pairwise_weight=0.8,
                       compatibility="learned", inference="loopy_bp").double()
    with torch.no_grad():
        crf.compatibility.copy_(torch.randn(3, 3, generator=g, dtype=torch.float64))
    unaries = torch.randn(1, 1, 3, 1, width, generator=g, dtype=torch.float64)
    with torch.no_grad():
        marginals = torch.softmax(crf(unaries), dim=2)
        exact = exact_marginals(crf, unaries)
        assert (marginals - exact).abs().max() < 1e-9
        labels = crf.decode(unaries)
        best = min(itertools.product(range(3), repeat=width),
                   key=lambda y: float(crf_energy(crf, torch.tensor(y).view(1, 1, 1, width), unaries)))
        assert labels.flatten().tolist() == list(best)


def test_energy_matches_the_enumerated_definition():
    g = torch.Generator().manual_seed(1)
    crf = SpaceTimeCRF(2, pairwise_weight=0.7).double()
    unaries = torch.randn(1, 2, 2, 2, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(2, (1, 2, 2, 2), generator=g)
    nodes, edges = grid_edges(2, 2, 2, True)
    expected = -sum(unaries[0, t, labels[0, t, i, j], i, j] for t, i, j in nodes)
    flat = [labels[0, t, i, j] for t, i, j in nodes]
    weight = crf.spatial_weight.detach()  # 0.7 up to the float32 initialisation
    expected = expected + weight * sum(float(flat[a] != flat[b]) for a, b, _ in edges)
    with torch.no_grad():
        assert abs(float(crf_energy(crf, labels, unaries)[0] - expected)) < 1e-9


def test_max_product_on_a_grid_is_no_worse_than_the_unary_argmax():
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        crf = SpaceTimeCRF(3, iterations=30, pairwise_weight=0.6, inference="loopy_bp", damping=0.5).double()
        unaries = torch.randn(2, 3, 3, 6, 6, generator=g, dtype=torch.float64)
        with torch.no_grad():
            labels = crf.decode(unaries)
            assert (crf_energy(crf, labels, unaries) <= crf_energy(crf, unaries.argmax(2), unaries) + 1e-9).all()
