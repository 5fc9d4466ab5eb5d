"""Predictions of a stack over a split's windows, batch by batch: unaries, decoded labels,
marginals, metrics.

A split is never held whole: `network_outputs` runs the network over its
windows as they stream from disk, and `stored_outputs` reads phase 1's saved
unaries; both give `Outputs` batches, which `output_metrics` (and evaluate.py's
`ReportSums`) sum up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from regimen.core.progress import track
from regimen.core.runs import RunFolder
from regimen.data.features import FeatureWriter, StoredArray
from regimen.data.processed import TaskData
from regimen.data.windows import SequentialBatches, WindowDataset, rows_by_sequence
from regimen.scores.metrics import MAIN_METRIC, MetricSums
from regimen.train.distributed import World
from regimen.train.losses import class_last
from regimen.train.pgm import PGMHead
from regimen.train.stack import Stack, model_input
from regimen.train.whole_sequences import SequenceSpool, decode_whole_sequences

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(stack: Stack, x: torch.Tensor, device: torch.device, batch_size: int,
            feature_maps: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Unaries (and the last layer's feature maps) for inputs `[N, T, H, W, C]`, on the CPU."""
    stack.eval()
    outputs, features = [], []
    for start in track(range(0, len(x), batch_size), "predict", "batches"):
        out, maps = stack.unaries(model_input(x[start:start + batch_size]).to(device), return_features=True)
        outputs.append(out.cpu())
        if feature_maps:
            features.append(maps.cpu())
    return torch.cat(outputs), (torch.cat(features) if feature_maps else None)


@torch.no_grad()
def save_features(stack: Stack, data: TaskData, run: RunFolder, device: torch.device, batch_size: int,
                  feature_maps: bool, stateful: bool = False) -> dict:
    """Phase 1's `features.pt`: the unaries (and feature maps) of every split with its labels,
    streamed batch by batch into the run folder, with `stateful` (evaluation.stateful) those of each
    sequence read as one stream; returns the unaries' metrics on val and test, summed on the way."""
    writer, metrics = FeatureWriter(run), {}
    try:
        for split in ("train", "val", "test"):
            count, score = len(data.windows(split)), MetricSums(data.task, data.num_classes)
            for out in network_outputs(stack, data, split, device, batch_size, stateful, feature_maps=feature_maps):
                rows = {"unaries": out.unaries, "labels": out.y}
                if out.valid is not None:
                    rows["valid"] = out.valid
                if feature_maps:
                    rows["feature_maps"] = out.feature_maps
                writer.add(split, count, rows)
                score.add(out.y.numpy(), _predicted(data.task, out.unaries, None, None).numpy(), numpy_of(out.valid))
            metrics[split] = score.result()
        writer.save(data.identity, stateful)
    except BaseException:
        writer.discard()
        raise
    return {split: metrics[split] for split in ("val", "test")}


def _predicted(task: str, unaries: torch.Tensor, head: Optional[PGMHead], x: Optional[torch.Tensor],
               valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """What a task's metrics compare with the truth: values (regression, channels last) or labels."""
    return class_last(unaries) if task == "regression" else decode(head, unaries, x, valid)


def numpy_of(tensor: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if tensor is None else tensor.numpy()


@dataclass
class Outputs:
    """One batch of a split's windows: their `rows` in the split, the network's `unaries`
    `[B, T, K(, H, W)]`, labels `y`, soft targets `p`, and `guide`, the inputs in model layout
    `[B, T, C, H, W]` (what an edge-aware CRF weighs its edges by; None where not read or for a
    forecast), `valid`, False at missing nodes (None where the data has no mask), and for a forecast
    `x`, the T_in observed frames, and `last`, the targets of the last of them `[B, 1, ...]`. With
    stateful evaluation and a PGM, `pgm_labels` and `pgm_probs` hold the PGM's decoding and marginals
    of the windows' whole sequences (`whole_sequences`); `feature_maps`, the last layer's features,
    where asked for. CPU tensors."""

    rows: np.ndarray
    unaries: torch.Tensor
    y: torch.Tensor
    p: Optional[torch.Tensor] = None
    guide: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None
    x: Optional[torch.Tensor] = None
    last: Optional[torch.Tensor] = None
    pgm_labels: Optional[torch.Tensor] = None
    pgm_probs: Optional[torch.Tensor] = None
    feature_maps: Optional[torch.Tensor] = None


@torch.no_grad()
def network_outputs(stack: Stack, data: TaskData, split: str, device: torch.device, batch_size: int,
                    stateful: bool = False, rows: Optional[range] = None, feature_maps: bool = False,
                    decoded: bool = True) -> Iterator[Outputs]:
    """The stack's unaries over the split's windows (or its `rows`), batch by batch in the split's
    order; with `stateful`, each sequence read as one stream (`stateful_outputs`, its whole
    sequences decoded by the stack's head unless not `decoded`); with `feature_maps`, the last
    layer's features too."""
    stack.eval()
    if stateful:
        yield from stateful_outputs(stack, data, split, device, batch_size, feature_maps, decoded)
        return
    rows = rows if rows is not None else range(len(data.windows(split)))
    first = rows.start
    for batch in track(split_loader(data, split, batch_size, device, rows), f"predict {split}", "batches"):
        x = model_input(batch["x"])
        rows = np.arange(first, first + len(x))
        first += len(x)
        unaries, maps = stack.unaries(x.to(device), return_features=True)
        maps = maps.cpu() if feature_maps else None
        if "last" in batch:  # a forecast
            yield Outputs(rows, unaries.cpu(), batch["y"], batch.get("p"), None, batch.get("m"), x, batch["last"],
                          feature_maps=maps)
        else:
            yield Outputs(rows, unaries.cpu(), batch["y"], batch.get("p"), x, batch.get("m"), feature_maps=maps)


@torch.no_grad()
def stateful_outputs(stack: Stack, data: TaskData, split: str, device: torch.device, batch_size: int,
                     feature_maps: bool = False, decoded: bool = True) -> Iterator[Outputs]:
    """`network_outputs` where each window's ConvLSTM continues from the state that its sequence's
    previous window left at this window's first frame (`evaluation.stateful`): a long sequence is
    read as one stream instead of from zeros every `T_window` frames, and every window's unaries
    are those of the network run over the whole sequence. Sequences are read `batch_size` at a
    time in the split's order, window by window in step, into a `SequenceSpool` on disk; with a
    PGM their whole sequences are decoded there; then their windows come back `batch_size` at a
    time in the split's order. Memory holds a batch of windows, never a whole sequence."""
    stack.eval()
    windows = data.windows(split)
    stride = int(data.meta["stride"])
    sequences = rows_by_sequence(windows.sequence)
    head = stack.head if decoded else None
    edge_aware = head is not None and bool(head.settings.get("edge_aware"))
    for first in track(range(0, len(sequences), batch_size), f"predict {split} (stateful)", "sequences"):
        # Longest first, so the sequences still reading at each step are always the first ones.
        chunk, state = sorted(sequences[first:first + batch_size], key=len, reverse=True), None
        with SequenceSpool(chunk, windows.start, windows.length) as spool:
            for step in range(len(chunk[0])):
                rows = np.array([group[step] for group in chunk if len(group) > step])
                if state is not None:  # sequences that have run out of windows drop out
                    state = [(h[:len(rows)], c[:len(rows)]) for h, c in state]
                x = model_input(windows.read("x", rows))  # (B, T, C, H, W)
                unaries, maps, final = stack.unaries(x.to(device), return_features=True, state=state,
                                                     return_state=True)
                spool.write(rows, unaries=unaries.cpu(), feature_maps=maps.cpu() if feature_maps else None,
                            guide=x if edge_aware else None,
                            valid=windows.read("m", rows) if "m" in windows.arrays else None)
                # The next window starts `stride` frames later: continue from the state after them.
                state = (final if stride >= x.shape[1]
                         else stack.unaries(x[:, :stride].to(device), state=state, return_state=True)[1])
            yield from _spooled_windows(spool, np.sort(np.concatenate(chunk)), batch_size, head,
                                        lambda rows: _window_outputs(windows, rows, spool))


def _window_outputs(windows: WindowDataset, rows: np.ndarray, spool: SequenceSpool) -> Outputs:
    """The windows `rows` read again, with their unaries and feature maps from `spool`."""
    batch = windows[rows]
    return Outputs(rows, spool.read("unaries", rows), batch["y"], batch.get("p"), model_input(batch["x"]),
                   batch.get("m"), feature_maps=spool.read("feature_maps", rows))


def _spooled_windows(spool: SequenceSpool, rows: np.ndarray, batch_size: int, head: Optional[PGMHead],
                     window_outputs) -> Iterator[Outputs]:
    """The windows `rows` of a spooled chunk of sequences, `batch_size` at a time, from
    `window_outputs(rows)`; with a head, decoded over their whole sequences first."""
    if head is not None:
        decode_whole_sequences(head, spool)
    for first in range(0, len(rows), batch_size):
        batch = rows[first:first + batch_size]
        out = window_outputs(batch)
        out.pgm_labels, out.pgm_probs = spool.read("pgm_labels", batch), spool.read("pgm_probs", batch)
        yield out


def stored_outputs(arrays: dict[str, StoredArray], batch_size: int, guide: Optional[SplitArray] = None,
                   sequences: Optional[WindowDataset] = None, head: Optional[PGMHead] = None
                   ) -> Iterator[Outputs]:
    """Phase 1's saved unaries, labels (and masks) of a split, in order, batch by batch; with `guide`
    (the split's inputs), those windows' inputs too. With the split's windows as `sequences` and a
    `head` (unaries saved with evaluation.stateful), `batch_size` whole sequences at a time are
    spooled and decoded whole (`whole_sequences`), then come back window by window."""

    def window_outputs(rows: np.ndarray) -> Outputs:
        return Outputs(rows, arrays["unaries"][rows], arrays["labels"][rows],
                       guide=None if guide is None else guide[rows],
                       valid=arrays["valid"][rows] if "valid" in arrays else None)

    count = len(arrays["unaries"])
    if sequences is None or head is None:
        for first in range(0, count, batch_size):
            yield window_outputs(np.arange(first, min(count, first + batch_size)))
        return
    chains = rows_by_sequence(sequences.sequence)
    for first in range(0, len(chains), batch_size):
        chunk = chains[first:first + batch_size]
        with SequenceSpool(chunk, sequences.start, sequences.length) as spool:
            rows = np.concatenate(chunk)  # each sequence's windows in the order of their starts
            for part in range(0, len(rows), batch_size):
                out = window_outputs(rows[part:part + batch_size])
                spool.write(out.rows, unaries=out.unaries, valid=out.valid,
                            guide=out.guide if head.settings.get("edge_aware") else None)
            yield from _spooled_windows(spool, np.sort(rows), batch_size, head, window_outputs)


class SplitArray:
    """One array of a split's windows read by rows, `array[rows]` (`x` in model layout): what
    `fit_pgm` draws its batches from when the labels or inputs are not in phase 1's features."""

    def __init__(self, windows: WindowDataset, key: str):
        self.windows, self.key = windows, key

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, rows) -> torch.Tensor:
        values = self.windows.read(self.key, np.asarray(rows))
        return model_input(values) if self.key == "x" else values


def split_loader(data: TaskData, split: str, batch_size: int, device: torch.device,
                 rows: Optional[range] = None) -> DataLoader:
    """The split's windows (or its `rows`) in order, in batches."""
    rows = rows if rows is not None else range(len(data.windows(split)))
    return data.loader(split, SequentialBatches(rows.stop, batch_size, rows.start), device.type == "cuda")


def split_metrics(stack: Stack, data: TaskData, split: str, device: torch.device, batch_size: int,
                  world: Optional[World] = None) -> dict:
    """The split's metrics through the head (when there is one), plus the unaries' as `unary_*`.
    With a `world` of several processes each scores its shard of the windows and the sums are
    added up, so every process gets the whole split's figures."""
    world = world or World(device)
    heads = {"": stack.head, "unary_": None} if stack.head is not None else {"": None}
    outputs = network_outputs(stack, data, split, device, batch_size, rows=world.shard(len(data.windows(split))))
    scores = world.merged(output_sums(outputs, data.task, data.num_classes, heads))
    return {f"{prefix}{key}": value for prefix, score in scores.items() for key, value in score.result().items()}


def output_metrics(outputs: Iterable[Outputs], task: str, num_classes: Optional[int],
                   heads: dict[str, Optional[PGMHead]]) -> dict[str, dict]:
    """The task's metrics (`label_metrics` or `regression_metrics`) of each head's predictions
    (None: the unaries alone), summed over the batches: equal to those of the whole split."""
    return {name: score.result() for name, score in output_sums(outputs, task, num_classes, heads).items()}


@torch.no_grad()
def output_sums(outputs: Iterable[Outputs], task: str, num_classes: Optional[int],
                heads: dict[str, Optional[PGMHead]]) -> dict[str, MetricSums]:
    """`output_metrics` before its results: each head's `MetricSums`."""
    scores = {name: MetricSums(task, num_classes) for name in heads}
    for out in outputs:
        for name, head in heads.items():
            whole = head is not None and out.pgm_labels is not None  # decoded over whole sequences
            predicted = out.pgm_labels if whole else _predicted(task, out.unaries, head, out.guide, out.valid)
            scores[name].add(out.y.numpy(), predicted.numpy(), numpy_of(out.valid))
    return scores


@torch.no_grad()
def decode(head: Optional[PGMHead], unaries: torch.Tensor, guide: Optional[torch.Tensor] = None,
           valid: Optional[torch.Tensor] = None, batch_size: int = 16) -> torch.Tensor:
    """Labels from unaries: per-node argmax without a head, else the head's joint decoding.
    `guide`: the input windows `[N, T, C, H, W]` (model layout) the unaries came from; `valid`:
    their masks (missing nodes have no data term in the head)."""
    if head is None:
        return unaries.argmax(dim=2)
    head.eval()
    device = head.device
    return torch.cat([head.decode(unaries[i:i + batch_size].to(device), _rows(guide, i, batch_size, device),
                                  _rows(valid, i, batch_size, device)).cpu()
                      for i in range(0, len(unaries), batch_size)])


@torch.no_grad()
def marginals(head: PGMHead, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None,
              valid: Optional[torch.Tensor] = None, batch_size: int = 16) -> torch.Tensor:
    """The head's marginal class probabilities, the shape of `unaries`."""
    head.eval()
    device = head.device
    return torch.cat([head.log_marginals(unaries[i:i + batch_size].to(device), _rows(guide, i, batch_size, device),
                                         _rows(valid, i, batch_size, device)).exp().cpu()
                      for i in range(0, len(unaries), batch_size)])


def compare_with_unaries(task: str, unary: dict, pgm: dict) -> dict:
    """The main metric of the unaries alone and after the PGM (`output_metrics` of each), the
    gain in points and whether the PGM beats the unaries."""
    metric, higher_is_better = MAIN_METRIC[task]
    gain = pgm[metric] - unary[metric]
    return {"metric": metric, "unary": unary[metric], "pgm": pgm[metric], "gain_points": 100 * gain,
            "pgm_better": gain > 0 if higher_is_better else gain < 0}


def pgm_is_worse(head_type: str, split: str, comparison: dict) -> str:
    """The line that says a PGM does not beat the unaries, with both scores."""
    return (f"the {head_type} does not beat the unaries on {split}: {comparison['metric']} "
            f"{comparison['unary']:.4f} -> {comparison['pgm']:.4f} ({comparison['gain_points']:+.2f} points)")


def choose_predictor(head: Optional[PGMHead], task: str, val: Optional[dict], use_pgm: str) -> dict:
    """Which predictor is final: the PGM or the unaries alone. `use_pgm` (evaluation.use_pgm):
    always, never, or auto: the PGM only when it beats the unaries on the validation split.
    `val`: `output_metrics` of the "unary" and "pgm" predictors on it. Returns `final` ("pgm" or
    "unary"), the setting and the validation comparison."""
    if head is None:
        return {"final": "unary", "use_pgm": use_pgm}
    comparison = compare_with_unaries(task, val["unary"], val["pgm"])
    final = {"always": "pgm", "never": "unary"}.get(use_pgm, "pgm" if comparison["pgm_better"] else "unary")
    if not comparison["pgm_better"]:
        log.warning("%s; %s", pgm_is_worse(head.type, "val", comparison),
                    f"the {'unaries alone are' if final == 'unary' else head.type + ' is'} the final predictor "
                    f"(evaluation.use_pgm: {use_pgm})")
    return {"final": final, "use_pgm": use_pgm, "val": comparison}


def _rows(guide: Optional[torch.Tensor], start: int, size: int, device: torch.device) -> Optional[torch.Tensor]:
    return None if guide is None else guide[start:start + size].to(device)
