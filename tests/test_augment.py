"""Augmentations keep inputs, labels and soft targets aligned."""

from __future__ import annotations

import torch

from regimen.data.augment import Augmenter
from regimen.core.config import AugmentationConfig


def only(**on) -> AugmentationConfig:
    config = AugmentationConfig(spatial_flip=False, rotate_deg=[0], temporal_jitter=0,
                                cutout_size=0, gaussian_noise_std=0.0)
    for key, value in on.items():
        setattr(config, key, value)
    return config


def segmentation_batch(b=16, t=5, h=6, w=6):
    """Labels derivable from the input: y = (x > 0) + (x > 1), p one-hot of y."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, h, w, 1, generator=g) * 2
    y = (x[..., 0] > 0).long() + (x[..., 0] > 1).long()
    p = torch.nn.functional.one_hot(y, 3).float()
    frame_id = torch.arange(t).view(1, t).expand(b, t).clone()
    return {"x": x, "y": y, "p": p}, frame_id


def derived(x):
    return (x[..., 0] > 0).long() + (x[..., 0] > 1).long()


def test_flips_and_rotations_keep_labels_derivable_and_change_something():
    batch, _ = segmentation_batch()
    for config in (only(spatial_flip=True), only(rotate_deg=[0, 90, 180, 270])):
        out = Augmenter(config, spatial_invariant=True, seed=1)(batch)
        assert torch.equal(out["y"], derived(out["x"]))
        assert torch.equal(out["p"].argmax(-1), out["y"])
        assert not torch.equal(out["x"], batch["x"])
        # each sample is a permutation of its own pixels, not mixed with another sample's
        assert torch.equal(out["x"].flatten(1).sort().values, batch["x"].flatten(1).sort().values)


def test_quarter_turns_only_on_square_grids():
    batch, _ = segmentation_batch(h=4, w=6)
    out = Augmenter(only(rotate_deg=[90]), spatial_invariant=True, seed=1)(batch)
    assert torch.equal(out["x"], batch["x"])  # 90 degrees would swap H and W: skipped
    out = Augmenter(only(rotate_deg=[180]), spatial_invariant=True, seed=1)(batch)
    assert torch.equal(out["y"], derived(out["x"])) and out["x"].shape == batch["x"].shape


def test_temporal_jitter_moves_every_array_together():
    batch, frame = segmentation_batch()
    batch["x"][..., 0] += 10 * frame[:, :, None, None]  # the frame index is readable from x
    batch["y"] = derived(batch["x"])
    tags = frame * 1  # a tagging-style [B, T] label = the frame index
    out = Augmenter(only(temporal_jitter=2), spatial_invariant=True, seed=3)({**batch, "tag": tags})
    read_frame = torch.div(out["x"][..., 0].mean((2, 3)) + 5, 10, rounding_mode="floor").long()
    assert torch.equal(read_frame, out["tag"])
    assert torch.equal(out["y"], derived(out["x"]))
    assert not torch.equal(out["tag"], tags)
    assert (out["tag"] - tags).abs().max() <= 2


def test_cutout_blanks_a_square_of_the_input_only():
    batch, _ = segmentation_batch()
    out = Augmenter(only(cutout_size=3), spatial_invariant=True, seed=0)(batch)
    hole = out["x"] != batch["x"]
    assert torch.equal(out["y"], batch["y"]) and torch.equal(out["p"], batch["p"])
    assert (out["x"][hole] == 0).all()
    per_sample = (out["x"][..., 0] == 0).all(dim=1).sum((1, 2))  # pixels blank in every frame
    assert (per_sample >= 9).all()
    outside = ~(out["x"][..., 0] == 0).all(dim=1, keepdim=True).expand_as(batch["y"])
    assert torch.equal(derived(out["x"])[outside], out["y"][outside])


def test_noise_touches_only_the_input():
    batch, _ = segmentation_batch()
    out = Augmenter(only(gaussian_noise_std=0.01), spatial_invariant=True, seed=0)(batch)
    change = out["x"] - batch["x"]
    assert 0.005 < change.std() < 0.015
    assert torch.equal(out["y"], batch["y"])


def test_spatial_transforms_skipped_where_they_change_labels_and_tags_untouched():
    batch, _ = segmentation_batch()
    config = only(spatial_flip=True, rotate_deg=[0, 90, 180, 270])
    out = Augmenter(config, spatial_invariant=False, seed=0)(batch)
    assert torch.equal(out["x"], batch["x"])
    tagging = {"x": batch["x"], "y": torch.arange(5).repeat(16, 1), "p": torch.rand(16, 5, 3)}
    out = Augmenter(config, spatial_invariant=True, seed=0)(tagging)
    assert torch.equal(out["y"], tagging["y"]) and torch.equal(out["p"], tagging["p"])


def test_same_seed_same_augmentation():
    batch, _ = segmentation_batch()
    config = AugmentationConfig(temporal_jitter=1, cutout_size=2)
    a = Augmenter(config, True, seed=9)(batch)
    b = Augmenter(config, True, seed=9)(batch)
    c = Augmenter(config, True, seed=10)(batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["x"], c["x"])
