"""Automatic differentiation: adapters for native autograds and agrad's own tape."""

from agrad.autograd.api import (
    execute_with_gradients,
    grad,
    is_variable,
    stop_gradient,
    value_and_grad,
    variable,
)
from agrad.autograd.checkpoint import checkpoint
from agrad.autograd.custom import custom_vjp
from agrad.autograd.tape.traced import EscapedTracerError
from agrad.autograd.transformations import elementwise_grad, hessian, hvp, jacobian, jvp, vjp
from agrad.autograd.variable import Variable

__all__ = [
    "EscapedTracerError",
    "Variable",
    "checkpoint",
    "custom_vjp",
    "elementwise_grad",
    "execute_with_gradients",
    "grad",
    "hessian",
    "hvp",
    "is_variable",
    "jacobian",
    "jvp",
    "stop_gradient",
    "value_and_grad",
    "variable",
    "vjp",
]
