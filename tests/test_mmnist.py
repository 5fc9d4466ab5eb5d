"""Moving MNIST: the generator's recipe, the forecasting tables' metrics, patch size, and the
standard test file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from conftest import metrics_of, ok, tiny_config
from models.network import ConvLSTMNet
from regimen.core.config_file import load_config
from regimen.core.errors import UserError
from regimen.data.processed import TaskData
from regimen.data.mmnist import deal_digits, digit_pools, load_mmnist, paint, trajectories
from regimen.evaluate.standard_test import as_windows, read_standard_test
from regimen.scores.frames import FrameScoreSums, frame_scores
from regimen.train.stack import check_patches

MMNIST = {"data": {"dataset": "mmnist", "task": "regression", "stride": 6,
                   "forecast": {"input_frames": 3, "output_frames": 3},
                   "generator": {"num_sequences": 10, "sequence_length": 6, "height": 32, "width": 32}},
          "model": {"convlstm": {"num_layers": 1, "hidden_sizes": [4], "patch_size": 4}},
          "training": {"epochs": 1}}


def test_digits_move_a_step_a_frame_and_bounce_off_the_edges():
    rng = np.random.default_rng(0)
    start = np.random.default_rng(0).random((50, 2, 2))  # the first draw of the same generator
    path = trajectories(50, 30, 2, 0.1, rng)  # (N, T, D, 2) in the unit square
    free = ((path[:, 0] > 0) & (path[:, 0] < 1)).all(-1)  # (N, D): not clamped at the first step
    assert np.allclose(np.linalg.norm(path[:, 0] - start, axis=-1)[free], 0.1)  # the first frame is one step on
    assert path.min() >= 0.0 and path.max() <= 1.0
    steps = np.diff(path, axis=1)  # (N, T-1, D, 2)
    inside = ((path[:, 1:] > 0) & (path[:, 1:] < 1)).all(-1) & ((path[:, :-1] > 0) & (path[:, :-1] < 1)).all(-1)
    assert np.allclose(np.linalg.norm(steps, axis=-1)[inside], 0.1)  # the speed of the recipe
    bounced = (path[:, 1:-1] == 1.0) | (path[:, 1:-1] == 0.0)  # a coordinate clamped at an edge...
    before, after = steps[:, :-1][bounced], steps[:, 1:][bounced]
    assert bounced.any() and (np.sign(before) == -np.sign(after)).all()  # ...then moves back


def test_overlapping_digits_merge_by_maximum():
    images = np.zeros((1, 2, 28, 28), np.float32)
    images[0, 0, :, :14], images[0, 1] = 0.8, 0.5
    canvas = paint(images, np.array([[[[0, 0], [2, 3]]]]), 32, 32)  # (1, 1, 32, 32)
    assert canvas[0, 0, 5, 5] == 0.8 and canvas[0, 0, 5, 20] == 0.5 and canvas[0, 0, 0, 0] == 0.8
    assert canvas[0, 0, 1, 20] == 0.0 and canvas[0, 0, 31, 31] == 0.0


def test_splits_draw_digits_from_disjoint_pools():
    rng = np.random.default_rng(3)
    pools = digit_pools(5000, [0.7, 0.15, 0.15], rng)
    assert [len(p) for p in pools.values()] == [3500, 750, 750]
    assert len(np.unique(np.concatenate(list(pools.values())))) == 5000
    sequences = {"train": np.array([0, 2, 3]), "val": np.array([1]), "test": np.array([4, 5])}
    choice = deal_digits(sequences, pools, 2, rng)
    for split, members in sequences.items():
        assert np.isin(choice[members], pools[split]).all()


def test_the_generator_is_seeded_bytes(tmp_path):
    data = load_config(tiny_config(tmp_path, MMNIST)).data
    first, again, other = load_mmnist(data, 1), load_mmnist(data, 1), load_mmnist(data, 2)
    assert first.X.tobytes() == again.X.tobytes() and first.X.tobytes() != other.X.tobytes()
    assert first.X.shape == (10, 6, 32, 32, 1) and 0.0 <= first.X.min() and first.X.max() <= 1.0
    assert np.array_equal(first.X, first.Y)  # a forecast's targets are the frames themselves
    assert first.params["value_range"] == [0.0, 1.0]


def test_the_frame_scores_are_the_tables_formulas():
    rng = np.random.default_rng(0)
    truth, predicted = rng.random((2, 3, 16, 16, 1)), rng.random((2, 3, 16, 16, 1)) * 1.2 - 0.1
    sums = FrameScoreSums(3)
    sums.add(truth, predicted)
    result = sums.result()
    error = predicted - truth
    assert np.allclose(result["mse_per_frame"], (error ** 2).sum(axis=(2, 3, 4)).mean(0))
    assert np.allclose(result["mae_per_frame"], np.abs(error).sum(axis=(2, 3, 4)).mean(0))
    assert np.allclose(result["psnr"], (-10 * np.log10((error ** 2).mean(axis=(2, 3, 4)))).mean(0))
    ssim = [[structural_similarity(truth[b, t, ..., 0], np.clip(predicted[b, t, ..., 0], 0, 1), data_range=1.0)
             for t in range(3)] for b in range(2)]
    assert np.allclose(result["ssim"], np.mean(ssim, axis=0))
    assert frame_scores(truth[0, 0], truth[0, 0])[2] == 100.0  # a perfect frame: 100 dB, not infinite


@pytest.mark.parametrize("forecaster", [None, "encoder_forecaster", "autoregressive"])
def test_patch_size_4_and_1_give_the_same_shapes(forecaster):
    x = torch.randn(2, 3, 1, 16, 16)
    shapes = set()
    for patch in (1, 4):
        net = ConvLSTMNet(1, [4], 3, "regression", 1, forecaster=forecaster, output_frames=2 if forecaster else 0,
                          feedback=[[0.0], [1.0]] if forecaster == "autoregressive" else None, patch_size=patch)
        shapes.add(tuple(net(x).shape))
    assert shapes == {(2, 2 if forecaster else 3, 1, 16, 16)}


def test_patches_round_trip_exactly():
    net = ConvLSTMNet(3, [4], 3, "segmentation", 3, patch_size=4)
    x = torch.randn(2, 5, 3, 16, 12)
    patches = net._patches(x)  # (B, T, C*16, 4, 3)
    assert patches.shape == (2, 5, 48, 4, 3)
    assert torch.equal(torch.nn.functional.pixel_shuffle(patches.flatten(0, 1), 4).unflatten(0, (2, 5)), x)


def test_a_patch_size_that_does_not_divide_the_frames_is_refused():
    data = TaskData({"shapes": {"train": {"X": [4, 3, 12, 12, 1]}}}, None)
    check_patches(4, data)
    with pytest.raises(UserError, match="model.convlstm.patch_size = 5: the frames are 12 x 12; expected a size"):
        check_patches(5, data)


def test_the_standard_test_file_is_read_time_first(tmp_path):
    sequences = np.random.default_rng(0).integers(0, 256, (6, 4, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "test_seq.npy", sequences)
    read = read_standard_test(tmp_path / "test_seq.npy", 6, 32, 32)
    windows = as_windows(read, 1, 3)
    assert windows.shape == (2, 6, 32, 32, 1)
    assert np.array_equal(windows[1, 4, ..., 0], sequences[4, 2] / np.float32(255.0))
    np.save(tmp_path / "batch_first.npy", sequences.transpose(1, 0, 2, 3))
    with pytest.raises(UserError, match=r"uint8 \(4, 6, 32, 32\); expected uint8 \(6, N, 32, 32\), time first"):
        read_standard_test(tmp_path / "batch_first.npy", 6, 32, 32)


def test_an_mmnist_checkpoint_scores_the_standard_test_file(tmp_path):
    config = tiny_config(tmp_path, MMNIST)
    ok("tools/preprocess.py", "--config", config)
    ok("train_convlstm.py", "--config", config, "--save", str(tmp_path / "run"))
    sequences = np.random.default_rng(0).integers(0, 256, (6, 5, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "test_seq.npy", sequences)
    ok("tools/mmnist_test.py", "--config", config, "--ckpt", str(tmp_path / "run" / "best.pt"),
       "--file", str(tmp_path / "test_seq.npy"), "--limit", "3")
    result = metrics_of(tmp_path / "run")["standard_test"]
    assert result["sequences"] == 3 and set(result["scores"]) == {"unary", "persistence", "extrapolation"}
    persistence = result["scores"]["persistence"]["per_lead"]["mse_per_frame"]
    truth = sequences[3:, :3] / 255.0  # (T_out, 3, H, W)
    held = sequences[2, :3] / 255.0
    assert np.allclose(persistence, ((truth - held[None]) ** 2).sum(axis=(2, 3)).mean(axis=1), rtol=1e-5)
    assert {"mse_per_frame", "mae_per_frame", "psnr", "ssim"} <= set(result["scores"]["unary"]["mean"])
