"""On-the-fly augmentation of training batches, keeping labels aligned with inputs.

A batch is a dict of tensors sharing the leading `[B, T]` axes: `x`
`[B, T, H, W, C]`, `y` (`[B, T, H, W]` segmentation, `[B, T]` tagging,
`[B, T, H, W, C']` regression) and optional soft targets `p` `[..., K]`.
Arrays with a grid (rank >= 4: axes 2 and 3 are H and W) move with every
spatial transform; all arrays move with the temporal jitter; noise and cutout
touch only `x`. Each transform is drawn per sample from one seeded generator.
"""

from __future__ import annotations

import logging

import torch

from regimen.config import AugmentationConfig

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class Augmenter:
    """Applies the configured augmentations to training batches.

    Args:
        config: which transforms are on.
        spatial_invariant: False where flips/rotations would change the label
            (e.g. the `regimes` drift directions); spatial transforms are then skipped.
        seed: seeds the generator; its state is `self.generator.get_state()`.
    """

    def __init__(self, config: AugmentationConfig, spatial_invariant: bool, seed: int):
        self.config = config
        self.spatial = spatial_invariant
        self.generator = torch.Generator().manual_seed(seed)
        if not spatial_invariant and (config.spatial_flip or set(config.rotate_deg) - {0}):
            log.warning("flips and rotations change this dataset's labels: skipped")

    def __call__(self, batch: Batch) -> Batch:
        batch = dict(batch)
        if self.spatial and self.config.spatial_flip:
            batch = self._flip(batch, dim=2)
            batch = self._flip(batch, dim=3)
        if self.spatial and set(self.config.rotate_deg) - {0}:
            batch = self._rotate(batch)
        if self.config.temporal_jitter > 0:
            batch = self._jitter(batch)
        if self.config.cutout_size > 0:
            batch["x"] = self._cutout(batch["x"])
        if self.config.gaussian_noise_std > 0:
            noise = torch.randn(batch["x"].shape, generator=self.generator)
            batch["x"] = batch["x"] + self.config.gaussian_noise_std * noise.to(batch["x"])
        return batch

    def _chosen(self, size: int, probability: float = 0.5) -> torch.Tensor:
        return torch.rand(size, generator=self.generator) < probability

    def _flip(self, batch: Batch, dim: int) -> Batch:
        chosen = self._chosen(len(batch["x"]))
        return {key: _where(chosen, a.flip(dim), a) if a.ndim >= 4 else a for key, a in batch.items()}

    def _rotate(self, batch: Batch) -> Batch:
        h, w = batch["x"].shape[2:4]
        # A quarter turn swaps H and W: only on square grids.
        allowed = [d // 90 for d in self.config.rotate_deg if h == w or d % 180 == 0]
        if not set(allowed) - {0}:
            return batch
        pick = torch.randint(len(allowed), (len(batch["x"]),), generator=self.generator)
        quarter_turns = torch.tensor(allowed)[pick]
        out = {}
        for key, a in batch.items():
            if a.ndim < 4:
                out[key] = a
                continue
            rotated = a.clone()
            for k in set(allowed) - {0}:
                chosen = quarter_turns == k
                rotated[chosen] = torch.rot90(a[chosen], k, dims=(2, 3))
            out[key] = rotated
        return out

    def _jitter(self, batch: Batch) -> Batch:
        """Shift each window by up to `temporal_jitter` frames, repeating the edge frame."""
        b, t = batch["x"].shape[:2]
        j = self.config.temporal_jitter
        shift = torch.randint(-j, j + 1, (b,), generator=self.generator)
        frames = (torch.arange(t)[None] + shift[:, None]).clamp(0, t - 1)  # (B, T)
        rows = torch.arange(b)[:, None]
        return {key: a[rows, frames] for key, a in batch.items()}

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        """Blank (set to the normalised mean, 0) one square per sample in every frame."""
        b, _, h, w, _ = x.shape
        side = min(self.config.cutout_size, h, w)
        top = torch.randint(h - side + 1, (b,), generator=self.generator)
        left = torch.randint(w - side + 1, (b,), generator=self.generator)
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
