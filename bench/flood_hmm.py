"""The per-pixel HMM on monotone flood fronts: how much it gains or costs, and why.

    python bench/flood_hmm.py [--out runs/flood_hmm] [--sequences 48]

Writes a flood-mapping npz like a user's (4 classes: land, shallow water, deep
water, permanent river; 2 bands, 24 x 40 pixels) where water spreads from the
river and never recedes, trains phase 1 on it, then fits each PGM variant on the
saved unaries and prints the val/test mIoU of the unaries and after each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

CLASSES = ("land", "shallow", "deep", "river")


def flood_arrays(n: int, t: int = 24, h: int = 24, w: int = 40, noise: float = 0.3, rise: tuple = (0.1, 0.25),
                 seed: int = 0) -> dict[str, np.ndarray]:
    """X `[N, T, H, W, 2]` (backscatter, water index) and Y `[N, T, H, W]`: water rises over a
    random terrain at a random steady rate; a pixel that floods stays flooded."""
    rng = np.random.default_rng(seed)
    cols = np.arange(w)[None, :]
    river = np.abs(np.arange(h)[:, None] - h / 2 - 3 * np.sin(cols / 6.0)) < 1.5  # (H, W)
    terrain = ndimage.gaussian_filter(rng.normal(size=(n, h, w)), sigma=(0, 3, 3))
    terrain = terrain / terrain.std(axis=(1, 2), keepdims=True)
    distance = np.stack([ndimage.distance_transform_edt(~river)] * n)  # pixels from the river
    height = 0.5 * distance + terrain  # (N, H, W)
    rate = rng.uniform(*rise, size=(n, 1, 1, 1))
    level = rate * np.arange(t)[None, :, None, None] + rng.uniform(-0.5, 0.5, size=(n, 1, 1, 1))
    depth = level - height[:, None]  # (N, T, H, W); only ever grows
    y = np.where(depth > 1.0, 2, np.where(depth > 0, 1, 0))
    y[:, :, river] = 3
    backscatter = np.choose(y, [0.0, -1.0, -1.6, -2.0]) + rng.normal(0, noise, y.shape)
    water = np.choose(y, [0.0, 0.7, 1.0, 1.2]) + 0.3 * np.tanh(depth) + rng.normal(0, noise, y.shape)
    x = np.stack([backscatter, water], axis=-1).astype(np.float32)
    return {"X": x, "Y": y.astype(np.int64), "class_names": np.array(CLASSES),
            "channel_names": np.array(["backscatter", "water_index"])}


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/flood_hmm"))
    parser.add_argument("--sequences", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--rise", type=float, nargs=2, default=(0.1, 0.25), metavar=("LOW", "HIGH"),
                        help="range of the water level's rise per frame (slower: rarer water classes)")
    parser.add_argument("--noise", type=float, default=0.3, help="sensor noise std of both bands")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    npz = args.out / "floods.npz"
    np.savez(npz, **flood_arrays(args.sequences, noise=args.noise, rise=tuple(args.rise)))
    common = ["--set", "data.dataset=npz", "--set", f"data.path={npz}", "--set", f"data.root={args.out / 'data'}",
              "--set", "threads=1", "--set", f"training.epochs={args.epochs}"]
    run("tools/preprocess.py", *common)
    run("train_convlstm.py", *common, "--save", str(args.out / "phase1"), "--overwrite")
    rows = []
    for name, sets in VARIANTS.items():
        folder = args.out / name
        run("fit_pgm.py", *common, *sum((["--set", s] for s in sets), []),
            "--features", str(args.out / "phase1" / "features.pt"), "--save", str(folder))
        fit = json.loads((folder / "metrics.json").read_text())["fit_pgm"]
        rows.append((name, fit["val"]["unary"]["miou"], fit["val"]["pgm"]["miou"],
                     fit["test"]["unary"]["miou"], fit["test"]["pgm"]["miou"]))
    print(f"\n{'variant':<24}{'val unaries':>12}{'val PGM':>10}{'test unaries':>14}{'test PGM':>10}")
    for name, *values in rows:
        print(f"{name:<24}" + "".join(f"{v:>{width}.4f}" for v, width in zip(values, (12, 10, 14, 10))))


VARIANTS = {"hmm": ["model.pgm.type=hmm"], "chain_crf": ["model.pgm.type=chain_crf"],
            "crf": ["model.pgm.type=crf"]}

if __name__ == "__main__":
    main()
