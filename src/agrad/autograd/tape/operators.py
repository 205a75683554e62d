"""Python operators of traced arrays, bound to their tracing namespace's functions.

``OPERATORS`` is the one table of differentiable binary operators: Python's name of the
operator (``add`` for ``+``) and the namespace function it calls. Each gives
``__op__``, the reflected ``__rop__`` and the in-place ``__iop__``, which is functional:
``x += y`` rebinds ``x`` to a new traced array. Comparisons, bitwise operators and
``//`` give results that carry no gradient, so they apply to the raw values (the result
is a constant of the live trace).

The namespace computes the functions of ``OPERATORS`` with the operators themselves
(:func:`computed_by_operator`), so a Python scalar operand works on every api_version
(array-api-strict 2023.12 refuses scalars in ``add(x, 2.0)``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from agrad.autograd.tape.traced import TracedArray, box_constants, strip

__all__ = ["OPERATORS", "bind_operators", "computed_by_operator"]

OPERATORS: dict[str, str] = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "divide",
    "mod": "remainder",
    "pow": "pow",
    "matmul": "matmul",
}
_UNARY = {"neg": "negative", "pos": "positive", "abs": "abs"}
_COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")
_UNTRACED_BINARY = ("floordiv", "and", "or", "xor", "lshift", "rshift")
_OPERATOR_OF = {name: op for op, name in OPERATORS.items()}


def computed_by_operator(name: str, function: Any) -> Any:
    """The base function of the namespace's ``name``: its operator, if it has one.

    A raw left operand with a traced right one (nested traces) goes to the traced
    array's reflected operator, since array-api-strict raises on foreign operands
    instead of deferring. ``_agrad_plain`` is the operator alone, for raw operands.
    """
    op = _OPERATOR_OF.get(name)
    if op is None:
        return function
    forward, reflected = getattr(operator, op), f"__r{op}__"

    def by_operator(x: Any, y: Any) -> Any:
        if isinstance(y, TracedArray) and not isinstance(x, TracedArray):
            return getattr(y, reflected)(x)
        return forward(x, y)

    by_operator._agrad_plain = forward  # type: ignore[attr-defined]
    return by_operator


def _reflected(function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def op(self: Any, other: Any) -> Any:
        return function(other, self)

    return op


def _untraced(method: str) -> Callable[[Any, Any], Any]:
    """A binary operator whose result carries no gradient: applied to the raw values."""

    def op(self: Any, other: Any) -> Any:
        return box_constants(self._ns, getattr(strip(self), method)(strip(other)))

    return op


def _invert(self: Any) -> Any:
    return box_constants(self._ns, ~strip(self))


def bind_operators(cls: type, functions: dict[str, Any]) -> None:
    """Give the traced array class ``cls`` every operator, from the namespace ``functions``."""
    for op, name in OPERATORS.items():
        function = functions[name]
        setattr(cls, f"__{op}__", function)
        setattr(cls, f"__r{op}__", _reflected(function))
        setattr(cls, f"__i{op}__", function)
    for op, name in _UNARY.items():
        setattr(cls, f"__{op}__", functions[name])
    for op in _COMPARISONS:
        setattr(cls, f"__{op}__", _untraced(f"__{op}__"))
    for op in _UNTRACED_BINARY:
        setattr(cls, f"__{op}__", _untraced(f"__{op}__"))
        setattr(cls, f"__r{op}__", _untraced(f"__r{op}__"))
        setattr(cls, f"__i{op}__", _untraced(f"__{op}__"))
    cls.__invert__ = _invert
