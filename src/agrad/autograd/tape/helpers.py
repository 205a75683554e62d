"""Array helpers shared by the VJP rules and the derived functions.

Every helper that takes ``ns`` computes with it (the tracing namespace when an enclosing
trace records the backward pass), so what it returns stays differentiable. Shapes are
read from the recorded values and never traced.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

__all__ = [
    "SCALARS",
    "along",
    "batch_axes",
    "conj",
    "dual_norm",
    "fft_axes",
    "fit",
    "inverse_permutation",
    "is_complex",
    "keep_reduced_dims",
    "normalize_axes",
    "reduced_count",
    "restore_reduced",
    "shape_of",
    "unbroadcast",
]

#: Python scalars: operands that the rules treat as constants of any shape.
SCALARS = (bool, int, float, complex)


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of an array; ``()`` for a Python scalar."""
    return tuple(getattr(x, "shape", ()))


_batch = threading.local()


def batch_axes() -> int:
    """How many leading axes of every cotangent are a batch (1 in a batched Jacobian pass)."""
    return getattr(_batch, "axes", 0)


def unbroadcast(ns: Any, g: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``g`` over the axes that broadcasting added or stretched to reach ``g.shape``.

    The leading :func:`batch_axes` of ``g`` are kept: the result has shape
    ``g.shape[:batch_axes()] + shape``.
    """
    gshape = shape_of(g)
    keep = getattr(_batch, "axes", 0)
    target = gshape[:keep] + tuple(shape)
    if gshape == target:
        return g
    lead = len(gshape) - len(shape)
    axes = tuple(range(keep, lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and gshape[lead + i] != 1
    )
    if axes:
        g = ns.sum(g, axis=axes)
    return g if shape_of(g) == target else ns.reshape(g, target)


# id(dtype) -> (dtype, whether it is complex): the answer never changes, and comparing a
# dtype with ``ns.complex128`` is slow. Keyed by identity (dtypes of two libraries can
# hash and even compare alike); the entry holds its dtype, so the id is not reused.
_COMPLEX_DTYPES: dict[int, tuple[Any, bool]] = {}


def _complex_dtype(ns: Any, dt: Any) -> bool:
    entry = _COMPLEX_DTYPES.get(id(dt))
    if entry is not None and entry[0] is dt:
        return entry[1]
    answer = bool(dt == ns.complex128 or dt == ns.complex64)
    if len(_COMPLEX_DTYPES) < 1024:  # dtypes are few; never grow without bound
        _COMPLEX_DTYPES[id(dt)] = (dt, answer)
    return answer


def is_complex(ns: Any, x: Any) -> bool:
    """Whether ``x`` (an array or a Python scalar) is complex."""
    if isinstance(x, SCALARS):
        return isinstance(x, complex)
    return _complex_dtype(ns, x.dtype)


def conj(ns: Any, x: Any) -> Any:
    """``conj(x)`` for complex ``x``; ``x`` itself otherwise (no work on the real path)."""
    if isinstance(x, SCALARS):
        return x.conjugate()
    return ns.conj(x) if _complex_dtype(ns, x.dtype) else x


def _is_floating(ns: Any, dtype: Any) -> bool:
    return dtype in (ns.float64, ns.float32, ns.complex128, ns.complex64)


def fit(ns: Any, g: Any, x: Any) -> Any:
    """``g`` as the cotangent of ``x``: broadcast axes summed, real if ``x`` is, ``x``'s dtype."""
    try:
        if g.shape == x.shape and g.dtype == x.dtype:
            return g  # the common case: nothing to sum, cast or take the real part of
    except AttributeError:  # a Python scalar
        pass
    g = unbroadcast(ns, g, shape_of(x))
    if g.dtype != x.dtype:
        if is_complex(ns, g) and not is_complex(ns, x):
            g = ns.real(g)
        if g.dtype != x.dtype and _is_floating(ns, x.dtype):
            g = ns.astype(g, x.dtype)
    return g


def normalize_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """``axis`` of a reduction as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(sorted(a % ndim if ndim else 0 for a in axis))


def reduced_count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    """How many elements a reduction over ``axes`` of an array of ``shape`` combines."""
    return math.prod(shape[a] for a in axes)


def restore_reduced(ns: Any, g: Any, x: Any, axis: Any, keepdims: bool) -> Any:
    """Broadcast the cotangent of a reduction back to the input's shape."""
    shape = shape_of(x)
    return ns.broadcast_to(keep_reduced_dims(ns, g, shape, axis, keepdims), shape)


def keep_reduced_dims(ns: Any, g: Any, shape: tuple[int, ...], axis: Any, keepdims: bool) -> Any:
    """The cotangent of a reduction of an array of ``shape``, with the reduced axes kept (size 1)."""
    if keepdims:
        return g
    axes = normalize_axes(axis, len(shape))
    return ns.reshape(g, tuple(1 if i in axes else n for i, n in enumerate(shape)))


def inverse_permutation(perm: Sequence[int]) -> tuple[int, ...]:
    """The permutation that undoes ``perm``."""
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def along(axis: int, ndim: int, index: Any) -> tuple[Any, ...]:
    """The key that applies ``index`` (an integer or a slice) to ``axis`` only."""
    return (slice(None),) * (axis % ndim) + (index, Ellipsis)


def fft_axes(
    x: Any, s: Sequence[int] | None, axes: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int | None, ...]]:
    """``(axes, s)`` of an n-dimensional FFT with the standard's defaults filled in.

    Without ``axes``: every axis, or the last ``len(s)`` when ``s`` is given; without
    ``s``: ``None`` (the input's length) on every one of them.
    """
    if axes is None:
        axes = tuple(range(x.ndim)) if s is None else tuple(range(x.ndim - len(s), x.ndim))
    s = (None,) * len(axes) if s is None else tuple(s)
    return tuple(axes), s


_DUAL_NORMS = {"backward": "forward", "forward": "backward", "ortho": "ortho", None: "forward"}


def dual_norm(norm: str | None) -> str:
    """The FFT normalisation whose transform is the adjoint's: ``backward`` <-> ``forward``.

    With scale ``c`` on the forward transform ``F`` (``F* F = n I``), the adjoint of
    ``c F`` is ``c F* = (c n) F^{-1}``: ``ortho`` is its own dual. ``None`` is ``backward``.
    """
    return _DUAL_NORMS[norm]
