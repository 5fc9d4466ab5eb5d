"""Scheduled sampling of the autoregressive forecaster (Bengio et al. 2015, as OpenSTL and PredRNN
train): in training each frame it feeds back is the true frame instead of its own prediction with
a chance that starts at `training.scheduled_sampling.start` and falls linearly to 0 over
`decay_epochs` epochs of steps. The draws come from a seeded generator that checkpoints carry
(`Trainer`'s RNG states), and are made for a whole global batch, so a resumed or data-parallel run
feeds what a straight one-process run would."""

from __future__ import annotations

from typing import Optional

import torch

from regimen.train.stack import Stack


class ScheduledSampling:
    """Which fed-back frames of each training window are the true ones.

    Args:
        start: the chance of the truth at the first step.
        decay_epochs: epochs over which it falls to 0.
        steps_per_epoch: optimizer steps an epoch.
        seed: seeds the draws.
    """

    def __init__(self, start: float, decay_epochs: int, steps_per_epoch: int, seed: int):
        self.start, self.decay_steps = start, decay_epochs * steps_per_epoch
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def of(cls, stack: Stack, schedule: tuple[float, int], steps_per_epoch: int, seed: int
           ) -> Optional["ScheduledSampling"]:
        """The sampling of a stack's training: None unless it is an autoregressive forecaster fed the
        truth at some step."""
        start, epochs = schedule
        if stack.net.forecaster != "autoregressive" or start <= 0 or epochs <= 0:
            return None
        return cls(start, epochs, steps_per_epoch, seed)

    def chance(self, step: int) -> float:
        """The chance of the truth at optimizer step `step` (counted from 0 over the whole run)."""
        return self.start * max(0.0, 1.0 - step / self.decay_steps)

    def draw(self, windows: int, frames: int, step: int) -> torch.Tensor:
        """`[windows, frames]` bools for a global batch: True where the true frame is fed."""
        return torch.rand((windows, frames), generator=self.generator) < self.chance(step)
