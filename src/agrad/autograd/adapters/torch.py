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

    def vjp(self, flat_func, leaves, retain):
        """``flat_func(leaves) -> outs`` once under ``torch.autograd``; ``(outs, vjp_fn)``.

        ``vjp_fn(cotangents, retain, batched=False)`` is ``torch.autograd.grad`` (with
        ``create_graph=retain``; ``is_grads_batched`` for a leading batch axis, torch's
        vmap); the graph is kept until ``vjp_fn`` is dropped.
        """
        with torch.enable_grad():
            if retain:
                inputs = [
                    x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
                    for x in leaves
                ]
            else:
                inputs = [x.detach().requires_grad_(True) for x in leaves]
            outs = flat_func(inputs)

        def vjp_fn(cotangents: list[Any], retain_grads: bool, batched: bool = False) -> list[Any]:
            pairs = [
                (o, c)
                for o, c in zip(outs, cotangents)
                if c is not None and isinstance(o, torch.Tensor) and o.requires_grad
            ]
            if not pairs:
                lead = (len(next(c for c in cotangents if c is not None)),) if batched else ()
                return [
                    torch.zeros((*lead, *x.shape), dtype=x.dtype, device=x.device) for x in inputs
                ]
            with torch.enable_grad():
                grads = torch.autograd.grad(
                    [o for o, _ in pairs],
                    inputs,
                    [c for _, c in pairs],
                    retain_graph=True,
                    create_graph=retain_grads,
                    allow_unused=True,
                    materialize_grads=True,
                    is_grads_batched=batched,
                )
            return [g if retain_grads else g.detach() for g in grads]

        values = outs if retain else [_detach(o) for o in outs]
        return values, vjp_fn

    def custom_vjp(self, spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``spec`` as a ``torch.autograd.Function`` (made once per custom function)."""
        fn = spec.primitives.get("torch")
        if fn is None:
            fn = spec.primitives["torch"] = _autograd_function(spec)
        return fn.apply(kwargs, *args)

    def checkpoint(self, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``torch.utils.checkpoint.checkpoint`` (non-reentrant, so nested grads work)."""
        from torch.utils.checkpoint import checkpoint

        return checkpoint(f, *args, use_reentrant=False, **kwargs)

    def writable(self, dst: Any, new: Any) -> bool:
        return isinstance(dst, torch.Tensor) and (dst.is_leaf or not dst.requires_grad)

    def readonly_reason(self, dst: Any) -> str | None:
        if not isinstance(dst, torch.Tensor):
            return None
        if dst.is_inference() and not torch.is_inference_mode_enabled():
            return (
                "it is an inference tensor (made under torch.inference_mode), which refuses "
                "in-place writes outside inference mode"
            )
        if torch._debug_has_internal_overlap(dst) == 1:
            return "its elements overlap in memory (an expand()ed or as_strided view)"
        return None

    def unsupported_reason(self, x: Any) -> str | None:
        if not isinstance(x, torch.Tensor):
            return None
        if x.layout != torch.strided:
            return f"it is a {x.layout} tensor; agrad updates need dense tensors (x.to_dense())"
        if x.is_meta:
            return "it is on the meta device, which holds no data"
        return short_storage_reason(x)

    def memory_span(self, dst: Any) -> tuple[Any, int, int] | None:
        if not isinstance(dst, torch.Tensor) or dst.numel() == 0:
            return None
        size = dst.element_size()
        start = dst.untyped_storage().data_ptr() + dst.storage_offset() * size
        extent = sum((n - 1) * abs(st) for n, st in zip(dst.shape, dst.stride())) + 1
        return dst.device, start, start + extent * size

    def write(self, dst: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            dst.copy_(new)
        return dst


def short_storage_reason(x: torch.Tensor) -> str | None:
    """Why strided tensor ``x`` cannot be read or written: its storage ends before its
    last element (``x.untyped_storage().resize_(...)`` after ``x`` was made, which
    torch does not check: its own operations would read and write past the end);
    ``None`` where it fits."""
    if x.numel() == 0:
        return None
    size = x.element_size()
    span = (sum((n - 1) * st for n, st in zip(x.shape, x.stride())) + 1 + x.storage_offset()) * size
    have = x.untyped_storage().nbytes()
    if have >= span:
        return None
    return (
        f"its storage holds {have} bytes but its elements reach byte {span} (the storage "
        "was resized after the tensor was made); torch would read and write past its end"
    )


def _autograd_function(spec: Any) -> type[torch.autograd.Function]:
    """A ``torch.autograd.Function`` whose forward is ``spec.fwd`` and backward ``spec.bwd``."""

    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        it = iter(saved)
        args = tuple(next(it) if t else a for a, t in zip(ctx.args, ctx.is_tensor))
        ans = next(it)
        if not spec.once:
            return (None, *spec.call_bwd(g, ans, args, ctx.kwargs, len(args)))
        with torch.no_grad():
            grads = spec.call_bwd(g, ans, args, ctx.kwargs, len(args))
        live = [t for t in (g, *saved) if t.requires_grad]
        if torch.is_grad_enabled() and live:
            grads = _refuse_second_order(spec.name, grads, live)
        return (None, *grads)

    class CustomFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, kwargs: dict[str, Any], *args: Any) -> Any:
            ans = spec.fwd(*args, **kwargs)
            ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
            ctx.args = [None if t else a for a, t in zip(args, ctx.is_tensor)]
            ctx.kwargs = kwargs
            ctx.save_for_backward(*[a for a in args if isinstance(a, torch.Tensor)], ans)
            return ans

    CustomFunction.backward = staticmethod(backward)
    CustomFunction.__name__ = CustomFunction.__qualname__ = spec.name
    return CustomFunction


class _Refuse(torch.autograd.Function):
    """The identity on the first ``n`` tensors, hung on the rest; differentiating it raises."""

    @staticmethod
    def forward(ctx: Any, msg: str, n: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.msg = msg
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(ctx.msg)


def _refuse_second_order(name: str, grads: list[Any], live: list[torch.Tensor]) -> list[Any]:
    """``grads`` connected to ``live`` (what requires grad) through a node that raises.

    torch's own ``once_differentiable`` hangs its error on detached copies, so a second
    derivative with respect to the saved inputs never reaches it and is silently zero.
    """
    msg = (
        f"{name}: its VJP was declared once-differentiable "
        "(custom_vjp(..., once_differentiable=True)) and cannot be differentiated again"
    )
    present = [g for g in grads if g is not None]
    wrapped = iter(_Refuse.apply(msg, len(present), *present, *live))
    return [None if g is None else next(wrapped) for g in grads]


ADAPTER = TorchAdapter()
