"""training.stateful: sequences in step batch after batch, and each window starting from the state its
sequence's previous window ended with, on one process or split over several."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from regimen.core.config_file import load_config
from regimen.core.errors import UserError
from regimen.data.windows import SequenceBatches, share_of
from regimen.train.tbptt import Carry, StateCarrier

from conftest import ROOT

# Windows of 5 sequences (rows in the window index's order): 3, 1, 2, 3 and 2 windows.
SEQUENCE = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 4, 4])
START = np.array([0, 4, 8, 0, 0, 4, 0, 4, 8, 0, 4])


def test_sequence_batches_hold_each_sequence_in_step_and_every_window_once():
    batches = SequenceBatches(SEQUENCE, 2, torch.Generator().manual_seed(0))
    epoch = list(batches)
    assert len(epoch) == len(batches) == 3 + 2 + 1  # chunks by length: (3, 3), (2, 2), (1)
    assert sorted(row for batch in epoch for row in batch) == list(range(len(SEQUENCE)))
    for before, after in zip(epoch, epoch[1:]):
        if START[after[0]] > 0:  # the same chunk's next step: each place holds its sequence's next window
            assert all(SEQUENCE[a] == SEQUENCE[b] and START[a] == START[b] + 4 for a, b in zip(after, before))
    assert list(batches) != epoch  # another draw: another order


class TwoProcesses:
    """`World.gather` of a two-process job, for two carriers that call it from two threads."""

    def __init__(self):
        self.values, self.barrier = [None, None], threading.Barrier(2)
        self.rank = threading.local()

    def gather(self, value):
        self.values[self.rank.value] = value
        self.barrier.wait()
        both = list(self.values)
        self.barrier.wait()
        return both


def in_two_processes(world: TwoProcesses, work) -> None:
    """`work(rank)` for ranks 0 and 1 at once, each thread as its rank."""
    def run(rank):
        world.rank.value = rank
        work(rank)
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def final_state(rows: list[int]) -> list:
    """A recognisable final state of the windows `rows`: their row number everywhere, two layers."""
    values = torch.tensor(rows, dtype=torch.float32)[:, None, None, None].expand(len(rows), 2, 3, 3)
    return [(values.clone(), -values.clone()), (10 + values, 20 + values)]


def test_each_window_starts_where_its_predecessor_ended_wherever_the_shares_move():
    windows = type("Windows", (), {"sequence": SEQUENCE, "start": START})()
    world = TwoProcesses()
    carriers = [StateCarrier(windows, 4, world), StateCarrier(windows, 4, world)]  # rank 0, rank 1
    steps = [[6, 0, 9], [7, 1, 10], [8, 2]]  # sequences 3, 0, 4 in step; 4 runs out after two windows
    for step, rows in enumerate(steps):
        shares = [share_of(rows, rank, 2, 1) for rank in range(2)]
        carries = [carrier.carries(share, torch.device("cpu")) for carrier, share in zip(carriers, shares)]
        for share, carried in zip(shares, carries):
            (carry,) = carried
            if step == 0:
                assert carry.state is None
            else:  # the predecessor of each window is the row before it
                assert torch.equal(carry.state[0][0][:, 0, 0, 0], torch.tensor(share.rows) - 1.0)
                assert torch.equal(carry.state[1][1][:, 0, 0, 0], torch.tensor(share.rows) + 19.0)
            carry.final = final_state(share.rows)
        in_two_processes(world, lambda rank: carriers[rank].keep(shares[rank], carries[rank]))
    # The shares moved: row 1 was rank 0's (places 0-1 of 3), row 2 is rank 1's (places 1 of 2).
    assert share_of(steps[1], 0, 2, 1).rows == [7, 1] and share_of(steps[2], 1, 2, 1).rows == [2]


def test_a_first_window_after_others_starts_from_zeros():
    windows = type("Windows", (), {"sequence": SEQUENCE, "start": START})()
    carrier = StateCarrier(windows, 4, type("OneProcess", (), {"gather": staticmethod(lambda value: [value])})())
    first = share_of([0, 6], 0, 1, 1)
    (carry,) = carrier.carries(first, torch.device("cpu"))
    carry.final = final_state([0, 6])
    carrier.keep(first, [carry])
    # sequence 0's next window at place 0, and at place 1 sequence 2's first window (not 3's)
    (carry,) = carrier.carries(share_of([1, 4], 0, 1, 1), torch.device("cpu"))
    assert torch.equal(carry.state[0][0][:, 0, 0, 0], torch.tensor([0.0, 0.0]))
    assert torch.equal(carry.state[1][0][:, 0, 0, 0], torch.tensor([10.0, 0.0]))


@pytest.mark.parametrize("sets, expected", [
    (["data.stride=2"], "training.stateful = True: starts each window from the state its sequence's previous "
                        "window ended with, so windows must tile the sequences: set data.stride (2) = "
                        "data.T_window (8)"),
    (["model.convlstm.bidirectional=true"], "training.stateful = True: a bidirectional ConvLSTM also reads each "
                                            "window backwards: set model.convlstm.bidirectional off"),
])
def test_stateful_training_refuses_windows_it_cannot_chain(sets, expected):
    with pytest.raises(UserError) as refused:
        load_config(ROOT / "config.yaml", ["training.stateful=true", "data.T_window=8", "data.stride=8", *sets])
    assert expected in str(refused.value)


def test_a_carry_holds_the_state_it_starts_from_and_gets_the_final_one(write_config):
    from regimen.data.preprocess import preprocess
    from regimen.data.processed import load_task_data
    from regimen.train.stack import model_input, new_stack

    config = load_config(write_config({"training": {"mixed_precision": False}}))
    preprocess(config)
    data = load_task_data(config.data)
    stack = new_stack(config, data).eval()
    x = model_input(data.windows("train")[[0, 1]]["x"])
    carry = Carry(None)
    out, final = stack.unaries(x, return_state=True, carry=carry)
    assert all(torch.equal(a, b) and not b.requires_grad for (a, _), (b, _) in zip(final, carry.final))
    following = Carry(carry.final)
    assert torch.equal(stack.unaries(x, carry=following), stack.unaries(x, state=carry.final))
    assert not torch.equal(stack.unaries(x, carry=following), out)


def test_the_trainer_hands_each_batch_the_states_the_last_one_ended_with(write_config, tmp_path):
    from regimen.core import folders, runs
    from regimen.data.preprocess import preprocess
    from regimen.data.processed import load_task_data
    from regimen.train.losses import unary_loss
    from regimen.train.stack import new_stack
    from regimen.train.training import Schedule, Trainer

    config = load_config(write_config({"data": {"T_window": 3, "stride": 3},
                                       "training": {"stateful": True, "epochs": 1, "batch_size": 3}}))
    preprocess(config)
    data = load_task_data(config.data)
    carries = []

    def loss_fn(stack, batch, part):
        carries.append(part.carry)
        return unary_loss("ce", stack.unaries(batch["x"], **part.network_inputs(batch)), batch["y"]), {}

    trainer = Trainer(new_stack(config, data), data, Schedule.pretraining(config), loss_fn, lambda s: {"miou": 0.0},
                      runs.RunFolder(folders.claim(tmp_path / "run", "x")), {"kind": "convlstm"}, config.seed,
                      torch.device("cpu"), config.data.augmentations)
    trainer.fit()
    windows_per_sequence = 3  # 10 frames in windows of 3
    assert len(carries) == len(trainer.batches) and len(carries) % windows_per_sequence == 0
    for step, carry in enumerate(carries):
        if step % windows_per_sequence == 0:  # a chunk's first windows
            assert carry.state is None
        else:
            before = carries[step - 1].final
            assert all(torch.equal(h, h0) and torch.equal(c, c0) for (h, c), (h0, c0) in zip(carry.state, before))


def test_stateful_evaluation_refuses_a_bidirectional_convlstm():
    with pytest.raises(UserError) as refused:
        load_config(ROOT / "config.yaml", ["evaluation.stateful=true", "model.convlstm.bidirectional=true"])
    assert ("evaluation.stateful = True: a bidirectional ConvLSTM also reads each window backwards, so it cannot "
            "carry its state from one window to the next: set model.convlstm.bidirectional off") in str(refused.value)
