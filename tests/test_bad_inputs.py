"""A hostile user's battery across all eight scripts: each bad input exits 2 with one stderr line
naming the file, key or value and what is expected, with no traceback, and leaves every file
byte-identical (config values, --set syntax, damaged and foreign hand-off files, npz contents,
output paths, concurrency)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
import yaml

from conftest import malicious_pickle, ok, phase_one, run_script, snapshot
from regimen.core import folders


@dataclass
class World:
    """Phases 0-3 and an export on tiny storms, made once: what the bad inputs are aimed at."""

    root: Path
    config: str
    base: Path
    joint: Path
    bundle: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("world")
    config, base = phase_one(root)
    raw = yaml.safe_load(Path(config).read_text())  # evolve.py's cases need a search space
    raw["evolutionary"] = {"search_space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}
    Path(config).write_text(yaml.safe_dump(raw))
    ok("fit_pgm.py", "--config", config, "--features", str(base / "features.pt"))
    joint = root / "joint"
    ok("train_joint.py", "--config", config, "--resume", str(base / "ckpt.pt"), "--save", str(joint))
    bundle = root / "bundle"
    ok("export.py", "--config", config, "--ckpt", str(joint / "best.pt"), "--out", str(bundle))
    return World(root, config, base, joint, bundle)


# --------------------------------------------------------------------------- ways to spoil a file


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def copy_run(w: World, tmp: Path, name: str = "base") -> Path:
    """A copy of a run folder of the world, without its lock file, to damage."""
    target = tmp / name
    shutil.copytree(getattr(w, name), target, ignore=shutil.ignore_patterns(folders.LOCK_FILE))
    return target


def copy_data(w: World, tmp: Path) -> str:
    """A copy of the world's processed data and a config that reads it: (config path)."""
    shutil.copytree(w.root / "data", tmp / "data", ignore=shutil.ignore_patterns(folders.LOCK_FILE))
    text = Path(w.config).read_text().replace(str(w.root / "data"), str(tmp / "data"))
    (tmp / "copy.yaml").write_text(text)
    return str(tmp / "copy.yaml")


def spoiled(w: World, tmp: Path, run: str, file: str) -> Path:
    """A copy of one of the world's run folders with `file` cut in half; returns the copy."""
    folder = copy_run(w, tmp, run)
    truncate(folder / file)
    return folder


def written(tmp: Path, name: str, text: str) -> Path:
    (tmp / name).write_text(text)
    return tmp


def malicious(tmp: Path) -> Path:
    (tmp / "p.pkl").write_bytes(malicious_pickle(tmp / "pwned"))
    return tmp / "p.pkl"


def flip_a_byte(path: Path) -> None:
    payload = bytearray(path.read_bytes())
    payload[-3] ^= 0xFF
    path.write_bytes(bytes(payload))


def altered(folder: Path, file: str) -> Path:
    flip_a_byte(folder / file)
    return folder


def removed(folder: Path, file: str) -> Path:
    (folder / file).unlink()
    return folder


def damaged_data(file: str, spoil: Callable[[Path], None] = truncate) -> Callable:
    def prepare(w: World, tmp: Path) -> list[str]:
        config = copy_data(w, tmp)
        spoil(tmp / "data" / "processed" / "storms" / file)
        return ["--config", config]
    return prepare


def npz(tmp: Path, name: str = "mine.npz", **arrays) -> str:
    base = {"X": np.zeros((6, 5, 3, 3, 1), np.float32), "Y": np.zeros((6, 5, 3, 3), np.int64)}
    base["Y"][:, :, 0] = 1
    base.update(arrays)
    path = tmp / name
    np.savez(path, **base)
    return str(path)


def npz_args(path: str) -> list[str]:
    return ["--set", "data.dataset=npz", "--set", f"data.path={path}", "--set", "data.T_window=3"]


def foreign(tmp: Path, name: str = "mine") -> Path:
    folder = tmp / name
    (folder / "src").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes")
    return folder


def blocker(tmp: Path) -> Path:
    (tmp / "blocker.txt").write_text("a file where a folder should be")
    return tmp / "blocker.txt"


def config_text(text: str) -> Callable:
    def prepare(w: World, tmp: Path) -> list[str]:
        (tmp / "bad.yaml").write_text(text)
        return ["--config", str(tmp / "bad.yaml")]
    return prepare


def object_checkpoint(tmp: Path) -> Path:
    """A .pt file whose unpickling would build a Python object, which weights_only refuses."""
    torch.save({"format": 1, "kind": "convlstm", "thing": Path("x")}, tmp / "ckpt.pt")
    return tmp / "ckpt.pt"


# Nine levels of nine aliases each: 9**9 values from a few hundred bytes.
ALIAS_BOMB = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
HELD = "in use by PID"  # what a second writer is told


# --------------------------------------------------------------------------- the battery


@dataclass
class Case:
    script: str
    args: Callable[[World, Path], list[str]]  # may also prepare files under the case's folder
    expected: str
    held: Optional[Callable[[World, Path], Path]] = None  # a folder this test process holds meanwhile


S = "--set"
NOT_PREPROCESSED = ("meta.json not found: this config's data (data.dataset: storms) has not been preprocessed; "
                    "run tools/preprocess.py with this config first")
CASES = {
    # ---- tools/preprocess.py: config values, --set syntax, YAML, npz contents, output paths
    "preprocess negative seed": Case("tools/preprocess.py", lambda w, t: [S, "seed=-1"],
                                     "seed = -1: must be in [0, 2147483647]"),
    "preprocess huge seed": Case("tools/preprocess.py", lambda w, t: [S, f"seed={2 ** 70}"],
                                 "seed = 1180591620717411303424: must be in [0, 2147483647]"),
    "preprocess NUL in data.root": Case("tools/preprocess.py", lambda w, t: [S, 'data.root="a\\0b"'],
                                        "data.root = 'a\\x00b': holds a NUL character"),
    "preprocess 5000-character data.root": Case("tools/preprocess.py", lambda w, t: [S, "data.root=" + "x" * 5000],
                                                "(5002 characters): expected a path of 1 to 4096 bytes"),
    "preprocess T_window 1": Case("tools/preprocess.py", lambda w, t: [S, "data.T_window=1"],
                                  "data.T_window = 1: must be >= 2"),
    "preprocess 10^12 sequences": Case("tools/preprocess.py",
                                       lambda w, t: [S, "data.generator.num_sequences=1000000000000"],
                                       "generating the storms data would take about"),
    "preprocess fork workers": Case("tools/preprocess.py", lambda w, t: [S, "data.loader.start_method=fork"],
                                    "data.loader.start_method = 'fork': expected one of spawn, forkserver"),
    "preprocess hdf5 axes": Case("tools/preprocess.py", lambda w, t: [S, "data.dataset=hdf5", S, f"data.path={t}",
                                                                      S, "data.format=NTHX"],
                                 "data.format = 'NTHX': expected the axis order of the inputs: T, H, W, optional N"),
    "preprocess next_frame labels of classes": Case(
        "tools/preprocess.py", lambda w, t: [S, "data.labels=next_frame"],
        "data.labels = 'next_frame': next_frame targets the next frame: data.task regression"),
    "preprocess archive without a path": Case("tools/preprocess.py", lambda w, t: [S, "data.dataset=frames"],
                                              "data.path = None: dataset 'frames' needs the path of the archive"),
    "preprocess stateful with gaps": Case("tools/preprocess.py", lambda w, t: [S, "evaluation.stateful=true",
                                                                               S, "data.stride=5"],
                                          "evaluation.stateful = True: carries the state from window to window, "
                                          "which needs windows that cover each sequence: data.stride (5) <= "
                                          "data.T_window (4)"),
    "preprocess infinite lr": Case("tools/preprocess.py", lambda w, t: [S, "training.lr=.inf"],
                                   "training.lr = inf: expected a finite number"),
    "preprocess NaN loss weight": Case("tools/preprocess.py", lambda w, t: [S, "loss.alpha_unary=.nan"],
                                       "loss.alpha_unary = nan: expected a finite number"),
    "preprocess integer beyond a float": Case("tools/preprocess.py", lambda w, t: [S, f"training.lr={10 ** 400}"],
                                              "training.lr: expected a finite number, got an integer of 401"),
    "preprocess --set without =": Case("tools/preprocess.py", lambda w, t: [S, "data.T_window"],
                                       "--set 'data.T_window': expected dotted.key=value"),
    "preprocess --set into a value": Case("tools/preprocess.py", lambda w, t: [S, "data.T_window.x=1"],
                                          "--set data.T_window.x: data.T_window is not a section"),
    "preprocess --set bad YAML": Case("tools/preprocess.py", lambda w, t: [S, "data.splits=[0.7, 0.3"],
                                      "--set data.splits: malformed YAML"),
    "preprocess unknown key": Case("tools/preprocess.py", lambda w, t: [S, "data.stried=2"],
                                   "unknown key 'data.stried'; did you mean 'data.stride'?"),
    "preprocess YAML alias bomb": Case("tools/preprocess.py", config_text(ALIAS_BOMB),
                                       "bad.yaml: the YAML expands to more than 100000 values"),
    "preprocess duplicate key": Case("tools/preprocess.py", config_text("seed: 1\nseed: 2\n"),
                                     "bad.yaml: key 'seed' appears twice in one section (line 2)"),
    "preprocess config is a folder": Case("tools/preprocess.py", lambda w, t: ["--config", str(t)],
                                          "is a folder; expected a YAML config file"),
    "preprocess config not text": Case("tools/preprocess.py", lambda w, t: ["--config", str(w.base / "ckpt.pt")],
                                       "ckpt.pt: not a text file"),
    "preprocess npz 0 sequences": Case("tools/preprocess.py", lambda w, t: npz_args(npz(
        t, X=np.zeros((0, 5, 3, 3, 1), np.float32), Y=np.zeros((0, 5, 3, 3), np.int64))),
        "mine.npz: X has shape (0, 5, 3, 3, 1), 0 sequences of 5 frames"),
    "preprocess npz label 10^9": Case("tools/preprocess.py", lambda w, t: npz_args(npz(
        t, Y=np.full((6, 5, 3, 3), 10 ** 9, np.int64))),
        "Y's largest label 1000000000 means 1000000001 classes, and their unaries would take about"),
    "preprocess npz path is a folder": Case("tools/preprocess.py", lambda w, t: npz_args(str(t)),
                                            "is a folder; expected an .npz file with X and Y"),
    "preprocess npz not an archive": Case("tools/preprocess.py", lambda w, t: npz_args(str(blocker(t))),
                                          "blocker.txt: not a readable .npz file"),
    "preprocess npz NaN": Case("tools/preprocess.py", lambda w, t: npz_args(npz(
        t, X=np.full((6, 5, 3, 3, 1), np.nan, np.float32))), "X has 270 NaN/Inf value(s)"),
    "preprocess data.root is a file": Case("tools/preprocess.py", lambda w, t: [S, f"data.root={blocker(t)}"],
                                           "blocker.txt is a file; expected a folder"),
    "preprocess folder in use": Case("tools/preprocess.py", lambda w, t: [S, f"data.root={t / 'data'}"], HELD,
                                     held=lambda w, t: t / "data" / "processed" / "storms"),

    # ---- tools/visualize.py
    "visualize count 0": Case("tools/visualize.py", lambda w, t: ["--count", "0"], "--count 0: must be >= 1"),
    "visualize unknown split": Case("tools/visualize.py", lambda w, t: ["--split", "dev"],
                                    "argument --split: invalid choice: 'dev'"),
    "visualize out is a file": Case("tools/visualize.py", lambda w, t: ["--out", str(blocker(t))],
                                    "blocker.txt: is a file; expected a folder"),
    "visualize before preprocess": Case("tools/visualize.py", lambda w, t: [S, f"data.root={t}"],
                                        NOT_PREPROCESSED),
    "visualize damaged meta.json": Case("tools/visualize.py", damaged_data("meta.json"),
                                        "meta.json: damaged ("),
    "visualize damaged split": Case("tools/visualize.py", damaged_data("train.X.npy"),
                                    "train.X.npy: damaged (its size or sha256 differs from meta.json's); "
                                    "tools/preprocess.py writes it again"),
    "visualize missing checkpoint": Case("tools/visualize.py", lambda w, t: ["--ckpt", str(t / "no.pt")],
                                         "no.pt: file not found"),
    "visualize damaged checkpoint": Case("tools/visualize.py", lambda w, t: [
        "--ckpt", str(spoiled(w, t, "base", "best.pt") / "best.pt"), "--out", str(t / "pictures")],
        "best.pt: damaged or not a regimen checkpoint"),
    "visualize folder in use": Case("tools/visualize.py", lambda w, t: ["--out", str(t / "pictures")], HELD,
                                    held=lambda w, t: t / "pictures"),

    # ---- train_convlstm.py
    "phase 1 folder holds a run": Case("train_convlstm.py", lambda w, t: ["--save", str(w.base)],
                                       "already holds a run (best.pt, ckpt.pt, config.yaml); pass --resume to continue it"),
    "phase 1 overwrite a foreign folder": Case("train_convlstm.py", lambda w, t: [
        "--save", str(foreign(t)), "--overwrite"], "--overwrite replaces only a run folder"),
    "phase 1 overwrite a bundle": Case("train_convlstm.py", lambda w, t: ["--save", str(w.bundle), "--overwrite"],
                                       "this folder also holds MANIFEST.json, calibration.npz, model.pt"),
    "phase 1 overwrite the runs parent": Case("train_convlstm.py", lambda w, t: [
        "--save", str(w.root), "--overwrite"], "--overwrite replaces only a run folder"),
    "phase 1 save is a file": Case("train_convlstm.py", lambda w, t: ["--save", str(blocker(t))],
                                   "blocker.txt: is a file; expected a folder"),
    "phase 1 save name too long": Case("train_convlstm.py", lambda w, t: ["--save", str(t / ("n" * 300))],
                                       "argument --save: has a name longer than 255 bytes; expected a file system path (got "),
    "phase 1 resume best.pt": Case("train_convlstm.py", lambda w, t: ["--resume", str(w.base / "best.pt")],
                                   "holds weights only; resume from"),
    "phase 1 resume features": Case("train_convlstm.py", lambda w, t: ["--resume", str(w.base / "features.pt")],
                                    "holds a features checkpoint; expected convlstm"),
    "phase 1 resume damaged ckpt": Case("train_convlstm.py", lambda w, t: [
        "--resume", str(spoiled(w, t, "base", "ckpt.pt") / "ckpt.pt")],
        "ckpt.pt: damaged or not a regimen checkpoint (not a whole torch.save archive); "
        "train_convlstm.py writes it again"),
    "phase 1 resume a pickled object": Case("train_convlstm.py", lambda w, t: [
        "--resume", str(object_checkpoint(t))], "holds Python objects (pathlib.PosixPath) that a regimen checkpoint"),
    "phase 1 resume a folder": Case("train_convlstm.py", lambda w, t: ["--resume", str(w.base)],
                                    "is a folder; expected a checkpoint file"),
    "phase 1 resume damaged metrics": Case("train_convlstm.py", lambda w, t: [
        "--resume", str(spoiled(w, t, "base", "metrics.json") / "ckpt.pt")],
        "metrics.json: damaged ("),
    "phase 1 damaged meta.json": Case("train_convlstm.py", lambda w, t: [
        *damaged_data("meta.json")(w, t), "--save", str(t / "run")], "meta.json: damaged ("),
    "phase 1 damaged val split": Case("train_convlstm.py", lambda w, t: [
        *damaged_data("val.Y.npy")(w, t), "--save", str(t / "run")], "val.Y.npy: damaged (its size or sha256 differs"),
    "phase 1 altered frames": Case("train_convlstm.py", lambda w, t: [
        *damaged_data("test.X.npy", flip_a_byte)(w, t), "--save", str(t / "run")],
        "test.X.npy: damaged (its size or sha256 differs"),
    "phase 1 data not processed": Case("train_convlstm.py", lambda w, t: [
        S, f"data.root={t}", "--save", str(t / "run")], NOT_PREPROCESSED),
    "phase 1 window differs from the data": Case("train_convlstm.py", lambda w, t: [
        S, "data.T_window=3", "--save", str(t / "run")], "data.T_window = 3 but"),
    "phase 1 absent device": Case("train_convlstm.py", lambda w, t: [S, "device=cuda:7", "--save", str(t / "run")],
                                  "device = 'cuda:7'"),
    "phase 1 folder in use": Case("train_convlstm.py", lambda w, t: ["--save", str(t / "run")], HELD,
                                  held=lambda w, t: t / "run"),

    # ---- fit_pgm.py
    "phase 2 features missing": Case("fit_pgm.py", lambda w, t: ["--features", str(t / "nope.pt")],
                                     "nope.pt: file not found"),
    "phase 2 features are a config": Case("fit_pgm.py", lambda w, t: ["--features", str(w.base / "config.yaml")],
                                          "config.yaml: damaged or not a regimen checkpoint"),
    "phase 2 features are a checkpoint": Case("fit_pgm.py", lambda w, t: ["--features", str(w.base / "ckpt.pt")],
                                              "holds a convlstm checkpoint; expected features"),
    "phase 2 damaged features": Case("fit_pgm.py", lambda w, t: [
        "--features", str(spoiled(w, t, "base", "features.pt") / "features.pt")],
        "features.pt: damaged or not a regimen checkpoint"),
    "phase 2 altered unaries": Case("fit_pgm.py", lambda w, t: [
        "--features", str(altered(copy_run(w, t), "features.val.unaries.npy") / "features.pt")],
        "features.val.unaries.npy: damaged (its size or sha256 differs from features.pt's); train_convlstm.py "
        "writes it again"),
    "phase 2 missing labels": Case("fit_pgm.py", lambda w, t: [
        "--features", str(removed(copy_run(w, t), "features.train.labels.npy") / "features.pt")],
        "features.train.labels.npy not found; run train_convlstm.py first"),
    "phase 2 save is a file": Case("fit_pgm.py", lambda w, t: [
        "--features", str(w.base / "features.pt"), "--save", str(blocker(t))], "blocker.txt: is a file"),
    "phase 2 damaged metrics beside the features": Case("fit_pgm.py", lambda w, t: [
        "--features", str(spoiled(w, t, "base", "metrics.json") / "features.pt")],
        "metrics.json: damaged ("),
    "phase 2 neighbourhood 6": Case("fit_pgm.py", lambda w, t: [
        "--features", str(w.base / "features.pt"), S, "model.pgm.neighbourhood=6"],
        "model.pgm.neighbourhood = 6: expected one of 4, 8"),
    "phase 2 em for a crf": Case("fit_pgm.py", lambda w, t: [
        "--features", str(w.base / "features.pt"), S, "model.pgm.fit=em"], "em (Baum-Welch) applies to"),
    "phase 2 folder in use": Case("fit_pgm.py", lambda w, t: [
        "--features", str(w.base / "features.pt"), "--save", str(t / "pgm")], HELD, held=lambda w, t: t / "pgm"),

    # ---- train_joint.py
    "phase 3 resume missing": Case("train_joint.py", lambda w, t: ["--resume", str(t / "gone.pt")],
                                   "gone.pt: file not found"),
    "phase 3 resume features": Case("train_joint.py", lambda w, t: ["--resume", str(w.base / "features.pt")],
                                    "holds a features checkpoint; expected convlstm or joint"),
    "phase 3 damaged resume": Case("train_joint.py", lambda w, t: [
        "--resume", str(spoiled(w, t, "base", "ckpt.pt") / "ckpt.pt"), "--save", str(t / "j")],
        "ckpt.pt: damaged or not a regimen checkpoint"),
    "phase 3 malicious pgm": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), "--pgm", str(malicious(t)), "--save", str(t / "j")],
        "refusing to load posix.system"),
    "phase 3 damaged pgm": Case("train_joint.py", lambda w, t: [
        "--resume", str(spoiled(w, t, "base", "pgm_params.pkl") / "ckpt.pt"), "--save", str(t / "j")],
        "pgm_params.pkl: damaged ("),
    "phase 3 folder holds a run": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), "--save", str(w.joint)], "already holds a run"),
    "phase 3 overwrite a foreign folder": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), "--save", str(foreign(t)), "--overwrite"],
        "--overwrite replaces only a run folder"),
    "phase 3 unknown mode": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), S, "training.joint.mode=sideways"],
        "training.joint.mode = 'sideways': expected one of alternating, end_to_end"),
    "phase 3 save is a file": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), "--save", str(blocker(t))], "blocker.txt: is a file"),
    "phase 3 infinite beta": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), S, "loss.beta_structured=.inf"], "expected a finite number"),
    "phase 3 folder in use": Case("train_joint.py", lambda w, t: [
        "--resume", str(w.base / "ckpt.pt"), "--save", str(t / "j")], HELD, held=lambda w, t: t / "j"),

    # ---- evaluate.py
    "evaluate checkpoint missing": Case("evaluate.py", lambda w, t: ["--ckpt", str(t / "no.pt")],
                                        "no.pt: file not found"),
    "evaluate unknown split": Case("evaluate.py", lambda w, t: ["--ckpt", str(w.joint / "best.pt"),
                                                               "--split", "dev"], "--split 'dev': expected one of"),
    "evaluate out is a file": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(blocker(t))], "blocker.txt: is a file"),
    "evaluate plots is a file": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(written(t, "plots", "x"))],
        "plots is a file; expected a folder"),
    "evaluate damaged metrics in out": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(written(t, "metrics.json", "{"))],
        "metrics.json: damaged ("),
    "evaluate damaged history": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(spoiled(w, t, "joint", "history.jsonl") / "best.pt")], "history.jsonl: damaged ("),
    "evaluate malicious pgm": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(w.base / "best.pt"), "--pgm", str(malicious(t)), "--out", str(t / "e")],
        "refusing to load posix.system"),
    "evaluate damaged checkpoint": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(spoiled(w, t, "joint", "best.pt") / "best.pt")],
        "best.pt: damaged or not a regimen checkpoint"),
    "evaluate without processed data": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), S, f"data.root={t}", "--out", str(t / "e")],
        NOT_PREPROCESSED),
    "evaluate zero bins": Case("evaluate.py", lambda w, t: ["--ckpt", str(w.joint / "best.pt"), S,
                                                           "evaluation.bins=0"], "evaluation.bins = 0: must be > 0"),
    "evaluate folder in use": Case("evaluate.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(t / "e")], HELD, held=lambda w, t: t / "e"),

    # ---- export.py
    "export without checkpoint": Case("export.py", lambda w, t: ["--out", str(t / "b")], "give --ckpt PATH"),
    "export overwrite a foreign folder": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(foreign(t)), "--overwrite"],
        "--overwrite replaces only an export bundle (export.py), and this folder also holds notes.txt, src/"),
    "export overwrite every run": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(w.root), "--overwrite"],
        "--overwrite replaces only an export bundle"),
    "export overwrite a run folder": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(w.base), "--overwrite"], "this folder also holds best.pt"),
    "export full folder": Case("export.py", lambda w, t: ["--ckpt", str(w.joint / "best.pt"), "--out", str(w.bundle)],
                               "already holds files (MANIFEST.json, calibration.npz, config.yaml); pass --overwrite"),
    "export out is a file": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(blocker(t))], "blocker.txt: is a file"),
    "export unwritable out": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", "/proc/regimen-bundle"], "/proc/regimen-bundle: cannot write there"),
    "export unknown calibration": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), S, "evaluation.calibration=platt"],
        "evaluation.calibration = 'platt': expected one of"),
    "export damaged checkpoint": Case("export.py", lambda w, t: [
        "--ckpt", str(spoiled(w, t, "joint", "best.pt") / "best.pt"), "--out", str(t / "b")],
        "best.pt: damaged or not a regimen checkpoint"),
    "export verify no manifest": Case("export.py", lambda w, t: ["--verify", str(w.base)],
                                      "MANIFEST.json: missing"),
    "export verify a changed byte": Case("export.py", lambda w, t: [
        "--verify", str(written(copy_run(w, t, "bundle"), "config.yaml", "seed: 1\n"))], "config.yaml: sha256"),
    "export verify damaged manifest": Case("export.py", lambda w, t: [
        "--verify", str(spoiled(w, t, "bundle", "MANIFEST.json"))],
        "MANIFEST.json: not a readable manifest"),
    "export folder in use": Case("export.py", lambda w, t: [
        "--ckpt", str(w.joint / "best.pt"), "--out", str(t / "b")], HELD, held=lambda w, t: t / "b"),

    # ---- evolve.py
    "evolve no slots": Case("evolve.py", lambda w, t: ["--out", str(t / "s"), "--parallel", "0"],
                            "--parallel 0: must be >= 1"),
    "evolve empty search space": Case("evolve.py", lambda w, t: ["--out", str(t / "s"), S,
                                                                "evolutionary.search_space={}"],
                                      "evolutionary.search_space is empty"),
    "evolve gene low above high": Case("evolve.py", lambda w, t: [
        "--out", str(t / "s"), S, "evolutionary.search_space={training.lr: {type: float, low: 1, high: 0.1}}"],
        "low (1) is greater than high (0.1)"),
    "evolve unknown objective": Case("evolve.py", lambda w, t: ["--out", str(t / "s"), S,
                                                               "evolutionary.objectives=[speed]"],
                                     "item 0 'speed' is not one of"),
    "evolve out is a file": Case("evolve.py", lambda w, t: ["--out", str(blocker(t)), "--overwrite"],
                                 "blocker.txt: is a file; expected a folder"),
    "evolve overwrite a run folder": Case("evolve.py", lambda w, t: ["--out", str(w.base), "--overwrite"],
                                          "--overwrite replaces only a search folder (evolve.py)"),
    "evolve folder holds a search": Case("evolve.py", lambda w, t: [
        "--out", str(written(t, "state.json", "{}"))], "already holds a search (state.json); pass --resume"),
    "evolve resume nothing": Case("evolve.py", lambda w, t: ["--out", str(t / "s"), "--resume"],
                                  "holds no search (no config.yaml)"),
    "evolve resume another config": Case("evolve.py", lambda w, t: [
        "--out", str(written(t, "state.json", '{"format": 1, "config_hash": "0"}')), "--resume"],
        "was made with another config"),
    "evolve resume damaged state": Case("evolve.py", lambda w, t: [
        "--out", str(written(t, "state.json", '{"format": 1, "gen')), "--resume"],
        "state.json: damaged (Unterminated string"),
    "evolve YAML alias bomb": Case("evolve.py", config_text(ALIAS_BOMB), "expands to more than 100000 values"),
    "evolve cmaes without checkpoint": Case("evolve.py", lambda w, t: ["--strategy", "cmaes", "--out", str(t / "c")],
                                            "--strategy cmaes needs --ckpt PATH"),
    "evolve cmaes damaged checkpoint": Case("evolve.py", lambda w, t: [
        "--strategy", "cmaes", "--ckpt", str(spoiled(w, t, "joint", "best.pt") / "best.pt"), "--out", str(t / "c")],
        "best.pt: damaged or not a regimen checkpoint"),
    "evolve cmaes folder holds a run": Case("evolve.py", lambda w, t: [
        "--strategy", "cmaes", "--ckpt", str(w.joint / "best.pt"), "--out", str(w.base)],
        "already holds a CMA-ES run (best.pt, ckpt.pt, config.yaml); pass --overwrite"),
    "evolve folder in use": Case("evolve.py", lambda w, t: ["--out", str(t / "s")], HELD,
                                 held=lambda w, t: t / "s"),
}
SCHEDULER = Case("tests/without_dask.py", lambda w, t: ["--out", str(t / "s"), "--scheduler", "tcp://127.0.0.1:1"],
                 "--scheduler needs Dask: pip install -r requirements-dask.txt")  # evolve.py without the extra


@dataclass
class Outcome:
    done: subprocess.CompletedProcess
    unchanged: bool  # the world and the case's own folder are byte-identical afterwards
    ran_code: bool  # a malicious pickle's command ran


def attempt(world: World, tmp: Path, case: Case) -> Outcome:
    held = case.held(world, tmp) if case.held else None
    if held is not None:
        folders.claim(held, "test")
    args = case.args(world, tmp)
    if "--config" not in args:
        args = ["--config", world.config, *args]
    before = snapshot(world.root), snapshot(tmp)
    try:
        done = run_script(case.script, *args)
    finally:
        if held is not None:
            folders.release(held)
    return Outcome(done, (snapshot(world.root), snapshot(tmp)) == before, (tmp / "pwned").exists())


@pytest.fixture(scope="module")
def outcomes(world, tmp_path_factory) -> dict[str, Outcome]:
    """Every case run once, two at a time (their scripts one at a time, as script_runner runs them,
    while the other case takes its snapshots), and no case may change the world (a case that did
    fails its own check and the others')."""
    with ThreadPool(2) as pool:
        results = pool.map(lambda name: attempt(world, tmp_path_factory.mktemp("case"), CASES[name]), CASES)
    return dict(zip(CASES, results))


def assert_refused(outcome: Outcome, expected: str) -> None:
    done = outcome.done
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    assert outcome.unchanged and not outcome.ran_code


@pytest.mark.slow  # their shared fixture runs phases 0-3, an export and every case (about 70 s)
@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_input_exits_2_with_one_line_and_changes_nothing(outcomes, name):
    assert_refused(outcomes[name], CASES[name].expected)


def test_a_scheduler_without_dask_is_refused_before_anything_is_written(world, tmp_path):
    assert_refused(attempt(world, tmp_path, SCHEDULER), SCHEDULER.expected)


def test_the_battery_reaches_every_script():
    scripts = {case.script for case in CASES.values()}
    assert len(CASES) >= 80 and scripts == {"tools/preprocess.py", "tools/visualize.py", "train_convlstm.py",
                                            "fit_pgm.py", "train_joint.py", "evaluate.py", "export.py",
                                            "evolve.py"}
