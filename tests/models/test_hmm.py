"""HMM forward-backward, Viterbi, MLE and EM against brute-force enumeration."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.hmm import HMM, forward_backward, viterbi


def random_hmm(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    log_start = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    log_trans = torch.log_softmax(torch.randn(k, k, generator=g, dtype=torch.float64), 1)
    return log_start, log_trans, g


def ragged_mask(lengths: list[int], t: int) -> torch.Tensor:
    return torch.arange(t)[None] < torch.tensor(lengths)[:, None]


def enumerate_chain(log_start, log_trans, log_emit_row, length):
    """Every path of one chain: (log joint, path)."""
    k = log_start.shape[0]
    for path in itertools.product(range(k), repeat=length):
        score = log_start[path[0]] + log_emit_row[0, path[0]]
        for step in range(1, length):
            score = score + log_trans[path[step - 1], path[step]] + log_emit_row[step, path[step]]
        yield score, path


@pytest.mark.parametrize("seed", range(4))
def test_forward_backward_and_viterbi_equal_enumeration(seed):
    k, t = 3, 5
    log_start, log_trans, g = random_hmm(k, seed)
    lengths = [5, 3, 1, 4]
    log_emit = torch.randn(len(lengths), t, k, generator=g, dtype=torch.float64)
    mask = ragged_mask(lengths, t)
    log_likelihood, posteriors = forward_backward(log_start, log_trans, log_emit, mask)
    paths, scores = viterbi(log_start, log_trans, log_emit, mask)
    for b, length in enumerate(lengths):
        joint = list(enumerate_chain(log_start, log_trans, log_emit[b], length))
        logs = torch.stack([s for s, _ in joint])
        total = torch.logsumexp(logs, 0)
        assert abs(float(log_likelihood[b] - total)) < 1e-9
        expected = torch.zeros(t, k, dtype=torch.float64)
        for score, path in joint:
            for step, state in enumerate(path):
                expected[step, state] += torch.exp(score - total)
        assert torch.allclose(posteriors[b], expected, atol=1e-9, rtol=0)
        best = int(torch.argmax(logs))
        assert paths[b, :length].tolist() == list(joint[best][1])
        assert (paths[b, length:] == -1).all()
        assert abs(float(scores[b] - logs[best])) < 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_steps_masked_inside_a_chain_decode_as_if_removed(seed):
    """A mask with holes (not a prefix): Viterbi and forward-backward equal the chains with the
    masked steps taken out (no transition, no emission there); -1 and 0 at the holes."""
    k, t = 4, 9
    log_start, log_trans, g = random_hmm(k, seed)
    log_emit = torch.randn(5, t, k, generator=g, dtype=torch.float64)
    mask = torch.rand(5, t, generator=g) > 0.35
    mask[:, 0] = True
    paths, scores = viterbi(log_start, log_trans, log_emit, mask)
    log_likelihood, posteriors = forward_backward(log_start, log_trans, log_emit, mask)
    for b in range(5):
        kept = log_emit[b][mask[b]][None]
        alone, alone_score = viterbi(log_start, log_trans, kept)
        assert paths[b][mask[b]].tolist() == alone[0].tolist() and (paths[b][~mask[b]] == -1).all()
        assert abs(float(scores[b] - alone_score[0])) < 1e-9
        alone_likelihood, alone_posteriors = forward_backward(log_start, log_trans, kept)
        assert abs(float(log_likelihood[b] - alone_likelihood[0])) < 1e-9
        assert torch.allclose(posteriors[b][mask[b]], alone_posteriors[0], atol=1e-9)
        assert (posteriors[b][~mask[b]] == 0).all()


def test_a_masked_step_leaves_the_chain_where_it_was():
    from models.hmm import _scaled_passes
    log_start, log_trans, g = random_hmm(3, 2)
    log_emit = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    mask = ragged_mask([5, 2], 5)
    alpha, beta, scale, _, _ = _scaled_passes(log_start, log_trans, log_emit, mask)
    assert torch.equal(alpha[1, 2:], alpha[1, 1].expand(3, 3))
    assert (scale[1, 2:] == 1).all() and (beta[1, 1:] == 1).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_numpy_passes_equal_the_differentiable_ones(dtype):
    """Without gradients on the CPU the recursions run in numpy; with them, in torch: the same
    alpha, beta, scales and log-likelihood, on a ragged mask with holes."""
    from models.hmm import _scaled_passes
    log_start, log_trans, g = random_hmm(5, 3)
    log_start, log_trans = log_start.to(dtype), log_trans.to(dtype)
    log_emit = (torch.randn(6, 11, 5, generator=g, dtype=torch.float64) * 3).to(dtype)
    mask = (torch.rand(6, 11, generator=g) > 0.3) & ragged_mask([11, 9, 4, 11, 1, 7], 11)
    mask[:, 0] = True
    plain = _scaled_passes(log_start, log_trans, log_emit, mask)
    traced = _scaled_passes(log_start, log_trans, log_emit.clone().requires_grad_(), mask)
    assert not plain[0].requires_grad and traced[0].requires_grad  # the two paths ran
    for ours, theirs in zip(plain, traced):
        assert ours.dtype == dtype and ours.shape == theirs.shape
        assert torch.allclose(ours, theirs.detach(), rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)


def test_posteriors_sum_to_one_and_survive_tiny_emissions():
    log_start, log_trans, g = random_hmm(4, 0)
    log_emit = torch.randn(8, 200, 4, generator=g, dtype=torch.float64) * 50 - 1000
    log_likelihood, posteriors = forward_backward(log_start, log_trans, log_emit)
    assert torch.isfinite(log_likelihood).all()
    assert torch.allclose(posteriors.sum(-1), torch.ones(8, 200, dtype=torch.float64), atol=1e-12)


def test_gradcheck_forward():
    log_start, log_trans, g = random_hmm(3, 1)
    log_emit = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = ragged_mask([4, 2], 4)
    assert torch.autograd.gradcheck(lambda e: forward_backward(log_start, log_trans, e, mask)[0], (log_emit,))


def test_mask_must_start_on():
    log_start, log_trans, _ = random_hmm(2, 0)
    with pytest.raises(ValueError, match="first step of every chain must be on"):
        forward_backward(log_start, log_trans, torch.zeros(1, 3, 2, dtype=torch.float64),
                         torch.tensor([[False, True, True]]))


def sample_chains(log_start, log_trans, n, t, seed):
    g = torch.Generator().manual_seed(seed)
    states = torch.empty(n, t, dtype=torch.long)
    states[:, 0] = torch.multinomial(log_start.exp().expand(n, -1), 1, generator=g)[:, 0]
    for step in range(1, t):
        states[:, step] = torch.multinomial(log_trans.exp()[states[:, step - 1]], 1, generator=g)[:, 0]
    return states


def test_supervised_mle_recovers_a_known_transition_matrix():
    trans = torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.25, 0.25, 0.5]], dtype=torch.float64)
    states = sample_chains(torch.full((3,), 1 / 3, dtype=torch.float64).log(), trans.log(), 400, 50, 0)
    hmm = HMM(3).double()
    hmm.fit_supervised(states, pseudo_count=0.0)
    counts = 400 * 49 * torch.tensor([1 / 3] * 3, dtype=torch.float64)[:, None]
    tolerance = 4 * (trans * (1 - trans) / counts).sqrt()  # 4 standard errors
    assert ((hmm.log_trans.exp() - trans).abs() < tolerance).all()


@pytest.mark.parametrize("emission", ["categorical", "gaussian"])
def test_em_never_decreases_the_log_likelihood(emission):
    torch.manual_seed(0)
    log_start = torch.tensor([0.6, 0.4], dtype=torch.float64).log()
    log_trans = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64).log()
    states = sample_chains(log_start, log_trans, 30, 40, 1)
    mask = ragged_mask([40] * 20 + [25] * 10, 40)
    if emission == "categorical":
        table = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=torch.float64)
        observations = torch.multinomial(table[states.flatten()], 1)[:, 0].view(30, 40)
        hmm = HMM(2, "categorical", num_symbols=3).double()
        hmm.log_emission.copy_(torch.log_softmax(torch.randn(2, 3, dtype=torch.float64), 1))
    else:
        observations = torch.randn(30, 40, 2, dtype=torch.float64) + 2.0 * states[..., None]
        hmm = HMM(2, "gaussian", num_features=2).double()
    history = hmm.fit_em(observations, mask, iterations=15, tolerance=0.0)
    assert len(history) == 15
    assert all(b >= a - 1e-9 for a, b in zip(history, history[1:]))
    assert history[-1] > history[0]


def test_decode_pixels_runs_every_pixel_as_its_own_chain():
    hmm = HMM(2).double()
    hmm.log_trans.copy_(torch.tensor([[0.95, 0.05], [0.05, 0.95]], dtype=torch.float64).log())
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 6, 2, 3, 4, generator=g, dtype=torch.float64), 2)
    labels = hmm.decode_pixels(log_probs)
    assert labels.shape == (2, 6, 3, 4)
    for b, i, j in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        single, _ = viterbi(hmm.log_start, hmm.log_trans, log_probs[b, :, :, i, j][None])
        assert torch.equal(labels[b, :, i, j], single[0])
