"""The two forecasters of `ConvLSTMNet`: shapes, what they read, and scheduled sampling."""

from __future__ import annotations

import pytest
import torch

from models.network import ConvLSTMNet


def _net(forecaster: str, task: str = "regression", outputs: int = 2) -> ConvLSTMNet:
    torch.manual_seed(0)
    feedback = [[0.5, -0.5], [2.0, 4.0]] if forecaster == "autoregressive" else None
    return ConvLSTMNet(2, [4, 3], 3, task, outputs, forecaster=forecaster, output_frames=5, feedback=feedback).eval()


@pytest.mark.parametrize("forecaster", ["encoder_forecaster", "autoregressive"])
def test_a_forecaster_reads_t_in_frames_and_returns_t_out(forecaster):
    net = _net(forecaster)
    x = torch.randn(2, 3, 2, 6, 7)  # (B, T_in, C, H, W)
    out, features = net(x, return_features=True)
    assert out.shape == (2, 5, 2, 6, 7) and features.shape == (2, 5, 3, 6, 7)
    # Each window's forecast depends on its own frames only.
    assert torch.allclose(net(x[:1]), out[:1], atol=1e-6)


def test_the_encoder_forecaster_serves_labels_and_tags():
    x = torch.randn(2, 3, 2, 6, 7)
    assert _net("encoder_forecaster", "segmentation", 3)(x).shape == (2, 5, 3, 6, 7)
    assert _net("encoder_forecaster", "tagging", 4)(x).shape == (2, 5, 4)


def test_the_autoregressive_forecaster_feeds_back_its_normalised_prediction():
    """Step by step by hand: the stack over T_in frames, then each predicted frame, normalised with
    the feedback statistics, as the next input."""
    net = _net("autoregressive")
    x = torch.randn(1, 3, 2, 6, 7)
    features, states = net.encoder(x)
    expected = [net.head(features[:, -1])]
    for _ in range(4):
        frame = (expected[-1] - torch.tensor([0.5, -0.5]).view(2, 1, 1)) / torch.tensor([2.0, 4.0]).view(2, 1, 1)
        out, states = net.encoder(frame[:, None], states)
        expected.append(net.head(out[:, 0]))
    assert torch.allclose(net(x), torch.stack(expected, 1), atol=1e-6)


def test_scheduled_sampling_feeds_the_true_frames_where_told():
    net = _net("autoregressive")
    x, future = torch.randn(2, 3, 2, 6, 7), torch.randn(2, 4, 2, 6, 7)
    own = net(x)
    none = torch.zeros(2, 4, dtype=torch.bool)
    assert torch.equal(net(x, future=future, teacher=none), own)  # no truth: the future is never read
    every = torch.ones(2, 4, dtype=torch.bool)
    teacher_forced = net(x, future=future, teacher=every)
    # Fed the truth at every step, the stack reads T_in + T_out - 1 true frames in a row.
    features, _ = net.encoder(torch.cat([x, future], 1))
    assert torch.allclose(teacher_forced, net.head(features[:, 2:].flatten(0, 1)).unflatten(0, (2, 5)), atol=1e-6)
    first_only = torch.tensor([[True, False, False, False], [False, False, False, False]])
    mixed = net(x, future=future, teacher=first_only)
    # The first fed-back frame is the input that gives the second forecast frame.
    assert torch.equal(mixed[1], own[1]) and torch.equal(mixed[0, :1], own[0, :1])
    assert not torch.allclose(mixed[0, 1:], own[0, 1:])


def test_a_forecaster_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="autoregressive forecaster feeds its predictions back"):
        ConvLSTMNet(1, [4], 3, "segmentation", 3, forecaster="autoregressive", output_frames=2, feedback=[[0], [1]])
    with pytest.raises(ValueError, match="backwards"):
        ConvLSTMNet(1, [4], 3, "segmentation", 3, bidirectional=True, forecaster="encoder_forecaster",
                    output_frames=2)
    with pytest.raises(ValueError, match="carried-over state"):
        _net("encoder_forecaster")(torch.randn(1, 3, 2, 6, 7), state=[])
