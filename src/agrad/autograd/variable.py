"""A mutable box around an array of a namespace without native autograd.

NumPy, CuPy, Dask and array-api-strict arrays have no "requires grad" flag, so
``agrad.variable(x)`` returns a :class:`Variable`: it holds the array in ``.value`` and
can be rebound, which is what lets ``inplace=True`` updates work on every backend.
Operators and the usual attributes forward to the held array and return plain arrays.
"""

from __future__ import annotations

import operator
from typing import Any

import array_api_compat

from agrad.namespace import array_namespace, register_box_type

__all__ = ["Variable"]


class Variable:
    """A differentiable parameter: a rebindable reference to one array."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __array_namespace__(self, *, api_version: str | None = None) -> Any:
        return array_namespace(self.value)

    @property
    def dtype(self) -> Any:
        return self.value.dtype

    @property
    def shape(self) -> tuple[int | None, ...]:
        return tuple(self.value.shape)

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def size(self) -> int | None:
        return self.value.size

    @property
    def device(self) -> Any:
        return array_api_compat.device(self.value)

    @property
    def T(self) -> Any:
        return self.value.T

    @property
    def mT(self) -> Any:
        return self.value.mT

    def __getitem__(self, key: Any) -> Any:
        return self.value[key]

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        return f"Variable({self.value!r})"

    def __float__(self) -> float:
        return float(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)


def _forward(op: Any, reflected: bool = False) -> Any:
    if reflected:
        return lambda self, other: op(_unwrap(other), self.value)
    return lambda self, other: op(self.value, _unwrap(other))


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, Variable) else x


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul"):
    _op = getattr(operator, _name)
    setattr(Variable, f"__{_name}__", _forward(_op))
    setattr(Variable, f"__r{_name}__", _forward(_op, reflected=True))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(Variable, f"__{_name}__", _forward(getattr(operator, _name)))
Variable.__neg__ = lambda self: -self.value
Variable.__pos__ = lambda self: +self.value
Variable.__abs__ = lambda self: abs(self.value)
Variable.__hash__ = object.__hash__
register_box_type(Variable, _unwrap)
