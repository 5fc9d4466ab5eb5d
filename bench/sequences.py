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

For each: phase 0; phase 1 twice, each window from zeros and with `training.stateful`; phase 2 with
the HMM (the hybrid emission over the class prior and the predictive one, `model.pgm.emission`, the
latter with Viterbi and with marginal decoding) and with the chain CRF; then evaluate.py per PGM,
each window on its own and with `evaluation.stateful` (the network's state carried from window to
window and the PGM decoding every whole sequence). evaluate.py's `baselines` section gives
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


TRAININGS = {"each window from zeros": [], "stateful (truncated BPTT)": ["--set", "training.stateful=true"]}


def accuracies(out: Path, settings: list[str]) -> dict[str, dict[str, float]]:
    """Phases 0-2 and evaluate.py into `out`, with each phase-1 training of `TRAININGS`; the test
    accuracy of each predictor (rows) after each training (columns)."""
    config = ["--config", str(PROJECT / "config.yaml"), "--set", f"data.root={out / 'data'}",
              *[a for s in settings for a in ("--set", s)]]
    run("tools/preprocess.py", *config)
    rows: dict[str, dict[str, float]] = {}
    for training, extra in TRAININGS.items():
        unary = out / ("stateful" if extra else "windows")
        run("train_convlstm.py", *config, *extra, "--save", str(unary / "unary"), "--overwrite")
        for pgm, (label, pgm_settings) in PGMS.items():
            run("fit_pgm.py", *config, *pgm_settings, "--features", str(unary / "unary" / "features.pt"),
                "--save", str(unary / pgm), "--overwrite")
            for stateful in ("false", "true"):
                result = evaluation(config + pgm_settings, unary, pgm, stateful)
                where = "whole sequences" if stateful == "true" else "each window alone"
                rows.setdefault(f"unaries ({'stateful' if stateful == 'true' else where})", {})[training] = \
                    result["unary"]["accuracy"]
                rows.setdefault(f"+ {label} ({where})", {})[training] = result["pgm"]["accuracy"]
    for name, label in (("gaussian_hmm", "hmmlearn GaussianHMM (labels, whole sequences)"),
                        ("gaussian_classifier", "per-frame Gaussian classifier")):
        if name in (result.get("baselines") or {}):
            rows[label] = {training: result["baselines"][name]["accuracy"] for training in TRAININGS}
    return rows


def evaluation(config: list[str], unary: Path, pgm: str, stateful: str) -> dict:
    """evaluate.py's test section of phase 1's checkpoint in `unary` with the PGM fitted into `unary/pgm`."""
    report = unary / f"{pgm}_stateful_{stateful}"
    run("evaluate.py", *config, "--set", f"evaluation.stateful={stateful}", "--ckpt", str(unary / "unary" / "best.pt"),
        "--pgm", str(unary / pgm / "pgm_params.pkl"), "--out", str(report))
    return json.loads((report / "metrics.json").read_text())["evaluate_test"]


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
        rows = accuracies(out, settings)
        if dataset == "sensors":
            limit = bayes_limit(out, model)
            rows["Viterbi with the true parameters (Bayes limit)"] = {training: limit for training in TRAININGS}
        tables[dataset] = rows
    for dataset, rows in tables.items():
        print(f"\n{dataset}: test accuracy, by phase-1 training\n\n| predictor | " + " | ".join(TRAININGS) + " |")
        print("|---|" + "---|" * len(TRAININGS))
        for name, values in rows.items():
            print(f"| {name} | " + " | ".join(f"{values[t]:.4f}" for t in TRAININGS) + " |")


if __name__ == "__main__":
    main()
