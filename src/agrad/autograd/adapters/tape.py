"""Adapter for namespaces without autograd (NumPy, CuPy, Dask, array-api-strict): agrad's tape."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from agrad.autograd.adapters import Adapter
from agrad.autograd.tape.backward import backward
from agrad.autograd.tape.traced import Node, Trace, TracedArray, strip, unbox
from agrad.autograd.variable import Variable
from agrad.pytree import tree_map

__all__ = ["TapeAdapter"]


class TapeAdapter(Adapter):
    """Gradients by tracing through ``agrad.<base>`` and running the tape backwards."""

    def __init__(self, base_name: str):
        self.name = base_name
        self.ns = importlib.import_module(f"agrad.{base_name}")

    def variable(self, x: Any) -> Variable:
        return x if isinstance(x, Variable) else Variable(x)

    def is_variable(self, x: Any) -> bool:
        return isinstance(x, Variable)

    def stop_gradient(self, x: Any) -> Any:
        return strip(x.value if isinstance(x, Variable) else x)

    def read(self, x: Any) -> Any:
        return x.value if isinstance(x, Variable) else x

    def value_and_grad(self, flat_func, leaves, retain):
        ns = self.ns
        if not retain:
            leaves = [strip(x) for x in leaves]
        trace = Trace()
        try:
            boxes = [ns._Traced(x, Node(None, ()), trace) for x in leaves]
            y, extras = flat_func(boxes)
            y_value = unbox(y, trace)
            if isinstance(y, TracedArray) and y._trace is trace:
                seed = ns.ones_like(y_value)
                cotangents = backward(ns, y._node, seed, [b._node for b in boxes])
            else:
                cotangents = [None] * len(boxes)
            grads = [ns.zeros_like(x) if c is None else c for c, x in zip(cotangents, leaves)]
            extras = tree_map(lambda e: unbox(e, trace), extras)
        finally:
            trace.active = False
        if not retain:
            y_value = strip(y_value)
            grads = [strip(g) for g in grads]
            extras = tree_map(strip, extras)
        fin = ns._finalize
        return fin(y_value), [fin(g) for g in grads], tree_map(fin, extras)

    def writable(self, dst: Any, new: Any) -> bool:
        return (
            not isinstance(strip(new), TracedArray)
            and not isinstance(new, TracedArray)
            and not isinstance(dst, TracedArray)
        )

    def readonly_reason(self, dst: Any) -> str | None:
        np = sys.modules.get("numpy")
        if np is not None and isinstance(dst, np.generic):
            return f"it is a NumPy scalar ({type(dst).__name__}), not an array"
        flags = getattr(dst, "flags", None)
        if flags is not None and not isinstance(dst, Variable) and not flags.writeable:
            return "it is a read-only NumPy array (flags.writeable is False)"
        return None

    def write(self, dst: Any, new: Any) -> Any:
        if isinstance(dst, Variable):
            dst.value = new
        else:
            dst[...] = new
        return dst
