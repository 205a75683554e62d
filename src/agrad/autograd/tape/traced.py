"""Traces, tape nodes, traced arrays, and the wrapper that turns a function into a primitive.

A *trace* is one gradient computation; traces nest (an inner
``execute_with_gradients`` inside an outer one), and a newer trace always has a larger
id, so the innermost trace is the one with the largest id (HIPS autograd's levels).
A traced array boxes a value of the level below (a raw array, or a traced array of an
older trace) with the tape node that produced it.

Primitives unbox the arguments that belong to the newest trace among them, call
themselves again on the unboxed values (which records on older traces, if any), and box
the result with a node that holds those values and the VJP rules (a :class:`RuleNode`),
appended to the trace's tape. VJP rules are written with the tracing namespace, so the
backward pass of an inner trace is recorded on the outer one: that is all
higher-order differentiation needs.

Arrays that the tracing namespace *creates* inside a gradient computation (``zeros``,
``full`` ...) are boxed as constants of the innermost live trace (:func:`constant`), so
that code which asks ``array_api_compat.array_namespace`` about a fresh array and a
traced one together, or writes a traced value into a fresh array, keeps working. A
constant is never a parent on the tape, and one that outlives its trace is unboxed.

The only mutable state is the id counter, a per-thread stack of live traces, and each
live trace's tape.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "BINARY_OPERATORS",
    "EscapedTracerError",
    "CONSTANT",
    "Node",
    "RuleNode",
    "Trace",
    "TracedArray",
    "TupleCotangent",
    "constant",
    "current_trace",
    "multi_output_primitive",
    "outer_trace_active",
    "primitive",
    "strip",
    "strip_key",
    "unbox",
]

_trace_ids = itertools.count(1)
_live = threading.local()


def _live_stack() -> list[Trace]:
    stack = getattr(_live, "stack", None)
    if stack is None:
        stack = _live.stack = []
    return stack


class EscapedTracerError(RuntimeError):
    """A traced array was used after the gradient computation that made it had ended."""


class Trace:
    """One gradient computation. ``active`` turns False when it ends.

    ``tape`` lists the nodes recorded on this trace in creation order (a node's parents
    always come before it), so walking it backwards is a topological order for the
    reverse pass (a Wengert list). Leaves (the differentiated inputs) are not on it.
    """

    __slots__ = ("active", "id", "tape")

    def __init__(self) -> None:
        self.id = next(_trace_ids)
        self.active = True
        self.tape: list[Node] | None = []
        stack = _live_stack()
        while stack and not stack[-1].active:  # ended traces leave when the next begins
            stack.pop()
        stack.append(self)

    def end(self) -> None:
        """End the computation: nothing more is recorded, and the tape is let go."""
        self.active = False
        self.tape = None


def current_trace() -> Trace | None:
    """The innermost trace of this thread that has not ended (``None`` outside traces)."""
    stack = _live_stack()
    while stack and not stack[-1].active:
        stack.pop()
    return stack[-1] if stack else None


def outer_trace_active(trace: Trace) -> bool:
    """Whether a trace of this thread other than ``trace`` is still live (it encloses it)."""
    return any(t.active for t in _live_stack() if t is not trace)


class Node:
    """A tape entry: the parents' nodes and ``vjp(g, ns) -> [grad for each parent]``.

    ``ns`` is the namespace the VJP rules compute with: the tracing namespace when an
    enclosing trace records the backward pass (higher order), else a raw one.
    A node made with a ``trace`` is recorded on its tape. Leaves (the differentiated
    inputs) have ``vjp=None``, no parents, and no trace.
    """

    __slots__ = ("parents", "vjp")

    def __init__(
        self,
        vjp: Callable[[Any, Any], Sequence[Any]] | None,
        parents: tuple[Node, ...],
        trace: Trace | None = None,
    ):
        self.vjp = vjp
        self.parents = parents
        if trace is not None:
            trace.tape.append(self)


class RuleNode(Node):
    """A node whose VJP is one rule per parent, applied to stored forward values.

    The cotangent of ``parents[i]`` is ``rules[i](ns, g, ans, *args, **kwargs)``
    (``kwargs`` is ``None`` when there are none). This is what nearly every primitive
    records: it holds its values itself instead of in a closure, which makes recording
    cheaper (fewer objects per operation, less for the garbage collector to scan).
    """

    __slots__ = ("ans", "args", "kwargs", "rules")

    def __init__(
        self,
        trace: Trace,
        parents: tuple[Node, ...],
        rules: tuple[Callable[..., Any], ...],
        ans: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
    ):
        self.parents = parents
        self.rules = rules
        self.ans = ans
        self.args = args
        self.kwargs = kwargs
        self.vjp = None
        trace.tape.append(self)

    def cotangents(self, g: Any, ns: Any) -> list[Any]:
        """One cotangent per parent, for the cotangent ``g`` of the output."""
        ans, args, kwargs = self.ans, self.args, self.kwargs or {}
        return [rule(ns, g, ans, *args, **kwargs) for rule in self.rules]


class TupleCotangent:
    """Cotangents of the outputs of a multi-output primitive; ``None`` for unused outputs."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Any]):
        self.parts = parts

    def accumulate(self, ns: Any, other: TupleCotangent) -> TupleCotangent:
        """The output-wise sum of two tuple cotangents."""
        parts = [
            b if a is None else a if b is None else ns.add(a, b)
            for a, b in zip(self.parts, other.parts)
        ]
        return TupleCotangent(parts)


#: The node of every constant: never a parent, so nothing flows back through it.
CONSTANT = Node(None, ())


def constant(ns: Any, value: Any) -> Any:
    """``value`` boxed as a constant of the innermost live trace (itself outside traces)."""
    trace = current_trace()
    return value if trace is None else ns._Traced(value, CONSTANT, trace)


class _StaleConstant(Exception):
    """A constant boxed by a trace that has ended: unbox it and call again."""


def _refresh(x: Any) -> Any:
    while isinstance(x, TracedArray) and x._node is CONSTANT and not x._trace.active:
        x = x._value
    return x


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
        """Functional assignment: this traced array is rebound to a new tape node.

        A differentiated input rebound this way still gets its gradient: the adapter
        keeps the input's own leaf node from before the function ran.
        """
        new = self._ns._setitem(self, key, value)
        if not isinstance(new, TracedArray):  # nothing differentiable was involved
            self._value = new
            return
        self._value, self._node, self._trace = new._value, new._node, new._trace

    # -- methods of the standard --------------------------------------------------
    def to_device(self, device: Any, /, *, stream: Any = None) -> Any:
        return self._ns._to_device(self, device)

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        """DLPack export of the value (reading it ends differentiability)."""
        return strip(self).__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return strip(self).__dlpack_device__()


def _binary(name: str, reflected: bool = False) -> Callable[[TracedArray, Any], Any]:
    if reflected:

        def op(self: TracedArray, other: Any) -> Any:
            return getattr(self._ns, name)(other, self)

    else:

        def op(self: TracedArray, other: Any) -> Any:
            return getattr(self._ns, name)(self, other)

    return op


BINARY_OPERATORS = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "divide",
    "mod": "remainder",
    "pow": "pow",
    "matmul": "matmul",
}
# Operators whose results carry no gradient (integer, boolean, piecewise constant).
_RAW_OPERATORS = ("floordiv", "and", "or", "xor", "lshift", "rshift")


def _raw_operator(op: str) -> Callable[[TracedArray, Any], Any]:
    """An operator whose result carries no gradient: applied to the raw values."""
    method = f"__{op}__"

    def fn(self: TracedArray, other: Any) -> Any:
        return getattr(strip(self), method)(strip(other))

    return fn


for _op, _fn in BINARY_OPERATORS.items():
    setattr(TracedArray, f"__{_op}__", _binary(_fn))
    setattr(TracedArray, f"__r{_op}__", _binary(_fn, reflected=True))
    # In-place operators are functional: ``x += y`` rebinds ``x`` to a new traced array.
    setattr(TracedArray, f"__i{_op}__", _binary(_fn))
for _op in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(TracedArray, f"__{_op}__", _raw_operator(_op))
for _op in _RAW_OPERATORS:
    setattr(TracedArray, f"__{_op}__", _raw_operator(_op))
    setattr(TracedArray, f"__r{_op}__", _raw_operator(f"r{_op}"))
    setattr(TracedArray, f"__i{_op}__", _raw_operator(_op))
TracedArray.__neg__ = lambda self: self._ns.negative(self)
TracedArray.__pos__ = lambda self: self._ns.positive(self)
TracedArray.__abs__ = lambda self: self._ns.abs(self)
TracedArray.__invert__ = lambda self: ~strip(self)


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


def strip_key(key: Any) -> Any:
    """An index key with every traced array in it replaced by its raw value."""
    if isinstance(key, tuple):
        return tuple(strip(k) for k in key)
    return strip(key)


def _unbox_args(
    args: Sequence[Any], trace: Trace, rules: Sequence[Any] | None
) -> tuple[list[Any], list[Node], list[int]]:
    """Unbox the arguments traced at ``trace``: ``(values, parent nodes, their positions)``.

    An argument becomes a parent when its node is not a constant and, with ``rules``
    given, it has a rule (``rules[i] is not None``).
    """
    vals = list(args)
    parents = []
    argnums = []
    for i, a in enumerate(args):
        if isinstance(a, TracedArray) and a._trace is trace:
            vals[i] = a._value
            node = a._node
            if node is not CONSTANT and (
                rules is None or (i < len(rules) and rules[i] is not None)
            ):
                parents.append(node)
                argnums.append(i)
    return vals, parents, argnums


def _newest_trace(args: Sequence[Any], name: str) -> Trace | None:
    top = None
    for a in args:
        if isinstance(a, TracedArray):
            t = a._trace
            if not t.active:
                if a._node is CONSTANT:
                    raise _StaleConstant
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

    Calls with one or two positional arguments (nearly all) take a fast path with the
    same results as the general one, which handles stale constants and escaped tracers.
    """
    rule0 = rules[0] if len(rules) > 0 else None
    rule1 = rules[1] if len(rules) > 1 else None
    # ``raw`` for untraced operands only (the operator itself for binary operators)
    plain = getattr(raw, "_agrad_plain", raw)
    Traced = ns._Traced

    def general(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            trace = _newest_trace(args, name)
        except _StaleConstant:
            return fn(*[_refresh(a) for a in args], **kwargs)
        if trace is None:
            return raw(*args, **kwargs)
        vals, parents, argnums = _unbox_args(args, trace, rules)
        ans = fn(*vals, **kwargs)
        if not parents:
            return ans
        chosen = tuple(rules[i] for i in argnums)
        return Traced(
            ans, RuleNode(trace, tuple(parents), chosen, ans, tuple(vals), kwargs or None), trace
        )

    only_x, only_y, both_xy = (rule0,), (rule1,), (rule0, rule1)

    def both(x: TracedArray, y: TracedArray, kwargs: dict[str, Any]) -> Any:
        """Two traced operands, of one trace or of two nested ones."""
        tx, ty = x._trace, y._trace
        if not (tx.active and ty.active):
            return general((x, y), kwargs)
        trace = ty if ty.id > tx.id else tx
        px = py = None
        if tx is trace:
            if rule0 is not None and x._node is not CONSTANT:
                px = x._node
            x = x._value
        if ty is trace:
            if rule1 is not None and y._node is not CONSTANT:
                py = y._node
            y = y._value
        if isinstance(x, TracedArray) or isinstance(y, TracedArray):
            ans = fn(x, y, **kwargs)
        else:
            ans = plain(x, y, **kwargs)
        if px is None:
            if py is None:
                return ans
            node = RuleNode(trace, (py,), only_y, ans, (x, y), kwargs or None)
        elif py is None:
            node = RuleNode(trace, (px,), only_x, ans, (x, y), kwargs or None)
        else:
            node = RuleNode(trace, (px, py), both_xy, ans, (x, y), kwargs or None)
        return Traced(ans, node, trace)

    def fn(*args: Any, **kwargs: Any) -> Any:
        n = len(args)
        if n == 2:
            x, y = args
            if isinstance(x, TracedArray):
                if isinstance(y, TracedArray):
                    return both(x, y, kwargs)
                trace = x._trace
                if not trace.active:
                    return general(args, kwargs)
                node = x._node
                x = x._value
                ans = fn(x, y, **kwargs) if isinstance(x, TracedArray) else plain(x, y, **kwargs)
                if rule0 is None or node is CONSTANT:
                    return ans
                node = RuleNode(trace, (node,), only_x, ans, (x, y), kwargs or None)
                return Traced(ans, node, trace)
            if isinstance(y, TracedArray):  # the branch above for a traced y, written out:
                trace = y._trace  # a shared helper costs ~3 % of a chain of small operations
                if not trace.active:
                    return general(args, kwargs)
                node = y._node
                y = y._value
                ans = fn(x, y, **kwargs) if isinstance(y, TracedArray) else plain(x, y, **kwargs)
                if rule1 is None or node is CONSTANT:
                    return ans
                node = RuleNode(trace, (node,), only_y, ans, (x, y), kwargs or None)
                return Traced(ans, node, trace)
            return plain(x, y, **kwargs)
        if n == 1:
            x = args[0]
            if not isinstance(x, TracedArray):
                return raw(x, **kwargs)
            trace = x._trace
            if not trace.active:
                return general(args, kwargs)
            node = x._node
            x = x._value
            ans = fn(x, **kwargs) if isinstance(x, TracedArray) else raw(x, **kwargs)
            if rule0 is None or node is CONSTANT:
                return ans
            return Traced(ans, RuleNode(trace, (node,), only_x, ans, (x,), kwargs or None), trace)
        return general(args, kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn._agrad_raw = plain  # type: ignore[attr-defined]
    return fn


def multi_output_primitive(
    name: str,
    raw: Callable[..., Any],
    rule: Callable[..., Sequence[Any]],
    differentiable_outputs: Sequence[int],
    ns: Any,
) -> Callable[..., Any]:
    """Make a differentiable function from ``raw``, which returns a tuple of arrays.

    ``rule(ns, gs, ans, *args, **kwargs)`` receives ``gs``, one cotangent per output
    (``None`` for an output that nothing used), and returns one cotangent per positional
    argument (``None``: no gradient). Only the outputs at ``differentiable_outputs``
    are traced; the others (indices, counts, signs) are returned raw.
    """
    n_outputs_hint = max(differentiable_outputs) + 1

    def fn(*args: Any, **kwargs: Any) -> Any:
        try:
            trace = _newest_trace(args, name)
        except _StaleConstant:
            return fn(*[_refresh(a) for a in args], **kwargs)
        if trace is None:
            return raw(*args, **kwargs)
        vals, parents, argnums = _unbox_args(args, trace, None)
        ans = fn(*vals, **kwargs)
        if not parents:
            return ans
        n_out = max(len(ans), n_outputs_hint)

        def vjp(gs: TupleCotangent, ns_: Any) -> list[Any]:
            parts = list(gs.parts) + [None] * (n_out - len(gs.parts))
            grads = rule(ns_, parts, ans, *vals, **kwargs)
            return [grads[i] for i in argnums]

        main = Node(vjp, tuple(parents), trace)
        outputs = list(ans)
        for k in differentiable_outputs:
            outputs[k] = ns._Traced(ans[k], Node(_select(k, n_out), (main,), trace), trace)
        return _rebuild(ans, outputs)

    fn.__name__ = fn.__qualname__ = name
    fn._agrad_raw = raw  # type: ignore[attr-defined]
    return fn


def _select(k: int, n: int) -> Callable[[Any, Any], tuple[TupleCotangent]]:
    def vjp(g: Any, ns_: Any) -> tuple[TupleCotangent]:
        parts: list[Any] = [None] * n
        parts[k] = g
        return (TupleCotangent(parts),)

    return vjp


def _rebuild(template: Any, items: list[Any]) -> Any:
    """``items`` in the container type of ``template`` (a tuple, list or named tuple)."""
    if hasattr(template, "_fields"):
        return type(template)(*items)
    if isinstance(template, list):
        return items
    return tuple(items)
