"""Whole-sequence decoding streamed from disk against the head over the whole sequence at once:
peak memory and time as the sequence grows.

    python bench/streaming.py                 # HMM and space-time CRF, 32x32 grids, up to 4,096 frames
    python bench/streaming.py --frames 256 1024

Each case runs in a fresh process, which reports its peak resident memory (`ru_maxrss`, torch
and the process included; the `baseline` row is a process that imports everything and decodes
nothing). "At once" builds the sequence's unaries in memory and calls `log_marginals` and
`decode` on them; "streamed" writes the same unaries window by window into a `SequenceSpool` and
decodes it with `decode_whole_sequences`, as stateful evaluation does. The unaries are random
windows, drawn from a generator seeded by the window's index, so both see the same numbers.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from regimen.train.pgm import PGMHead
from regimen.train.whole_sequences import SequenceSpool, decode_whole_sequences

K, SIDE, WINDOW = 3, 32, 8
HEADS = {"hmm": {"type": "hmm", "task": "segmentation", "num_classes": K, "emission": "prior",
                 "decoding": "viterbi"},
         "crf": {"type": "crf", "task": "segmentation", "num_classes": K, "neighbourhood": 4, "temporal_links": True,
                 "iterations": 5, "pairwise_weight": 1.0, "compatibility": "potts", "inference": "mean_field",
                 "damping": 0.0, "edge_aware": False}}


def window(index: int) -> torch.Tensor:
    """Window `index` of the sequence's unaries `[1, WINDOW, K, SIDE, SIDE]` (windows tile it)."""
    return 2 * torch.randn((1, WINDOW, K, SIDE, SIDE), generator=torch.Generator().manual_seed(index))


def one_case(head_type: str, mode: str, frames: int) -> dict:
    """Decodes one sequence of `frames` frames; returns the seconds taken and the peak memory."""
    torch.manual_seed(0)
    head = PGMHead(HEADS[head_type]).eval()
    start = time.perf_counter()
    if mode == "at_once":
        unaries = torch.cat([window(i) for i in range(frames // WINDOW)], dim=1)
        with torch.no_grad():
            head.log_marginals(unaries).exp(), head.decode(unaries)
    elif mode == "streamed":
        count = frames // WINDOW
        with SequenceSpool([list(range(count))], np.arange(count) * WINDOW, WINDOW) as spool:
            for i in range(count):
                spool.write(np.array([i]), unaries=window(i))
            decode_whole_sequences(head, spool)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def in_fresh_process(head_type: str, mode: str, frames: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--one", head_type, mode, str(frames)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_case(args.one[0], args.one[1], int(args.one[2]))))
        return
    baseline = in_fresh_process("hmm", "baseline", WINDOW)["peak_mib"]
    print(f"{SIDE}x{SIDE} grid, K={K}, windows of {WINDOW} frames; baseline process: {baseline:.0f} MiB peak")
    print(f"{'head':5} {'frames':>7} {'unaries MiB':>12} {'at once s':>10} {'at once MiB':>12} "
          f"{'streamed s':>11} {'streamed MiB':>13}")
    for head_type in args.heads:
        for frames in args.frames:
            at_once, streamed = (in_fresh_process(head_type, mode, frames) for mode in ("at_once", "streamed"))
            size = frames * K * SIDE * SIDE * 4 / 2 ** 20
            print(f"{head_type:5} {frames:7d} {size:12.0f} {at_once['seconds']:10.2f} {at_once['peak_mib']:12.0f} "
                  f"{streamed['seconds']:11.2f} {streamed['peak_mib']:13.0f}")


if __name__ == "__main__":
    main()
