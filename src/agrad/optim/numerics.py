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
    "concrete_value",
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


def resolve(value: Any, count: int, fn: str = "agrad.optim", name: str = "lr") -> Any:
    """A hyperparameter's value at step ``count`` (0-based): calls it if it is a schedule.

    A schedule's value is checked at every step as the constructor checks a constant
    (a finite number >= 0, or a 0-d array whose value, where known, is one), with the
    same message, before anything is computed or written.
    """
    if not callable(value):
        return value
    host = getattr(count, "apply", None)
    if host is not None and callable(host):  # a recorded count: the schedule runs per step
        return host(lambda c: resolve(value, c, fn, name))
    out = python_number(value(count))
    check_lr(fn, out, name, schedule_step=count)
    return out


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


def check_lr(fn: str, lr: Any, name: str = "lr", schedule_step: int | None = None) -> None:
    """A learning rate is a finite float >= 0, a 0-d array, or a schedule (a callable).

    A 0-d array's value is checked too where it is known (a NumPy, torch, CuPy or
    array-api-strict array; not a JAX tracer or an array inside a gradient trace), with
    the message a Python number gets. ``schedule_step`` says which step of a schedule
    gave ``lr``, for the message.
    """
    at = "" if schedule_step is None else f" (the schedule's value at step {schedule_step})"
    if callable(lr) and schedule_step is None:
        return
    if hasattr(lr, "shape"):
        if tuple(lr.shape) != ():
            msg = f"{fn}: invalid {name}{at}: an array of shape {tuple(lr.shape)} (expected a 0-d array)"
            raise ValueError(msg)
        value = concrete_value(lr)
        if value is not None and not (math.isfinite(value) and value >= 0.0):
            _fail(fn, name + at, value, "a finite number >= 0")
        return
    if not is_scalar(lr):
        what = (
            "a float or a 0-d array"
            if schedule_step is not None
            else "a float, a 0-d array or a schedule"
        )
        msg = f"{fn}: {name}{at} must be {what}, got {type(lr).__name__}"
        raise TypeError(msg)
    if not (math.isfinite(lr) and lr >= 0.0):
        _fail(fn, name + at, lr, "a finite number >= 0")


def concrete_value(x: Any) -> float | None:
    """The value of a 0-d real array as a float, or ``None`` where it is not known yet.

    JAX tracers, Dask arrays (computing would cost a pass) and arrays inside a gradient
    trace have no value to read without side effects; NumPy, torch, CuPy and
    array-api-strict arrays do.
    """
    mod = type(x).__module__.split(".")[0]
    if mod not in ("numpy", "torch", "cupy", "array_api_strict"):
        return None
    if mod == "torch":
        x = x.detach()
    try:
        value = float(x)
    except (TypeError, ValueError, RuntimeError):
        return None
    return value


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
