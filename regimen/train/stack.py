"""The model stack: the ConvLSTM network built from the config, the PGM head on top, the device
it runs on and its mixed precision, and its round trip through a checkpoint.

Checkpoints carry `net_spec` (what rebuilds the network), so later phases
rebuild a model from the file, not from the current config.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from models.network import ConvLSTMNet
from regimen.core.config import Config
from regimen.core.errors import UserError
from regimen.core.weights import load_state_checked
from regimen.data.processed import TaskData
from regimen.train.pgm import PGMHead


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


def precision(device: torch.device, enabled: bool) -> str:
    """What `training.mixed_precision` runs the network in on `device`: bf16 on CUDA where
    supported, else fp16; bf16 on a CPU that computes it natively (AVX512-BF16 or AMX), else fp32:
    elsewhere oneDNN emulates bf16, and an epoch of the default config took 67 s against 5.0 s
    in fp32 (an AMD EPYC with AVX2 only)."""
    if not enabled:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def autocast_for(device: torch.device, enabled: bool):
    """Mixed precision for `device` (see `precision`). fp16 needs a `torch.amp.GradScaler` in the
    training loop; bf16 does not."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision(device, enabled))
    return torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()


def needs_grad_scaler(device: torch.device, enabled: bool) -> bool:
    """fp16 autocast (CUDA without bf16) needs loss scaling; bf16 and fp32 do not."""
    return precision(device, enabled) == "fp16"


def net_spec(config: Config, input_channels: int, num_outputs: int, task: str,
             forecast: Optional[dict] = None) -> dict:
    """What rebuilds the network of `model.convlstm`; checkpoints carry it. `forecast`: the
    processed data's (`meta["forecast"]`, with `normalisation`, what the autoregressive forecaster
    maps its predictions back to inputs with)."""
    lstm = config.model.convlstm
    spec = {"input_channels": input_channels, "hidden_sizes": list(lstm.hidden_sizes),
            "kernel_size": lstm.kernel_size, "task": task, "num_outputs": num_outputs,
            "dropout": lstm.dropout, "bidirectional": lstm.bidirectional, "checkpoint_steps": lstm.checkpoint_steps,
            "patch_size": lstm.patch_size}
    if forecast:
        spec.update(forecaster=lstm.forecaster, output_frames=forecast["output_frames"])
        if lstm.forecaster == "autoregressive":
            spec["feedback"] = [forecast["normalisation"]["mean"], forecast["normalisation"]["std"]]
    return spec


def build_net(spec: dict) -> ConvLSTMNet:
    return ConvLSTMNet(**spec)


def model_input(x: torch.Tensor) -> torch.Tensor:
    """`[B, T, H, W, C]` (data layout) -> `[B, T, C, H, W]` (model layout)."""
    return x.permute(0, 1, 4, 2, 3)


class Stack(nn.Module):
    """The ConvLSTM network and, from phase 3 on, the PGM head on its unaries.

    Args:
        spec: `net_spec` of the network.
        pgm_settings: `pgm_settings` of the head, or None.
        mixed_precision: run the network under autocast (the PGM always runs in fp32).
    """

    def __init__(self, spec: dict, pgm_settings: Optional[dict] = None, mixed_precision: bool = False):
        super().__init__()
        self.spec = dict(spec)
        self.net = build_net(spec)
        self.head = PGMHead(pgm_settings) if pgm_settings else None
        self.mixed_precision = mixed_precision

    def unaries(self, x: torch.Tensor, return_features: bool = False, state: Optional[list] = None,
                return_state: bool = False, dropout_seeds: Optional[list[int]] = None,
                future: Optional[torch.Tensor] = None, teacher: Optional[torch.Tensor] = None,
                carry=None):
        """Network outputs in fp32 for model-layout inputs `[B, T, C, H, W]`; with `return_features`
        also the last layer's features, with `return_state` also the ConvLSTM's final state, from
        which the next frames continue (`state=`); `dropout_seeds`: one per window (training);
        `future`, `teacher`: the autoregressive forecaster's scheduled sampling (`ConvLSTMNet`);
        `carry` (a `tbptt.Carry`, training.stateful): the state to start from, and where the final
        state goes, detached."""
        if carry is not None:
            state = carry.state
        with autocast_for(x.device, self.mixed_precision):
            out, features, final = self.net(x, state, return_features=True, return_state=True,
                                            dropout_seeds=dropout_seeds, future=future, teacher=teacher)
        if carry is not None:
            carry.final = [(h.detach(), c.detach()) for h, c in final]
        extra = ((features.float(),) if return_features else ()) + ((final,) if return_state else ())
        return (out.float(), *extra) if extra else out.float()

    def payload(self) -> dict:
        """The weights and what rebuilds them, for a checkpoint."""
        pgm = None
        if self.head is not None:
            pgm = {"settings": dict(self.head.settings), "state": self.head.state_dict()}
        return {"net": dict(self.spec), "net_state": self.net.state_dict(), "pgm": pgm}


def stack_from_checkpoint(payload: dict, source: str, mixed_precision: bool = False) -> Stack:
    """Rebuild a `Stack` from its checkpoint, not from the current config."""
    try:
        stack = Stack(payload["net"], payload["pgm"]["settings"] if payload.get("pgm") else None,
                      mixed_precision)
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{source}: the checkpoint's model settings do not rebuild a model ({error})") from None
    load_state_checked(stack.net, payload["net_state"], source)
    if stack.head is not None:
        load_state_checked(stack.head, payload["pgm"]["state"], source)
    return stack


def check_fits_data(stack: Stack, data: TaskData, source: str) -> None:
    """A UserError naming the mismatch when a checkpoint's network does not fit the data."""
    spec = stack.spec
    wanted = {"task": data.task, "input_channels": data.input_channels, "num_outputs": data.num_outputs}
    for key, value in wanted.items():
        if spec[key] != value:
            raise UserError(f"{source}: the checkpoint's network has {key} = {spec[key]!r}, "
                            f"the configured data needs {value!r}")


def check_patches(patch_size: int, data: TaskData) -> None:
    """A UserError when the frames do not cut into `patch_size` x `patch_size` patches."""
    height, width = data.meta["shapes"]["train"]["X"][2:4]
    if height % patch_size or width % patch_size:
        raise UserError(f"model.convlstm.patch_size = {patch_size}: the frames are {height} x {width}; expected a "
                        "size that divides both (space to depth)")


def new_stack(config: Config, data: TaskData, pgm_settings: Optional[dict] = None) -> Stack:
    """A freshly initialised (seeded) stack for the configured data."""
    torch.manual_seed(config.seed)
    check_patches(config.model.convlstm.patch_size, data)
    forecast = data.meta.get("forecast")
    if forecast:
        forecast = {**forecast, "normalisation": data.meta["normalisation"]}
    spec = net_spec(config, data.input_channels, data.num_outputs, data.task, forecast)
    return Stack(spec, pgm_settings, config.training.mixed_precision)
