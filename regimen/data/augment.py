"""On-the-fly augmentation of training batches, keeping labels aligned with inputs.

A batch is a dict of tensors sharing the leading `[B, T]` axes: `x`
`[B, T, H, W, C]`, `y` (`[B, T, H, W]` segmentation, `[B, T]` tagging,
`[B, T, H, W, C']` regression) and optional soft targets `p` `[..., K]`.
Arrays with a grid (rank >= 4: axes 2 and 3 are H and W) move with every
spatial transform; all arrays move with the temporal jitter; noise and cutout
touch only `x`. Each transform is drawn per sample from one seeded generator,
for a whole global batch at once (`draw`), then applied (`apply`).
"""

from __future__ import annotations

import logging

import torch

from regimen.core.config import AugmentationConfig

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class Augmenter:
    """Applies the configured augmentations to training batches.

    Args:
        config: which transforms are on.
        spatial_invariant: False where flips/rotations would change the label
            (e.g. the `regimes` drift directions); spatial transforms are then skipped.
        stateful: training.stateful, where they are skipped too: a sequence's windows follow each
            other, and each window would get a transform of its own.
        seed: seeds the generator; its state is `self.generator.get_state()`.
    """

    def __init__(self, config: AugmentationConfig, spatial_invariant: bool, seed: int, stateful: bool = False):
        self.config = config
        self.spatial = spatial_invariant and not stateful
        self.generator = torch.Generator().manual_seed(seed)
        if not self.spatial and (config.spatial_flip or set(config.rotate_deg) - {0}):
            why = ("a window's flip or turn would not be its sequence's next window's (training.stateful)"
                   if stateful else "they change this dataset's labels")
            log.warning("flips and rotations skipped: %s", why)

    def __call__(self, batch: Batch) -> Batch:
        return self.apply(batch, self.draw(batch["x"].shape))

    def draw(self, shape: torch.Size) -> Batch:
        """The random choices for a batch of windows `x` of `shape` `[B, T, H, W, C]`, per window
        (leading axis B). Drawn once for a whole global batch, they let each process of a torchrun
        job apply to its windows (`part`) what one process would."""
        b, t, h, w, _ = shape
        plan = {}
        if self.spatial and self.config.spatial_flip:
            plan["flip_h"], plan["flip_w"] = self._chosen(b), self._chosen(b)
        # A quarter turn swaps H and W: only on square grids.
        turns = [d // 90 for d in self.config.rotate_deg if h == w or d % 180 == 0]
        if self.spatial and set(turns) - {0}:
            plan["turns"] = torch.tensor(turns)[torch.randint(len(turns), (b,), generator=self.generator)]
        if self.config.temporal_jitter > 0:
            j = self.config.temporal_jitter
            plan["shift"] = torch.randint(-j, j + 1, (b,), generator=self.generator)
        if self.config.cutout_size > 0:
            side = min(self.config.cutout_size, h, w)
            plan["top"] = torch.randint(h - side + 1, (b,), generator=self.generator)
            plan["left"] = torch.randint(w - side + 1, (b,), generator=self.generator)
        if self.config.gaussian_noise_std > 0:
            plan["noise"] = torch.randn(shape, generator=self.generator)
        return plan

    def apply(self, batch: Batch, plan: Batch) -> Batch:
        """`batch` transformed by `plan` (from `draw`, cut to the batch's windows)."""
        batch = dict(batch)
        if "flip_h" in plan:
            batch = _flip(batch, plan["flip_h"], dim=2)
            batch = _flip(batch, plan["flip_w"], dim=3)
        if "turns" in plan:
            batch = _rotate(batch, plan["turns"])
        if "shift" in plan:
            batch = _jitter(batch, plan["shift"])
        if "top" in plan:
            side = min(self.config.cutout_size, *batch["x"].shape[2:4])
            batch["x"] = _cutout(batch["x"], plan["top"], plan["left"], side)
        if "noise" in plan:
            batch["x"] = batch["x"] + self.config.gaussian_noise_std * plan["noise"].to(batch["x"])
        return batch

    def _chosen(self, size: int, probability: float = 0.5) -> torch.Tensor:
        return torch.rand(size, generator=self.generator) < probability


def part_of(plan: Batch, offset: int, count: int) -> Batch:
    """The choices of windows `offset` to `offset + count` of a drawn global batch."""
    return {key: value[offset:offset + count] for key, value in plan.items()}


def _flip(batch: Batch, chosen: torch.Tensor, dim: int) -> Batch:
    return {key: _where(chosen, a.flip(dim), a) if a.ndim >= 4 else a for key, a in batch.items()}


def _rotate(batch: Batch, quarter_turns: torch.Tensor) -> Batch:
    out = {}
    for key, a in batch.items():
        if a.ndim < 4:
            out[key] = a
            continue
        rotated = a.clone()
        for k in set(quarter_turns.tolist()) - {0}:
            chosen = quarter_turns == k
            rotated[chosen] = torch.rot90(a[chosen], k, dims=(2, 3))
        out[key] = rotated
    return out


def _jitter(batch: Batch, shift: torch.Tensor) -> Batch:
    """Shift each window by its `shift` frames, repeating the edge frame."""
    b, t = batch["x"].shape[:2]
    frames = (torch.arange(t)[None] + shift[:, None]).clamp(0, t - 1)  # (B, T)
    rows = torch.arange(b)[:, None]
    return {key: a[rows, frames] for key, a in batch.items()}


def _cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, side: int) -> torch.Tensor:
    """Blank (set to the normalised mean, 0) one square per sample in every frame."""
    _, _, h, w, _ = x.shape
    rows = torch.arange(h)[None]
    cols = torch.arange(w)[None]
    inside_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)  # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)  # (B, W)
    # shape: (B, 1, H, W, 1)
    hole = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None, :, :, None]
    return x.masked_fill(hole, 0.0)


def _where(chosen: torch.Tensor, transformed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    mask = chosen.view(-1, *([1] * (original.ndim - 1)))
    return torch.where(mask, transformed, original)
