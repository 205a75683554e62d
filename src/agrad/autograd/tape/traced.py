"""Traces, tape nodes, traced arrays, and the wrapper that turns a function into a primitive.

A *trace* is one gradient computation; traces nest (an inner
``execute_with_gradients`` inside an outer one), and a newer trace always has a larger
id, so the innermost trace is the one with the largest id (HIPS autograd's levels).
A traced array boxes a value of the level below (a raw array, or a traced array of an
older trace) with the tape node that produced it.

Primitives unbox the arguments that belong to the newest trace among them, call
themselves again on the unboxed values (which records on older traces, if any), and box
the result with a node that holds those values and the VJP rules (a :class:`RuleNode`),
appended to the trace's tape (:func:`primitive`; the rules come from the tables of
:mod:`~agrad.autograd.tape.vjp`). VJP rules are written with the tracing namespace, so the
backward pass of an inner trace is recorded on the outer one: that is all
higher-order differentiation needs.

Every array the tracing namespace returns inside a gradient computation is traced: the
arrays it *creates* (``zeros``, ``asarray`` ...), the results of non-differentiable
functions (comparisons, ``argmax`` ...) and of functions given only constants are
boxed as constants of the innermost live trace (:func:`constant`,
:func:`box_constants`), so that code which asks ``array_api_compat.array_namespace``
about a mix of them, or mixes them with operators (array-api-strict's refuse foreign
operands), keeps working. A constant is never a parent on the tape, and one that
outlives its trace is unboxed.

The only mutable state is the id counter, a per-thread stack of live traces, and each
live trace's tape.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from agrad.autograd.tape.method_hints import missing_attribute
from agrad.autograd.tape.vjp import VJP, Rule, vjp

__all__ = [
    "EscapedTracerError",
    "CONSTANT",
    "Node",
    "RuleNode",
    "Trace",
    "TracedArray",
    "TupleCotangent",
    "box_constants",
    "constant",
    "current_trace",
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
    inputs) have ``vjp=None``, no parents, and no trace. Primitives record
    :class:`RuleNode` objects; each traced output of a tuple-returning primitive has a
    plain node whose ``vjp`` places its cotangent in the tuple's.
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
    (``kwargs`` is ``None`` when there are none). Every primitive records one: it holds
    its values itself instead of in a closure, so recording makes few objects.
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


class TupleCotangent(list):
    """Cotangents of the outputs of a tuple-returning primitive; ``None`` for unused outputs."""

    __slots__ = ()

    def accumulate(self, ns: Any, other: TupleCotangent) -> TupleCotangent:
        """The output-wise sum of two tuple cotangents."""
        return TupleCotangent(
            b if a is None else a if b is None else ns.add(a, b) for a, b in zip(self, other)
        )


#: The node of every constant: never a parent, so nothing flows back through it.
CONSTANT = Node(None, ())


def constant(ns: Any, value: Any) -> Any:
    """``value`` boxed as a constant of the innermost live trace (itself outside traces)."""
    trace = current_trace()
    return value if trace is None else ns._Traced(value, CONSTANT, trace)


def box_constants(ns: Any, out: Any) -> Any:
    """``out`` with every raw array in it boxed as a constant of the innermost live trace.

    ``out`` is an array, or a tuple or list of them (a named tuple keeps its type);
    anything else (a dtype, ``finfo``, a Python scalar) and arrays already traced are
    left as they are. Outside traces ``out`` itself.
    """
    trace = current_trace()
    return out if trace is None else _box_tree(ns._Traced, out, trace)


def _is_raw_array(x: Any) -> bool:
    return hasattr(x, "dtype") and hasattr(x, "shape") and hasattr(x, "ndim")


def _box_tree(cls: type[TracedArray], out: Any, trace: Trace) -> Any:
    """``out`` with its raw arrays boxed as constants of ``trace`` (see :func:`box_constants`)."""
    if isinstance(out, TracedArray):
        return out
    if isinstance(out, (tuple, list)):
        items = [_box_tree(cls, o, trace) for o in out]
        if hasattr(out, "_fields"):
            return type(out)(*items)
        return items if isinstance(out, list) else tuple(items)
    if _is_raw_array(out) and not isinstance(out, type):
        return cls(out, CONSTANT, trace)
    return out


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

    Subclassed once per tracing namespace; the subclass's ``_ns`` is that namespace, and
    its operators (:mod:`~agrad.autograd.tape.operators`) and attributes forward to the
    namespace's functions.
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

    def __getattr__(self, name: str) -> Any:
        """Only for names the class lacks: NumPy-style methods name the standard's function."""
        raise missing_attribute(type(self).__name__, name)

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

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> Any:
        """NumPy's conversion: the value of a constant; refused where it would drop a gradient.

        Code that converts its inputs with ``np.asarray`` (scipy's fallback for functions
        without Array API support) would otherwise compute on the values and hand back
        a result without the gradient, silently.
        """
        value = self
        while isinstance(value, TracedArray):
            if value._node is not CONSTANT:
                msg = (
                    "np.asarray (or another NumPy conversion) was given a traced array "
                    "that carries a gradient; computing on its value would drop the "
                    "gradient silently. Use the array's namespace (xp = "
                    "array_namespace(x)) instead, or convert agrad.stop_gradient(x)"
                )
                raise TypeError(msg)
            value = value._value
        import numpy as np

        out = np.asarray(value) if dtype is None else np.asarray(value, dtype=dtype)
        return out.copy() if copy else out

    def __dlpack_device__(self) -> Any:
        return strip(self).__dlpack_device__()


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


def primitive(
    name: str, raw: Callable[..., Any], rules: VJP | Sequence[Rule | None], ns: Any
) -> Callable[..., Any]:
    """Make a differentiable function of the namespace ``ns`` from ``raw`` and its VJP.

    ``rules`` is a :class:`~agrad.autograd.tape.vjp.VJP` (a rule table's entry) or a
    sequence of rules, one per positional argument (``vjp(*rules)``). A call with a
    traced argument unboxes the arguments of the newest trace among them, calls itself
    again on what is inside (which records on the older traces, if any), and boxes the
    answer with a :class:`RuleNode` on the newest trace: that is done in ``record``.
    A first-order call whose only traced argument is the first of at most two (nearly
    every call of an elementwise chain) takes one shorter way to the same node.
    """
    spec = rules if isinstance(rules, VJP) else vjp(*rules)
    rule_for = spec.rule_for
    rule0 = rule_for(0)
    first_only = (rule0,)
    plain = getattr(raw, "_agrad_plain", raw)  # for raw operands only
    box = ns._Traced if spec.outputs is None else _tuple_boxer(ns._Traced, spec.outputs)
    Traced = ns._Traced

    def fn(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            for v in kwargs.values():
                if isinstance(v, TracedArray):
                    kwargs = _constant_keywords(name, kwargs)
                    break
        n = len(args)
        if n == 1 or (n == 2 and not isinstance(args[1], TracedArray)):
            x = args[0]
            if type(x) is Traced:
                trace, value = x._trace, x._value
                if trace.active and not isinstance(value, TracedArray):
                    vals = (value,) if n == 1 else (value, args[1])
                    ans = plain(*vals, **kwargs)
                    node = x._node
                    if rule0 is None or node is CONSTANT:
                        return _box_tree(Traced, ans, trace)
                    node = RuleNode(trace, (node,), first_only, ans, vals, kwargs or None)
                    return box(ans, node, trace)
        trace = None
        vals = list(args)
        parents: list[Node] = []
        chosen: list[Rule] = []
        nested = False
        i = -1
        for a in args:
            i += 1
            if not isinstance(a, TracedArray):
                continue
            t = a._trace
            if t is not trace:
                if not t.active:
                    if a._node is CONSTANT:
                        return fn(*[_refresh(v) for v in args], **kwargs)
                    raise _escaped(name)
                if trace is not None:
                    nested = True
                    if t.id < trace.id:
                        continue
                    vals[:i] = args[:i]  # they were unboxed from an older trace
                    parents.clear()
                    chosen.clear()
                trace = t
            vals[i] = v = a._value
            if isinstance(v, TracedArray):
                nested = True
            node = a._node
            if node is not CONSTANT:
                rule = rule_for(i)
                if rule is not None:
                    parents.append(node)
                    chosen.append(rule)
        if trace is None:  # nothing traced: inside a trace, a constant of it
            live = current_trace()
            ans = raw(*args, **kwargs)
            return ans if live is None else _box_tree(Traced, ans, live)
        ans = fn(*vals, **kwargs) if nested else plain(*vals, **kwargs)
        if not parents:
            return _box_tree(Traced, ans, trace)
        node = RuleNode(trace, tuple(parents), tuple(chosen), ans, tuple(vals), kwargs or None)
        return box(ans, node, trace)

    fn.__name__ = fn.__qualname__ = name
    fn._agrad_raw = plain  # type: ignore[attr-defined]
    return fn


def _constant_keywords(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with its traced constants unboxed; one that carries a gradient raises.

    Primitives differentiate only their positional arguments, so a keyword argument
    with a gradient (``ord`` of ``vector_norm`` computed from a parameter) would
    silently lose it.
    """
    out = dict(kwargs)
    for key, v in kwargs.items():
        level = v
        while isinstance(level, TracedArray):
            if level._node is not CONSTANT:
                msg = (
                    f"{name}: the keyword argument {key}= is a traced array that carries a "
                    f"gradient, and agrad differentiates {name} only in its array "
                    f"arguments; pass a constant ({key}=float(...) or "
                    "agrad.stop_gradient(...))"
                )
                raise TypeError(msg)
            level = level._value
        out[key] = level
    return out


def _tuple_boxer(
    traced_cls: type[TracedArray], outputs: tuple[int, ...]
) -> Callable[[Any, Node, Trace], Any]:
    """Box the ``outputs`` of a tuple answer, each with a node that selects its cotangent."""
    least = max(outputs) + 1

    def box(ans: Any, node: Node, trace: Trace) -> Any:
        n = max(len(ans), least)
        items = list(ans)
        for k in outputs:
            items[k] = traced_cls(ans[k], Node(_select(k, n), (node,), trace), trace)
        if hasattr(ans, "_fields"):
            return type(ans)(*items)
        return items if isinstance(ans, list) else tuple(items)

    return box


@functools.cache
def _select(k: int, n: int) -> Callable[[Any, Any], tuple[TupleCotangent]]:
    """The VJP of output ``k`` of ``n``: its cotangent in place ``k``, ``None`` elsewhere."""

    def select(g: Any, ns: Any) -> tuple[TupleCotangent]:
        parts = TupleCotangent([None] * n)
        parts[k] = g
        return (parts,)

    return select
