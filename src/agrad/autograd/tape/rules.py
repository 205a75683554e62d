"""VJP rules, one entry per differentiable primitive, written with the tracing namespace.

``RULES[name]`` is a tuple with one rule per positional argument (``None``: that
argument gets no gradient). A rule is ``rule(ns, g, ans, *args, **kwargs)``: ``ns`` is the
tracing namespace, ``g`` the cotangent of the output ``ans``, ``args`` the forward inputs.
Rules only call ``ns`` functions (never the operators between two arrays, which
array-api-strict refuses to mix with traced arrays), so the backward pass is itself
traceable and higher-order derivatives come for free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["NONDIFFERENTIABLE", "RULES", "unbroadcast"]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(getattr(x, "shape", ()))


def unbroadcast(ns: Any, g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``g.shape``."""
    gshape = _shape(g)
    if gshape == tuple(shape):
        return g
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1
    )
    if axes:
        g = ns.sum(g, axis=axes)
    return ns.reshape(g, tuple(shape))


def _normalize_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim if ndim else 0 for a in axis))


def _keepdims_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _restore_reduced(ns: Any, g: Any, x: Any, axis: Any, keepdims: bool) -> Any:
    """Broadcast the cotangent of a reduction back to the input's shape."""
    shape = _shape(x)
    axes = _normalize_axes(axis, len(shape))
    if not keepdims:
        g = ns.reshape(g, _keepdims_shape(shape, axes))
    return ns.broadcast_to(g, shape)


def _count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return math.prod(shape[a] for a in axes)


def _as_float(ns: Any, mask: Any, like: Any) -> Any:
    return ns.astype(mask, like.dtype)


# ---- elementwise -------------------------------------------------------------------


def _add_x(ns, g, ans, x, y):
    return unbroadcast(ns, g, _shape(x))


def _add_y(ns, g, ans, x, y):
    return unbroadcast(ns, g, _shape(y))


def _sub_y(ns, g, ans, x, y):
    return unbroadcast(ns, ns.negative(g), _shape(y))


def _mul_x(ns, g, ans, x, y):
    return unbroadcast(ns, ns.multiply(g, y), _shape(x))


def _mul_y(ns, g, ans, x, y):
    return unbroadcast(ns, ns.multiply(g, x), _shape(y))


def _div_x(ns, g, ans, x, y):
    return unbroadcast(ns, ns.divide(g, y), _shape(x))


def _div_y(ns, g, ans, x, y):
    return unbroadcast(ns, ns.negative(ns.divide(ns.multiply(g, ans), y)), _shape(y))


def _pow_x(ns, g, ans, x, y):
    # d/dx x**y = y * x**(y-1)
    return unbroadcast(ns, ns.multiply(g, ns.multiply(y, ns.pow(x, y - 1))), _shape(x))


def _pow_y(ns, g, ans, x, y):
    # d/dy x**y = x**y * log(x), taken as 0 where x == 0 (the limit for y > 0)
    if isinstance(x, (int, float)):
        logx = math.log(x) if x > 0 else 0.0
        return unbroadcast(ns, ns.multiply(g, ans) * logx, _shape(y))
    safe = ns.where(x == 0, ns.ones_like(x), x)
    return unbroadcast(ns, ns.multiply(ns.multiply(g, ans), ns.log(safe)), _shape(y))


def _max_x(ns, g, ans, x, y):
    # ties split evenly, as torch.maximum
    xv = x if not isinstance(x, (int, float)) else ns.full_like(ans, x)
    w = _as_float(ns, x > y, ans) + _as_float(ns, x == y, ans) * 0.5
    return unbroadcast(ns, ns.multiply(g, w), _shape(xv))


def _max_y(ns, g, ans, x, y):
    yv = y if not isinstance(y, (int, float)) else ns.full_like(ans, y)
    w = _as_float(ns, y > x, ans) + _as_float(ns, x == y, ans) * 0.5
    return unbroadcast(ns, ns.multiply(g, w), _shape(yv))


def _min_x(ns, g, ans, x, y):
    w = _as_float(ns, x < y, ans) + _as_float(ns, x == y, ans) * 0.5
    return unbroadcast(ns, ns.multiply(g, w), _shape(x))


def _min_y(ns, g, ans, x, y):
    w = _as_float(ns, y < x, ans) + _as_float(ns, x == y, ans) * 0.5
    return unbroadcast(ns, ns.multiply(g, w), _shape(y))


def _where_x(ns, g, ans, cond, x, y):
    return unbroadcast(ns, ns.where(cond, g, ns.zeros_like(g)), _shape(x))


def _where_y(ns, g, ans, cond, x, y):
    return unbroadcast(ns, ns.where(cond, ns.zeros_like(g), g), _shape(y))


def _unary(derivative):
    """Rule for ``f(x)`` given ``derivative(ns, ans, x) = f'(x)``."""

    def rule(ns, g, ans, x, **kw):
        return ns.multiply(g, derivative(ns, ans, x))

    return (rule,)


# ---- linear algebra ----------------------------------------------------------------


def _matmul_parts(a, b, g):
    """Shapes with 1-D operands promoted to matrices, and g reshaped to match."""
    a_shape, b_shape = _shape(a), _shape(b)
    a2 = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b2 = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    g_shape = list(_shape(g))
    if len(a_shape) == 1:
        g_shape.insert(len(g_shape) - (0 if len(b_shape) == 1 else 1), 1)
    if len(b_shape) == 1:
        g_shape.append(1)
    return a2, b2, tuple(g_shape)


def _matmul_a(ns, g, ans, a, b):
    a2, b2, g2 = _matmul_parts(a, b, g)
    da = ns.matmul(ns.reshape(g, g2), ns.matrix_transpose(ns.reshape(b, b2)))
    return ns.reshape(unbroadcast(ns, da, a2), _shape(a))


def _matmul_b(ns, g, ans, a, b):
    a2, b2, g2 = _matmul_parts(a, b, g)
    db = ns.matmul(ns.matrix_transpose(ns.reshape(a, a2)), ns.reshape(g, g2))
    return ns.reshape(unbroadcast(ns, db, b2), _shape(b))


def _tensordot_axes(a_ndim: int, b_ndim: int, axes: Any) -> tuple[list[int], list[int]]:
    if isinstance(axes, int):
        return list(range(a_ndim - axes, a_ndim)), list(range(axes))
    a_ax, b_ax = axes
    return [i % a_ndim for i in a_ax], [i % b_ndim for i in b_ax]


def _inverse_permutation(perm: Sequence[int]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _tensordot_a(ns, g, ans, a, b, axes=2):
    a_nd, b_nd = len(_shape(a)), len(_shape(b))
    a_ax, b_ax = _tensordot_axes(a_nd, b_nd, axes)
    a_free = [i for i in range(a_nd) if i not in a_ax]
    b_free = [i for i in range(b_nd) if i not in b_ax]
    g_b = list(range(len(a_free), len(a_free) + len(b_free)))
    r = ns.tensordot(g, b, axes=(g_b, b_free))
    # r's axes: a_free..., then b's contracted axes in ascending order of b's axes
    b_order = sorted(b_ax)
    source = a_free + [a_ax[b_ax.index(j)] for j in b_order]
    perm = _inverse_permutation(source)
    return ns.permute_dims(r, perm)


def _tensordot_b(ns, g, ans, a, b, axes=2):
    a_nd, b_nd = len(_shape(a)), len(_shape(b))
    a_ax, b_ax = _tensordot_axes(a_nd, b_nd, axes)
    a_free = [i for i in range(a_nd) if i not in a_ax]
    b_free = [i for i in range(b_nd) if i not in b_ax]
    g_a = list(range(len(a_free)))
    r = ns.tensordot(a, g, axes=(a_free, g_a))
    a_order = sorted(a_ax)
    source = [b_ax[a_ax.index(i)] for i in a_order] + b_free
    return ns.permute_dims(r, _inverse_permutation(source))


# ---- reductions --------------------------------------------------------------------


def _sum(ns, g, ans, x, axis=None, keepdims=False, dtype=None):
    g = ns.astype(g, x.dtype) if g.dtype != x.dtype else g
    return _restore_reduced(ns, g, x, axis, keepdims)


def _mean(ns, g, ans, x, axis=None, keepdims=False):
    n = _count(_shape(x), _normalize_axes(axis, len(_shape(x))))
    return _restore_reduced(ns, g, x, axis, keepdims) / n


def _extremum(ns, g, ans, x, axis=None, keepdims=False):
    shape = _shape(x)
    axes = _normalize_axes(axis, len(shape))
    ans_k = ans if keepdims else ns.reshape(ans, _keepdims_shape(shape, axes))
    mask = _as_float(ns, x == ans_k, x)  # ties share the gradient evenly
    count = ns.sum(mask, axis=axes, keepdims=True)
    g_full = _restore_reduced(ns, g, x, axis, keepdims)
    return ns.divide(ns.multiply(g_full, mask), count)


# ---- shape manipulation ------------------------------------------------------------


def _reshape(ns, g, ans, x, shape=None, *rest, **kw):
    return ns.reshape(g, _shape(x))


def _permute_dims(ns, g, ans, x, axes):
    return ns.permute_dims(g, _inverse_permutation([a % len(_shape(x)) for a in axes]))


def _matrix_transpose(ns, g, ans, x):
    return ns.matrix_transpose(g)


def _broadcast_to(ns, g, ans, x, shape):
    return unbroadcast(ns, g, _shape(x))


def _astype(ns, g, ans, x, dtype, *rest, **kw):
    return ns.astype(g, x.dtype)


def _concat_rule(i):
    def rule(ns, g, ans, *arrays, axis=0):
        if axis is None:
            start = sum(math.prod(_shape(a)) for a in arrays[:i])
            n = math.prod(_shape(arrays[i]))
            return ns.reshape(g[start : start + n], _shape(arrays[i]))
        ax = axis % len(_shape(g))
        start = sum(_shape(a)[ax] for a in arrays[:i])
        key = (slice(None),) * ax + (slice(start, start + _shape(arrays[i])[ax]), Ellipsis)
        return g[key]

    return rule


def _stack_rule(i):
    def rule(ns, g, ans, *arrays, axis=0):
        ax = axis % len(_shape(g))
        return g[(slice(None),) * ax + (i, Ellipsis)]

    return rule


class _PerArgument(tuple):
    """Rules for variadic primitives (concat, stack): one rule made per argument index."""

    def __new__(cls, make):
        obj = super().__new__(cls, ())
        obj.make = make
        obj.cache = {}
        return obj

    def __len__(self):
        return 1 << 30

    def __getitem__(self, i):
        rule = self.cache.get(i)
        if rule is None:
            rule = self.cache[i] = self.make(i)
        return rule


def _getitem(ns, g, ans, x, key):
    return ns._scatter(g, key, _shape(x))


def _scatter(ns, g, ans, cot, key, shape):
    return ns._getitem(g, key)


def _setitem_x(ns, g, ans, x, key, value):
    return ns._setitem(g, key, 0.0)


def _setitem_value(ns, g, ans, x, key, value):
    part = ns._getitem(g, key)
    return unbroadcast(ns, part, _shape(value))


RULES: dict[str, Any] = {
    "add": (_add_x, _add_y),
    "subtract": (_add_x, _sub_y),
    "multiply": (_mul_x, _mul_y),
    "divide": (_div_x, _div_y),
    "pow": (_pow_x, _pow_y),
    "maximum": (_max_x, _max_y),
    "minimum": (_min_x, _min_y),
    "where": (None, _where_x, _where_y),
    "negative": (lambda ns, g, ans, x: ns.negative(g),),
    "positive": (lambda ns, g, ans, x: g,),
    "exp": _unary(lambda ns, ans, x: ans),
    "log": (lambda ns, g, ans, x: ns.divide(g, x),),
    "tanh": _unary(lambda ns, ans, x: 1.0 - ns.multiply(ans, ans)),
    "sqrt": (lambda ns, g, ans, x: ns.divide(g, ans * 2.0),),
    "sin": _unary(lambda ns, ans, x: ns.cos(x)),
    "cos": _unary(lambda ns, ans, x: ns.negative(ns.sin(x))),
    "abs": _unary(lambda ns, ans, x: ns.sign(x)),
    "matmul": (_matmul_a, _matmul_b),
    "tensordot": (_tensordot_a, _tensordot_b),
    "sum": (_sum,),
    "mean": (_mean,),
    "max": (_extremum,),
    "min": (_extremum,),
    "reshape": (_reshape,),
    "permute_dims": (_permute_dims,),
    "matrix_transpose": (_matrix_transpose,),
    "expand_dims": (_reshape,),
    "squeeze": (_reshape,),
    "broadcast_to": (_broadcast_to,),
    "astype": (_astype,),
    "concat": _PerArgument(_concat_rule),
    "stack": _PerArgument(_stack_rule),
    "_getitem": (_getitem,),
    "_scatter": (_scatter,),
    "_setitem": (_setitem_x, None, _setitem_value),
}

# Functions whose outputs carry no gradient: called on the raw values.
NONDIFFERENTIABLE = frozenset(
    [
        "equal",
        "not_equal",
        "less",
        "less_equal",
        "greater",
        "greater_equal",
        "isnan",
        "isinf",
        "isfinite",
        "logical_and",
        "logical_or",
        "logical_xor",
        "logical_not",
        "signbit",
        "sign",
        "floor",
        "ceil",
        "trunc",
        "round",
        "argmax",
        "argmin",
        "argsort",
        "nonzero",
        "count_nonzero",
        "searchsorted",
        "unique_all",
        "unique_counts",
        "unique_inverse",
        "unique_values",
        "all",
        "any",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "floor_divide",
        "bitwise_and",
        "bitwise_or",
        "bitwise_xor",
        "bitwise_invert",
        "bitwise_left_shift",
        "bitwise_right_shift",
        "isdtype",
        "result_type",
        "can_cast",
        "finfo",
        "iinfo",
    ]
)
