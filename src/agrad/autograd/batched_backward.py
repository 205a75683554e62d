"""The tape's backward pass for a batch of cotangents: a whole Jacobian in one pass.

Every cotangent carries a leading batch axis (one row of the Jacobian per entry). The
elementwise rules broadcast over it as they are, once :func:`~agrad.autograd.tape.helpers.
unbroadcast` keeps that axis (:func:`batch_axes` is 1 during the pass); the few shape
rules that name axes or shapes (``sum``, ``mean``, ``reshape``, ``permute_dims``,
``matmul``) get batched versions here. A tape with any other rule (indexing, ``concat``,
linear algebra, a custom VJP ...) is refused with :class:`NotBatchable`, and the caller
runs one backward pass per row instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from agrad.autograd.tape import helpers
from agrad.autograd.tape.helpers import conj, inverse_permutation, normalize_axes, shape_of
from agrad.autograd.tape.rules import RULES
from agrad.autograd.tape.traced import Node, RuleNode

__all__ = ["NotBatchable", "batched_backward"]


class NotBatchable(Exception):
    """The tape holds a rule without a batched form; pull back one row at a time."""


def _sum(ns, g, ans, x, axis=None, dtype=None, keepdims=False):
    shape = shape_of(x)
    axes = normalize_axes(axis, len(shape))
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    g = ns.reshape(g, (g.shape[0], *kept))
    return ns.broadcast_to(g, (g.shape[0], *shape))


def _mean(ns, g, ans, x, axis=None, keepdims=False):
    shape = shape_of(x)
    n = math.prod(shape[a] for a in normalize_axes(axis, len(shape)))
    return _sum(ns, g / n, ans, x, axis=axis, keepdims=keepdims)


def _reshape(ns, g, ans, x, *rest, **kw):
    return ns.reshape(g, (g.shape[0], *shape_of(x)))


def _permute_dims(ns, g, ans, x, axes):
    inv = inverse_permutation([a % len(shape_of(x)) for a in axes])
    return ns.permute_dims(g, (0, *(i + 1 for i in inv)))


def _matmul_shapes(a, b):
    """``a`` and ``b`` as matrices (1-D operands promoted) and the shape of their product."""
    a2 = (1, *shape_of(a)) if len(shape_of(a)) == 1 else shape_of(a)
    b2 = (*shape_of(b), 1) if len(shape_of(b)) == 1 else shape_of(b)
    lead = _broadcast_shapes(a2[:-2], b2[:-2])
    return a2, b2, (*lead, a2[-2], b2[-1])


def _broadcast_shapes(s: tuple[int, ...], t: tuple[int, ...]) -> tuple[int, ...]:
    n = max(len(s), len(t))
    s, t = (1,) * (n - len(s)) + s, (1,) * (n - len(t)) + t
    return tuple(max(p, q) for p, q in zip(s, t))


def _times_matrix(ns, x, m):
    """``x @ m`` for a 2-D ``m``, as one matrix product over all of ``x``'s leading axes."""
    flat = ns.matmul(ns.reshape(x, (-1, x.shape[-1])), m)
    return ns.reshape(flat, (*x.shape[:-1], m.shape[-1]))


def _matmul_a(ns, g, ans, a, b):
    a2, b2, out2 = _matmul_shapes(a, b)
    g2 = ns.reshape(g, (g.shape[0], *out2))
    bt = ns.matrix_transpose(conj(ns, ns.reshape(b, b2)))
    da = _times_matrix(ns, g2, bt) if len(b2) == 2 else ns.matmul(g2, bt)
    return ns.reshape(helpers.unbroadcast(ns, da, a2), (g.shape[0], *shape_of(a)))


def _matmul_b(ns, g, ans, a, b):
    a2, b2, out2 = _matmul_shapes(a, b)
    g2 = ns.reshape(g, (g.shape[0], *out2))
    a2v = conj(ns, ns.reshape(a, a2))
    if len(a2) == 2:  # (a^T g)^T = g^T a: one product
        db = ns.matrix_transpose(_times_matrix(ns, ns.matrix_transpose(g2), a2v))
    else:
        db = ns.matmul(ns.matrix_transpose(a2v), g2)
    return ns.reshape(helpers.unbroadcast(ns, db, b2), (g.shape[0], *shape_of(b)))


# Entries whose rules broadcast over a leading batch axis as written.
_AS_IS = [
    "negative",
    "positive",
    "conj",
    "real",
    "imag",
    "abs",
    "exp",
    "expm1",
    "log",
    "log1p",
    "log2",
    "log10",
    "sqrt",
    "square",
    "reciprocal",
    "sin",
    "cos",
    "tan",
    "sinh",
    "cosh",
    "tanh",
    "asin",
    "acos",
    "atan",
    "asinh",
    "acosh",
    "atanh",
    "add",
    "subtract",
    "multiply",
    "divide",
    "pow",
    "maximum",
    "minimum",
    "where",
    "atan2",
    "hypot",
    "logaddexp",
    "copysign",
    "remainder",
    "nextafter",
    "clip",
    "matrix_transpose",
    "broadcast_to",
    "astype",
]

_REPLACED: dict[str, tuple[Callable[..., Any] | None, ...]] = {
    "sum": (_sum,),
    "mean": (_mean,),
    "reshape": (_reshape,),
    "expand_dims": (_reshape,),
    "squeeze": (_reshape,),
    "permute_dims": (_permute_dims,),
    "matmul": (_matmul_a, _matmul_b),
}


def _table() -> dict[Any, tuple[Callable[..., Any], int]]:
    """Rule -> (its batched form, the index of the argument it differentiates)."""
    table: dict[Any, tuple[Callable[..., Any], int]] = {}
    for name in _AS_IS:
        if name not in RULES:  # a table without it: its nodes fall back to the row loop
            continue
        for i in range(3):
            rule = RULES[name].rule_for(i)
            if rule is not None:
                table[rule] = (rule, i)
    for name, batched in _REPLACED.items():
        if name not in RULES:
            continue
        for i, new in enumerate(batched):
            table[RULES[name].rule_for(i)] = (new, i)
    return table


_BATCHED = _table()


@contextmanager
def _batch_axis() -> Iterator[None]:
    before = helpers.batch_axes()
    helpers._batch.axes = 1
    try:
        yield
    finally:
        helpers._batch.axes = before


def batched_backward(
    ns: Any, tape: Sequence[Node], sink: Node, inputs: Sequence[Node], batch: int
) -> list[Any | None]:
    """Cotangents ``(batch, *input.shape)`` of ``inputs``, ``sink`` handing out the seeds.

    Raises:
        NotBatchable: a rule on the way has no batched form (found before anything is
            computed), or returned a cotangent of an unexpected shape.
    """
    reached = _check(tape, sink)
    cotangents: dict[Node, Any] = {}
    with _batch_axis():
        for parent, pg in zip(sink.parents, sink.vjp(True, ns)):
            _add(ns, cotangents, parent, pg)
        for node in reversed(tape):
            g = cotangents.pop(node, None)
            if g is None or node not in reached:
                continue
            kwargs = node.kwargs or {}
            for parent, rule in zip(node.parents, node.rules):
                batched, i = _BATCHED[rule]
                pg = batched(ns, g, node.ans, *node.args, **kwargs)
                if pg is None:
                    continue
                want = (batch, *shape_of(node.args[i]))
                if shape_of(pg) != want:
                    if shape_of(pg) != want[1:]:
                        raise NotBatchable
                    pg = ns.broadcast_to(pg, want)
                _add(ns, cotangents, parent, pg)
    return [cotangents.get(node) for node in inputs]


def _add(ns: Any, cotangents: dict[Node, Any], node: Node, g: Any) -> None:
    prev = cotangents.get(node)
    cotangents[node] = g if prev is None else ns.add(prev, g)


def _check(tape: Sequence[Node], sink: Node) -> set[Node]:
    """The nodes that lead to ``sink``; each must be a rule node with batched rules."""
    reached = set(sink.parents)
    for node in reversed(tape):
        if node not in reached:
            continue
        if type(node) is not RuleNode or any(r not in _BATCHED for r in node.rules):
            raise NotBatchable
        reached.update(node.parents)
    return reached
