"""Traces, tape nodes, traced arrays, and the wrapper that turns a function into a primitive.

A *trace* is one gradient computation; traces nest (an inner
``execute_with_gradients`` inside an outer one), and a newer trace always has a larger
id, so the innermost trace is the one with the largest id (HIPS autograd's levels).
A traced array boxes a value of the level below (a raw array, or a traced array of an
older trace) with the tape node that produced it.

Primitives unbox the arguments that belong to the newest trace among them, call
themselves again on the unboxed values (which records on older traces, if any), and box
the result with a node whose VJP closes over those values. VJP rules are written with
the tracing namespace, so the backward pass of an inner trace is recorded on the outer
one: that is all higher-order differentiation needs.

Nothing here is global mutable state except the id counter, so traces are per thread.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "EscapedTracerError",
    "Node",
    "Trace",
    "TracedArray",
    "primitive",
    "strip",
    "unbox",
]

_trace_ids = itertools.count(1)


class EscapedTracerError(RuntimeError):
    """A traced array was used after the gradient computation that made it had ended."""


class Trace:
    """One gradient computation. ``active`` turns False when it ends."""

    __slots__ = ("active", "id")

    def __init__(self) -> None:
        self.id = next(_trace_ids)
        self.active = True


class Node:
    """A tape entry: the parents' nodes and ``vjp(g) -> [grad for each parent]``.

    Leaves (the differentiated inputs) have ``vjp=None`` and no parents.
    """

    __slots__ = ("parents", "vjp")

    def __init__(self, vjp: Callable[[Any], Sequence[Any]] | None, parents: tuple[Node, ...]):
        self.vjp = vjp
        self.parents = parents


def _escaped(name: str) -> EscapedTracerError:
    msg = (
        f"a traced array was passed to {name} after the gradient computation that "
        "created it had ended (it escaped its trace, e.g. through a global or a "
        "closure); return it from the function instead, or use agrad.stop_gradient"
    )
    return EscapedTracerError(msg)


class TracedArray:
    """An array being traced for differentiation. Behaves like an array of its base library.

    Subclassed once per tracing namespace; the subclass's ``_ns`` is that namespace.
    Operators and attributes forward to the namespace's primitives.
    """

    __slots__ = ("__weakref__", "_node", "_trace", "_value")
    __array_ufunc__ = None  # numpy (and torch) defer to our reflected operators
    __array_priority__ = 1000
    _ns: Any = None

    def __init__(self, value: Any, node: Node, trace: Trace):
        self._value = value
        self._node = node
        self._trace = trace

    def __array_namespace__(self, *, api_version: str | None = None) -> Any:
        return self._ns

    # -- attributes -------------------------------------------------------------
    @property
    def dtype(self) -> Any:
        return self._value.dtype

    @property
    def shape(self) -> tuple[int | None, ...]:
        return tuple(self._value.shape)

    @property
    def ndim(self) -> int:
        return self._value.ndim

    @property
    def size(self) -> int | None:
        return self._value.size

    @property
    def device(self) -> Any:
        return self._ns._base_device(self._value)

    @property
    def T(self) -> TracedArray:
        if self.ndim != 2:
            msg = f".T needs a 2-D array, got {self.ndim}-D; use .mT or permute_dims"
            raise ValueError(msg)
        return self._ns.permute_dims(self, (1, 0))

    @property
    def mT(self) -> TracedArray:
        return self._ns.matrix_transpose(self)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"TracedArray({self._value!r}, trace={self._trace.id})"

    # -- conversions: these read the value, which ends differentiability -----------
    def __bool__(self) -> bool:
        return bool(strip(self))

    def __float__(self) -> float:
        return float(strip(self))

    def __int__(self) -> int:
        return int(strip(self))

    def __index__(self) -> int:
        return strip(self).__index__()

    def __complex__(self) -> complex:
        return complex(strip(self))

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self):
        for i in range(self.shape[0]):
            yield self[i]

    # -- indexing -----------------------------------------------------------------
    def __getitem__(self, key: Any) -> TracedArray:
        return self._ns._getitem(self, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        """Functional assignment: this traced array is rebound to a new tape node."""
        new = self._ns._setitem(self, key, value)
        self._value, self._node, self._trace = new._value, new._node, new._trace

    # -- methods of the standard --------------------------------------------------
    def to_device(self, device: Any, /, *, stream: Any = None) -> Any:
        return self._ns._to_device(self, device)


def _binary(name: str, reflected: bool = False) -> Callable[[TracedArray, Any], Any]:
    if reflected:

        def op(self: TracedArray, other: Any) -> Any:
            return getattr(self._ns, name)(other, self)

    else:

        def op(self: TracedArray, other: Any) -> Any:
            return getattr(self._ns, name)(self, other)

    return op


_BINARY_OPERATORS = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "divide",
    "floordiv": "floor_divide",
    "mod": "remainder",
    "pow": "pow",
    "matmul": "matmul",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
    "lshift": "bitwise_left_shift",
    "rshift": "bitwise_right_shift",
}
for _op, _fn in _BINARY_OPERATORS.items():
    setattr(TracedArray, f"__{_op}__", _binary(_fn))
    setattr(TracedArray, f"__r{_op}__", _binary(_fn, reflected=True))
    # In-place operators are functional: ``x += y`` rebinds ``x`` to a new traced array.
    setattr(TracedArray, f"__i{_op}__", _binary(_fn))
for _op, _fn in {
    "lt": "less",
    "le": "less_equal",
    "gt": "greater",
    "ge": "greater_equal",
    "eq": "equal",
    "ne": "not_equal",
}.items():
    setattr(TracedArray, f"__{_op}__", _binary(_fn))
TracedArray.__neg__ = lambda self: self._ns.negative(self)
TracedArray.__pos__ = lambda self: self._ns.positive(self)
TracedArray.__abs__ = lambda self: self._ns.abs(self)
TracedArray.__invert__ = lambda self: self._ns.bitwise_invert(self)


def unbox(x: Any, trace: Trace) -> Any:
    """Remove the box of ``trace`` from ``x`` if it has one."""
    if isinstance(x, TracedArray) and x._trace is trace:
        return x._value
    return x


def strip(x: Any) -> Any:
    """Remove every level of tracing: the raw array of the base library."""
    while isinstance(x, TracedArray):
        x = x._value
    return x


def _newest_trace(args: Sequence[Any], name: str) -> Trace | None:
    top = None
    for a in args:
        if isinstance(a, TracedArray):
            t = a._trace
            if not t.active:
                raise _escaped(name)
            if top is None or t.id > top.id:
                top = t
    return top


def primitive(
    name: str,
    raw: Callable[..., Any],
    rules: Sequence[Callable[..., Any] | None],
    ns: Any,
) -> Callable[..., Any]:
    """Make a differentiable function from ``raw`` and one VJP rule per positional argument.

    ``rules[i](ns, g, ans, *args, **kwargs)`` maps the cotangent ``g`` of the output to
    the cotangent of positional argument ``i``; ``None`` marks an argument with no
    gradient (an index, a condition). Keyword arguments are never differentiated.
    """

    def fn(*args: Any, **kwargs: Any) -> Any:
        trace = _newest_trace(args, name)
        if trace is None:
            return raw(*args, **kwargs)
        vals = list(args)
        parents = []
        argnums = []
        for i, a in enumerate(args):
            if isinstance(a, TracedArray) and a._trace is trace:
                vals[i] = a._value
                if i < len(rules) and rules[i] is not None:
                    parents.append(a._node)
                    argnums.append(i)
        ans = fn(*vals, **kwargs)
        if not parents:
            return ans
        if len(argnums) == 1:
            rule = rules[argnums[0]]

            def vjp(g: Any) -> tuple[Any]:
                return (rule(ns, g, ans, *vals, **kwargs),)

        else:
            chosen = [rules[i] for i in argnums]

            def vjp(g: Any) -> list[Any]:
                return [r(ns, g, ans, *vals, **kwargs) for r in chosen]

        return ns._Traced(ans, Node(vjp, tuple(parents)), trace)

    fn.__name__ = fn.__qualname__ = name
    return fn
