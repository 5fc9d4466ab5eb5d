"""Predictions of a stack over many windows, in batches: unaries, decoded labels, marginals, metrics."""

from __future__ import annotations

from typing import Optional

import torch

from regimen.losses import class_last
from regimen.metrics import label_metrics, regression_metrics
from regimen.pgm import PGMHead
from regimen.processed import TaskData
from regimen.progress import track
from regimen.stack import Stack, model_input


@torch.no_grad()
def predict(stack: Stack, x: torch.Tensor, device: torch.device, batch_size: int,
            feature_maps: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Unaries (and the last layer's feature maps) for inputs `[N, T, H, W, C]`, on the CPU."""
    stack.eval()
    outputs, features = [], []
    for start in track(range(0, len(x), batch_size), "predict", "batches"):
        out, maps = stack.unaries(model_input(x[start:start + batch_size]).to(device), return_features=True)
        outputs.append(out.cpu())
        if feature_maps:
            features.append(maps.cpu())
    return torch.cat(outputs), (torch.cat(features) if feature_maps else None)


@torch.no_grad()
def decode(head: Optional[PGMHead], unaries: torch.Tensor, guide: Optional[torch.Tensor] = None,
           batch_size: int = 16) -> torch.Tensor:
    """Labels from unaries: per-node argmax without a head, else the head's joint decoding.
    `guide`: the input windows `[N, T, C, H, W]` (model layout) the unaries came from."""
    if head is None:
        return unaries.argmax(dim=2)
    head.eval()
    device = _device_of(head)
    return torch.cat([head.decode(unaries[i:i + batch_size].to(device), _rows(guide, i, batch_size, device)).cpu()
                      for i in range(0, len(unaries), batch_size)])


@torch.no_grad()
def marginals(head: PGMHead, unaries: torch.Tensor, guide: Optional[torch.Tensor] = None,
              batch_size: int = 16) -> torch.Tensor:
    """The head's marginal class probabilities, the shape of `unaries`."""
    head.eval()
    device = _device_of(head)
    return torch.cat([head.log_marginals(unaries[i:i + batch_size].to(device),
                                         _rows(guide, i, batch_size, device)).exp().cpu()
                      for i in range(0, len(unaries), batch_size)])


def task_metrics(data: TaskData, split: str, unaries: torch.Tensor, head: Optional[PGMHead] = None) -> dict:
    """The task's metrics on one split, from unaries (through the head when given)."""
    y = data.splits[split]["y"]
    if data.task == "regression":
        return regression_metrics(y.numpy(), class_last(unaries).numpy())
    labels = decode(head, unaries, guide_of(data, split))
    return label_metrics(y.numpy(), labels.numpy(), data.num_classes, data.task)


def guide_of(data: TaskData, split: str) -> Optional[torch.Tensor]:
    """The split's input windows in model layout (what an edge-aware CRF weighs its edges by), or
    None where the inputs were not loaded."""
    x = data.splits[split].get("x")
    return None if x is None else model_input(x)


def _device_of(head: PGMHead) -> torch.device:
    return next(iter(head.state_dict().values())).device


def _rows(guide: Optional[torch.Tensor], start: int, size: int, device: torch.device) -> Optional[torch.Tensor]:
    return None if guide is None else guide[start:start + size].to(device)
