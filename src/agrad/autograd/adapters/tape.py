"""Adapter for namespaces without autograd (NumPy, CuPy, Dask, array-api-strict): agrad's tape."""

from __future__ import annotations

import importlib
import sys
import weakref
from typing import Any

from agrad.autograd.adapters import Adapter
from agrad.autograd.batched_backward import NotBatchable, batched_backward
from agrad.autograd.tape.backward import backward
from agrad.autograd.tape.traced import (
    CONSTANT,
    Node,
    RuleNode,
    Trace,
    TracedArray,
    constant,
    outer_trace_active,
    primitive,
    strip,
    unbox,
)
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
            # Taken before ``flat_func`` runs: ``x[k] = v`` inside it rebinds a box to a
            # new node, and the input's gradient is still the one of its own leaf.
            input_nodes = [b._node for b in boxes]
            y, extras = flat_func(boxes)
            y_value = unbox(y, trace)
            raw_ns = ns._raw_ns  # creation without boxing: these are constants anyway
            if isinstance(y, TracedArray) and y._trace is trace:
                seed = raw_ns.ones_like(strip(y_value))
                # With no enclosing trace to record the backward pass, the VJP rules
                # run on raw arrays: they get the raw namespace, without tracing wrappers.
                rules_ns = ns if outer_trace_active(trace) else raw_ns
                cotangents = backward(rules_ns, trace.tape, y._node, seed, input_nodes)
            else:
                cotangents = [None] * len(boxes)
            unused = [c is None for c in cotangents]
            grads = [
                raw_ns.zeros_like(strip(x)) if c is None else c for c, x in zip(cotangents, leaves)
            ]
            if extras:
                extras = tree_map(lambda e: unbox(e, trace), extras)
        finally:
            trace.end()
        if retain and any(unused):
            # A zero gradient handed to an enclosing trace is a constant of it, so that it
            # mixes with that trace's arrays, through array-api-strict's operators too.
            grads = [constant(ns, g) if u else g for g, u in zip(grads, unused)]
        if not retain:
            y_value = strip(y_value)
            grads = [strip(g) for g in grads]
            if extras:
                extras = tree_map(strip, extras)
        fin = ns._finalize
        return fin(y_value), [fin(g) for g in grads], tree_map(fin, extras) if extras else extras

    def vjp(self, flat_func, leaves, retain):
        """Trace ``flat_func(leaves) -> outs`` once; return ``(outs, vjp_fn)``.

        The tape outlives the trace: ``vjp_fn(cotangents, retain)`` runs the backward pass
        over it as often as it is called, with the tracing namespace whenever a live trace
        can record it (so the result is differentiable again, in the cotangents too).
        """
        ns = self.ns
        if not retain:
            leaves = [strip(x) for x in leaves]
        trace = Trace()
        try:
            boxes = [ns._Traced(x, Node(None, ()), trace) for x in leaves]
            input_nodes = [b._node for b in boxes]
            outs = flat_func(boxes)
            tape = trace.tape
        finally:
            trace.end()
        out_nodes = [
            o._node if isinstance(o, TracedArray) and o._trace is trace else None for o in outs
        ]
        values = [unbox(o, trace) for o in outs]
        tape_live: list[bool | None] = [None]  # whether the tape holds traced values
        if not retain:
            values = [ns._finalize(strip(v)) for v in values]

        def pull(cotangents: list[Any], retain_grads: bool) -> list[Any]:
            # Raw rules unless something traced (an enclosing computation) is involved.
            live = any(isinstance(x, TracedArray) for x in (*leaves, *cotangents))
            if not live and tape_live[0] is None:
                tape_live[0] = _holds_traced(tape)
            live = live or bool(tape_live[0])
            seeds = [
                (n, c)
                for n, c in zip(out_nodes, cotangents)
                if n is not None and n is not CONSTANT and c is not None
            ]
            grads: list[Any] = [None] * len(leaves)
            if seeds:
                sink = Node(lambda g, _ns: [c for _, c in seeds], tuple(n for n, _ in seeds))
                rules_ns = ns if live else ns._raw_ns
                grads = backward(rules_ns, [*tape, sink], sink, True, input_nodes)
            return self._finish(grads, leaves, retain_grads and live)

        def vjp_fn(cotangents: list[Any], retain_grads: bool, batched: bool = False) -> list[Any]:
            if not batched:
                return pull(cotangents, retain_grads)
            live = any(isinstance(x, TracedArray) for x in (*leaves, *cotangents))
            if not live and tape_live[0] is None:
                tape_live[0] = _holds_traced(tape)
            live = live or bool(tape_live[0])
            return self._batched(
                pull, tape, out_nodes, input_nodes, leaves, cotangents, live, retain_grads
            )

        vjp_fn.batches = True  # type: ignore[attr-defined]
        return values, vjp_fn

    def _batched(self, pull, tape, out_nodes, input_nodes, leaves, cotangents, live, retain):
        """A batch of cotangents (leading axis) in one pass if every rule allows, else a loop."""
        raw_ns = self.ns._raw_ns
        n = cotangents[0].shape[0]
        seeds = [
            (o, c) for o, c in zip(out_nodes, cotangents) if o is not None and o is not CONSTANT
        ]
        if not live and seeds:
            sink = Node(lambda g, _ns: [c for _, c in seeds], tuple(o for o, _ in seeds))
            try:
                grads = batched_backward(raw_ns, tape, sink, input_nodes, n)
            except NotBatchable:
                pass
            else:
                return [
                    raw_ns.zeros((n, *x.shape), dtype=x.dtype, device=self.ns._base_device(x))
                    if g is None
                    else self.ns._finalize(g)
                    for g, x in zip(grads, map(strip, leaves))
                ]
        rows = [pull([c[k, ...] for c in cotangents], retain) for k in range(n)]
        ns = self.ns if live else raw_ns
        return [ns.stack([r[j] for r in rows]) for j in range(len(leaves))]

    def _finish(self, grads: list[Any], leaves: list[Any], retain: bool) -> list[Any]:
        """Zeros for unreached inputs; plain arrays unless an enclosing trace keeps them."""
        ns = self.ns
        out = []
        for g, x in zip(grads, leaves):
            if g is None:
                g = ns._raw_ns.zeros_like(strip(x))
                if retain:
                    g = constant(ns, g)
            elif not retain:
                g = strip(g)
            out.append(ns._finalize(g) if not retain else g)
        return out

    def custom_vjp(self, spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``spec``'s forward as one tape primitive whose VJP rules call ``spec.bwd``."""
        ns = next(type(a)._ns for a in args if isinstance(a, TracedArray))
        fn = spec.primitives.get(ns)
        if fn is None:
            fn = spec.primitives[ns] = primitive(
                spec.name, spec.fwd, _custom_rules(spec, len(args)), ns
            )
        return fn(*args, **kwargs)

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

    def memory_span(self, dst: Any) -> tuple[Any, int, int] | None:
        x = _host_array(dst.value if isinstance(dst, Variable) else dst)
        if x is None or x.size == 0:
            return None  # Dask and CuPy: not checked
        low, high = _byte_bounds(x)
        return "host", low, high

    def shares_memory(self, a: Any, b: Any) -> bool:
        np = sys.modules["numpy"]
        x, y = _host_array(self.read(a)), _host_array(self.read(b))
        return x is None or y is None or bool(np.shares_memory(x, y))

    def write(self, dst: Any, new: Any) -> Any:
        if isinstance(dst, Variable):
            if _fits_in_place(dst.value, new):
                dst.value[...] = new  # steady-state steps allocate no new parameter buffers
            else:
                dst.value = new
        else:
            dst[...] = new
        return dst


def _holds_traced(tape: list[Node]) -> bool:
    """Whether a recorded value is traced by a live trace (an enclosing computation)."""
    for node in tape:
        if type(node) is RuleNode:
            for v in (node.ans, *node.args):
                if isinstance(v, (list, tuple)):
                    if any(isinstance(w, TracedArray) and w._trace.active for w in v):
                        return True
                elif isinstance(v, TracedArray) and v._trace.active:
                    return True
    return False


def _custom_rules(spec: Any, nargs: int) -> list[Any]:
    """One rule per argument, all answered by one call of ``spec.bwd`` per cotangent."""
    # (weakref to g, id of ans, cotangents) of the latest call, one tuple (threads swap it
    # whole); dropped with g, so that nothing outlives the backward pass that made it.
    last: list[Any] = [None]

    def forget(ref: Any) -> None:
        entry = last[0]
        if entry is not None and entry[0] is ref:
            last[0] = None

    def cotangents(ns: Any, g: Any, ans: Any, args: tuple[Any, ...], kwargs: dict) -> Any:
        entry = last[0]
        if entry is not None and entry[0]() is g and entry[1] == id(ans):
            return entry[2]
        if spec.once and any(isinstance(v, TracedArray) for v in (g, ans, *args)):
            msg = (
                f"{spec.name}: its VJP was declared once-differentiable "
                "(custom_vjp(..., once_differentiable=True)) and cannot be differentiated "
                "again; write the VJP with the namespace of its arguments and drop the flag"
            )
            raise RuntimeError(msg)
        out = spec.call_bwd(g, ans, args, kwargs, nargs)
        try:
            last[0] = (weakref.ref(g, forget), id(ans), out)
        except TypeError:  # g cannot be weakly referenced: no caching
            last[0] = None
        return out

    def rule_for(i: int) -> Any:
        def rule(ns: Any, g: Any, ans: Any, *args: Any, **kwargs: Any) -> Any:
            return cotangents(ns, g, ans, args, kwargs)[i]

        return rule

    return [rule_for(i) for i in range(nargs)]


def _host_array(x: Any) -> Any:
    """The NumPy array holding ``x``'s memory: ``x`` itself, or the one an
    array-api-strict array wraps; ``None`` for other arrays (Dask, CuPy)."""
    np = sys.modules.get("numpy")
    if np is None:
        return None
    if type(x) is np.ndarray:
        return x
    inner = getattr(x, "_array", None)  # array_api_strict.Array keeps its data there
    if type(inner) is np.ndarray and type(x).__module__.startswith("array_api_strict"):
        return inner
    return None


def _byte_bounds(x: Any) -> tuple[int, int]:
    np = sys.modules["numpy"]
    utils = getattr(getattr(np, "lib", None), "array_utils", None)
    return (utils.byte_bounds if utils is not None else np.byte_bounds)(x)


def _fits_in_place(old: Any, new: Any) -> bool:
    """Whether ``new`` can be written into ``old``, a writable NumPy or CuPy array, as is.

    Other bases (Dask, array-api-strict) and anything traced, read-only or of another
    shape or dtype are rebound instead.
    """
    if old is new:
        return False
    cls = type(old)
    if cls.__name__ != "ndarray" or cls.__module__.split(".")[0] not in ("numpy", "cupy"):
        return False
    if type(new) is not cls:
        np = sys.modules.get("numpy")
        if np is None or not (cls.__module__.startswith("numpy") and isinstance(new, np.generic)):
            return False
    flags = getattr(old, "flags", None)
    if flags is not None and not getattr(flags, "writeable", True):
        return False
    return old.shape == new.shape and old.dtype == new.dtype
