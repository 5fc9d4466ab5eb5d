"""Moving MNIST at this machine's budget, beside OpenSTL's published ConvLSTM figures.

    python bench/mmnist.py [--sequences 1500] [--epochs 6] [--out runs/bench_mmnist] [--set KEY=VALUE ...]
    python bench/mmnist.py --file mnist_test_seq.npy ...   # also score the standard test file
    python bench/mmnist.py --openstl --epochs 2            # OpenSTL's ConvLSTM-S settings (a GPU's run)

Generates `mmnist` (64x64, two real MNIST digits, 20 frames: 10 in, 10 out), trains the
autoregressive ConvLSTM forecaster with scheduled sampling on 16x16x16 patches (patch size 4, as
OpenSTL runs it) with the L1 loss (an unsure pixel stays dark: MSE's mean leaves a haze over the black
background that SSIM punishes), evaluates the test split, and prints MSE and MAE per frame (OpenSTL's: summed
over the frame's 64x64 pixels of [0, 1] values), SSIM and PSNR of the model, persistence and
extrapolation, with OpenSTL's rows beneath: published figures of a larger model trained far longer
(200 and 2,000 epochs of 10,000 sequences on a V100) on the standard test file, not measured here.
`--openstl` trains that larger model by OpenSTL's settings instead (`OPENSTL`), on 10,000 training
sequences an epoch, for as many epochs as `--epochs` says.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
COLUMNS = ("mse_per_frame", "mae_per_frame", "ssim", "psnr")
# OpenSTL docs/en/model_zoos/video_benchmarks.md (V100): ConvLSTM-S is 4 layers of 128, 5x5, patch 4, 15.0M parameters.
PUBLISHED = [("OpenSTL ConvLSTM-S, 200 epochs (published)", 29.80, 90.64, 0.9288, 22.10),
             ("OpenSTL ConvLSTM-S, 2000 epochs (published)", 22.41, 73.07, 0.9480, 23.54),
             ("OpenSTL PredRNN++, 2000 epochs (published)", 14.07, 48.91, 0.9698, 26.37)]


def settings(sequences: int, epochs: int) -> list[str]:
    return ["data.dataset=mmnist", "data.task=regression", "data.generator.height=64", "data.generator.width=64",
            "data.generator.sequence_length=20", f"data.generator.num_sequences={sequences}", "data.stride=20",
            "data.forecast.input_frames=10", "data.forecast.output_frames=10", "data.augmentations.spatial_flip=false",
            "data.augmentations.rotate_deg=[0]", "data.augmentations.gaussian_noise_std=0",
            "model.convlstm.forecaster=autoregressive", "model.convlstm.patch_size=4", "model.convlstm.dropout=0",
            "model.convlstm.hidden_sizes=[32,32]", "model.convlstm.kernel_size=3", "loss.unary=l1", "training.lr=1e-3",
            f"training.epochs={epochs}", f"training.early_stopping_patience={epochs}",
            f"training.scheduled_sampling.decay_epochs={max(1, epochs // 2)}", "training.batch_size=16"]


# OpenSTL's ConvLSTM-S on Moving MNIST (configs/mmnist/ConvLSTM.py): 4 layers of 128, 5x5, patch 4,
# lr 5e-4, batch 16, the MSE loss; 14,286 sequences give 10,000 training sequences at a 70% split.
# Ours has 11.7M parameters against its 15.0M: OpenSTL's cells add a LayerNorm over each convolution's
# [512, 16, 16] output, which ours has not.
OPENSTL = ["model.convlstm.num_layers=4", "model.convlstm.hidden_sizes=[128,128,128,128]",
           "model.convlstm.kernel_size=5", "training.lr=5e-4", "loss.unary=mse"]
OPENSTL_SEQUENCES = 14286


def run(script: str, *args: str) -> float:
    """Seconds `script` ran; its exit code, with nothing more, where it failed (it said why)."""
    started = time.perf_counter()
    code = subprocess.run([sys.executable, str(PROJECT / script), *args]).returncode
    if code:
        sys.exit(code)
    return time.perf_counter() - started


def table(title: str, scores: dict) -> str:
    lines = ["", title, "", "| forecaster | MSE | MAE | SSIM | PSNR |", "|---|---|---|---|---|"]
    for name, result in scores.items():
        mean = result["mean"]
        lines.append(f"| {name} | {mean['mse_per_frame']:.2f} | {mean['mae_per_frame']:.2f} | {mean['ssim']:.4f} | "
                     f"{mean['psnr']:.2f} |")
    for row in PUBLISHED:
        lines.append(f"| {row[0]} | {row[1]:.2f} | {row[2]:.2f} | {row[3]:.4f} | {row[4]:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, help="sequences generated (70%% train, 15%% test); "
                        f"default 1500, with --openstl {OPENSTL_SEQUENCES}")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--file", type=Path, help="mnist_test_seq.npy: also score the standard test file")
    parser.add_argument("--out", type=Path, default=PROJECT / "runs" / "bench_mmnist")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--openstl", action="store_true", help="OpenSTL's ConvLSTM-S settings (OPENSTL)")
    args = parser.parse_args()
    if args.sequences is None:
        args.sequences = OPENSTL_SEQUENCES if args.openstl else 1500
    overrides = settings(args.sequences, args.epochs) + (OPENSTL if args.openstl else []) + args.set
    config = ["--config", str(PROJECT / "config.yaml"), "--set", f"data.root={args.out / 'data'}",
              *[a for s in overrides for a in ("--set", s)]]
    run("tools/preprocess.py", *config)
    seconds = run("train_convlstm.py", *config, "--save", str(args.out / "mmnist"), "--overwrite")
    run("evaluate.py", *config, "--ckpt", str(args.out / "mmnist" / "best.pt"))
    metrics = json.loads((args.out / "mmnist" / "metrics.json").read_text())
    result = metrics["evaluate_test"]
    training = metrics["train_convlstm"]["training"]
    windows = training["epochs_run"] * int(0.7 * args.sequences)
    print(f"\ntrained {training['epochs_run']} epochs of {int(0.7 * args.sequences)} sequences in {seconds:.0f} s "
          f"({windows / seconds:.1f} training windows/s with validation, on {result['provenance']['device']}); "
          f"{result['model']['parameters']} parameters; inference "
          f"{10 * 1000 / result['model']['latency_ms_per_window']:.0f} frames/s")
    names = {"unary": "ConvLSTM (ours)", "persistence": "persistence", "extrapolation": "extrapolation (pysteps)"}
    scores = {label: result["forecast"]["scores"][name] for name, label in names.items()
              if name in result["forecast"]["scores"]}
    print(table(f"the generated test split ({int(0.15 * args.sequences)} sequences), averaged over 10 lead times",
                scores))
    if args.file:
        run("tools/mmnist_test.py", *config, "--ckpt", str(args.out / "mmnist" / "best.pt"), "--file", str(args.file))
        standard = json.loads((args.out / "mmnist" / "metrics.json").read_text())["standard_test"]
        print(table("the standard test file (mnist_test_seq.npy)",
                    {label: standard["scores"][name] for name, label in names.items() if name in standard["scores"]}))


if __name__ == "__main__":
    main()
