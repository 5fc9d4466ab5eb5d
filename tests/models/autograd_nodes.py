"""Backward graphs by node name: tests of what autograd will run, not only what it computes."""

from __future__ import annotations

import torch


def _nodes(tensor: torch.Tensor):
    """Every node of `tensor`'s backward graph, once each."""
    seen, todo = set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        todo += [next_node for next_node, _ in node.next_functions]


def backward_nodes(tensor: torch.Tensor) -> list[str]:
    """The names of every node of `tensor`'s backward graph."""
    return [type(node).__name__ for node in _nodes(tensor)]


def readers_of(leaf: torch.Tensor, tensor: torch.Tensor) -> list[str]:
    """The names of the nodes of `tensor`'s backward graph that take the leaf `leaf` directly, one per use."""
    return [type(node).__name__ for node in _nodes(tensor) for next_node, _ in node.next_functions
            if getattr(next_node, "variable", None) is leaf]
