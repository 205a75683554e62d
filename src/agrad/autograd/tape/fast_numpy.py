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


_REDUCTION_KEYWORDS = frozenset(("axis", "dtype", "keepdims"))


def _sum(x: Any, *args: Any, **kwargs: Any) -> Any:
    """``np.sum``: ``np.add.reduce`` for an ndarray (what ``np.sum`` itself calls)."""
    if type(x) is _ndarray and not args and kwargs.keys() <= _REDUCTION_KEYWORDS:
        get = kwargs.get
        return _add_reduce(x, axis=get("axis"), dtype=get("dtype"), keepdims=get("keepdims", False))
    return np.sum(x, *args, **kwargs)


def _reduction(reduce: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    def extremum(x: Any, *args: Any, **kwargs: Any) -> Any:
        if type(x) is _ndarray and not args and kwargs.keys() <= _REDUCTION_KEYWORDS:
            if kwargs.get("dtype") is None:
                return reduce(x, axis=kwargs.get("axis"), keepdims=kwargs.get("keepdims", False))
        return fallback(x, *args, **kwargs)

    extremum.__name__ = extremum.__qualname__ = fallback.__name__
    extremum.__doc__ = f"``np.{fallback.__name__}``: the ufunc reduction for an ndarray."
    return extremum


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
    "sum": _sum,
    "max": _reduction(_maximum_reduce, np.max),
    "min": _reduction(_minimum_reduce, np.min),
    "reshape": _reshape,
    "matrix_transpose": _matrix_transpose,
}
