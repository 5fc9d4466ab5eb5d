"""Whole-sequence decoding: the PGM over each sequence's whole chain, across window boundaries.

With `evaluation.stateful` every window's unaries are those of the network run
over its whole sequence (`inference.stateful_outputs`), so a sequence's frames
have one unary each however its windows overlap. Decoding each window on its
own would still cut the chain at every window boundary: an HMM's or a chain
CRF's Viterbi and forward-backward would see `T_window` frames of context, and
the space-time CRF would have no link from one window's last frame to the next
one's first. Here the windows of a batch of sequences are stitched back into
each sequence's frames, the head decodes (and gives marginals of) every whole
sequence at once, and each window gets its slice: the result equals decoding
the concatenated sequence, and a frame covered by two windows gets one label.

Memory is bounded by the batch of sequences, not by a window: every frame of
those sequences is held until they are decoded.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from regimen.train.pgm import PGMHead


class SequenceBatch:
    """The windows of a batch of whole sequences, as `inference.Outputs` in any order, and where each
    one lies: `sequence[row]`, the sequence a window of the split belongs to, and `start[row]`, its
    first frame in that sequence. A split's part of a sequence (split by time: frames 100 on) is
    decoded from its first window's first frame."""

    def __init__(self, sequence: np.ndarray, start: np.ndarray):
        self.sequence, self.start = sequence, start
        self.outputs: list = []

    def add(self, out) -> None:
        self.outputs.append(out)

    @torch.no_grad()
    def decode_with(self, head: PGMHead) -> None:
        """Sets every window's `pgm_labels` `[T(, H, W)]` and `pgm_probs` (the shape of its unaries)
        from `head` run over whole sequences. Sequences of equal length are decoded together."""
        for out in self.outputs:
            out.pgm_labels = torch.empty(out.unaries[:, :, 0].shape, dtype=torch.long)
            out.pgm_probs = torch.empty(out.unaries.shape)
        pieces = self._pieces()
        by_length: dict[int, list[list[tuple]]] = {}
        for windows in pieces:
            by_length.setdefault(self._length(windows), []).append(windows)
        device = head.device
        for sequences in by_length.values():
            chains = [self._stitched(windows) for windows in sequences]
            unaries, guide, valid = (None if chains[0][i] is None else torch.stack([c[i] for c in chains]).to(device)
                                     for i in range(3))
            if head.settings.get("decoding") == "marginals":  # the labels are the marginals' argmax
                probs = head.log_marginals(unaries, guide, valid).exp()
                labels = probs.argmax(dim=2)
            else:
                labels, probs = head.decode(unaries, guide, valid), head.log_marginals(unaries, guide, valid).exp()
            labels, probs = labels.cpu(), probs.cpu()
            for chain, windows in enumerate(sequences):
                origin = windows[0][2]
                for out, index, start in windows:
                    frames = slice(start - origin, start - origin + out.unaries.shape[1])
                    out.pgm_labels[index] = labels[chain, frames]
                    out.pgm_probs[index] = probs[chain, frames]

    def _pieces(self) -> list[list[tuple]]:
        """Per sequence, its windows in the order of their starts: `(outputs, index in them, start)`."""
        pieces: dict[int, list[tuple]] = {}
        for out in self.outputs:
            for index, row in enumerate(out.rows):
                pieces.setdefault(int(self.sequence[row]), []).append((out, index, int(self.start[row])))
        return [sorted(windows, key=lambda window: window[2]) for windows in pieces.values()]

    @staticmethod
    def _length(windows: list[tuple]) -> int:
        out, _, start = windows[-1]
        return start - windows[0][2] + out.unaries.shape[1]

    def _stitched(self, windows: list[tuple]) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """A sequence's unaries `[L, K(, H, W)]`, guide and valid from its windows: each frame from the
        first window that holds it."""
        taken = []  # (window, frames of it taken)
        covered = windows[0][2]
        for out, index, start in windows:
            if start > covered:
                raise ValueError(f"a sequence's windows must cover it from its first window on: frames {covered} "
                                 f"to {start - 1} are in none (evaluation.stateful needs stride <= T_window)")
            end = start + out.unaries.shape[1]
            if end > covered:
                taken.append((out, index, slice(covered - start, end - start)))
                covered = end

        def joined(key: str) -> Optional[torch.Tensor]:
            if getattr(taken[0][0], key) is None:
                return None
            return torch.cat([getattr(out, key)[index, frames] for out, index, frames in taken])

        return joined("unaries"), joined("guide"), joined("valid")
