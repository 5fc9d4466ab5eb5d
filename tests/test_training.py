"""The training loop: the learning-rate schedule, and resuming in process ends where a straight run does."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import merge
from regimen.core import files, folders, runs
from regimen.core.config_file import load_config
from regimen.data.preprocess import preprocess
from regimen.train.losses import unary_loss
from regimen.data.processed import load_task_data
from regimen.train.stack import new_stack, stack_from_checkpoint
from regimen.train.training import Schedule, Trainer, warmup_cosine


def test_warmup_then_cosine_to_zero():
    factor = warmup_cosine(warmup_steps=2, total_steps=6)
    assert [factor(s) for s in range(2)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0) and factor(4) == pytest.approx(0.5) and factor(6) == pytest.approx(0.0)


class Killed(Exception):
    pass


def trainer_for(config, data, stack, folder, kill_at_step=None):
    steps = []

    def loss_fn(stack, batch, part):
        steps.append(1)
        if len(steps) == kill_at_step:
            raise Killed
        kind = "mse" if data.task == "regression" else "ce"
        return unary_loss(kind, stack.unaries(batch["x"], **part.network_inputs(batch)), batch["y"]), {}

    def validate(stack):
        with torch.no_grad():  # any deterministic number of the weights
            value = -float(sum(p.abs().sum() for p in stack.parameters()))
            return {"miou": value, "rmse": value}

    return Trainer(stack, data, Schedule.pretraining(config), loss_fn, validate, runs.RunFolder(folders.claim(folder, "x")),
                   {"kind": "convlstm", "dataset": data.identity, "config": {}}, config.seed,
                   torch.device("cpu"), config.data.augmentations)


# An autoregressive forecast: scheduled sampling draws which true frames it feeds, and a resumed run
# must draw what the straight one did.
AUTOREGRESSIVE = {"data": {"task": "regression", "forecast": {"input_frames": 3, "output_frames": 3}},
                  "model": {"convlstm": {"forecaster": "autoregressive"}},
                  "training": {"scheduled_sampling": {"start": 0.9, "decay_epochs": 2}}}


# Truncated BPTT: each window starts from its sequence's previous window's final state, and batches hold
# sequences in step; a resumed epoch starts every sequence again from its first window.
STATEFUL = {"data": {"T_window": 4, "stride": 4}, "training": {"stateful": True}}


@pytest.mark.parametrize("extra", [{}, AUTOREGRESSIVE, STATEFUL],
                         ids=["labelling", "autoregressive forecast", "stateful training"])
def test_a_trainer_killed_mid_epoch_and_resumed_ends_with_the_same_weights(write_config, tmp_path, extra):
    config = load_config(write_config(merge({"model": {"convlstm": {"hidden_sizes": [4, 4], "dropout": 0.2}},
                                             "training": {"epochs": 3, "batch_size": 4}}, extra)))
    preprocess(config)
    data = load_task_data(config.data)
    straight = trainer_for(config, data, new_stack(config, data), tmp_path / "a")
    straight.fit()

    steps_per_epoch = len(straight.batches)
    with pytest.raises(Killed):  # dies in the middle of epoch 2
        trainer_for(config, data, new_stack(config, data), tmp_path / "b",
                    kill_at_step=steps_per_epoch + 2).fit()
    payload = files.load_checkpoint(tmp_path / "b" / "ckpt.pt", "--resume", ("convlstm",))
    assert payload["train_state"]["epoch"] == 1
    resumed = trainer_for(config, data, stack_from_checkpoint(payload, "ckpt", mixed_precision=True), tmp_path / "b")
    resumed.fit(payload)

    for name, value in straight.stack.state_dict().items():
        assert torch.equal(value, resumed.stack.state_dict()[name]), name
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "b" / "history.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_run_paused_at_rungs_and_resumed_ends_like_a_straight_run(write_config, tmp_path):
    """train_convlstm.py --until-epoch (successive halving's rungs): each call trains only the extra
    epochs, on the schedule of training.epochs, and the last ends with the straight run's weights."""
    from conftest import run_script
    config = write_config({"model": {"convlstm": {"hidden_sizes": [4, 4]}}, "training": {"epochs": 3}})
    assert run_script("tools/preprocess.py", "--config", str(config)).returncode == 0
    straight = run_script("train_convlstm.py", "--config", str(config), "--save", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr
    trained = []
    for until in (["--until-epoch", "1"], ["--resume", "--until-epoch", "2"], ["--resume"]):
        done = run_script("train_convlstm.py", "--config", str(config), "--save", str(tmp_path / "b"), *until)
        assert done.returncode == 0, done.stderr
        summary = json.loads((tmp_path / "b" / "metrics.json").read_text())["train_convlstm"]["training"]
        trained.append((summary["epochs_run"], summary["epochs_this_run"]))
    assert trained == [(1, 1), (2, 1), (3, 1)]
    a, b = (files.load_checkpoint(tmp_path / run / "ckpt.pt", "ckpt", ("convlstm",)) for run in "ab")
    for name, value in a["net_state"].items():
        assert torch.equal(value, b["net_state"][name]), name
    bad = run_script("train_convlstm.py", "--config", str(config), "--save", str(tmp_path / "c"), "--until-epoch", "4")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --until-epoch 4: expected 1 to training.epochs (3)"] and not (tmp_path / "c").exists()
