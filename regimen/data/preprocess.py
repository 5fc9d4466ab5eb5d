"""Phase 0: read sequences chunk by chunk, split them, add static features, normalise, write the store.

`preprocess(config)` streams a reader (`regimen.data.readers`) into
`data/processed/<name>/`: per split the normalised frames end to end and a
window index (`regimen.data.store`), then `meta.json`. Two passes: the first reads
the training sequences for exact normalisation statistics, the second reads
every split and writes it. Every value is checked before anything is renamed
into place, the files are byte-reproducible, and a second run on unchanged
inputs does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from scipy import ndimage

from regimen.core import files, folders, runs
from regimen.core.config import ARCHIVES, Config, DataConfig, to_dict
from regimen.core.errors import UserError
from regimen.core.machine import require_memory
from regimen.core.progress import track
from regimen.core.runs import dataset_name
from regimen.data.forecast_windows import forecast_meta, window_frames
from regimen.data.readers import Reader, check_chunk, open_reader
from regimen.data.splits import Piece, by_sequence, by_time, format_time
from regimen.data.store import STORE_VERSION, ArrayWriter

log = logging.getLogger(__name__)

# Derivative along H, smoothing along W; its transpose the other way round.
SOBEL_H = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]], dtype=np.float32)
CHUNK_BYTES = 64 << 20  # frames are read and written about this many bytes of inputs at a time


def add_static_features(x: np.ndarray, names: list[str], previous: Optional[np.ndarray] = None
                        ) -> tuple[np.ndarray, list[str]]:
    """Append precomputed channels to consecutive frames `x` `[t, H, W, C]` of one sequence.

    - edges: spatial gradient magnitude (Sobel) of each input channel;
    - motion: difference to the previous frame of each channel (`previous`, the frame before
      `x[0]`; 0 at a sequence's first frame);
    - mask: 1 inside the domain disc (a radar's range ring), 0 outside.
    """
    extra, channel_names = [], []
    t, h, w, c = x.shape
    for name in names:
        if name == "edges":
            # Sobel within each frame and channel only (ndimage.sobel would smooth over t and C).
            gy = ndimage.correlate(x, SOBEL_H[None, :, :, None], mode="nearest")
            gx = ndimage.correlate(x, SOBEL_H.T[None, :, :, None], mode="nearest")
            extra.append(np.hypot(gx, gy))
            channel_names += [f"edges_{i}" for i in range(c)]
        elif name == "motion":
            extra.append(np.diff(x, axis=0, prepend=x[:1] if previous is None else previous[None]))
            channel_names += [f"motion_{i}" for i in range(c)]
        elif name == "mask":
            yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
            disc = (yy ** 2 + xx ** 2 <= (min(h, w) / 2) ** 2).astype(np.float32)
            extra.append(np.broadcast_to(disc[None, :, :, None], (t, h, w, 1)))
            channel_names.append("mask")
    if not extra:
        return x, []
    return np.concatenate([x, *[e.astype(np.float32) for e in extra]], axis=-1), channel_names


class ChannelStatistics:
    """Per-channel mean and std over every pixel of many chunks, exact: each chunk's own mean and
    sum of squared deviations in float64, merged by Chan et al.'s pairwise update."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x: np.ndarray) -> None:
        """`x` `[..., C]`."""
        n = int(np.prod(x.shape[:-1]))
        mean = x.mean(axis=tuple(range(x.ndim - 1)), dtype=np.float64)
        m2 = ((x - mean) ** 2).sum(axis=tuple(range(x.ndim - 1)), dtype=np.float64)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 mean and std (population; at least 1e-6)."""
        std = np.sqrt(self.m2 / self.count)
        return self.mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)


def window_starts(num_frames: int, window: int, stride: int) -> np.ndarray:
    """First frame of each sliding window that fits in `num_frames`."""
    return np.arange(0, num_frames - window + 1, stride)


def window_index(pieces: list[Piece], window: int, stride: int) -> np.ndarray:
    """`[W, 3]` int64 (sequence, first frame in the sequence, first row) of every window of `pieces`
    stored end to end in that order; no window crosses from one piece into the next."""
    rows, offset = [], 0
    for piece in pieces:
        starts = window_starts(piece.frames, window, stride)
        rows.append(np.stack([np.full_like(starts, piece.sequence), piece.start + starts, starts + offset], axis=1))
        offset += piece.frames
    return np.concatenate(rows).astype(np.int64)


def split_frames(reader: Reader, data: DataConfig, seed: int) -> tuple[dict[str, list[Piece]], Optional[list[float]]]:
    """The pieces of each split (`regimen.data.splits`) and, split by time, the two cuts.

    Raises:
        UserError: split by time without each frame's time.
    """
    if data.split_by == "sequence":
        return by_sequence([s.frames for s in reader.sequences], data.splits, seed), None
    untimed = next((s for s in reader.sequences if s.times is None), None)
    if untimed is not None:
        raise UserError(f"data.split_by = 'time': {untimed.name} has no time; expected a time coordinate "
                        f"'{data.dims.time}' (xarray, data.dims.time), a times dataset (hdf5, data.times) or a "
                        "catalog time column (data.catalog.time)")
    kinds = {s.time_kind for s in reader.sequences}
    if len(kinds) > 1:
        raise UserError("data.split_by = 'time': some sequences' times are dates, others numbers; expected one kind")
    return by_time([s.times for s in reader.sequences], kinds.pop(), data)


def time_ranges(reader: Reader, parts: dict[str, list[Piece]], cuts: Optional[list[float]]) -> Optional[dict]:
    """What meta.json records of the splits' times: each split's first and last frame time and the
    cuts; None when the data has no times. Split by sequence, the ranges may overlap."""
    if any(s.times is None for s in reader.sequences) or len({s.time_kind for s in reader.sequences}) > 1:
        return None
    kind = reader.sequences[0].time_kind
    ranges = {}
    for split, pieces in parts.items():
        first = min(reader.sequences[p.sequence].times[p.start] for p in pieces)
        last = max(reader.sequences[p.sequence].times[p.stop - 1] for p in pieces)
        ranges[split] = {"first": format_time(first, kind), "last": format_time(last, kind)}
    if cuts is not None:
        ranges["cuts"] = [format_time(cut, kind) for cut in cuts]
    return ranges


def piece_chunks(reader: Reader, piece: Piece, data: DataConfig, frames_per_chunk: int
                 ) -> Iterator[tuple[dict[str, np.ndarray], Optional[np.ndarray]]]:
    """One piece's frames in chunks, with the static features appended to `X` (unnormalised; the
    motion of a piece's first frame is taken from the frame before it in its sequence) and, where
    masks are configured, missing data turned into the mask `M` (`mark_missing`). Yields each chunk
    and its observed pixels `[t, H, W]` (None without masks)."""
    previous = None
    if piece.start > 0:
        previous = reader.read(piece.sequence, piece.start - 1, piece.start)
        previous = (mark_missing(previous, data, reader.task)[0] if masks_configured(data) else previous)["X"][0]
    for start in range(piece.start, piece.stop, frames_per_chunk):
        chunk, observed = reader.read(piece.sequence, start, min(piece.stop, start + frames_per_chunk)), None
        if masks_configured(data):
            chunk, observed = mark_missing(chunk, data, reader.task)
        x = chunk["X"]
        chunk["X"] = add_static_features(x, data.static_features, previous)[0]
        previous = x[-1]
        yield chunk, observed


def masks_configured(data: DataConfig) -> bool:
    """Whether the processed data holds a mask `M`: a mask dataset or variable, NaN taken as missing
    or an ignored label."""
    return data.mask is not None or data.missing == "mask" or data.ignore_label is not None


def mark_missing(chunk: dict[str, np.ndarray], data: DataConfig, task: str
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A chunk with its mask `M` (True where a node, a pixel or for tagging a frame, is observed and
    scored): the reader's mask (`data.mask`), less pixels with a NaN/Inf input or regression target
    (`data.missing: mask`), less nodes labelled `data.ignore_label`. Missing inputs become 0 and
    every missing node's target 0 (class 0, uniform soft targets), whatever it held, so every value
    stays in range and nothing under the mask reaches the store; `M` says they count for nothing.
    Returns the chunk and the pixels `[t, H, W]` whose inputs are observed."""
    chunk = dict(chunk)
    x, y = chunk["X"], chunk["Y"]
    pixels = x.shape[:3]
    valid = chunk.pop("M", None)
    valid = np.ones(y.shape[:1] if task == "tagging" else pixels, bool) if valid is None else valid.copy()
    observed = np.ones(pixels, bool) if task == "tagging" else valid.copy()
    if data.missing == "mask":
        finite = np.isfinite(x)
        chunk["X"] = np.where(finite, x, np.float32(0))
        observed &= finite.all(-1)
        if task != "tagging":
            valid &= finite.all(-1)
        if task == "regression":
            valid &= np.isfinite(y).all(-1)
    if data.ignore_label is not None:
        valid &= y != data.ignore_label
    y = chunk["Y"]
    chunk["Y"] = np.where(valid[..., None] if task == "regression" else valid, y, y.dtype.type(0))
    chunk["X"] = np.where(observed[..., None], chunk["X"], np.float32(0))
    if "P" in chunk:  # soft targets: uniform
        chunk["P"] = np.where(valid[..., None], chunk["P"], np.float32(1 / chunk["P"].shape[-1]))
    chunk["M"] = valid
    return chunk, observed


def preprocess(config: Config) -> tuple[Path, dict]:
    """Phase 0 from config to files. Returns the output folder and its meta."""
    data = config.data
    folder = folders.check_output(runs.processed_dir(data.root, dataset_name(config.data)), runs.PROCESSED, "data.root")
    reader = open_reader(data, config.seed)
    lengths = [s.frames for s in reader.sequences]
    for sequence in reader.sequences:
        if sequence.frames < data.window:
            key = "data.forecast: input_frames + output_frames" if data.forecast else "data.T_window"
            raise UserError(f"{key} = {data.window}: must be <= the {sequence.frames} frames of each "
                            f"sequence ({sequence.name})")
    parts, cuts = split_frames(reader, data, config.seed)
    inputs = _inputs(config, reader)
    folders.claim(folder, "data.root")  # only once the input is known to be readable: a refusal writes nothing
    current = _up_to_date(folder, inputs)
    if current is not None:
        log.info("%s is up to date (same config and input files): nothing to do", folder)
        return folder, current

    first = reader.read(0, 0, 1)
    first_frame, static_names = add_static_features(first["X"], data.static_features)
    frames_per_chunk = max(1, CHUNK_BYTES // first_frame.nbytes)
    statistics, num_classes = _scan_training(reader, parts["train"], data, frames_per_chunk)
    if num_classes is not None and data.dataset in ARCHIVES:  # (an npz is checked as it is loaded)
        # The unaries of every window hold K floats per node (each frame sits in T_window / stride windows).
        require_memory(4.0 * sum(lengths) * first["Y"][0].size * num_classes * max(1.0, data.window / data.stride),
                       f"data.path: {sum(lengths)} frames of {num_classes} classes, and their unaries")
    if data.normalize:
        mean, std = statistics.result()
    else:
        mean, std = np.zeros(statistics.mean.shape, np.float32), np.ones(statistics.mean.shape, np.float32)

    writers: list[ArrayWriter] = []
    try:
        written = {split: _write_split(reader, folder, split, parts[split], data, mean, std, num_classes,
                                       frames_per_chunk, writers) for split in runs.SPLITS}
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    meta = _meta(config, reader, written, num_classes, static_names, (mean, std), time_ranges(reader, parts, cuts),
                 inputs)
    runs.meta_path(folder).unlink(missing_ok=True)  # the old meta no longer vouches for what follows
    for writer in writers:
        writer.commit()
    files.atomic_write_json(runs.meta_path(folder), meta)  # last: it vouches for the splits
    return folder, meta


def _meta(config: Config, reader: Reader, written: dict[str, dict], num_classes: Optional[int],
          static_names: list[str], normalisation: tuple[np.ndarray, np.ndarray], ranges: Optional[dict],
          inputs: dict) -> dict:
    """meta.json: what the processed splits are, how they were made, and the hashes that vouch for them."""
    data = config.data
    mean, std = normalisation
    hashes = {split: hashlib.sha256(json.dumps(entry["files"], sort_keys=True).encode()).hexdigest()
              for split, entry in written.items()}
    return {
        "name": dataset_name(config.data),
        "dataset": data.dataset,
        "task": reader.task,
        "num_classes": num_classes,
        "class_names": reader.class_names or ([str(i) for i in range(num_classes)] if num_classes else []),
        "channel_names": reader.channel_names + static_names,
        "static_features": list(data.static_features),
        "spatial_invariant": reader.spatial_invariant,
        "T_window": data.window,
        "forecast": forecast_meta(data, reader),
        "stride": data.stride,
        "normalisation": {"applied": data.normalize, "mean": mean.tolist(), "std": std.tolist(),
                          "from": "train split"},
        "store": STORE_VERSION,
        "shapes": {split: entry["shapes"] for split, entry in written.items()},
        "splits": {split: entry["sizes"] for split, entry in written.items()},
        "files": {split: entry["files"] for split, entry in written.items()},
        "sequences": {split: entry["sequences"] for split, entry in written.items()},
        "masks": {"mask": data.mask, "missing": data.missing, "ignore_label": data.ignore_label}
        if masks_configured(data) else None,
        "split_by": data.split_by,
        "time_ranges": ranges,
        "sha256": hashes,
        "data_version": hashlib.sha256("".join(hashes[s] for s in runs.SPLITS).encode()).hexdigest(),
        "generator": reader.params,
        "seed": config.seed,
        "baselines": reader.baselines,
        "inputs": inputs,
    }


def _scan_training(reader: Reader, pieces: list[Piece], data: DataConfig, frames_per_chunk: int
                   ) -> tuple[ChannelStatistics, Optional[int]]:
    """The first pass: the training frames' statistics (static features included), their values
    checked, and the classes when the reader does not know them (largest training label + 1)."""
    statistics, largest = ChannelStatistics(), -1
    for piece in track(pieces, "statistics", "sequences"):
        for chunk, observed in piece_chunks(reader, piece, data, frames_per_chunk):
            check_chunk(reader.sequences[piece.sequence].name, chunk, reader.task, reader.num_classes)
            if observed is None:
                statistics.add(chunk["X"])
            elif observed.any():
                statistics.add(chunk["X"][observed])  # [n, C]: missing pixels do not count
            if reader.task != "regression":
                largest = max(largest, int(chunk["Y"].max()))
    if reader.task == "regression" or reader.num_classes is not None:
        return statistics, reader.num_classes
    if largest < 1:
        raise UserError(f"{reader.params.get('path')}: the training labels hold a single class; set "
                        "data.num_classes (>= 2)")
    return statistics, largest + 1


def _write_split(reader: Reader, folder: Path, split: str, pieces: list[Piece], data: DataConfig, mean: np.ndarray,
                 std: np.ndarray, num_classes: Optional[int], frames_per_chunk: int, writers: list[ArrayWriter]
                 ) -> dict:
    """The second pass over one split: its frames normalised and written end to end, and its
    window index. Returns what meta.json records of the split."""
    frames = sum(piece.frames for piece in pieces)
    arrays: dict[str, ArrayWriter] = {}
    offset, table, masked = 0, [], None
    for piece in track(pieces, f"write {split}", "sequences"):
        sequence = reader.sequences[piece.sequence]
        for chunk, observed in piece_chunks(reader, piece, data, frames_per_chunk):
            if split != "train":  # the first pass checked the training frames
                check_chunk(sequence.name, chunk, reader.task, num_classes)
            chunk["X"] = (chunk["X"] - mean) / std
            if observed is not None:
                chunk["X"][~observed] = 0.0  # missing pixels take the training mean
                masked = (masked or 0) + int((~chunk["M"]).sum())
            for key, rows in chunk.items():
                if key not in arrays:
                    arrays[key] = ArrayWriter(runs.store_path(folder, split, key), rows.dtype,
                                              (frames, *rows.shape[1:]))
                    writers.append(arrays[key])
                arrays[key].append(rows)
        table.append({"index": piece.sequence, "name": sequence.name, "start": piece.start, "frames": piece.frames,
                      "offset": offset, "time": sequence.time if sequence.times is None
                      else format_time(sequence.times[piece.start], sequence.time_kind)})
        offset += piece.frames
    windows = window_index(pieces, data.window, data.stride)
    sizes = {"sequences": len(pieces), "windows": int(len(windows)), "frames": int(frames)}
    if masked is not None:
        sizes["masked_nodes"] = masked
    arrays["windows"] = ArrayWriter(runs.store_path(folder, split, "windows"), np.int64, windows.shape)
    writers.append(arrays["windows"])
    arrays["windows"].append(windows)
    written = {key: writer.close() for key, writer in arrays.items()}
    shapes = {key: [len(windows), window_frames(data, key), *writer.shape[1:]] for key, writer in arrays.items()
              if key != "windows"}
    return {"files": written, "shapes": shapes, "sequences": table,
            "sizes": sizes}


def _inputs(config: Config, reader: Reader) -> dict:
    """What phase 0's output depends on: the data config (less what only training reads), the
    seed, the store's layout and the input files' sizes and modification times."""
    data = to_dict(config)["data"]
    for key in ("loader", "augmentations", "root"):
        data.pop(key)
    sources = [[str(path), path.stat().st_size, path.stat().st_mtime_ns] for path in reader.sources]
    return {"config": data, "seed": config.seed, "store": STORE_VERSION,
            "sources": hashlib.sha256(json.dumps(sources).encode()).hexdigest()}


def _up_to_date(folder: Path, inputs: dict) -> Optional[dict]:
    """The meta of processed data made from these very inputs and still whole on disk, else None."""
    path = runs.meta_path(folder)
    try:
        meta = json.loads(path.read_text())
        complete = all(runs.store_path(folder, split, array).stat().st_size == entry["bytes"]
                       for split, arrays in meta["files"].items() for array, entry in arrays.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return meta if complete and meta.get("inputs") == inputs else None
