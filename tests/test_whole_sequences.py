"""Whole-sequence decoding (stateful evaluation): the PGM over each sequence's whole chain, streamed
a chunk of frames at a time, equals it run over the concatenated sequence at once, however the
windows overlap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regimen.core.config_file import load_config
from regimen.train.inference import Outputs
from regimen.train.pgm import PGMHead
from regimen.data.windows import rows_by_sequence
from regimen.train.whole_sequences import SequenceSpool, decode_whole_sequences


def random_head(kind: str, task: str, k: int, seed: int = 0) -> PGMHead:
    """A head with random (sticky) chain parameters, so decoding leans on its transitions."""
    torch.manual_seed(seed)
    settings = {"type": kind, "task": task, "num_classes": k}
    if kind == "crf":
        settings.update(neighbourhood=4, temporal_links=True, iterations=3, pairwise_weight=0.7,
                        compatibility="potts", inference="mean_field", damping=0.0, edge_aware=False)
    head = PGMHead(settings)
    with torch.no_grad():
        if kind == "hmm":
            sticky = torch.eye(k) * 4 + torch.rand(k, k)
            head.model.log_trans.copy_(torch.log_softmax(sticky, dim=1))
            head.model.log_start.copy_(torch.log_softmax(torch.randn(k), dim=0))
            head.log_prior.copy_(torch.log_softmax(torch.randn(k), dim=0))
        elif kind == "chain_crf":
            head.model.transitions.copy_(torch.eye(k) * 3 + torch.randn(k, k))
    return head.eval()


def windowed(sequences: list[torch.Tensor], valid: list[torch.Tensor], window: int, stride: int):
    """The windows of the sequences step by step, the sequences still reading first (longest first),
    and each window's sequence and start by row. Sequence s is a split's part of a longer one, which
    starts at its frame `5 * s` (as a split by time cuts them)."""
    order = sorted(range(len(sequences)), key=lambda s: -len(sequences[s]))
    counts = {s: (len(sequences[s]) - window) // stride + 1 for s in order}
    owners, starts, batches, row = [], [], [], 0
    for step in range(counts[order[0]]):
        reading = [s for s in order if counts[s] > step]
        first = step * stride
        rows = np.arange(row, row + len(reading))
        row += len(reading)
        owners += reading
        starts += [5 * s + first for s in reading]
        unaries = torch.stack([sequences[s][first:first + window] for s in reading])
        masks = torch.stack([valid[s][first:first + window] for s in reading])
        batches.append((reading, Outputs(rows, unaries, torch.zeros(unaries[:, :, 0].shape, dtype=torch.long),
                                         valid=masks)))
    return np.array(owners), np.array(starts), batches


@pytest.mark.parametrize("kind,task,stride", [("hmm", "tagging", 2), ("chain_crf", "tagging", 3),
                                              ("hmm", "segmentation", 4), ("chain_crf", "segmentation", 1),
                                              ("crf", "segmentation", 2)])
@pytest.mark.parametrize("decoding", ["viterbi", "marginals"])
def test_whole_sequence_decoding_equals_the_concatenated_sequence(kind, task, stride, decoding):
    k, window = 3, 4
    generator = torch.Generator().manual_seed(1)
    lengths = [20, 14, 20, 12]  # two sequences of one length, two of others, stride dividing the rest
    lengths = [window + stride * ((n - window) // stride) for n in lengths]
    space = () if task == "tagging" else (3, 5)
    sequences = [3 * torch.randn((n, k) + space, generator=generator) for n in lengths]
    valid = [torch.rand((n,) + space, generator=generator) > 0.2 for n in lengths]
    head = random_head(kind, task, k)
    if kind != "crf":
        head.settings["decoding"] = decoding
    owners, starts, batches = windowed(sequences, valid, window, stride)
    spool = SequenceSpool(rows_by_sequence(owners), starts, window)
    for _, out in batches:  # the windows as they come, step by step
        spool.write(out.rows, unaries=out.unaries, valid=out.valid)
    read = spool.frames
    frames_read = []
    spool.frames = lambda key, slots, first, end: frames_read.append(end - first) or read(key, slots, first, end)
    decode_whole_sequences(head, spool)
    halo = head.model.iterations if kind == "crf" else 0
    assert max(frames_read) <= window + max(1, 2 * halo) < max(lengths)  # a chunk at a time, never a sequence
    separately_differs = False
    for reading, out in batches:
        first = (int(starts[out.rows[0]]) - 5 * reading[0])  # in the split's part of the sequence
        labels_read, probs_read = spool.read("pgm_labels", out.rows), spool.read("pgm_probs", out.rows)
        for index, sequence in enumerate(reading):
            at_once = sequences[sequence][None], None, valid[sequence][None]
            labels = head.decode(*at_once)[0, first:first + window]
            probs = head.log_marginals(*at_once).exp()[0, first:first + window]
            assert torch.equal(labels_read[index], labels)
            torch.testing.assert_close(probs_read[index], probs, rtol=1e-4, atol=5e-5)  # the reference: float32
            alone = head.decode(out.unaries[index][None], None, out.valid[index][None])[0]
            separately_differs |= not torch.equal(alone, labels)
    assert separately_differs  # the windows decoded on their own cut the chains: other labels somewhere


def stack_with_an_hmm(write_config, settings: dict):
    """A config of tiny data in windows of 4 frames every 2 (plus `settings`), the data processed,
    and a fresh stack on it with a random HMM head."""
    from regimen.data.preprocess import preprocess
    from regimen.data.processed import load_task_data
    from regimen.train.stack import new_stack

    config = load_config(write_config({"data": {"T_window": 4, "stride": 2}, "training": {"mixed_precision": False},
                                       **settings}))
    preprocess(config)
    data = load_task_data(config.data)
    torch.manual_seed(0)
    stack = new_stack(config, data).eval()
    stack.head = random_head("hmm", "segmentation", data.num_classes)
    return config, data, stack


def test_stateful_outputs_carry_the_pgm_over_whole_sequences(write_config):
    """Through `network_outputs(stateful=True)` of a stack with an HMM: each window's PGM labels are the
    HMM's Viterbi path over the network's unaries of its whole sequence, sliced."""
    from regimen.core import runs
    from regimen.data.store import ArrayFile
    from regimen.train.inference import network_outputs
    from regimen.train.stack import model_input

    _, data, stack = stack_with_an_hmm(write_config, {})
    stack.head.raw_scale.data.fill_(5.0)  # confident emissions, so the labels are not all one class
    frames = ArrayFile(runs.store_path(data.folder, "val", "X"))
    windows, whole = data.windows("val"), {}
    for sequence in data.meta["sequences"]["val"]:
        x = torch.from_numpy(frames.rows(sequence["offset"], sequence["frames"]))[None]
        whole[sequence["index"]] = stack.head.decode(stack.unaries(model_input(x)))[0]  # (T, H, W)
    seen = []
    for out in network_outputs(stack, data, "val", torch.device("cpu"), 3, stateful=True):
        for index, row in enumerate(out.rows):
            start = int(windows.start[row])
            expected = whole[int(windows.sequence[row])][start:start + 4]
            assert (out.pgm_labels[index] != expected).float().mean() < 1e-3  # float ties aside
            seen.append(int(row))
    assert seen == list(range(len(windows)))  # every window once, in the split's order


def test_windows_with_a_gap_between_them_are_refused():
    with pytest.raises(ValueError, match="frames 4 to 5 are in none"):  # frames 4 and 5 are in no window
        SequenceSpool([[0, 1]], np.array([0, 6]), 4)


def test_the_alternating_refit_fits_on_stateful_unaries(write_config, tmp_path, monkeypatch):
    """Phase 3's PGM step, with evaluation.stateful, fits on the unaries of each sequence read as one
    stream (as phase 2 does), not on windows read from zeros."""
    from regimen.core import runs
    from regimen.train import phases
    from regimen.train.inference import network_outputs

    config, data, stack = stack_with_an_hmm(write_config, {"evaluation": {"stateful": True}})
    fitted_on = {}
    monkeypatch.setattr(phases, "fit_pgm", lambda head, unaries, *args, **kwargs: fitted_on.update(
        unaries=unaries[np.arange(len(unaries))]) or {})
    phases._refit(stack, data, runs.RunFolder(tmp_path), config, torch.device("cpu"), 0)

    def unaries(stateful: bool) -> torch.Tensor:
        return torch.cat([out.unaries for out in network_outputs(stack, data, "train", torch.device("cpu"), 3,
                                                                 stateful)])

    assert torch.equal(fitted_on["unaries"], unaries(True))
    assert not torch.allclose(fitted_on["unaries"], unaries(False))
