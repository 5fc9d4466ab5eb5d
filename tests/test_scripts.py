"""The phase-0 scripts as a user runs them: outputs, and one clear line for each bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import ok, run_script, snapshot
from regimen.core import folders


def test_preprocess_and_visualize_from_another_directory(write_config, tmp_path):
    config = write_config()
    done = run_script("tools/preprocess.py", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "gap" in done.stderr  # the storms baselines are printed
    folder = tmp_path / "data" / "processed" / "storms"
    assert set(folders.contents(folder)) == {"meta.json", *(f"{split}.{array}.npy" for split in ("train", "val", "test")
                                                            for array in ("X", "Y", "P", "windows"))}

    out = tmp_path / "pictures"
    done = run_script("tools/visualize.py", "--config", str(config), "--split", "val",
                      "--count", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    png, gif = out / "storms_val.png", out / "storms_val.gif"
    assert Image.open(png).format == "PNG"
    with Image.open(gif) as movie:
        assert movie.format == "GIF" and movie.n_frames == 4  # one per frame of a window


def test_help_shows_the_example_commands():
    done = run_script("tools/preprocess.py", "--help")
    assert done.returncode == 0 and "python tools/preprocess.py --config config.yaml" in done.stdout


def npz(tmp_path, name="mine.npz", **arrays):
    x = np.zeros((6, 5, 3, 3, 1), dtype=np.float32)
    y = np.zeros((6, 5, 3, 3), dtype=np.int64)
    y[:, :, 0] = 1
    base = {"X": x, "Y": y}
    base.update(arrays)
    path = tmp_path / "raw" / name
    path.parent.mkdir(exist_ok=True)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def npz_set(path, *extra):
    return ["--set", "data.dataset=npz", "--set", f"data.path={path}", "--set", "data.T_window=3",
            *extra]


BAD = {
    "malformed YAML": (lambda tmp: [], "seed: 1\ndata: [oops\n", "malformed YAML at line"),
    "unknown key": (lambda tmp: ["--set", "model.convlstm.hiden_sizes=[8]"], None,
                    "unknown key 'model.convlstm.hiden_sizes'; did you mean 'model.convlstm.hidden_sizes'?"),
    "wrong type": (lambda tmp: ["--set", "data.stride=two"], None, "data.stride = 'two': expected an integer"),
    "out of range": (lambda tmp: ["--set", "training.lr=-1"], None, "training.lr = -1.0: must be > 0"),
    "hidden_sizes length": (lambda tmp: ["--set", "model.convlstm.hidden_sizes=[8, 8, 8]"], None,
                            "needs one size per layer (model.convlstm.num_layers = 2)"),
    "even kernel": (lambda tmp: ["--set", "model.convlstm.kernel_size=2"], None,
                    "model.convlstm.kernel_size = 2: must be an odd positive integer"),
    "T_window too long": (lambda tmp: ["--set", "data.T_window=11"], None,
                          "data.T_window = 11: must be <= data.generator.sequence_length (10)"),
    "npz T_window too long": (lambda tmp: npz_set(npz(tmp)) + ["--set", "data.T_window=6"], None,
                              "data.T_window = 6: must be <= the 5 frames of each sequence"),
    "npz missing X": (lambda tmp: npz_set(npz(tmp, X=None)), None, "mine.npz: no array 'X' (found: Y)"),
    "npz wrong rank": (lambda tmp: npz_set(npz(tmp, X=np.zeros((6, 5, 3, 3)))), None,
                       "mine.npz: X has rank 4 (shape (6, 5, 3, 3)); expected rank 5"),
    "npz Y shape": (lambda tmp: npz_set(npz(tmp, Y=np.zeros((6, 5, 3, 2), dtype=int))), None,
                    "mine.npz: Y has shape (6, 5, 3, 2); segmentation expects [N, T, H, W] = (6, 5, 3, 3)"),
    "npz NaN": (lambda tmp: npz_set(npz(tmp, X=np.full((6, 5, 3, 3, 1), np.nan))), None,
                "mine.npz: X has 270 NaN/Inf value(s), the first at index (0, 0, 0, 0, 0)"),
    "npz beyond float32": (lambda tmp: npz_set(npz(tmp, X=np.full((6, 5, 3, 3, 1), 1e39))), None,
                           "mine.npz: X holds 1e+39 at index (0, 0, 0, 0, 0), beyond float32's range"),
    "npz label range": (lambda tmp: npz_set(npz(tmp, Y=np.full((6, 5, 3, 3), 2)), "--set", "data.num_classes=2"),
                        None,
                        "mine.npz: Y has label 2 at index (0, 0, 0, 0); expected labels in [0, 2)"),
    "empty split": (lambda tmp: ["--set", "data.generator.num_sequences=3"], None,
                    "split 'val' gets 0 of 3 sequences"),
    "unwritable output": (lambda tmp: ["--set", f"data.root={tmp / 'blocker.txt'}"], None,
                          "blocker.txt is a file; expected a folder"),
    "missing config": (lambda tmp: ["--config", str(tmp / "nowhere.yaml")], None,
                       "nowhere.yaml: config file not found"),
    "bad --set": (lambda tmp: ["--set", "seed"], None, "--set 'seed': expected dotted.key=value"),
    "unknown flag": (lambda tmp: ["--epochs", "3"], None, "unrecognized arguments: --epochs 3"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, write_config, tmp_path):
    make_args, text, message = BAD[case]
    config = write_config()
    assert run_script("tools/preprocess.py", "--config", str(config)).returncode == 0
    (tmp_path / "blocker.txt").write_text("a file where a folder should be")
    args = make_args(tmp_path)
    if text is not None:
        config.write_text(text)
    if "--config" not in args:
        args = ["--config", str(config), *args]
    before = snapshot(tmp_path)

    done = run_script("tools/preprocess.py", *args)

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


def test_visualize_before_preprocess_and_bad_count(write_config):
    config = write_config()
    done = run_script("tools/visualize.py", "--config", str(config))
    assert done.returncode == 2 and ("meta.json not found: this config's data (data.dataset: storms) has not been "
                                     "preprocessed; run tools/preprocess.py with this config first\n") in done.stderr
    ok("tools/preprocess.py", "--config", str(config), "--set", "data.dataset=regimes", "--set", "data.task=tagging")
    done = run_script("tools/visualize.py", "--config", str(config))
    processed = config.parent / "data" / "processed"
    assert done.returncode == 2 and (f"run tools/preprocess.py with this config first. {processed} holds regimes "
                                     "(data.dataset: regimes): give every phase the config (--config, the same "
                                     "--set) that tools/preprocess.py was given") in done.stderr
    done = run_script("tools/visualize.py", "--config", str(config), "--count", "0")
    assert done.returncode == 2 and "--count 0: must be >= 1" in done.stderr
