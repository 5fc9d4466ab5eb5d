"""Reference implementations that models/ is tested and benchmarked against (not used by the pipeline).

- `ConcatConvLSTMCell` and `run_reference`: the textbook ConvLSTM cell (one convolution over
  `[x, h]` every step), frame by frame; `ConvLSTMCell` must compute the same function.
- `crf_energy`: the energy `E(y)` of a labelling under a `SpaceTimeCRF`, to check its inference
  against brute-force enumeration.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.convlstm import ConvLSTMCell, State
from models.crf import SpaceTimeCRF


class ConcatConvLSTMCell(nn.Module):
    """The textbook cell: one convolution over `[x, h]` every step.

    Kept as the reference that `ConvLSTMCell` is tested and benchmarked against;
    `from_cell` copies a `ConvLSTMCell`'s weights so both compute the same function.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.conv = nn.Conv2d(input_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                              padding=kernel_size // 2)

    @classmethod
    def from_cell(cls, cell: ConvLSTMCell) -> "ConcatConvLSTMCell":
        reference = cls(cell.conv_x.in_channels, cell.hidden_channels, cell.conv_x.kernel_size[0])
        with torch.no_grad():
            reference.conv.weight.copy_(torch.cat([cell.conv_x.weight, cell.conv_h.weight], dim=1))
            reference.conv.bias.copy_(cell.conv_x.bias)
        return reference

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> State:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.conv(torch.cat([x, h], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def run_reference(cells: list[ConcatConvLSTMCell], x: torch.Tensor) -> torch.Tensor:
    """A stack of reference cells over `x` `[B, T, C, H, W]`, frame by frame."""
    for cell in cells:
        state, outputs = None, []
        for t in range(x.shape[1]):
            state = cell(x[:, t], state)
            outputs.append(state[0])
        x = torch.stack(outputs, dim=1)
    return x


def crf_energy(crf: SpaceTimeCRF, labels: torch.Tensor, unaries: torch.Tensor,
               guide: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`E(y)` per sequence `[B]` of labels `[B, T, H, W]` (lower is better)."""
    onehot = F.one_hot(labels, crf.num_classes).permute(0, 1, 4, 2, 3).to(unaries.dtype)
    unary = (onehot * unaries).sum(dim=(1, 2, 3, 4))
    if not crf.enabled:
        return -unary
    field = crf._pairwise_field(onehot, crf.edge_weights(unaries, guide),
                                crf.compatibility_matrix().to(unaries.dtype))
    # every undirected edge appears once from each end
    return -unary + 0.5 * (onehot * field).sum(dim=(1, 2, 3, 4))
