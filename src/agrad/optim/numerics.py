"""Arithmetic shared by the update rules, in the evaluation order torch uses.

Hyperparameters are Python floats (multiplied with operators so float32 stays
float32) or, for the learning rate, a 0-d array (possibly traced, so a learning rate
can be learned through a step) or a schedule: a callable of the step count.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

__all__ = [
    "check_betas",
    "check_nonnegative",
    "check_positive",
    "check_unit_interval",
    "check_lr",
    "is_scalar",
    "lerp",
    "python_number",
    "python_numbers",
    "resolve",
    "scale",
]


def is_scalar(x: Any) -> bool:
    """True for a Python real number (not a bool, not an array)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def scale(xp: ModuleType, x: Any, s: Any) -> Any:
    """``x * s``: an operator for a Python scalar (keeps ``x``'s dtype), ``xp.multiply`` otherwise."""
    return x * s if is_scalar(s) else xp.multiply(x, s)


def lerp(xp: ModuleType, a: Any, b: Any, w: float) -> Any:
    """``torch.lerp(a, b, w)`` exactly: ``a + w (b - a)`` for ``w < 0.5``, else ``b - (b - a)(1 - w)``."""
    if abs(w) < 0.5:
        return xp.add(a, xp.subtract(b, a) * w)
    return xp.subtract(b, xp.subtract(b, a) * (1.0 - w))


def resolve(value: Any, count: int) -> Any:
    """A hyperparameter's value at step ``count`` (0-based): calls it if it is a schedule."""
    return python_number(value(count)) if callable(value) else value


def python_number(x: Any) -> Any:
    """A NumPy scalar (``np.float64(0.1)``, ``np.int64(3)``) as a Python ``float`` or ``int``.

    NumPy scalars carry NumPy's namespace and dtype; as hyperparameters of torch or
    JAX arrays they would meet another library's arrays. Anything else (0-d arrays
    included) is returned as it is; tuples and lists are converted element by element.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return x
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.integer):
        return int(x)
    if type(x) in (tuple, list):
        return type(x)(python_number(v) for v in x)
    return x


F = TypeVar("F", bound=Callable[..., Any])


def python_numbers(fn: F) -> F:
    """Decorate a constructor so every NumPy-scalar argument arrives as a Python number."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        args = tuple(python_number(a) for a in args)
        kwargs = {k: python_number(v) for k, v in kwargs.items()}
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _fail(fn: str, name: str, value: Any, expected: str) -> None:
    msg = f"{fn}: invalid {name}: {value!r} (expected {expected})"
    raise ValueError(msg)


def check_lr(fn: str, lr: Any, name: str = "lr") -> None:
    """A learning rate is a finite float >= 0, a 0-d array, or a schedule (a callable)."""
    if callable(lr) or hasattr(lr, "shape"):
        if hasattr(lr, "shape") and tuple(lr.shape) != ():
            msg = f"{fn}: invalid {name}: an array of shape {tuple(lr.shape)} (expected a 0-d array)"
            raise ValueError(msg)
        return
    if not is_scalar(lr):
        msg = f"{fn}: {name} must be a float, a 0-d array or a schedule, got {type(lr).__name__}"
        raise TypeError(msg)
    if not (math.isfinite(lr) and lr >= 0.0):
        _fail(fn, name, lr, "a finite number >= 0")


def _check_number(fn: str, name: str, value: Any) -> None:
    if not is_scalar(value):
        msg = f"{fn}: {name} must be a Python number, got {type(value).__name__}"
        raise TypeError(msg)


def check_nonnegative(fn: str, **values: Any) -> None:
    """Each value is a finite number >= 0."""
    for name, v in values.items():
        _check_number(fn, name, v)
        if not (math.isfinite(v) and v >= 0.0):
            _fail(fn, name, v, "a finite number >= 0")


def check_positive(fn: str, **values: Any) -> None:
    """Each value is a finite number > 0."""
    for name, v in values.items():
        _check_number(fn, name, v)
        if not (math.isfinite(v) and v > 0.0):
            _fail(fn, name, v, "a finite number > 0")


def check_unit_interval(fn: str, *, closed: bool = False, **values: Any) -> None:
    """Each value is in ``[0, 1)`` (``[0, 1]`` with ``closed``)."""
    for name, v in values.items():
        _check_number(fn, name, v)
        ok = 0.0 <= v <= 1.0 if closed else 0.0 <= v < 1.0
        if not ok:
            _fail(fn, name, v, "a number in [0, 1]" if closed else "a number in [0, 1)")


def check_betas(fn: str, betas: Any) -> tuple[float, float]:
    """``betas`` is a pair of numbers in ``[0, 1)``."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        msg = f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}"
        raise ValueError(msg) from None
    check_unit_interval(fn, **{"betas[0]": b1, "betas[1]": b2})
    return float(b1), float(b2)
