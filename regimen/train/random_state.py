"""The random states a training checkpoint carries, so a resumed run draws what a straight one would."""

from __future__ import annotations

import torch


def rng_state(generators: dict[str, torch.Generator]) -> dict:
    """torch's global RNG (and CUDA's), and each named generator's state, for a checkpoint."""
    rng = {"torch": torch.get_rng_state(), **{name: g.get_state() for name, g in generators.items()}}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def set_rng_state(generators: dict[str, torch.Generator], rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    for name, generator in generators.items():
        generator.set_state(rng[name])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
