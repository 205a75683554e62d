"""Faster NumPy functions for the tape's hot path, with NumPy's own results.

``np.sum(x)``, ``np.max(x)``, ``np.reshape(x, s)`` and ``array_api_compat``'s
``matrix_transpose`` go through Python layers (dispatch, keyword juggling) before they
reach the ufunc reduction or array method that does the work; on the small arrays of a
typical gradient step those layers cost as much as the work. For a plain
``numpy.ndarray`` the functions here call that final step directly, so results are
identical, bit for bit. Anything else (NumPy scalars, subclasses, unusual keywords)
takes NumPy's own function.

The tracing namespace over NumPy uses them as the base functions of its primitives,
so both the forward pass and the first-order backward pass (which runs the VJP rules
on raw arrays) get them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["FAST_NUMPY"]

_ndarray = np.ndarray
_add_reduce = np.add.reduce
_maximum_reduce = np.maximum.reduce
_minimum_reduce = np.minimum.reduce


def _sum(x: Any, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
    """``np.sum``: ``np.add.reduce`` for an ndarray (what ``np.sum`` itself calls)."""
    if type(x) is _ndarray:
        return _add_reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)
    return np.sum(x, axis=axis, dtype=dtype, keepdims=keepdims)


def _reduction(reduce: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    def extremum(x: Any, /, *, axis: Any = None, keepdims: bool = False) -> Any:
        if type(x) is _ndarray:
            return reduce(x, axis=axis, keepdims=keepdims)
        return fallback(x, axis=axis, keepdims=keepdims)

    extremum.__name__ = extremum.__qualname__ = fallback.__name__
    extremum.__doc__ = f"``np.{fallback.__name__}``: the ufunc reduction for an ndarray."
    return extremum


def _reshape(x: Any, /, shape: Any, *, copy: bool | None = None) -> Any:
    """``np.reshape``: the ``reshape`` method for an ndarray when no copy is asked about."""
    if copy is None and type(x) is _ndarray:
        return x.reshape(shape)
    return np.reshape(x, shape, copy=copy)


def _matrix_transpose(x: Any, /) -> Any:
    """The last two axes swapped (``swapaxes`` method for an ndarray)."""
    if x.ndim < 2:
        raise ValueError("x must be at least 2-dimensional for matrix_transpose")
    if type(x) is _ndarray:
        return x.swapaxes(-1, -2)
    return np.swapaxes(x, -1, -2)


#: Name in the namespace -> the faster function with the same results.
FAST_NUMPY: dict[str, Callable[..., Any]] = {
    "sum": _sum,
    "max": _reduction(_maximum_reduce, np.max),
    "min": _reduction(_minimum_reduce, np.min),
    "reshape": _reshape,
    "matrix_transpose": _matrix_transpose,
}
