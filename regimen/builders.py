"""From the config to models and devices: the only place that reads config for `models/`."""

from __future__ import annotations

import contextlib

import torch

from models.convlstm import ConvLSTMNet
from models.crf import MeanFieldCRF
from regimen.cli import UserError
from regimen.config import Config


def resolve_device(name: str) -> torch.device:
    """`auto` -> `cuda:0` when CUDA is there, else the CPU; an absent explicit device is an error."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device = {name!r}: CUDA is not available on this machine (use auto or cpu)")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device = {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def autocast_for(device: torch.device, enabled: bool):
    """Mixed precision for `device`: bf16 on the CPU, bf16 on CUDA where supported, else fp16.

    fp16 needs a `torch.amp.GradScaler` in the training loop; bf16 does not.
    """
    if not enabled:
        return contextlib.nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def build_convlstm_net(config: Config, input_channels: int, num_outputs: int, task: str) -> ConvLSTMNet:
    """The network of `model.convlstm` for a task with `num_outputs` classes or channels."""
    lstm = config.model.convlstm
    return ConvLSTMNet(input_channels=input_channels, hidden_sizes=list(lstm.hidden_sizes),
                       kernel_size=lstm.kernel_size, task=task, num_outputs=num_outputs,
                       dropout=lstm.dropout, bidirectional=lstm.bidirectional)


def build_crf(config: Config, num_classes: int) -> MeanFieldCRF:
    """The space-time CRF of `model.pgm`."""
    pgm = config.model.pgm
    return MeanFieldCRF(num_classes, temporal_links=pgm.temporal_links, iterations=pgm.mean_field_iters,
                        pairwise_weight=pgm.pairwise_weight)
