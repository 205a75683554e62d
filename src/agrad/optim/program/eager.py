"""Run program nodes one by one with the backend's own functions (the per-step scalars).

The laneless nodes of a program (:func:`~agrad.optim.program.ir.pre_nodes`: a step
count, ``t = count + 1``, bias corrections ``1 - beta ** t``, a schedule's value) are
computed once per step, before the lanes, by :func:`run_nodes`: each node is the
generic path's call on the same operands (Python operators for arithmetic, so a
reflected ``1 - x`` is ``x.__rsub__(1)`` as in the rule), so the values are the
generic path's, bitwise.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

from agrad.optim.program.ir import Program

__all__ = ["run_nodes", "as_number"]

_OPERATORS = {
    "add": operator.add,
    "subtract": operator.sub,
    "multiply": operator.mul,
    "divide": operator.truediv,
    "pow": operator.pow,
    "greater": operator.gt,
    "greater_equal": operator.ge,
    "less": operator.lt,
    "less_equal": operator.le,
    "equal": operator.eq,
    "not_equal": operator.ne,
}


def run_nodes(
    program: Program,
    ids: Sequence[int],
    xp: Any,
    state_leaves: Sequence[Any],
    scalars: Sequence[Any],
) -> dict[int, Any]:
    """The values of nodes ``ids`` (laneless: inputs are state leaves) on backend ``xp``."""
    values: dict[int, Any] = {}

    def val(a: tuple) -> Any:
        if a[0] == "n":
            return values[a[1]]
        return scalars[a[1]] if a[0] == "s" else a[1]

    for i in ids:
        n = program.nodes[i]
        op = n.op
        if op == "input":
            values[i] = state_leaves[n.attr("leaf")]
            continue
        args = [val(a) for a in n.args]
        if op in _OPERATORS and any(hasattr(x, "shape") for x in args):
            out = _OPERATORS[op](*_python_float_rules(xp, args))
        elif op == "astype":
            out = xp.astype(xp.asarray(args[0]), n.attr("dtype_to"))
        elif op == "asarray":
            out = xp.asarray(n.attr("value"), dtype=n.attr("dtype_to"))
        elif op == "full_like":
            out = xp.full_like(args[0], args[1], dtype=n.dtype)
        elif n.attrs and op not in ("where",):
            kw = {k: v for k, v in n.attrs if k not in ("reflected",)}
            out = getattr(xp, op)(*args, **kw)
        else:
            out = getattr(xp, op)(*args)
        values[i] = out
    return values


def _python_float_rules(xp: Any, args: list[Any]) -> list[Any]:
    """An integer 0-d array meeting a Python float is computed in float64, as the generic
    path computes it (there the count is a Python int: ``0.95 ** count`` is a Python
    float). NumPy, CuPy and Dask promote so already; torch would give its default float
    dtype (float32), a value rounded differently from the generic path's.
    """
    if not any(type(x) is float for x in args):
        return args
    return [
        xp.astype(x, xp.float64) if hasattr(x, "dtype") and _is_integer(x.dtype) else x
        for x in args
    ]


_INTEGER: dict[Any, bool] = {}


def _is_integer(dtype: Any) -> bool:
    try:
        return _INTEGER[dtype]
    except KeyError:
        pass
    except TypeError:  # not hashable
        return "int" in str(dtype).rsplit(".", 1)[-1]
    got = "int" in str(dtype).rsplit(".", 1)[-1]
    if len(_INTEGER) < 256:
        _INTEGER[dtype] = got
    return got


def as_number(x: Any) -> Any:
    """A 0-d array's value as a Python number of its kind (bool, int or float)."""
    dtype = str(getattr(x, "dtype", type(x))).rsplit(".", 1)[-1]
    if dtype.startswith("bool"):
        return bool(x)
    if "int" in dtype:
        return int(x)
    return float(x)
