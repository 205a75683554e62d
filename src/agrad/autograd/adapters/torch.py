"""Adapter for PyTorch: native ``torch.autograd``; in-place writes under ``no_grad``."""

from __future__ import annotations

from typing import Any

import torch

from agrad.autograd.adapters import Adapter
from agrad.pytree import tree_map

__all__ = ["ADAPTER", "TorchAdapter"]


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


class TorchAdapter(Adapter):
    """``variable`` is a leaf tensor with ``requires_grad``; gradients by ``torch.autograd.grad``."""

    name = "torch"

    def variable(self, x: torch.Tensor) -> torch.Tensor:
        return x if (x.is_leaf and x.requires_grad) else x.detach().requires_grad_(True)

    def is_variable(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor) and x.requires_grad

    def stop_gradient(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach()

    def value_and_grad(self, flat_func, leaves, retain):
        with torch.enable_grad():
            if retain:
                inputs = [
                    x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
                    for x in leaves
                ]
            else:
                inputs = [x.detach().requires_grad_(True) for x in leaves]
            y, extras = flat_func(inputs)
            if y.requires_grad:
                grads = torch.autograd.grad(
                    y,
                    inputs,
                    grad_outputs=torch.ones_like(y),
                    create_graph=retain,
                    allow_unused=True,
                    materialize_grads=True,
                )
            else:
                grads = [torch.zeros_like(x) for x in inputs]
        grads = list(grads)
        if not retain:
            y = y.detach()
            grads = [g.detach() for g in grads]
            extras = tree_map(_detach, extras)
        return y, grads, extras

    def writable(self, dst: Any, new: Any) -> bool:
        return isinstance(dst, torch.Tensor) and (dst.is_leaf or not dst.requires_grad)

    def write(self, dst: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dst.copy_(new)
        return dst


ADAPTER = TorchAdapter()
