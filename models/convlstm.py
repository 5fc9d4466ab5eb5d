"""ConvLSTM (Shi et al. 2015, without peepholes) with the input convolution hoisted out of time.

The input-to-gate convolution does not depend on the recurrence, so it runs
over many frames a call; only the hidden-to-gate convolution runs per step, and
not at all on the zero state a sequence starts from. On the CPU, where one
step's gates alone outgrow the caches, one convolution over `[x_t, h]` per step
(the textbook cell's) runs faster, and the same weights run that way.
Gates are ordered i, f, o, g along the channel axis:
`c' = f*c + i*g`, `h' = o*tanh(c')`.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

State = tuple[torch.Tensor, torch.Tensor]


def _check_kernel(kernel_size: int) -> None:
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer (same padding), got {kernel_size}")


class ConvLSTMCell(nn.Module):
    """One ConvLSTM cell: `conv_x` (input to gates, with bias), `conv_h` (hidden to gates, no bias).

    Args:
        input_channels: channels of the input frames.
        hidden_channels: channels of `h` and `c`.
        kernel_size: odd size of both convolutions (same padding).
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size: int):
        super().__init__()
        _check_kernel(kernel_size)
        self.hidden_channels = hidden_channels
        pad = kernel_size // 2
        self.conv_x = nn.Conv2d(input_channels, 4 * hidden_channels, kernel_size, padding=pad)
        self.conv_h = nn.Conv2d(hidden_channels, 4 * hidden_channels, kernel_size, padding=pad, bias=False)

    def zero_state(self, like: torch.Tensor) -> State:
        """Zero `(h, c)` for frames shaped like `like` `[B, C, H, W]`."""
        b, _, h, w = like.shape
        zeros = like.new_zeros(b, self.hidden_channels, h, w)
        return zeros, zeros

    def start(self, gates_x: torch.Tensor) -> State:
        """The first frame from the zero state, given its input gates `[B, 4*hidden, H, W]`: the
        hidden convolution of zeros is zero and so is the forget gate's term, so neither is computed."""
        i, _, o, g = gates_x.chunk(4, dim=1)
        c = torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def step(self, gates_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> State:
        """Advance one frame given the precomputed input gates `[B, 4*hidden, H, W]`."""
        return self.update(gates_x + self.conv_h(h), c)

    def fused_step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, weight: torch.Tensor) -> State:
        """Advance one frame `x` `[B, C, H, W]` with one convolution over `[x, h]`: `weight` is
        `conv_x`'s and `conv_h`'s side by side (`[4*hidden, C + hidden, k, k]`)."""
        gates = F.conv2d(torch.cat([x, h], dim=1), weight, self.conv_x.bias, padding=self.conv_x.padding)
        return self.update(gates, c)

    def update(self, gates: torch.Tensor, c: torch.Tensor) -> State:
        """The next `(h, c)` from all four gates' pre-activations `[B, 4*hidden, H, W]`.

        split and chunk, not slices: their backward concatenates the gates' gradients, where each
        slice's would add a zero-filled copy of the whole `gates` (measured: 3 to 6% of a CPU step)."""
        n = self.hidden_channels
        ifo, g = gates.split([3 * n, n], dim=1)
        i, f, o = torch.sigmoid(ifo).chunk(3, dim=1)
        c = f * c + i * torch.tanh(g)
        return o * torch.tanh(c), c

    def forward(self, x: torch.Tensor, state: Optional[State] = None) -> State:
        """One frame `x` `[B, C, H, W]` -> the next `(h, c)`."""
        h, c = state if state is not None else self.zero_state(x)
        return self.step(self.conv_x(x), h, c)


class ConvLSTM(nn.Module):
    """A stack of ConvLSTM layers over sequences `[B, T, C, H, W]`.

    Args:
        input_channels: channels of the input frames.
        hidden_sizes: hidden channels of each layer.
        kernel_size: odd kernel size of every convolution.
        dropout: dropout on the outputs of every layer but the last.
        bidirectional: also run each layer backwards in time and concatenate
            both directions' outputs (then a carried-over state is not allowed).
        checkpoint_steps: recompute each step in the backward pass instead of
            storing its activations (long sequences on small GPUs).
    """

    def __init__(self, input_channels: int, hidden_sizes: list[int], kernel_size: int,
                 dropout: float = 0.0, bidirectional: bool = False, checkpoint_steps: bool = False):
        super().__init__()
        if not hidden_sizes:
            raise ValueError("hidden_sizes needs at least one layer")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _check_kernel(kernel_size)
        directions = 2 if bidirectional else 1
        inputs = [input_channels] + [directions * h for h in hidden_sizes[:-1]]
        self.cells = nn.ModuleList(ConvLSTMCell(i, h, kernel_size) for i, h in zip(inputs, hidden_sizes))
        self.backward_cells = nn.ModuleList(
            ConvLSTMCell(i, h, kernel_size) for i, h in zip(inputs, hidden_sizes)) if bidirectional else None
        self.dropout = nn.Dropout(dropout)
        self.output_channels = directions * hidden_sizes[-1]
        self.checkpoint_steps = checkpoint_steps

    def forward(self, x: torch.Tensor, state: Optional[list[State]] = None,
                dropout_seeds: Optional[list[int]] = None) -> tuple[torch.Tensor, list[State]]:
        """Run the stack.

        Args:
            x: `[B, T, C, H, W]`.
            state: a list of `(h, c)` per layer to continue from (e.g. the state
                returned by the previous chunk of a stream), or None for zeros.
            dropout_seeds: one seed per window: in training, each window's dropout masks come
                from its own generator, so they do not depend on the batch the window is in
                (one process or a share of a data-parallel batch); None: `nn.Dropout`.

        Returns:
            The last layer's outputs `[B, T, C_out, H, W]` and the final state
            (a list of `(h, c)` per layer, forward direction).
        """
        if state is not None and self.backward_cells is not None:
            raise ValueError("a bidirectional ConvLSTM cannot continue from a state")
        final = []
        generators = None
        if dropout_seeds is not None and self.training and self.dropout.p > 0:
            generators = [torch.Generator(x.device).manual_seed(int(seed)) for seed in dropout_seeds]
        for layer, cell in enumerate(self.cells):
            out, last = self._run(cell, x, None if state is None else state[layer], reverse=False)
            if self.backward_cells is not None:
                back, _ = self._run(self.backward_cells[layer], x, None, reverse=True)
                out = torch.cat([out, back], dim=2)
            final.append(last)
            x = self._dropout(out, generators) if layer < len(self.cells) - 1 else out
        return x, final

    def _dropout(self, x: torch.Tensor, generators: Optional[list[torch.Generator]]) -> torch.Tensor:
        """Dropout of a layer's outputs `[B, T, C, H, W]`, with window b's mask drawn from `generators[b]`
        (fresh generators for every call: a forecaster's steps, one call each, share a window's masks)."""
        if generators is None:
            return self.dropout(x)
        keep = 1.0 - self.dropout.p
        # shape: (B, T, C, H, W)
        masks = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) < keep for g in generators])
        return x * masks.to(x.dtype) / keep

    def _run(self, cell: ConvLSTMCell, x: torch.Tensor, state: Optional[State], reverse: bool
             ) -> tuple[torch.Tensor, State]:
        b, t, _, height, width = x.shape
        # Where one step's input gates alone outgrow a CPU's caches, nothing is gained by running
        # the input convolution apart, and one convolution over [x_t, h] runs closer to the roof.
        fused = x.device.type == "cpu" and b * 4 * cell.hidden_channels * height * width > INPUT_CONV_ELEMENTS
        if fused:
            inputs = x.unbind(1)  # T x (B, C, H, W)
            advance = partial(cell.fused_step, weight=torch.cat([cell.conv_x.weight, cell.conv_h.weight], dim=1))
        else:
            inputs, advance = _input_gates(cell, x), cell.step  # T x (B, 4*hidden, H, W)
        order = range(t - 1, -1, -1) if reverse else range(t)
        recompute = self.checkpoint_steps and torch.is_grad_enabled()
        outputs, h, c = [None] * t, None, None
        for step in order:
            previous = state if step == order[0] else (h, c)
            if previous is None:  # from the zero state
                h, c = cell.start(cell.conv_x(inputs[step]) if fused else inputs[step])
            elif recompute:
                h, c = checkpoint(advance, inputs[step], *previous, use_reentrant=False)
            else:
                h, c = advance(inputs[step], *previous)
            outputs[step] = h
        return torch.stack(outputs, dim=1), (h, c)


INPUT_CONV_ELEMENTS = 2 ** 20  # outputs a call of the input convolution on the CPU: about 4 MB in fp32


def _input_gates(cell: ConvLSTMCell, x: torch.Tensor) -> list[torch.Tensor]:
    """The input convolution of every frame of `x` `[B, T, C, H, W]`, T x `[B, 4*hidden, H, W]`.

    It does not depend on the recurrence, so it runs over many frames a call: on a GPU all of
    them; on the CPU a call whose output outgrows the caches gets slower per frame (a 64-frame
    call took 60 times an 8-frame one at 32 x 32 and 128 gates), so there the calls take as many
    steps as keep their output near `INPUT_CONV_ELEMENTS`. unbind (not indexing), so that the
    backward pass stacks a call's gradients once instead of a full-size add per step."""
    b, t, _, h, w = x.shape
    steps = max(1, INPUT_CONV_ELEMENTS // (b * 4 * cell.hidden_channels * h * w)) if x.device.type == "cpu" else t
    gates = []
    for part in x.split(steps, dim=1):  # split, not slices: the backward pass then stacks, with no zeros
        gates += cell.conv_x(part.flatten(0, 1)).unflatten(0, part.shape[:2]).unbind(1)
    return gates
