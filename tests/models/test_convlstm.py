"""ConvLSTM: the hoisted cell equals the textbook one, streaming equals one call, heads and options."""

from __future__ import annotations

import pytest
import torch
from autograd_nodes import backward_nodes

from models import convlstm
from models.convlstm import ConvLSTM, ConvLSTMCell
from models.network import ConvLSTMNet
from reference_models import ConcatConvLSTMCell, run_reference


@pytest.mark.parametrize("call_elements", [2 ** 20, 3 * 3 * 20 * 56, 100])  # all steps a call; 3; fused
def test_hoisted_stack_equals_concat_then_conv_reference(call_elements, monkeypatch):
    """Forward and gradients, with the input convolution in one call, in calls of 3 steps (6 = 3 + 3),
    or in one convolution over [x_t, h] per step (one step's gates above the budget)."""
    monkeypatch.setattr(convlstm, "INPUT_CONV_ELEMENTS", call_elements)
    torch.manual_seed(0)
    model = ConvLSTM(2, [5, 4], kernel_size=3)
    references = [ConcatConvLSTMCell.from_cell(c) for c in model.cells]
    x = torch.randn(3, 6, 2, 7, 8)
    out, state = model(x)
    reference = run_reference(references, x)
    assert out.shape == (3, 6, 4, 7, 8)
    assert (out - reference).abs().max() < 1e-5
    assert torch.allclose(state[-1][0], out[:, -1])
    out.square().sum().backward()
    reference.square().sum().backward()
    for cell, theirs in zip(model.cells, references):
        ours = torch.cat([cell.conv_x.weight.grad, cell.conv_h.weight.grad], dim=1)
        torch.testing.assert_close(ours, theirs.conv.weight.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call_elements", [3 * 3 * 20 * 56, 100])  # calls of 3 steps; fused
def test_the_backward_pass_adds_no_zero_filled_slices(call_elements, monkeypatch):
    """A slice's backward writes its gradient into zeros the size of the whole tensor, and the
    gradients of a tensor's slices are then added: per step and layer, several full-size fills and
    adds that split and chunk (one concatenation) do without."""
    monkeypatch.setattr(convlstm, "INPUT_CONV_ELEMENTS", call_elements)
    model = ConvLSTM(2, [5, 4], kernel_size=3)
    out, _ = model(torch.randn(3, 6, 2, 7, 8))
    names = backward_nodes(out)
    assert "SplitBackward0" in names or "SplitWithSizesBackward0" in names
    assert "SliceBackward0" not in names


def test_single_cell_step_equals_reference_with_a_state():
    torch.manual_seed(1)
    cell = ConvLSTMCell(3, 4, kernel_size=5)
    x, h, c = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    ours = cell(x, (h, c))
    theirs = ConcatConvLSTMCell.from_cell(cell)(x, (h, c))
    assert all((a - b).abs().max() < 1e-5 for a, b in zip(ours, theirs))


@pytest.mark.parametrize("call_elements", [2 ** 20, 100])  # the input convolution apart; fused
def test_streaming_frame_by_frame_equals_one_call(call_elements, monkeypatch):
    monkeypatch.setattr(convlstm, "INPUT_CONV_ELEMENTS", call_elements)
    torch.manual_seed(2)
    model = ConvLSTM(1, [4, 3], kernel_size=3).eval()
    x = torch.randn(2, 7, 1, 5, 5)
    whole, final = model(x)
    state, pieces = None, []
    for chunk in x.split([1, 3, 2, 1], dim=1):
        out, state = model(chunk, state)
        pieces.append(out)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for (a, _), (b, _) in zip(state, final))


def test_bidirectional_sees_the_future_and_refuses_a_state():
    torch.manual_seed(3)
    model = ConvLSTM(1, [3], kernel_size=3, bidirectional=True).eval()
    x = torch.randn(1, 5, 1, 4, 4)
    out, _ = model(x)
    assert out.shape == (1, 5, 6, 4, 4)
    changed = x.clone()
    changed[:, -1] += 1.0
    out2, _ = model(changed)
    assert not torch.allclose(out2[:, 0, 3:], out[:, 0, 3:])  # backward half at t=0 sees t=4
    assert torch.allclose(out2[:, 0, :3], out[:, 0, :3])  # forward half does not
    with pytest.raises(ValueError, match="bidirectional ConvLSTM cannot continue from a state"):
        model(x, [(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))])


def test_dropout_acts_in_training_only():
    torch.manual_seed(4)
    model = ConvLSTM(1, [4, 4], kernel_size=3, dropout=0.5)
    x = torch.randn(2, 3, 1, 5, 5)
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])
    model.eval()
    assert torch.equal(model(x)[0], model(x)[0])


@pytest.mark.parametrize("kernel", [0, 2, 4, -3])
def test_even_or_non_positive_kernels_are_refused(kernel):
    with pytest.raises(ValueError, match="kernel_size must be an odd positive integer"):
        ConvLSTMCell(1, 2, kernel)
    with pytest.raises(ValueError, match="kernel_size must be an odd positive integer"):
        ConvLSTM(1, [2], kernel)


def test_heads_give_each_task_its_shape():
    x = torch.randn(2, 4, 3, 6, 5)
    assert ConvLSTMNet(3, [4], 3, "segmentation", 5)(x).shape == (2, 4, 5, 6, 5)
    assert ConvLSTMNet(3, [4], 3, "tagging", 7)(x).shape == (2, 4, 7)
    out, features = ConvLSTMNet(3, [4, 2], 3, "regression", 1)(x, return_features=True)
    assert out.shape == (2, 4, 1, 6, 5) and features.shape == (2, 4, 2, 6, 5)
    with pytest.raises(ValueError, match="task must be one of"):
        ConvLSTMNet(3, [4], 3, "detection", 2)


@pytest.mark.parametrize("call_elements", [2 ** 20, 100])  # the input convolution apart; fused
def test_gradient_checkpointing_gives_the_same_gradients(call_elements, monkeypatch):
    monkeypatch.setattr(convlstm, "INPUT_CONV_ELEMENTS", call_elements)
    torch.manual_seed(5)
    plain = ConvLSTMNet(1, [4], 3, "segmentation", 3)
    checkpointed = ConvLSTMNet(1, [4], 3, "segmentation", 3, checkpoint_steps=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 1, 6, 6)
    plain(x).square().sum().backward()
    checkpointed(x).square().sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(6)
    model = ConvLSTMNet(1, [8], 3, "segmentation", 3)
    x = torch.randn(2, 4, 1, 8, 8)
    full = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(x)
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.1


def test_the_network_returns_its_state_so_a_long_sequence_streams_window_by_window():
    torch.manual_seed(0)
    net = ConvLSTMNet(2, [4, 3], 3, "segmentation", num_outputs=3).eval()
    x = torch.randn(2, 8, 2, 5, 5)
    with torch.no_grad():
        whole = net(x)
        first, state = net(x[:, :5], return_state=True)
        second, _, _ = net(x[:, 5:], state=state, return_features=True, return_state=True)
    assert len(state) == 2 and state[1][0].shape == (2, 3, 5, 5)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    with torch.no_grad():
        restarted = net(x[:, 5:])
    assert not torch.allclose(restarted, whole[:, 5:])  # from zeros the second window differs
