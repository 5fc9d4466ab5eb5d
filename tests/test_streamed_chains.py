"""Forward-backward and Viterbi streamed a chunk of steps at a time, against brute-force enumeration
and against the in-memory recursions over the whole chains."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from models.hmm import forward_backward, viterbi
from regimen.train.streaming import spans, streamed_marginals, streamed_viterbi


def chains(m: int, t: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    log_start = np.log(rng.dirichlet(np.ones(k)))
    log_trans = rng.normal(size=(k, k)) + 2 * np.eye(k)  # unnormalised: a chain CRF's transitions
    log_end = rng.normal(size=k)
    return log_start, log_trans, log_end, 2 * rng.normal(size=(t, m, k))


def streamed(function, potentials, emit, chunk, directory):
    """What `function` writes, chunk by chunk, joined in step order; and the chunks it read."""
    pieces, asked = {}, []
    directory.mkdir()

    def emissions(a, b):
        asked.append((a, b))
        return emit[a:b]

    function(*potentials, emissions, len(emit), chunk, directory, lambda a, b, value: pieces.update({a: value}))
    return np.concatenate([pieces[a] for a in sorted(pieces)]), asked


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_streamed_chains_equal_enumeration_with_end_potentials(chunk, tmp_path):
    m, t, k = 3, 5, 3
    log_start, log_trans, log_end, emit = chains(m, t, k, seed=chunk)
    potentials = (log_start, log_trans, log_end)
    posterior, asked = streamed(streamed_marginals, potentials, emit, chunk, tmp_path / "m")
    path, _ = streamed(streamed_viterbi, potentials, emit, chunk, tmp_path / "v")
    assert asked == spans(t, chunk) and max(b - a for a, b in asked) <= chunk  # a chunk at a time
    for chain in range(m):
        scores = {}
        for states in itertools.product(range(k), repeat=t):
            score = log_start[states[0]] + log_end[states[-1]] + sum(emit[s, chain, states[s]] for s in range(t))
            scores[states] = score + sum(log_trans[states[s - 1], states[s]] for s in range(1, t))
        total = np.logaddexp.reduce(list(scores.values()))
        for step in range(t):
            exact = [np.exp(np.logaddexp.reduce([v for p, v in scores.items() if p[step] == state]) - total)
                     for state in range(k)]
            np.testing.assert_allclose(posterior[step, chain], exact, rtol=1e-10, atol=1e-12)
        assert tuple(path[:, chain]) == max(scores, key=scores.get)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_streamed_hmm_equals_the_whole_chain_at_once(chunk, tmp_path):
    m, t, k = 6, 50, 4
    log_start, log_trans, _, emit = chains(m, t, k, seed=3)
    log_trans = log_trans - np.logaddexp.reduce(log_trans, axis=1, keepdims=True)  # an HMM's
    potentials = (log_start, log_trans, np.zeros(k))
    tensors = [torch.from_numpy(v) for v in (log_start, log_trans, emit.transpose(1, 0, 2).copy())]
    _, at_once = forward_backward(*tensors)
    path_at_once, _ = viterbi(*tensors)
    posterior, _ = streamed(streamed_marginals, potentials, emit, chunk, tmp_path / "m")
    path, _ = streamed(streamed_viterbi, potentials, emit, chunk, tmp_path / "v")
    np.testing.assert_allclose(posterior.transpose(1, 0, 2), at_once.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(path.T, path_at_once.numpy())
