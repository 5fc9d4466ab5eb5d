"""Loading saved weights into a module, with one line naming the first tensor that does not fit."""

from __future__ import annotations

from torch import nn

from regimen.core.errors import UserError


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
