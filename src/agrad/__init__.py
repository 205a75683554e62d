"""agrad: gradients and optimizer updates written once against the Python Array API standard.

The same code differentiates and trains on NumPy, PyTorch, CuPy, JAX, Dask and
array-api-strict: torch and JAX through their own autograd, the others through agrad's
reverse-mode tape. Importing agrad imports no framework.
"""

from agrad import optim
from agrad.autograd import (
    EscapedTracerError,
    Variable,
    checkpoint,
    custom_vjp,
    elementwise_grad,
    execute_with_gradients,
    grad,
    hessian,
    hvp,
    is_variable,
    jacobian,
    jvp,
    stop_gradient,
    value_and_grad,
    variable,
    vjp,
)
from agrad.namespace import array_namespace
from agrad.updates import adam_update, gradient_descent_update

__version__ = "0.1.0"

__all__ = [
    "EscapedTracerError",
    "Variable",
    "__version__",
    "adam_update",
    "array_namespace",
    "checkpoint",
    "custom_vjp",
    "elementwise_grad",
    "execute_with_gradients",
    "grad",
    "gradient_descent_update",
    "hessian",
    "hvp",
    "is_variable",
    "jacobian",
    "jvp",
    "optim",
    "stop_gradient",
    "value_and_grad",
    "variable",
    "vjp",
]
