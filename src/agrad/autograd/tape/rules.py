"""VJP rules for the main namespace, written with the tracing namespace.

``RULES`` is the rule table (:mod:`agrad.autograd.tape.vjp`): one entry per primitive.
Rules only call ``ns`` functions between arrays (never the operators between two arrays,
which array-api-strict refuses to mix with traced arrays; operators with a Python scalar
are fine), so the backward pass is itself traceable and higher-order derivatives come
for free.

Complex inputs follow torch's convention: for a holomorphic ``f`` the rule is
``g * conj(f'(z))``, and the gradient of a real loss is what ``torch.autograd`` returns.
A real input never receives a complex gradient (its real part is taken).
"""

from __future__ import annotations

import math
from typing import Any

from agrad.autograd.tape.helpers import (
    SCALARS,
    along,
    conj,
    fit,
    inverse_permutation,
    is_complex,
    keep_reduced_dims,
    normalize_axes,
    reduced_count,
    restore_reduced,
    shape_of,
    unbroadcast,
)
from agrad.autograd.tape.traced import strip
from agrad.autograd.tape.vjp import VJP, vjp, vjp_argnum

__all__ = ["NONDIFFERENTIABLE", "RULES", "gather_transpose", "positions"]


def _as_float(ns: Any, mask: Any, like: Any) -> Any:
    return ns.astype(mask, like.dtype)


def _masked(ns: Any, mask: Any, g: Any) -> Any:
    """``g`` where ``mask`` holds, zero elsewhere."""
    return ns.where(mask, g, ns.zeros_like(g))


def _full_like(ns: Any, value: Any, like: Any) -> Any:
    if isinstance(value, SCALARS):
        return ns.full_like(like, value)
    return value


def _to_complex(ns: Any, g: Any) -> Any:
    return ns.astype(g, ns.complex64 if g.dtype == ns.float32 else ns.complex128)


# ---- elementwise: binary -------------------------------------------------------------


def _add_x(ns, g, ans, x, y):
    return fit(ns, g, x)


def _add_y(ns, g, ans, x, y):
    return fit(ns, g, y)


def _sub_y(ns, g, ans, x, y):
    return fit(ns, ns.negative(g), y)


def _mul_x(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, conj(ns, y)), x)


def _mul_y(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, conj(ns, x)), y)


def _div_x(ns, g, ans, x, y):
    return fit(ns, ns.divide(g, conj(ns, y)), x)


def _div_y(ns, g, ans, x, y):
    # d(x/y)/dy = -(x/y)/y
    return fit(ns, ns.negative(ns.divide(ns.multiply(g, conj(ns, ans)), conj(ns, y))), y)


def _pow_x(ns, g, ans, x, y):
    # d/dx x**y = y * x**(y-1), taken as 0 where y == 0 (as torch)
    if isinstance(y, SCALARS) and y == 0:
        return ns.zeros_like(x)
    d = ns.multiply(y, ns.pow(x, ns.subtract(y, 1.0)))
    if not isinstance(y, SCALARS):
        d = ns.where(y == 0, ns.zeros_like(d), d)
    return fit(ns, ns.multiply(g, conj(ns, d)), x)


def _pow_y(ns, g, ans, x, y):
    # d/dy x**y = x**y * log(x), taken as 0 where x == 0 (the limit for y > 0)
    if isinstance(x, SCALARS):
        logx = math.log(x) if x > 0 else 0.0
        return fit(ns, ns.multiply(g, conj(ns, ans)) * logx, y)
    safe = ns.where(x == 0, ns.ones_like(x), x)
    d = ns.multiply(ans, ns.log(safe))
    return fit(ns, ns.multiply(g, conj(ns, d)), y)


def _tie_weights(ns, wins, ties, like):
    """1 where an argument wins, 1/2 on ties (torch's split), 0 where it loses."""
    return ns.add(_as_float(ns, wins, like), _as_float(ns, ties, like) * 0.5)


def _max_x(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, _tie_weights(ns, x > y, x == y, ans)), _full_like(ns, x, ans))


def _max_y(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, _tie_weights(ns, y > x, x == y, ans)), _full_like(ns, y, ans))


def _min_x(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, _tie_weights(ns, x < y, x == y, ans)), _full_like(ns, x, ans))


def _min_y(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, _tie_weights(ns, y < x, x == y, ans)), _full_like(ns, y, ans))


def _where_x(ns, g, ans, cond, x, y):
    return fit(ns, _masked(ns, cond, g), x)


def _where_y(ns, g, ans, cond, x, y):
    return fit(ns, ns.where(cond, ns.zeros_like(g), g), y)


def _atan2_y(ns, g, ans, y, x):
    # atan2(y, x): d/dy = x / (x^2 + y^2)
    denom = ns.add(ns.multiply(x, x), ns.multiply(y, y))
    return fit(ns, ns.multiply(g, ns.divide(x, denom)), y)


def _atan2_x(ns, g, ans, y, x):
    denom = ns.add(ns.multiply(x, x), ns.multiply(y, y))
    return fit(ns, ns.multiply(g, ns.negative(ns.divide(y, denom))), x)


def _hypot_x(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, ns.divide(x, ans)), x)


def _hypot_y(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, ns.divide(y, ans)), y)


def _logaddexp_x(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, ns.exp(ns.subtract(x, ans))), x)


def _logaddexp_y(ns, g, ans, x, y):
    return fit(ns, ns.multiply(g, ns.exp(ns.subtract(y, ans))), y)


def _copysign_x(ns, g, ans, x, y):
    # copysign(x, y) = |x| * (+-1): derivative ans / x, 0 at x == 0 (as torch)
    zero = x == 0
    safe = ns.where(zero, ns.ones_like(x), x)
    ratio = ns.where(zero, ns.zeros_like(ans), ns.divide(ans, safe))
    return fit(ns, ns.multiply(g, ratio), x)


def _remainder_y(ns, g, ans, x, y):
    # x mod y = x - floor(x / y) * y
    return fit(ns, ns.multiply(ns.negative(g), ns.floor_divide(x, y)), y)


def _clip_x(ns, g, ans, x, lo, hi):
    keep = ns.ones_like(strip(x), dtype=ns.bool) if lo is None else x >= lo
    if hi is not None:
        keep = ns.logical_and(keep, x <= hi)
    return fit(ns, _masked(ns, keep, g), x)


def _clip_lo(ns, g, ans, x, lo, hi):
    below = x < lo
    if hi is not None:
        below = ns.logical_and(below, lo <= hi)
    return fit(ns, _masked(ns, below, g), lo)


def _clip_hi(ns, g, ans, x, lo, hi):
    above = x > hi if lo is None else ns.logical_or(x > hi, lo > hi)
    return fit(ns, _masked(ns, above, g), hi)


# ---- elementwise: unary --------------------------------------------------------------


def _unary(derivative):
    """Rule for ``f(x)`` given ``derivative(ns, ans, x) = f'(x)``: ``g * conj(f'(x))``."""

    def rule(ns, g, ans, x, **kw):
        return ns.multiply(g, conj(ns, derivative(ns, ans, x)))

    return vjp(rule)


def _over(denominator):
    """Rule ``g / conj(denominator(ns, ans, x))``."""

    def rule(ns, g, ans, x, **kw):
        return ns.divide(g, conj(ns, denominator(ns, ans, x)))

    return vjp(rule)


def _one_minus_square(ns, x):
    return 1.0 - ns.multiply(x, x)


def _abs(ns, g, ans, x):
    if not is_complex(ns, x):
        return ns.multiply(g, ns.sign(x))
    # d|z| = Re(conj(z / |z|) dz): the gradient is g * z / |z|, and 0 at z == 0 (as torch)
    zero = strip(ans) == 0
    return ns.multiply(g, ns.divide(x, ns.where(zero, ns.ones_like(ans), ans)))


def _real(ns, g, ans, x):
    return _to_complex(ns, g) if is_complex(ns, x) else g


def _imag(ns, g, ans, x):
    if not is_complex(ns, x):
        return ns.zeros_like(x)
    return ns.multiply(_to_complex(ns, g), 1j)


_LN2 = math.log(2.0)
_LN10 = math.log(10.0)

_UNARY: dict[str, VJP] = {
    "negative": vjp(lambda ns, g, ans, x: ns.negative(g)),
    "positive": vjp(lambda ns, g, ans, x: g),
    "conj": vjp(lambda ns, g, ans, x: conj(ns, g)),
    "real": vjp(_real),
    "imag": vjp(_imag),
    "abs": vjp(_abs),
    "exp": _unary(lambda ns, ans, x: ans),
    "expm1": _unary(lambda ns, ans, x: ans + 1.0),
    "log": _over(lambda ns, ans, x: x),
    "log1p": _over(lambda ns, ans, x: x + 1.0),
    "log2": _over(lambda ns, ans, x: x * _LN2),
    "log10": _over(lambda ns, ans, x: x * _LN10),
    "sqrt": _over(lambda ns, ans, x: ans * 2.0),
    "square": _unary(lambda ns, ans, x: x * 2.0),
    "reciprocal": _unary(lambda ns, ans, x: ns.negative(ns.multiply(ans, ans))),
    "sin": _unary(lambda ns, ans, x: ns.cos(x)),
    "cos": _unary(lambda ns, ans, x: ns.negative(ns.sin(x))),
    "tan": _unary(lambda ns, ans, x: 1.0 + ns.multiply(ans, ans)),
    "sinh": _unary(lambda ns, ans, x: ns.cosh(x)),
    "cosh": _unary(lambda ns, ans, x: ns.sinh(x)),
    "tanh": _unary(lambda ns, ans, x: _one_minus_square(ns, ans)),
    "asin": _over(lambda ns, ans, x: ns.sqrt(_one_minus_square(ns, x))),
    "acos": _over(lambda ns, ans, x: ns.negative(ns.sqrt(_one_minus_square(ns, x)))),
    "atan": _over(lambda ns, ans, x: 1.0 + ns.multiply(x, x)),
    "asinh": _over(lambda ns, ans, x: ns.sqrt(ns.multiply(x, x) + 1.0)),
    "acosh": _over(lambda ns, ans, x: ns.multiply(ns.sqrt(x - 1.0), ns.sqrt(x + 1.0))),
    "atanh": _over(lambda ns, ans, x: _one_minus_square(ns, x)),
}


# ---- matmul and tensordot ----------------------------------------------------------


def _matmul_parts(a, b, g):
    """Shapes with 1-D operands promoted to matrices, and g reshaped to match."""
    a_shape, b_shape = shape_of(a), shape_of(b)
    a2 = (1, *a_shape) if len(a_shape) == 1 else a_shape
    b2 = (*b_shape, 1) if len(b_shape) == 1 else b_shape
    g_shape = list(shape_of(g))
    if len(a_shape) == 1:
        g_shape.insert(len(g_shape) - (0 if len(b_shape) == 1 else 1), 1)
    if len(b_shape) == 1:
        g_shape.append(1)
    return a2, b2, tuple(g_shape)


def _matmul_a(ns, g, ans, a, b):
    if len(shape_of(a)) >= 2 and len(shape_of(b)) >= 2:  # no 1-D operand: no reshaping
        return fit(ns, ns.matmul(g, ns.matrix_transpose(conj(ns, b))), a)
    a2, b2, g2 = _matmul_parts(a, b, g)
    da = ns.matmul(ns.reshape(g, g2), ns.matrix_transpose(conj(ns, ns.reshape(b, b2))))
    return fit(ns, ns.reshape(unbroadcast(ns, da, a2), shape_of(a)), a)


def _matmul_b(ns, g, ans, a, b):
    if len(shape_of(a)) >= 2 and len(shape_of(b)) >= 2:
        return fit(ns, ns.matmul(ns.matrix_transpose(conj(ns, a)), g), b)
    a2, b2, g2 = _matmul_parts(a, b, g)
    db = ns.matmul(ns.matrix_transpose(conj(ns, ns.reshape(a, a2))), ns.reshape(g, g2))
    return fit(ns, ns.reshape(unbroadcast(ns, db, b2), shape_of(b)), b)


def _tensordot_axes(a_ndim: int, b_ndim: int, axes: Any) -> tuple[list[int], list[int]]:
    if isinstance(axes, int):
        return list(range(a_ndim - axes, a_ndim)), list(range(axes))
    a_ax, b_ax = axes
    return [i % a_ndim for i in a_ax], [i % b_ndim for i in b_ax]


def _tensordot_a(ns, g, ans, a, b, axes=2):
    a_nd, b_nd = len(shape_of(a)), len(shape_of(b))
    a_ax, b_ax = _tensordot_axes(a_nd, b_nd, axes)
    a_free = [i for i in range(a_nd) if i not in a_ax]
    b_free = [i for i in range(b_nd) if i not in b_ax]
    g_b = list(range(len(a_free), len(a_free) + len(b_free)))
    r = ns.tensordot(g, conj(ns, b), axes=(g_b, b_free))
    # r's axes: a_free..., then b's contracted axes in ascending order of b's axes
    source = a_free + [a_ax[b_ax.index(j)] for j in sorted(b_ax)]
    return fit(ns, ns.permute_dims(r, inverse_permutation(source)), a)


def _tensordot_b(ns, g, ans, a, b, axes=2):
    a_nd, b_nd = len(shape_of(a)), len(shape_of(b))
    a_ax, b_ax = _tensordot_axes(a_nd, b_nd, axes)
    a_free = [i for i in range(a_nd) if i not in a_ax]
    b_free = [i for i in range(b_nd) if i not in b_ax]
    r = ns.tensordot(conj(ns, a), g, axes=(a_free, list(range(len(a_free)))))
    source = [b_ax[a_ax.index(i)] for i in sorted(a_ax)] + b_free
    return fit(ns, ns.permute_dims(r, inverse_permutation(source)), b)


# ---- reductions --------------------------------------------------------------------


def _sum(ns, g, ans, x, axis=None, dtype=None, keepdims=False):
    return fit(ns, restore_reduced(ns, g, x, axis, keepdims), x)


def _mean(ns, g, ans, x, axis=None, keepdims=False):
    n = reduced_count(shape_of(x), normalize_axes(axis, len(shape_of(x))))
    return restore_reduced(ns, g / n, x, axis, keepdims)  # divided before broadcasting


def _prod(ns, g, ans, x, axis=None, dtype=None, keepdims=False):
    # d prod / dx_i = prod of the others: ans / x_i where x has no zeros; otherwise the
    # products of the others are formed explicitly (exact, and right at every order).
    gk = restore_reduced(ns, g, x, axis, keepdims)
    if bool(ns.any(strip(x) == 0)):
        d = _prod_of_others(ns, x, normalize_axes(axis, len(shape_of(x))))
    else:
        d = ns.divide(restore_reduced(ns, ans, x, axis, keepdims), x)
    return fit(ns, ns.multiply(gk, conj(ns, d)), x)


def _prod_of_others(ns, x, axes):
    """``prod_{j != i} x_j`` over ``axes`` for every element ``i``, in O(n^2)."""
    shape = shape_of(x)
    keep = [a for a in range(len(shape)) if a not in axes]
    perm = keep + list(axes)
    moved = ns.permute_dims(x, tuple(perm))
    batch = tuple(shape[a] for a in keep)
    n = reduced_count(shape, axes)
    flat = ns.expand_dims(ns.reshape(moved, (*batch, n)), axis=-2)
    eye = ns._base.eye(n, dtype=ns.bool, device=ns._base_device(strip(x)))
    others = ns.prod(ns.where(eye, ns.ones_like(flat), flat), axis=-1)
    others = ns.reshape(others, tuple(shape[a] for a in perm))
    return ns.permute_dims(others, inverse_permutation(perm))


def _extremum(ns, g, ans, x, axis=None, keepdims=False):
    shape = shape_of(x)
    axes = normalize_axes(axis, len(shape))
    ans_k = keep_reduced_dims(ns, ans, shape, axis, keepdims)
    mask = _as_float(ns, strip(x) == strip(ans_k), strip(x))  # ties share evenly
    count = ns.sum(mask, axis=axes, keepdims=True)
    # g with the reduced axes kept broadcasts against the mask: no explicit broadcast_to
    g_k = keep_reduced_dims(ns, g, shape, axis, keepdims)
    return ns.divide(ns.multiply(g_k, mask), count)


def _reverse_cumsum(ns, g, axis):
    return ns.flip(ns.cumulative_sum(ns.flip(g, axis=axis), axis=axis), axis=axis)


def _cumulative_sum(ns, g, ans, x, axis=None, dtype=None, include_initial=False):
    ax = 0 if axis is None else axis % len(shape_of(x))
    if include_initial:
        g = g[along(ax, len(shape_of(g)), slice(1, None))]
    return fit(ns, _reverse_cumsum(ns, g, ax), x)


def _cumulative_prod(ns, g, ans, x, axis=None, dtype=None, include_initial=False):
    ndim = len(shape_of(x))
    ax = 0 if axis is None else axis % ndim
    if include_initial:
        g = g[along(ax, ndim, slice(1, None))]
        ans = ans[along(ax, ndim, slice(1, None))]
    if not bool(ns.any(strip(x) == 0)):
        d = _reverse_cumsum(ns, ns.multiply(g, conj(ns, ans)), ax)
        return fit(ns, ns.divide(d, conj(ns, x)), x)
    return fit(ns, _cumulative_prod_with_zeros(ns, g, x, ax), x)


def _cumulative_prod_with_zeros(ns, g, x, ax):
    """sum_{k >= i} g_k prod_{j <= k, j != i} x_j, in O(n^2) (safe where x has zeros)."""
    n = shape_of(x)[ax]
    xm = ns.moveaxis(x, ax, -1)
    gm = ns.moveaxis(g, ax, -1)
    dev = ns._base_device(strip(x))
    eye = ns._base.eye(n, dtype=ns.bool, device=dev)
    others = ns.where(eye, ns.ones_like(ns.expand_dims(xm, axis=-2)), ns.expand_dims(xm, axis=-2))
    partial = ns.cumulative_prod(others, axis=-1)  # [..., i, k] = prod_{j<=k, j!=i} x_j
    upper = ns._base.triu(ns._base.ones((n, n), dtype=x.dtype, device=dev))
    weights = ns.multiply(conj(ns, partial), upper)
    d = ns.sum(ns.multiply(weights, ns.expand_dims(gm, axis=-2)), axis=-1)
    return ns.moveaxis(d, -1, ax)


# ---- shape manipulation ------------------------------------------------------------


def _reshape(ns, g, ans, x, shape=None, *rest, **kw):
    return ns.reshape(g, shape_of(x))


def _permute_dims(ns, g, ans, x, axes):
    return ns.permute_dims(g, inverse_permutation([a % len(shape_of(x)) for a in axes]))


def _matrix_transpose(ns, g, ans, x):
    return ns.matrix_transpose(g)


def _broadcast_to(ns, g, ans, x, shape):
    return unbroadcast(ns, g, shape_of(x))


def _astype(ns, g, ans, x, dtype, *rest, **kw):
    if is_complex(ns, g) and not is_complex(ns, x):
        g = ns.real(g)
    return ns.astype(g, x.dtype)


def _flip(ns, g, ans, x, axis=None):
    return ns.flip(g, axis=axis)


def _roll(ns, g, ans, x, shift, axis=None):
    back = -shift if isinstance(shift, int) else tuple(-s for s in shift)
    return ns.roll(g, back, axis=axis)


def _moveaxis(ns, g, ans, x, source, destination):
    return ns.moveaxis(g, destination, source)


def _tril(ns, g, ans, x, k=0):
    return ns.tril(g, k=k)


def _triu(ns, g, ans, x, k=0):
    return ns.triu(g, k=k)


def _concat(ns, g, ans, *arrays, argnum, axis=0):
    """The slice of ``g`` that ``arrays[argnum]`` filled."""
    mine = shape_of(arrays[argnum])
    if axis is None:
        start = sum(math.prod(shape_of(a)) for a in arrays[:argnum])
        return ns.reshape(g[start : start + math.prod(mine)], mine)
    ax = axis % len(shape_of(g))
    start = sum(shape_of(a)[ax] for a in arrays[:argnum])
    return g[along(ax, len(shape_of(g)), slice(start, start + mine[ax]))]


def _stack(ns, g, ans, *arrays, argnum, axis=0):
    return g[along(axis, len(shape_of(g)), argnum)]


def _to_device(ns, g, ans, x, device):
    return ns._to_device(g, ns._base_device(strip(x)))


# ---- indexing ----------------------------------------------------------------------


def positions(ns: Any, x: Any) -> Any:
    """Raw array of ``x``'s shape holding each element's flat (row-major) position."""
    raw = strip(x)
    base = ns._base
    flat = base.arange(math.prod(shape_of(x)), device=ns._base_device(raw))
    return base.reshape(flat, shape_of(x))


def gather_transpose(ns: Any, g: Any, picked: Any, x: Any) -> Any:
    """Cotangent of ``x`` from that of a gather that read positions ``picked`` of ``x``.

    Repeated positions accumulate (a scatter-add).
    """
    size = math.prod(shape_of(x))
    flat_g = ns.reshape(g, (-1,))
    flat_pos = ns._base.reshape(picked, (-1,))
    return ns.reshape(ns._index_add(flat_g, flat_pos, size), shape_of(x))


def _getitem(ns, g, ans, x, key):
    return ns._scatter(g, key, shape_of(x))


def _getitem_advanced(ns, g, ans, x, key):
    return gather_transpose(ns, g, positions(ns, x)[key], x)


def _scatter(ns, g, ans, cot, key, shape):
    return ns._getitem(g, key)


def _index_add_values(ns, g, ans, values, index, size):
    return ns.take(g, index)


def _setitem_x(ns, g, ans, x, key, value):
    return ns._setitem(g, key, 0.0)


def _setitem_value(ns, g, ans, x, key, value):
    picked = ns._getitem(g, key)
    kept = _writes_kept(ns, x, key, shape_of(picked))
    if kept is not None:
        picked = ns.where(kept, picked, ns.zeros_like(picked))
    return fit(ns, picked, value)


def _writes_kept(ns: Any, x: Any, key: Any, shape: tuple[int, ...]) -> Any:
    """Which elements of ``x[key] = v`` (``v`` broadcast to ``shape``) the base kept.

    An index array may name one position twice (``x[[0, 0]] = v``); then only one of
    the writes survives and only it gets a gradient, as with JAX's ``.at[].set``. Which
    one is the base's choice (NumPy and Dask: the last), so it is read off a write of
    element numbers with the same key rather than assumed. CuPy leaves the choice
    unspecified (it may differ between two writes), so there repeated positions are
    refused. ``None`` when the key has no index array (no repeats).
    """
    parts = key if isinstance(key, tuple) else (key,)
    if not any(isinstance(k, list) or getattr(k, "ndim", 0) for k in parts):
        return None
    if any("bool" in str(getattr(k, "dtype", "")) for k in parts):
        return None  # a mask names each position once
    base = ns._base
    device = ns._base_device(strip(x))
    numbers = base.reshape(base.arange(math.prod(shape), device=device), shape)
    marker = base.full(shape_of(x), -1, dtype=numbers.dtype, device=device)
    marker[key] = numbers
    kept = marker[key] == numbers
    if ns._agrad_base_name == "cupy" and not bool(base.all(kept)):
        msg = (
            "agrad.cupy: the gradient of x[key] = value with a position repeated in key is "
            "not defined on CuPy, which keeps an unspecified one of the repeated writes; "
            "remove the repeats (or combine them first, e.g. with a scatter-add)"
        )
        raise ValueError(msg)
    return kept


def _take(ns, g, ans, x, indices, axis=None):
    return gather_transpose(ns, g, ns._base.take(positions(ns, x), strip(indices), axis=axis), x)


def _take_along_axis(ns, g, ans, x, indices, axis=-1):
    picked = ns._generic_take_along_axis(positions(ns, x), strip(indices), axis=axis)
    return gather_transpose(ns, g, picked, x)


def _unique_values(ns, g, ans, x):
    inverse = ns._base.unique_inverse(strip(x)).inverse_indices
    return ns.reshape(ns.take(g, ns._base.reshape(inverse, (-1,))), shape_of(x))


def _unique_multi(ns, gs, ans, x):
    return None if gs[0] is None else _unique_values(ns, gs[0], None, x)


RULES: dict[str, VJP] = {
    **_UNARY,
    "add": vjp(_add_x, _add_y),
    "subtract": vjp(_add_x, _sub_y),
    "multiply": vjp(_mul_x, _mul_y),
    "divide": vjp(_div_x, _div_y),
    "pow": vjp(_pow_x, _pow_y),
    "maximum": vjp(_max_x, _max_y),
    "minimum": vjp(_min_x, _min_y),
    "where": vjp(None, _where_x, _where_y),
    "atan2": vjp(_atan2_y, _atan2_x),
    "hypot": vjp(_hypot_x, _hypot_y),
    "logaddexp": vjp(_logaddexp_x, _logaddexp_y),
    "copysign": vjp(_copysign_x, None),
    "remainder": vjp(_add_x, _remainder_y),
    "nextafter": vjp(_add_x, None),
    "clip": vjp(_clip_x, _clip_lo, _clip_hi),
    "matmul": vjp(_matmul_a, _matmul_b),
    "tensordot": vjp(_tensordot_a, _tensordot_b),
    "sum": vjp(_sum),
    "prod": vjp(_prod),
    "mean": vjp(_mean),
    "max": vjp(_extremum),
    "min": vjp(_extremum),
    "cumulative_sum": vjp(_cumulative_sum),
    "cumulative_prod": vjp(_cumulative_prod),
    "reshape": vjp(_reshape),
    "permute_dims": vjp(_permute_dims),
    "matrix_transpose": vjp(_matrix_transpose),
    "expand_dims": vjp(_reshape),
    "squeeze": vjp(_reshape),
    "broadcast_to": vjp(_broadcast_to),
    "astype": vjp(_astype),
    "flip": vjp(_flip),
    "roll": vjp(_roll),
    "moveaxis": vjp(_moveaxis),
    "tril": vjp(_tril),
    "triu": vjp(_triu),
    "concat": vjp_argnum(_concat, sequence=True),
    "stack": vjp_argnum(_stack, sequence=True),
    "take": vjp(_take, None),
    "take_along_axis": vjp(_take_along_axis, None),
    "unique_values": vjp(_unique_values),
    "unique_all": vjp(_unique_multi, outputs=(0,)),
    "unique_counts": vjp(_unique_multi, outputs=(0,)),
    "unique_inverse": vjp(_unique_multi, outputs=(0,)),
    # private primitives behind indexing, its transpose and device transfer
    "_take_along_axis": vjp(_take_along_axis, None),
    "_getitem": vjp(_getitem),
    "_getitem_advanced": vjp(_getitem_advanced),
    "_scatter": vjp(_scatter),
    "_index_add": vjp(_index_add_values, None),
    "_setitem": vjp(_setitem_x, None, _setitem_value),
    "_to_device": vjp(_to_device),
}

# Functions whose outputs carry no gradient (integer, boolean or piecewise-constant
# results, dtype queries, creation from shapes): called on the raw values.
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
        "isin",
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
        "broadcast_shapes",
        "arange",
        "empty",
        "eye",
        "full",
        "linspace",
        "ones",
        "zeros",
        "linalg.matrix_rank",
        "fft.fftfreq",
        "fft.rfftfreq",
    ]
)
