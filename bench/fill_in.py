"""How well the space-time CRF fills in missing pixels, against the unaries' argmax there.

    python bench/fill_in.py [--out runs/fill_in] [--missing 0.2] [--compatibility potts|learned]

Writes the built-in storms (config.yaml's generator, seed 42) as an HDF5 archive
with a fraction of the input pixels NaN (missing radar data, drawn at random),
preprocesses it with `data.missing: mask`, trains phase 1 and fits the CRF
(phase 2) with config.yaml's settings. The missing pixels' labels never reach
the store, so no phase sees them; this script alone reads them back from the
archive's truth and prints the test accuracy at missing and at observed pixels
of the unaries' argmax (the network sees the training mean there) and of the
CRF (no data term there: its label comes from the neighbours' messages).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from regimen.core import files  # noqa: E402
from regimen.core import runs  # noqa: E402
from regimen.core.config_file import load_config  # noqa: E402
from regimen.data.datasets import load_dataset  # noqa: E402
from regimen.data.features import load_features  # noqa: E402
from regimen.train.inference import decode, stored_outputs  # noqa: E402
from regimen.train.pgm import head_from_params  # noqa: E402


def write_archive(path: Path, missing: float, seed: int) -> np.ndarray:
    """storms with `missing` of the input pixels NaN; returns the true labels `[N, T, H, W]`."""
    data = load_dataset(load_config("config.yaml").data, 42)
    x = data.X.copy()
    x[np.random.default_rng(seed).random(x.shape[:4]) < missing] = np.nan
    with h5py.File(path, "w") as f:
        f["X"], f["Y"] = x, data.Y.astype(np.int64)
    return data.Y


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fill_in"))
    parser.add_argument("--missing", type=float, default=0.2, help="fraction of input pixels missing")
    parser.add_argument("--seed", type=int, default=0, help="draws the missing pixels")
    parser.add_argument("--compatibility", choices=("potts", "learned"),
                        help="the CRF's label compatibility (default: config.yaml's model.pgm.compatibility)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    truth = write_archive(args.out / "storms_missing.h5", args.missing, args.seed)
    raw = yaml.safe_load(Path("config.yaml").read_text())
    raw["data"].update({"root": str(args.out / "data"), "dataset": "hdf5", "path": str(args.out / "storms_missing.h5"),
                        "num_classes": 3, "missing": "mask"})
    if args.compatibility:
        raw["model"]["pgm"]["compatibility"] = args.compatibility
    config = args.out / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    base = args.out / "base"
    run("tools/preprocess.py", "--config", str(config))
    run("train_convlstm.py", "--config", str(config), "--save", str(base), "--overwrite")
    run("fit_pgm.py", "--config", str(config), "--features", str(base / "features.pt"))

    processed = next((args.out / "data" / "processed").iterdir())
    meta = json.loads(runs.meta_path(processed).read_text())
    index = np.load(runs.store_path(processed, "test", "windows"))  # (sequence, first frame, row)
    window = int(meta["T_window"])
    head = head_from_params(files.load_pgm_params(base / "pgm_params.pkl", "pgm"), "pgm")
    arrays = load_features(base / "features.pt", "--features")["splits"]["test"]
    right = {(name, where): 0 for name in ("unaries", "crf") for where in ("missing", "observed")}
    counts = {"missing": 0, "observed": 0}
    for out in stored_outputs(arrays, 16):
        true = torch.from_numpy(np.stack([truth[s, f:f + window] for s, f in index[out.rows, :2]]))
        observed = out.valid
        decoded = {"unaries": decode(None, out.unaries), "crf": decode(head, out.unaries, None, observed)}
        for name, labels in decoded.items():
            hit = labels == true
            right[name, "missing"] += int(hit[~observed].sum())
            right[name, "observed"] += int(hit[observed].sum())
        counts["missing"] += int((~observed).sum())
        counts["observed"] += int(observed.sum())

    print(f"\nstorms test split, {args.missing:.0%} of input pixels missing (seed {args.seed}): accuracy")
    print(f"{'predictor':<12}{'missing pixels':>16}{'observed pixels':>17}")
    for name in ("unaries", "crf"):
        print(f"{name:<12}{right[name, 'missing'] / counts['missing']:>16.4f}"
              f"{right[name, 'observed'] / counts['observed']:>17.4f}")
    print(f"({counts['missing']} missing and {counts['observed']} observed nodes of {len(index)} windows)")


if __name__ == "__main__":
    main()
