"""Forward-backward and Viterbi over chains too long to hold, their emissions read a chunk of steps
at a time.

An exact forward-backward needs every step's forward message again in its backward pass, and an
exact Viterbi every step's back-pointers in its backtrack: both are as large as the emissions. Here
they go to files in `directory` (`DiskArray`), so memory holds one chunk of steps however long the
chains are. The forward pass reads the emissions chunk by chunk in order; the backward pass (or the
backtrack) runs through the chunks in reverse and hands each one's result to `write` as soon as it
is known, last chunk first.

Both take the chain's potentials in log form, `log_start` `[K]`, `log_trans` `[K, K]` (`[i, j]`:
state i followed by j) and `log_end` `[K]` (zeros for an HMM; a linear-chain CRF's end
transitions), so one pair of functions serves the HMM and the chain CRF. The recursions run in
float64 numpy on the CPU: the scaled forward-backward of `models.hmm` with unnormalised potentials
(each step's posterior normalised), and Viterbi in log space with every step's scores shifted by
their maximum, which leaves every argmax where it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from regimen.core.disk_array import DiskArray

Emissions = Callable[[int, int], np.ndarray]  # steps a..b-1 -> log scores [b - a, M, K], M chains
Write = Callable[[int, int, np.ndarray], None]  # steps a..b-1 and their result [b - a, M(, K)]


def spans(length: int, chunk: int) -> list[tuple[int, int]]:
    """The steps `[a, b)` of each chunk of a chain of `length` steps."""
    return [(a, min(length, a + chunk)) for a in range(0, length, chunk)]


def streamed_marginals(log_start: np.ndarray, log_trans: np.ndarray, log_end: np.ndarray, emissions: Emissions,
                       length: int, chunk: int, directory: Path, write: Write) -> None:
    """`p(z_t = k | every emission of the chain)` of M chains, `[b - a, M, K]` to `write` chunk by
    chunk: equal to forward-backward over the whole chains at once."""
    start, trans, end = (np.exp(np.asarray(v, dtype=np.float64)) for v in (log_start, log_trans, log_end))
    alpha = scaled = previous = None  # scaled: each step's emissions over its forward normaliser
    for a, b in spans(length, chunk):
        emit = np.asarray(emissions(a, b), dtype=np.float64)  # (t, M, K)
        emit = np.exp(emit - emit.max(axis=2, keepdims=True))
        if alpha is None:
            alpha = DiskArray(directory / "alpha", np.float64, (length, *emit.shape[1:]))
            scaled = DiskArray(directory / "scaled", np.float64, (length, *emit.shape[1:]))
        forward = np.empty_like(emit)
        for step in range(a, b):
            message = start * emit[0] if step == 0 else (previous @ trans) * emit[step - a]
            normaliser = message.sum(axis=1, keepdims=True)  # (M, 1)
            forward[step - a] = previous = message / normaliser
            emit[step - a] /= normaliser
        alpha.set_rows(a, forward)
        scaled.set_rows(a, emit)
    into, carried = np.ascontiguousarray(trans.T), None  # carried: scaled_{t+1} * beta_{t+1}
    for a, b in reversed(spans(length, chunk)):
        forward, emit = alpha.rows(a, b), scaled.rows(a, b)
        posterior = np.empty_like(forward)
        for step in range(b - 1, a - 1, -1):
            beta = np.broadcast_to(end, forward.shape[1:]) if step == length - 1 else carried @ into
            joint = forward[step - a] * beta
            posterior[step - a] = joint / joint.sum(axis=1, keepdims=True)
            carried = emit[step - a] * beta
        write(a, b, posterior)
    alpha.close()
    scaled.close()


def streamed_viterbi(log_start: np.ndarray, log_trans: np.ndarray, log_end: np.ndarray, emissions: Emissions,
                     length: int, chunk: int, directory: Path, write: Write) -> None:
    """The most likely state path of M chains, `[b - a, M]` to `write` chunk by chunk: equal to
    Viterbi over the whole chains at once (up to ties between paths)."""
    log_start, log_trans, log_end = (np.asarray(v, dtype=np.float64) for v in (log_start, log_trans, log_end))
    pointers = delta = None
    for a, b in spans(length, chunk):
        emit = np.asarray(emissions(a, b), dtype=np.float64)  # (t, M, K)
        m, k = emit.shape[1:]
        if pointers is None:
            pointers = DiskArray(directory / "pointers", np.int16 if k < 2 ** 15 else np.int32, (length, m, k))
        chosen = np.zeros((b - a, m, k), dtype=pointers.dtype)  # the best state before each one
        for step in range(a, b):
            if step == 0:
                delta = log_start + emit[0]
            else:
                moves = delta[:, :, None] + log_trans  # (M, K_before, K_now)
                best = moves.argmax(axis=1)  # (M, K_now)
                chosen[step - a] = best
                delta = np.take_along_axis(moves, best[:, None, :], axis=1)[:, 0] + emit[step - a]
            delta -= delta.max(axis=1, keepdims=True)
        pointers.set_rows(a, chosen)
    state, chains = (delta + log_end).argmax(axis=1), np.arange(delta.shape[0])
    for a, b in reversed(spans(length, chunk)):
        back = pointers.rows(a, b)
        path = np.empty((b - a, len(chains)), dtype=np.int64)
        for step in range(b - 1, a - 1, -1):
            path[step - a] = state
            state = back[step - a][chains, state]
        write(a, b, path)
    pointers.close()
