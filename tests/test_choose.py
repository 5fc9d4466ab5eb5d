"""tools/choose.py: the better of evaluated checkpoints on a split, by evaluate.py's final predictor."""

from __future__ import annotations

import json

import pytest
from conftest import run_script, snapshot


def evaluated(folder, task, final, values, split="val"):
    """A run folder whose metrics.json holds evaluate.py's section for `split`."""
    folder.mkdir(parents=True)
    metric = {"segmentation": "miou", "tagging": "accuracy", "regression": "rmse"}[task]
    section = {"task": task, "metric": metric, "final": final, **{name: {metric: v} for name, v in values.items()}}
    (folder / "metrics.json").write_text(json.dumps({f"evaluate_{split}": section}))
    return str(folder / "best.pt")


@pytest.mark.parametrize("task, first, second, chosen", [
    ("segmentation", {"unary": 0.90, "pgm": 0.80}, {"unary": 0.70, "pgm": 0.85}, 1),  # the final predictor's value
    ("tagging", {"unary": 0.9, "pgm": 0.95}, {"unary": 0.9, "pgm": 0.95}, 0),  # the first of equals
    ("regression", {"unary": 0.30}, {"unary": 0.20}, 1),  # lower RMSE
])
def test_the_better_final_predictor_on_val_is_printed(tmp_path, task, first, second, chosen):
    finals = ("pgm" if "pgm" in first else "unary", "pgm" if "pgm" in second else "unary")
    ckpts = [evaluated(tmp_path / "joint", task, finals[0], first),
             evaluated(tmp_path / "search", task, finals[1], second)]
    done = run_script("tools/choose.py", "--split", "val", *ckpts)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ckpts[chosen]
    assert "<- the better" in done.stderr


@pytest.mark.parametrize("case, message", [
    ("no metrics", "joint/best.pt: no metrics.json beside it; run evaluate.py --ckpt {t}/joint/best.pt --split val first"),
    ("test only", "joint/metrics.json: no evaluate_val section; run evaluate.py"),
    ("not an object", "joint/metrics.json: no evaluate_val section; run evaluate.py"),
    ("two tasks", "the checkpoints were evaluated on different tasks (regression, segmentation)"),
])
def test_checkpoints_that_cannot_be_compared_exit_2_with_one_line(tmp_path, case, message):
    if case == "no metrics":
        (tmp_path / "joint").mkdir()
        joint = str(tmp_path / "joint" / "best.pt")
    else:
        joint = evaluated(tmp_path / "joint", "segmentation", "unary", {"unary": 0.8},
                          split="test" if case == "test only" else "val")
    if case == "not an object":
        (tmp_path / "joint" / "metrics.json").write_text("[1, 2]")
    other = evaluated(tmp_path / "search", "regression" if case == "two tasks" else "segmentation", "unary",
                      {"unary": 0.5})
    before = snapshot(tmp_path)
    done = run_script("tools/choose.py", joint, other)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(t=tmp_path) in lines[0]
    assert done.stdout == "" and snapshot(tmp_path) == before
