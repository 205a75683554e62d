"""``__array_ufunc__`` of traced arrays: NumPy and scipy.special ufuncs, differentiable.

Installed on the traced arrays of ``agrad.numpy`` and ``agrad.array_api_strict`` (whose
arrays are NumPy arrays underneath). A NumPy ufunc called on such a traced array (``np.exp(x)``, ``raw + x``,
``scipy.special.erf(x)``) comes here instead of running on the values:

- a ufunc of the standard under NumPy's name (``np.add``, ``np.arctan2``, ``np.power``
  ...) calls the namespace's function (:data:`STANDARD`);
- a ``scipy.special`` ufunc with a rule calls ``ns.special.<name>``, and a NumPy ufunc
  outside the standard with one (``np.cbrt``, ``np.exp2`` ...) its own primitive
  (:mod:`~agrad.autograd.tape.special`);
- anything else, and any ufunc method but a plain call (``reduce``, ``at`` ...) or a
  call with ``out=``, ``where=`` or ``dtype=``, raises ``NotImplementedError`` naming the
  ufunc, never a silent wrong gradient.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from agrad.autograd.tape.special import NUMPY_UFUNCS, RULES, UFUNC_NAMES, make_function

__all__ = ["STANDARD", "array_ufunc_for"]

#: NumPy ufunc name -> the standard function it is (where the names differ or agree).
STANDARD: dict[str, str] = {
    **{
        n: n
        for n in [
            "add",
            "subtract",
            "multiply",
            "divide",
            "negative",
            "positive",
            "exp",
            "expm1",
            "log",
            "log1p",
            "log2",
            "log10",
            "sqrt",
            "square",
            "sin",
            "cos",
            "tan",
            "sinh",
            "cosh",
            "tanh",
            "hypot",
            "logaddexp",
            "maximum",
            "minimum",
            "copysign",
            "nextafter",
            "remainder",
            "floor_divide",
            "reciprocal",
            "matmul",
            "floor",
            "ceil",
            "trunc",
            "sign",
            "signbit",
            "isnan",
            "isinf",
            "isfinite",
            "equal",
            "not_equal",
            "less",
            "less_equal",
            "greater",
            "greater_equal",
            "logical_and",
            "logical_or",
            "logical_xor",
            "logical_not",
            "bitwise_and",
            "bitwise_or",
            "bitwise_xor",
            "bitwise_left_shift",
            "bitwise_right_shift",
            "vecdot",
            "conj",
        ]
    },
    "true_divide": "divide",
    "power": "pow",
    "absolute": "abs",
    "fabs": "abs",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "arcsinh": "asinh",
    "arccosh": "acosh",
    "arctanh": "atanh",
    "arctan2": "atan2",
    "mod": "remainder",
    "conjugate": "conj",
    "rint": "round",
    "invert": "bitwise_invert",
    "left_shift": "bitwise_left_shift",
    "right_shift": "bitwise_right_shift",
}


_RULE_NAMES = {v: k for k, v in UFUNC_NAMES.items()}


def _is_numpy_ufunc(ufunc: Any) -> bool:
    np = sys.modules["numpy"]
    return getattr(np, ufunc.__name__, None) is ufunc


def _is_scipy_special(ufunc: Any) -> bool:
    special = sys.modules.get("scipy.special._ufuncs")
    return special is not None and getattr(special, ufunc.__name__, None) is ufunc


def array_ufunc_for(ns: Any) -> Callable[..., Any]:
    """The ``__array_ufunc__`` of the traced arrays of the tracing namespace ``ns``."""
    cache: dict[Any, Callable[..., Any]] = {}

    def resolve(ufunc: Any) -> Callable[..., Any]:
        name = ufunc.__name__
        if _is_numpy_ufunc(ufunc):
            if name in STANDARD:
                return getattr(ns, STANDARD[name])
            if name in NUMPY_UFUNCS:
                return make_function(f"numpy.{name}", ufunc, NUMPY_UFUNCS[name], ns, "numpy")
            where = f"numpy.{name}"
        elif _is_scipy_special(ufunc):
            special = getattr(ns, "special", None)
            rule_name = _RULE_NAMES.get(name, name)
            if rule_name in RULES and special is not None and hasattr(special, rule_name):
                return getattr(special, rule_name)
            where = f"scipy.special.{name}"
        else:
            where = f"the ufunc {name!r}"
        msg = (
            f"{where} has no gradient rule in agrad, so it cannot be applied to a traced "
            "array; call it outside the differentiated function or on "
            "agrad.stop_gradient(x) (docs/differentiability.md lists the ufuncs agrad "
            "differentiates)"
        )
        raise NotImplementedError(msg)

    def __array_ufunc__(self: Any, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if method != "__call__" or kwargs:
            extra = f".{method}" if method != "__call__" else ""
            given = f" with {', '.join(sorted(kwargs))}=" if kwargs else ""
            msg = (
                f"numpy ufunc {ufunc.__name__}{extra}{given} on a traced array: only plain "
                "calls without out=, where=, dtype= are differentiable; use the namespace's "
                "functions (xp.sum for add.reduce ...)"
            )
            raise NotImplementedError(msg)
        fn = cache.get(ufunc)
        if fn is None:
            fn = cache[ufunc] = resolve(ufunc)
        return fn(*inputs)

    return __array_ufunc__
