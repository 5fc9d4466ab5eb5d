"""Sequence labelling against a plain HMM: the unaries and each PGM, per window and over whole
sequences, beside hmmlearn's Gaussian HMM and the true-parameter decoder.

    python bench/sequences.py [--out runs/bench_sequences] [--dataset sensors] [--set KEY=VALUE ...]

Two tagging sets, sequences of 48 frames cut into tiling windows (stride = T_window), so a window
score is a frame score over whole sequences:

- `sensors`: drawn from a known Gaussian HMM (3 sticky states, a stay of about 12 frames, 6
  features, full covariances that overlap), written as a user's npz. Viterbi with the true
  parameters is the Bayes limit of a decoder that sees the whole sequence.
- `regimes`: the built-in switching field on an 8 x 8 grid (64 values a frame, what the Gaussian
  baselines take at most), whose emissions are not Gaussian.

For each: phase 0, phase 1, phase 2 with the HMM (the hybrid emission over the class prior, and the
predictive one, `model.pgm.emission`, with Viterbi and with marginal decoding) and with the chain
CRF, then evaluate.py per PGM,
with each window on its own and with `evaluation.stateful` (the network's state carried from window
to window and the PGM decoding every whole sequence). evaluate.py's `baselines` section gives
hmmlearn's `GaussianHMM` (full covariance, parameters counted from the training labels, Viterbi over
whole sequences) and the per-frame Gaussian classifier. Prints the test accuracies as a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from hmmlearn.hmm import GaussianHMM

PROJECT = Path(__file__).resolve().parents[1]
LENGTH, FEATURES, STATES, STAY = 48, 6, 3, 11 / 12
COMMON = ["data.task=tagging", "data.T_window=8", "data.stride=8", "data.augmentations.spatial_flip=false",
          "data.augmentations.rotate_deg=[0]", "training.epochs=20", "evaluation.use_pgm=always"]
DATASETS = {
    "sensors": ["data.dataset=npz", "model.convlstm.kernel_size=1", "model.convlstm.hidden_sizes=[32,32]"],
    "regimes": ["data.dataset=regimes", "data.generator.num_sequences=600", "data.generator.sequence_length=48",
                "data.generator.height=8", "data.generator.width=8"],
}

PGMS = {"hmm": ("HMM", ["--set", "model.pgm.type=hmm"]),  # folder: (label, settings)
        "hmm_predictive": ("HMM, predictive emission",
                           ["--set", "model.pgm.type=hmm", "--set", "model.pgm.emission=predictive"]),
        "hmm_predictive_marginals": ("HMM, predictive emission, marginal decoding",
                                     ["--set", "model.pgm.type=hmm", "--set", "model.pgm.emission=predictive",
                                      "--set", "model.pgm.decoding=marginals"]),
        "chain_crf": ("chain CRF", ["--set", "model.pgm.type=chain_crf"])}


def true_hmm(seed: int = 0) -> GaussianHMM:
    """The sensor set's generator: sticky transitions, state means a little apart, random full
    covariances (a per-frame classifier gets about three frames in four right)."""
    rng = np.random.default_rng(seed)
    model = GaussianHMM(STATES, covariance_type="full", init_params="", params="")
    model.n_features = FEATURES
    model.startprob_ = np.full(STATES, 1.0 / STATES)
    transitions = np.full((STATES, STATES), (1 - STAY) / (STATES - 1))
    np.fill_diagonal(transitions, STAY)
    model.transmat_ = transitions
    model.means_ = rng.normal(0.0, 0.75, size=(STATES, FEATURES))
    factors = rng.normal(0.0, 0.5, size=(STATES, FEATURES, FEATURES))
    model.covars_ = factors @ factors.transpose(0, 2, 1) + np.eye(FEATURES)
    return model


def write_sensors(path: Path, sequences: int, seed: int = 0) -> GaussianHMM:
    """`sequences` draws of `true_hmm` as an npz (X `[N, 48, 6]`, Y `[N, 48]`); returns the model."""
    model = true_hmm(seed)
    draws = [model.sample(LENGTH, random_state=seed + 1 + n) for n in range(sequences)]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=np.stack([x for x, _ in draws]).astype(np.float32), Y=np.stack([y for _, y in draws]),
             channel_names=np.array([f"sensor{i}" for i in range(FEATURES)]))
    return model


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(PROJECT / script), *args], check=True)


def accuracies(out: Path, dataset: str, settings: list[str]) -> dict[str, float]:
    """Phases 0-2 and evaluate.py on `dataset` into `out`; the test accuracy of each predictor."""
    config = ["--config", str(PROJECT / "config.yaml"), "--set", f"data.root={out / 'data'}",
              *[a for s in settings for a in ("--set", s)]]
    unary = out / "unary"
    run("tools/preprocess.py", *config)
    run("train_convlstm.py", *config, "--save", str(unary), "--overwrite")
    rows = {}
    for pgm, (label, settings) in PGMS.items():
        run("fit_pgm.py", *config, *settings, "--features", str(unary / "features.pt"), "--save", str(out / pgm),
            "--overwrite")
        for stateful in ("false", "true"):
            report = out / f"{pgm}_stateful_{stateful}"
            run("evaluate.py", *config, *settings, "--set", f"evaluation.stateful={stateful}", "--ckpt",
                str(unary / "best.pt"), "--pgm", str(out / pgm / "pgm_params.pkl"), "--out", str(report))
            result = json.loads((report / "metrics.json").read_text())["evaluate_test"]
            where = "whole sequences" if stateful == "true" else "each window alone"
            rows[f"unaries ({'stateful' if stateful == 'true' else 'each window alone'})"] = result["unary"]["accuracy"]
            rows[f"+ {label} ({where})"] = result["pgm"]["accuracy"]
            baselines = result.get("baselines") or {}
    for name, label in (("gaussian_hmm", "hmmlearn GaussianHMM (labels, whole sequences)"),
                        ("gaussian_classifier", "per-frame Gaussian classifier")):
        if name in baselines:
            rows[label] = baselines[name]["accuracy"]
    return rows


def bayes_limit(out: Path, model: GaussianHMM) -> float:
    """Test accuracy of Viterbi with the generator's parameters on the test split's raw sequences."""
    meta = json.loads(next((out / "data" / "processed").glob("*/meta.json")).read_text())
    raw = np.load(out / "data" / "sensors.npz")
    right = total = 0
    for piece in meta["sequences"]["test"]:
        x, y = raw["X"][piece["index"]].astype(np.float64), raw["Y"][piece["index"]]
        right += int((model.predict(x) == y).sum())
        total += len(y)
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "runs" / "bench_sequences")
    parser.add_argument("--dataset", choices=list(DATASETS), action="append")
    parser.add_argument("--sequences", type=int, default=600, help="sensor sequences to draw")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config overrides")
    args = parser.parse_args()
    tables = {}
    for dataset in args.dataset or list(DATASETS):
        out = args.out / dataset
        settings = COMMON + DATASETS[dataset] + args.set
        if dataset == "sensors":
            model = write_sensors(out / "data" / "sensors.npz", args.sequences)
            settings.append(f"data.path={out / 'data' / 'sensors.npz'}")
        rows = accuracies(out, dataset, settings)
        if dataset == "sensors":
            rows["Viterbi with the true parameters (Bayes limit)"] = bayes_limit(out, model)
        tables[dataset] = rows
    for dataset, rows in tables.items():
        print(f"\n{dataset}: test accuracy\n\n| predictor | accuracy |\n|---|---|")
        for name, value in rows.items():
            print(f"| {name} | {value:.4f} |")


if __name__ == "__main__":
    main()
