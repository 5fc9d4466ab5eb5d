"""The network of a task: a ConvLSTM stack with its output head, labelling the frames it reads or
forecasting the frames after them.

Without a forecaster the outputs are one per input frame. A forecaster reads
T_in frames `[B, T_in, C, H, W]` and returns T_out future frames' outputs:

- `encoder_forecaster` (Shi et al. 2015): the encoder stack reads the T_in
  frames; its final states start a forecaster stack of the same sizes that
  unrolls T_out steps with no input, and the head reads the forecaster's
  outputs.
- `autoregressive`: one stack unrolled over T_in + T_out - 1 steps that
  feeds its own prediction back (the head's values, mapped to the inputs'
  normalisation); in training each fed-back frame is the true one instead
  where `teacher` says so (scheduled sampling). It serves regression whose
  targets are the inputs.

With `patch_size` p > 1 the stack runs on p x p patches folded into channels
(space to depth: 64x64x1 runs as 16x16x16, as OpenSTL runs Moving MNIST), and
the output head's p*p channels per output unfold back to full resolution.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.convlstm import ConvLSTM, State

FORECASTERS = ("encoder_forecaster", "autoregressive")


class ConvLSTMNet(nn.Module):
    """A ConvLSTM stack with the head of one task, optionally forecasting.

    Args:
        input_channels: channels of the input frames.
        hidden_sizes, kernel_size, dropout, bidirectional, checkpoint_steps: see `ConvLSTM`.
        task: "segmentation" (per-pixel logits `[B, T, K, H, W]`), "tagging"
            (per-frame logits `[B, T, K]`) or "regression" (per-pixel values
            `[B, T, K, H, W]`, K output channels).
        num_outputs: classes K, or regression output channels.
        forecaster: None (label the frames read), or one of `FORECASTERS`.
        output_frames: T_out, the frames a forecaster predicts.
        feedback: the autoregressive forecaster's input normalisation `[mean, std]` (per channel): a
            predicted value v goes back in as `(v - mean) / std`.
        patch_size: the side of the patches folded into channels (1: none); H and W must be multiples.
    """

    TASKS = ("segmentation", "tagging", "regression")

    def __init__(self, input_channels: int, hidden_sizes: list[int], kernel_size: int, task: str,
                 num_outputs: int, dropout: float = 0.0, bidirectional: bool = False,
                 checkpoint_steps: bool = False, forecaster: Optional[str] = None, output_frames: int = 0,
                 feedback: Optional[list[list[float]]] = None, patch_size: int = 1):
        super().__init__()
        if task not in self.TASKS:
            raise ValueError(f"task must be one of {self.TASKS}, got {task!r}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        _check_forecaster(forecaster, output_frames, task, input_channels, num_outputs, bidirectional, feedback)
        self.task, self.forecaster, self.output_frames, self.patch = task, forecaster, output_frames, patch_size
        self.encoder = ConvLSTM(input_channels * patch_size ** 2, hidden_sizes, kernel_size, dropout, bidirectional,
                                checkpoint_steps)
        if forecaster == "encoder_forecaster":
            self.decoder = ConvLSTM(1, hidden_sizes, kernel_size, dropout, False, checkpoint_steps)
        if forecaster == "autoregressive":
            mean, std = (torch.tensor(values, dtype=torch.float32).view(-1, 1, 1) for values in feedback)
            self.register_buffer("feedback_mean", mean)
            self.register_buffer("feedback_std", std)
        channels = self.encoder.output_channels
        if task == "tagging":
            # mean and max pooling over the grid, then a linear layer
            self.head = nn.Linear(2 * channels, num_outputs)
        else:
            self.head = nn.Conv2d(channels, num_outputs * patch_size ** 2, kernel_size=1)

    def forward(self, x: torch.Tensor, state: Optional[list[State]] = None,
                return_features: bool = False, return_state: bool = False,
                dropout_seeds: Optional[list[int]] = None, future: Optional[torch.Tensor] = None,
                teacher: Optional[torch.Tensor] = None):
        """`x` `[B, T, C, H, W]` -> outputs (a forecaster's: `[B, T_out, ...]`); with `return_features`
        also the last layer's features `[B, T(_out), C_out, H, W]`, with `return_state` also the final
        `(h, c)` per layer, from which the next window of a long sequence continues (`state=`);
        `dropout_seeds`: see `ConvLSTM`. Autoregressive training: `future` `[B, T_out - 1, C, H, W]`,
        the true frames that `teacher` `[B, T_out - 1]` (bools) feeds back instead of predictions."""
        x = self._patches(x)
        future = None if future is None else self._patches(future)
        if self.forecaster is None:
            features, final = self.encoder(x, state, dropout_seeds)
        elif state is not None:
            raise ValueError("a forecaster starts from its T_in frames, not from a carried-over state")
        elif self.forecaster == "encoder_forecaster":
            features, final = self._encode_forecast(x, dropout_seeds)
        else:
            features, final = self._autoregress(x, dropout_seeds, future, teacher)
        out = self._head(features)
        extra = ((features,) if return_features else ()) + ((final,) if return_state else ())
        return (out, *extra) if extra else out

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """Frames `[B, T, C, H, W]` -> `[B, T, C*p*p, H/p, W/p]` (space to depth)."""
        if self.patch == 1:
            return x
        return F.pixel_unshuffle(x.flatten(0, 1), self.patch).unflatten(0, x.shape[:2])

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """Features `[B, T, C, h, w]` -> the task's outputs."""
        if self.task == "tagging":
            # shape: (B, T, 2*C_out)
            pooled = torch.cat([features.mean(dim=(3, 4)), features.amax(dim=(3, 4))], dim=2)
            return self.head(pooled)
        return self._frame_head(features.flatten(0, 1)).unflatten(0, features.shape[:2])

    def _frame_head(self, features: torch.Tensor) -> torch.Tensor:
        """Features of frames `[N, C, h, w]` -> outputs `[N, K, H, W]` at full resolution (depth to space)."""
        out = self.head(features)
        return out if self.patch == 1 else F.pixel_shuffle(out, self.patch)

    def _encode_forecast(self, x: torch.Tensor, dropout_seeds: Optional[list[int]]
                         ) -> tuple[torch.Tensor, list[State]]:
        """Shi et al.'s encoder-forecaster: the forecaster stack starts from the encoder's states."""
        _, states = self.encoder(x, None, dropout_seeds)
        b, _, _, h, w = x.shape
        blank = x.new_zeros(b, self.output_frames, 1, h, w)  # the forecaster has no input
        seeds = None if dropout_seeds is None else [seed + 1 for seed in dropout_seeds]
        return self.decoder(blank, states, seeds)

    def _autoregress(self, x: torch.Tensor, dropout_seeds: Optional[list[int]], future: Optional[torch.Tensor],
                     teacher: Optional[torch.Tensor]) -> tuple[torch.Tensor, list[State]]:
        """The stack over the T_in frames, then one step per further frame from its own prediction
        (or, where `teacher` says so, the true frame `future`)."""
        features, states = self.encoder(x, None, dropout_seeds)
        outputs = [features[:, -1]]  # (B, C_out, H, W): predicts the first future frame
        for step in range(self.output_frames - 1):
            predicted = self._frame_head(outputs[-1]).float()  # (B, K, H, W) values
            frame = self._patches(((predicted - self.feedback_mean) / self.feedback_std)[:, None])[:, 0].to(x.dtype)
            if teacher is not None:
                frame = torch.where(teacher[:, step, None, None, None], future[:, step].to(x.dtype), frame)
            out, states = self.encoder(frame[:, None], states, dropout_seeds)
            outputs.append(out[:, 0])
        return torch.stack(outputs, dim=1), states


def _check_forecaster(forecaster: Optional[str], output_frames: int, task: str, input_channels: int,
                      num_outputs: int, bidirectional: bool, feedback: Optional[list]) -> None:
    if forecaster is None:
        return
    if forecaster not in FORECASTERS:
        raise ValueError(f"forecaster must be None or one of {FORECASTERS}, got {forecaster!r}")
    if output_frames < 1:
        raise ValueError(f"a forecaster needs output_frames >= 1, got {output_frames}")
    if bidirectional:
        raise ValueError("a forecaster cannot read its inputs backwards (bidirectional)")
    if forecaster == "autoregressive" and (task != "regression" or num_outputs != input_channels or not feedback):
        raise ValueError("the autoregressive forecaster feeds its predictions back as inputs: it needs task "
                         "regression with as many outputs as input channels, and their normalisation (feedback)")
