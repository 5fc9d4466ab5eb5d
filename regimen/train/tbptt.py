"""Truncated backpropagation through time across a sequence's windows (`training.stateful`).

The training windows come by sequence (`SequenceBatches`): a global batch holds one window of each
of up to `batch_size` sequences, and the next batch their next windows. Each window's ConvLSTM
starts from the state its sequence's previous window ended with, detached: gradients stop at the
window's edges, while the state, and so the context a decision uses, runs along the whole
sequence, as in stateful evaluation. Windows tile their sequences (`data.stride = data.T_window`),
so a window's final state is exactly where its next window starts. The first window of a sequence
starts from zeros (so does every window after a resume: each epoch starts with first windows).

Under torchrun every process runs its share of a batch's windows; the final states are gathered in
rank order after each step, so whichever process gets a window in the next batch (the shares move
as sequences run out) finds its predecessor's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from regimen.data.processed import TaskData
from regimen.data.windows import Share, WindowDataset
from regimen.train.distributed import World

State = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (h, c), each [B, hidden, H, W]


@dataclass
class Carry:
    """The state a micro-batch's windows start from (None: zeros), and, once the network has run
    them, the state they end with, detached (`Stack.unaries` sets it)."""

    state: Optional[State]
    final: Optional[State] = None


class StateCarrier:
    """The state each window of the last global batch ended with, by its place in that batch, and
    where those windows start in their sequences: what the next batch's windows continue from."""

    def __init__(self, windows: WindowDataset, stride: int, world: World):
        self.sequence, self.start, self.stride, self.world = windows.sequence, windows.start, stride, world
        self.previous: Optional[tuple[np.ndarray, np.ndarray, State]] = None  # sequences, starts, states (CPU)

    @classmethod
    def of(cls, data: TaskData, world: World) -> "StateCarrier":
        """The carrier of the training windows of processed `data`."""
        return cls(data.windows("train"), int(data.meta["stride"]), world)

    def carries(self, share: Share, device: torch.device) -> list[Carry]:
        """One `Carry` per micro-batch of this process's share: each window continues the window at
        its place in the last batch when that was its sequence's previous window."""
        rows = np.asarray(share.rows)
        state = None
        if self.previous is not None and not share.stand_in:
            sequences, starts, states = self.previous
            places = np.arange(share.offset, share.offset + len(rows))
            inside = places < len(sequences)
            follows = np.zeros(len(rows), dtype=bool)
            follows[inside] = ((sequences[places[inside]] == self.sequence[rows[inside]])
                               & (starts[places[inside]] == self.start[rows[inside]] - self.stride))
            if follows.any():
                state = [tuple(_continued(part, places, follows).to(device) for part in layer) for layer in states]
        edges = np.cumsum([0, *share.sizes])
        return [Carry(None if state is None else [(h[a:b], c[a:b]) for h, c in state])
                for a, b in zip(edges[:-1], edges[1:])]

    def keep(self, share: Share, carries: list[Carry]) -> None:
        """After a step: every process's windows' final states, in their places of the batch."""
        mine = None
        if not share.stand_in:
            finals = [carry.final for carry in carries]
            state = [tuple(torch.cat([f[layer][i] for f in finals]).cpu() for i in range(2))
                     for layer in range(len(finals[0]))]
            mine = (share.offset, np.asarray(share.rows), state)
        pieces = sorted((p for p in self.world.gather(mine) if p is not None), key=lambda p: p[0])
        rows = np.concatenate([p[1] for p in pieces])
        states = [tuple(torch.cat([p[2][layer][i] for p in pieces]) for i in range(2))
                  for layer in range(len(pieces[0][2]))]
        self.previous = (self.sequence[rows], self.start[rows], states)


def _continued(part: torch.Tensor, places: np.ndarray, follows: np.ndarray) -> torch.Tensor:
    """The states `part` `[B_previous, ...]` at `places` where a window `follows` its place, zeros
    elsewhere: `[len(places), ...]`."""
    out = torch.zeros((len(places), *part.shape[1:]), dtype=part.dtype)
    out[torch.from_numpy(follows)] = part[torch.from_numpy(places[follows])]
    return out
