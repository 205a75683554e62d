"""Faster NumPy functions for the tape's hot path, with NumPy's own results.

``np.sum(x)``, ``np.max(x)``, ``np.reshape(x, s)`` and ``array_api_compat``'s
``matrix_transpose`` go through Python layers (dispatch, keyword juggling) before they
reach the ufunc reduction or array method that does the work; on the small arrays of a
typical gradient step those layers cost as much as the work. For a plain
``numpy.ndarray`` and the standard's arguments the functions here call that final
step directly, so results are identical, bit for bit. Anything else (NumPy scalars,
subclasses, positional or NumPy-only arguments such as ``out=``, ``initial=``,
``order=``) takes NumPy's own function with the arguments as given.

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


def _reduction(
    reduce: Callable[..., Any], fallback: Callable[..., Any], keywords: frozenset[str]
) -> Callable[..., Any]:
    """``fallback`` (``np.sum`` ...), as the ufunc reduction it ends in for an ndarray.

    Only calls whose keywords are all in ``keywords`` (the standard's) take the short
    way; ``np.sum`` and the others pass ``dtype=None`` and ``keepdims`` on to that same
    reduction, so the results are the same bits.
    """

    def reduction(x: Any, *args: Any, **kwargs: Any) -> Any:
        if type(x) is _ndarray and not args and kwargs.keys() <= keywords:
            get = kwargs.get
            return reduce(x, axis=get("axis"), dtype=get("dtype"), keepdims=get("keepdims", False))
        return fallback(x, *args, **kwargs)

    reduction.__name__ = reduction.__qualname__ = fallback.__name__
    reduction.__doc__ = f"``np.{fallback.__name__}``: the ufunc reduction for an ndarray."
    return reduction


def _reshape(x: Any, *args: Any, **kwargs: Any) -> Any:
    """``np.reshape``: the ``reshape`` method for an ndarray when only a shape is given."""
    if type(x) is _ndarray and len(args) == 1 and not kwargs:
        return x.reshape(args[0])
    return np.reshape(x, *args, **kwargs)


def _matrix_transpose(x: Any, /) -> Any:
    """The last two axes swapped (``swapaxes`` method for an ndarray)."""
    if x.ndim < 2:
        raise ValueError("x must be at least 2-dimensional for matrix_transpose")
    if type(x) is _ndarray:
        return x.swapaxes(-1, -2)
    return np.swapaxes(x, -1, -2)


#: Name in the namespace -> the faster function with the same results.
FAST_NUMPY: dict[str, Callable[..., Any]] = {
    "sum": _reduction(_add_reduce, np.sum, frozenset(("axis", "dtype", "keepdims"))),
    "max": _reduction(_maximum_reduce, np.max, frozenset(("axis", "keepdims"))),
    "min": _reduction(_minimum_reduce, np.min, frozenset(("axis", "keepdims"))),
    "reshape": _reshape,
    "matrix_transpose": _matrix_transpose,
}
