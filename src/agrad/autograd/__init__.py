"""Automatic differentiation: adapters for native autograds and agrad's own tape."""

from agrad.autograd.api import (
    execute_with_gradients,
    grad,
    is_variable,
    stop_gradient,
    value_and_grad,
    variable,
)
from agrad.autograd.tape.traced import EscapedTracerError
from agrad.autograd.variable import Variable

__all__ = [
    "EscapedTracerError",
    "Variable",
    "execute_with_gradients",
    "grad",
    "is_variable",
    "stop_gradient",
    "value_and_grad",
    "variable",
]
