"""From the config to models and devices: the only place that reads config for `models/`."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from models.convlstm import ConvLSTMNet
from regimen.config import Config
from regimen.errors import UserError


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


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 autocast (CUDA without bf16) needs loss scaling; bf16 and fp32 do not."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()


def net_spec(config: Config, input_channels: int, num_outputs: int, task: str) -> dict:
    """What rebuilds the network of `model.convlstm`; checkpoints carry it."""
    lstm = config.model.convlstm
    return {"input_channels": input_channels, "hidden_sizes": list(lstm.hidden_sizes),
            "kernel_size": lstm.kernel_size, "task": task, "num_outputs": num_outputs,
            "dropout": lstm.dropout, "bidirectional": lstm.bidirectional}


def build_net(spec: dict) -> ConvLSTMNet:
    return ConvLSTMNet(**spec)


def load_state_checked(module: nn.Module, state: dict, source: str) -> None:
    """`load_state_dict`, or a one-line UserError naming the first mismatched tensor."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{source}: parameters do not match the model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UserError(f"{source}: parameter {name} has shape {tuple(tensor.shape)}, "
                            f"the model needs {tuple(expected[name].shape)}")
    module.load_state_dict(state)
