"""Whole-sequence decoding, streamed: the PGM over each sequence's whole chain, across window
boundaries, with memory bounded by a chunk of frames.

With `evaluation.stateful` every window's unaries are those of the network run over its whole
sequence (`inference.stateful_outputs`), so a sequence's frames have one unary each however its
windows overlap. Decoding each window on its own would still cut the chain at every window
boundary: an HMM's or a chain CRF's Viterbi and forward-backward would see `T_window` frames of
context, and the space-time CRF would have no link from one window's last frame to the next one's
first. Here a chunk of sequences is written frame by frame to files as its windows come
(`SequenceSpool`), decoded there a chunk of `T_window` frames at a time, and read back window by
window; the result equals decoding each concatenated sequence at once, and a frame covered by two
windows gets one label.

- HMM and chain CRF: forward-backward and Viterbi over the spooled frames (`regimen.train.streaming`),
  their messages and back-pointers on disk too.
- Space-time CRF: `iterations` synchronous mean-field updates (or BP sweeps) move information one
  frame a sweep along its temporal links, so a frame's result depends on the unaries of the frames
  at most `iterations` away. Each chunk is run with that many frames on either side and only its
  own frames are kept: exact, at the cost of those extra frames.

The files live in a temporary folder (under `TMPDIR`), removed when the chunk of sequences is done:
it needs the disk space of the chunk's unaries, as much again for the marginals, and for a chain
about four times that for its float64 messages.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from regimen.core.disk_array import DiskArray
from regimen.train.pgm import PGMHead
from regimen.train.streaming import spans, streamed_marginals, streamed_viterbi


class SequenceSpool:
    """A chunk of whole sequences, frame by frame, in files of a temporary folder of its own (under
    `TMPDIR`), removed when the spool is closed (a context manager).

    Args:
        sequences: each sequence's windows (rows of the split), in the order of their starts.
        start: every row's first frame in its sequence (a split's part of a sequence may start
            anywhere: it is kept from its first window's first frame).
        window: frames a window.
    """

    def __init__(self, sequences: list[list[int]], start: np.ndarray, window: int):
        for rows in sequences:
            _check_covered(start[rows], window)
        lengths = np.array([int(start[rows[-1]] - start[rows[0]]) + window for rows in sequences])
        order = np.argsort(-lengths, kind="stable")  # longest first: sequences of a length are neighbours
        self.lengths, self.window = lengths[order], window
        self.place = {row: (slot, int(start[row] - start[sequences[s][0]]))
                      for slot, s in enumerate(order) for row in sequences[s]}
        self.arrays: dict[str, DiskArray] = {}
        self.covered: dict[str, np.ndarray] = {}  # per array, the frames of each sequence written
        self._folder = tempfile.TemporaryDirectory(prefix="regimen-sequences-")
        self.directory = Path(self._folder.name)

    def __enter__(self) -> SequenceSpool:
        return self

    def __exit__(self, *exception) -> None:
        self.close()

    def close(self) -> None:
        for array in self.arrays.values():
            array.close()
        self._folder.cleanup()

    def write(self, rows: np.ndarray, **values: Optional[torch.Tensor]) -> None:
        """Each window's `values` `[B, T, ...]` by name, in the frames of its sequence not written yet.
        A sequence's windows come in the order of their starts."""
        for key, tensor in values.items():
            if tensor is None:
                continue
            tensor = tensor.float() if tensor.dtype == torch.bfloat16 else tensor  # numpy has no bfloat16
            array, covered = self._array(key, tensor), self.covered[key]
            for row, value in zip(rows, tensor.numpy()):
                slot, offset = self.place[int(row)]
                if offset + self.window > covered[slot]:
                    array.set_frames(slot, covered[slot], value[covered[slot] - offset:])
                    covered[slot] = offset + self.window

    def read(self, key: str, rows: np.ndarray) -> Optional[torch.Tensor]:
        """The windows' frames of an array, `[B, T, ...]` (None where nothing was written to it)."""
        if key not in self.arrays:
            return None
        array = self.arrays[key]
        return torch.from_numpy(np.stack([array.frames(slot, offset, offset + self.window)
                                          for slot, offset in (self.place[int(row)] for row in rows)]))

    def frames(self, key: str, slots: range, first: int, end: int) -> Optional[torch.Tensor]:
        """Frames `first..end-1` of the sequences in `slots`, `[S, end - first, ...]`."""
        if key not in self.arrays:
            return None
        return torch.from_numpy(np.stack([self.arrays[key].frames(slot, first, end) for slot in slots]))

    def put(self, key: str, slots: range, first: int, values: torch.Tensor) -> None:
        """Decoded frames `[S, t, ...]` of the sequences in `slots`, from frame `first` on."""
        array = self._array(key, values)
        for slot, value in zip(slots, values.numpy()):
            array.set_frames(slot, first, value)

    def groups(self) -> list[tuple[range, int]]:
        """The slots of each length, with the length."""
        edges = [0, *np.flatnonzero(np.diff(self.lengths)) + 1, len(self.lengths)]
        return [(range(a, b), int(self.lengths[a])) for a, b in zip(edges[:-1], edges[1:])]

    def _array(self, key: str, like: torch.Tensor) -> DiskArray:
        if key not in self.arrays:
            shape = (len(self.lengths), int(self.lengths.max()), *like.shape[2:])
            self.arrays[key] = DiskArray(self.directory / key, like.numpy().dtype, shape)
            self.covered[key] = np.zeros(len(self.lengths), dtype=np.int64)
        return self.arrays[key]


def _check_covered(starts: np.ndarray, window: int) -> None:
    gaps = np.flatnonzero(np.diff(starts) > window)
    if len(gaps):
        first, end = int(starts[gaps[0]]) + window, int(starts[gaps[0] + 1])
        raise ValueError(f"a sequence's windows must cover it from its first window on: frames {first} to "
                         f"{end - 1} are in none (evaluation.stateful needs stride <= T_window)")


@torch.no_grad()
def decode_whole_sequences(head: PGMHead, spool: SequenceSpool) -> None:
    """Writes `pgm_labels` `[S, L(, H, W)]` and `pgm_probs` (the shape of the unaries) to `spool`:
    the head's decoding and marginals of every whole sequence, `spool.window` frames at a time."""
    head.eval()
    for slots, length in spool.groups():
        if head.type == "crf":
            _decode_grid(head, spool, slots, length)
        else:
            _decode_chains(head, spool, slots, length)


def _decode_grid(head: PGMHead, spool: SequenceSpool, slots: range, length: int) -> None:
    crf, device = head.model, head.device
    halo = crf.iterations if crf.enabled and crf.temporal_offsets else 0  # frames a sweep reaches, all sweeps
    for a, b in spans(length, spool.window):
        first, end = max(0, a - halo), min(length, b + halo)
        unaries, guide, valid = (_on(spool.frames(key, slots, first, end), device)
                                 for key in ("unaries", "guide", "valid"))
        kept = slice(a - first, b - first)
        spool.put("pgm_probs", slots, a, head.log_marginals(unaries, guide, valid).exp()[:, kept].cpu())
        spool.put("pgm_labels", slots, a, head.decode(unaries, guide, valid)[:, kept].cpu())


def _decode_chains(head: PGMHead, spool: SequenceSpool, slots: range, length: int) -> None:
    device, frame = head.device, tuple(spool.arrays["unaries"].shape[2:])  # frame: (K(, H, W))
    directory = spool.directory / f"chains-{slots.start}"
    directory.mkdir()

    def emissions(a: int, b: int) -> np.ndarray:
        first = max(a - 1, 0)  # and the frame before: what a predictive emission divides by
        unaries, valid = (_on(spool.frames(key, slots, first, b), device) for key in ("unaries", "valid"))
        chains = head.chain_emissions(unaries.float(), valid)  # (M, t, K)
        return chains[:, a - first:].transpose(0, 1).cpu().numpy()

    def write_marginals(a: int, b: int, posterior: np.ndarray) -> None:  # posterior: (t, M, K)
        probs = head.unchain(torch.from_numpy(posterior).transpose(0, 1).float(), (len(slots), b - a, *frame))
        spool.put("pgm_probs", slots, a, probs)
        if head.settings.get("decoding") == "marginals":  # the labels are the marginals' argmax
            spool.put("pgm_labels", slots, a, probs.argmax(dim=2))

    def write_path(a: int, b: int, path: np.ndarray) -> None:  # path: (t, M)
        shape = (len(slots), b - a, 1, *frame[1:])
        spool.put("pgm_labels", slots, a, head.unchain(torch.from_numpy(path).T[..., None], shape).squeeze(2))

    potentials = head.chain_potentials()
    streamed_marginals(*potentials, emissions, length, spool.window, directory, write_marginals)
    if head.settings.get("decoding") != "marginals":
        streamed_viterbi(*potentials, emissions, length, spool.window, directory, write_path)


def _on(tensor: Optional[torch.Tensor], device: torch.device) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.to(device)
