"""Arithmetic shared by the update rules, in the evaluation order torch uses.

Hyperparameters are Python floats (multiplied with operators so float32 stays
float32) or 0-d arrays (injected by :func:`agrad.optim.inject_hyperparams`, possibly
traced, so a learning rate can be learned through a step), which :func:`scale`,
:func:`add_scalar` and :func:`div_scalar` round to each leaf's dtype where they meet
it; the learning rate may also be a schedule: a callable of the step count.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

import array_api_compat

from agrad._arrays import device_or_none

__all__ = [
    "add_scalar",
    "div_scalar",
    "full_scalar",
    "check_betas",
    "hyper_float",
    "is_hyper_array",
    "static_int",
    "check_nonnegative",
    "check_positive",
    "check_unit_interval",
    "check_lr",
    "concrete_value",
    "count_like",
    "count_value",
    "is_count",
    "leaf_scalar",
    "next_count",
    "scalar_dtype",
    "scalar_like",
    "step_number",
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
    """``x * s``: an operator for a Python scalar (keeps ``x``'s dtype), ``xp.multiply`` otherwise.

    A 0-d array ``s`` of another dtype (a float64 bias correction, a learning rate) is
    rounded to ``x``'s dtype first, so float32 stays float32.
    """
    if type(s) in (int, float):  # not a NumPy float64 scalar: NumPy would promote with it
        return x * s
    return xp.multiply(x, leaf_scalar(xp, s, x))


def add_scalar(xp: ModuleType, x: Any, s: Any) -> Any:
    """``x + s`` for a Python number or a 0-d array ``s`` (rounded to ``x``'s dtype first)."""
    if type(s) in (int, float):
        return x + s
    return xp.add(x, leaf_scalar(xp, s, x))


def div_scalar(xp: ModuleType, x: Any, s: Any) -> Any:
    """``x / s`` for a Python number or a 0-d array ``s`` (rounded to ``x``'s dtype first)."""
    if type(s) in (int, float):
        return x / s
    return xp.divide(x, leaf_scalar(xp, s, x))


def full_scalar(xp: ModuleType, like: Any, v: Any) -> Any:
    """``full_like(like, v)`` for a Python number or a 0-d array ``v`` (in ``like``'s dtype)."""
    if is_hyper_array(v):
        return xp.add(xp.zeros_like(like), leaf_scalar(xp, v, like))
    return xp.full_like(like, v)


def is_hyper_array(x: Any) -> bool:
    """Whether a hyperparameter is an array (an injected, possibly traced, 0-d value)."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def lerp(xp: ModuleType, a: Any, b: Any, w: Any) -> Any:
    """``torch.lerp(a, b, w)`` exactly: ``a + w (b - a)`` for ``|w| < 0.5``, else ``b - (b - a)(1 - w)``.

    ``w`` is a Python number or a 0-d array (an injected hyperparameter); for an array
    both forms are computed and one is selected, so it traces under ``jax.jit``.
    """
    if is_hyper_array(w):
        diff = xp.subtract(b, a)
        low = xp.add(a, scale(xp, diff, w))
        high = xp.subtract(b, scale(xp, diff, 1.0 - w))
        return xp.where(xp.abs(leaf_scalar(xp, w, a)) < 0.5, low, high)
    if abs(w) < 0.5:
        return xp.add(a, xp.subtract(b, a) * w)
    return xp.subtract(b, xp.subtract(b, a) * (1.0 - w))


def resolve(value: Any, count: Any, fn: str = "agrad.optim", name: str = "lr") -> Any:
    """A hyperparameter's value at step ``count`` (0-based): calls it if it is a schedule.

    ``count`` is an int or a 0-d integer array. Where its value is known (not a JAX
    tracer, not a symbolic array) the schedule gets a Python int, so any Python
    function of the step works eagerly; under ``jax.jit`` it gets the traced array,
    which agrad's own schedules (:mod:`agrad.optim.schedules`) accept. A schedule's
    value is checked at every step as the constructor checks a constant (a finite
    number >= 0, or a 0-d array whose value, where known, is one), with the same
    message, before anything is computed or written.
    """
    if not callable(value):
        return value
    host = getattr(count, "apply", None)
    if host is not None and callable(host):  # a recorded Python count: runs per step
        return host(lambda c: resolve(value, c, fn, name))
    known = count_value(count)
    out = python_number(value(count if known is None else known))
    check_lr(fn, out, name, schedule_step=known)
    return out


# -- step counts: 0-d integer arrays, so every rule runs under jax.jit and lax.scan --

_SCALAR_DTYPES: dict[tuple, Any] = {}


def scalar_dtype(xp: ModuleType, like: Any) -> Any:
    """The dtype per-step scalars (bias corrections, schedules) are computed in.

    ``float64`` where the library offers it on ``like``'s device (so the values are
    those of torch.optim's Python-float arithmetic, to the bit), else ``float32``
    (JAX without x64, torch on MPS): the precision optax uses there.
    """
    device = device_or_none(like)
    key: tuple = (id(xp), repr(device))
    if array_api_compat.is_jax_namespace(xp):  # x64 can be switched on and off at run time
        key += (bool(sys.modules["jax"].config.jax_enable_x64),)
    out = _SCALAR_DTYPES.get(key)
    if out is None:
        out = getattr(xp, "float64", None)
        try:
            info = xp.__array_namespace_info__()
            kinds = info.dtypes(kind="real floating", device=device)
            out = kinds.get("float64", kinds.get("float32"))
        except Exception:  # no inspection API: float64 where the namespace has it
            pass
        if out is None:
            out = xp.float32
        _SCALAR_DTYPES[key] = out
    return out


def scalar_like(xp: ModuleType, like: Any, value: Any) -> Any:
    """``value`` as a 0-d array of :func:`scalar_dtype` on ``like``'s device."""
    dtype = scalar_dtype(xp, like)
    return xp.asarray(value, dtype=dtype, device=array_api_compat.device(like))


def count_like(xp: ModuleType, like: Any, value: int = 0) -> Any:
    """A step count: a 0-d ``int32`` array holding ``value`` on ``like``'s device."""
    return xp.asarray(value, dtype=xp.int32, device=array_api_compat.device(like))


def is_count(x: Any) -> bool:
    """Whether ``x`` can be a step count: an int >= 0 or a 0-d integer array."""
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return x >= 0
    shape = getattr(x, "shape", None)
    if shape is None or tuple(shape) != ():
        return False
    try:
        xp = array_api_compat.array_namespace(x)
        return bool(xp.isdtype(x.dtype, "integral"))
    except Exception:
        return "int" in str(x.dtype)


def next_count(xp: ModuleType, count: Any, like: Any) -> Any:
    """``count + 1`` as a 0-d ``int32`` array on ``like``'s device (``count`` an int or array)."""
    if isinstance(count, int):
        return count_like(xp, like, count + 1)
    if count.dtype != xp.int32:
        count = xp.astype(count, xp.int32)
    return count + 1


def as_count(xp: ModuleType, count: Any, like: Any) -> Any:
    """``count`` as a 0-d ``int32`` array on ``like``'s device (it may be a Python int)."""
    if isinstance(count, int):
        return count_like(xp, like, count)
    return count if count.dtype == xp.int32 else xp.astype(count, xp.int32)


def step_number(xp: ModuleType, count: Any, like: Any) -> Any:
    """The 1-based step :math:`t = c + 1` of count ``c`` as a 0-d float of :func:`scalar_dtype`."""
    return xp.astype(next_count(xp, count, like), scalar_dtype(xp, like))


def count_value(count: Any) -> int | None:
    """A count's value as a Python int where it is known (not a tracer), else ``None``."""
    if isinstance(count, int):
        return count
    value = concrete_value(count)
    return None if value is None else int(value)


def leaf_scalar(xp: ModuleType, s: Any, like: Any) -> Any:
    """A per-step scalar ready to meet ``like``: Python numbers as they are, 0-d arrays in ``like``'s dtype.

    Scalars are computed in :func:`scalar_dtype`; rounding them once to the leaf's
    dtype is what torch does with a Python float (so float32 stays float32).
    """
    if not hasattr(s, "shape") or s.dtype == like.dtype:
        return s
    return xp.astype(s, like.dtype)


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


def _looks_like_parameters(x: Any) -> str | None:
    """What ``x`` is when it is a model's parameters given to a constructor, else ``None``."""
    if isinstance(x, Iterator):
        return f"a {type(x).__name__} (model.parameters()?)"
    if hasattr(x, "named_parameters") and hasattr(x, "parameters"):
        return f"a {type(x).__name__} module"
    if isinstance(x, (list, tuple)) and x:
        if all(isinstance(v, dict) and "params" in v for v in x):
            return "a list of parameter groups"
        if all(getattr(v, "requires_grad", False) for v in x):
            return f"a {type(x).__name__} of parameters"
    return None


def python_numbers(fn: F) -> F:
    """Decorate a constructor so every NumPy-scalar argument arrives as a Python number.

    A model's parameters given as the first argument (torch.optim's calling convention,
    ``adam(model.parameters(), lr=1e-3)``) are refused with a message pointing at
    ``agrad.optim.TorchOptimizer``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        what = _looks_like_parameters(args[0]) if args else None
        if what is not None:
            name = fn.__name__
            msg = (
                f"agrad.optim.{name}: the first argument is {what}, but agrad optimizers "
                f"are built without the parameters: opt = agrad.optim.{name}(lr=...); "
                "state = opt.init(params). For a torch.optim.Optimizer, use "
                f"agrad.optim.TorchOptimizer(model.parameters(), agrad.optim.{name}, lr=...)"
            )
            raise TypeError(msg)
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


def _check_number(fn: str, name: str, value: Any) -> float | None:
    """A hyperparameter's value to check: a Python number, or a 0-d real floating array.

    An array (an injected hyperparameter, :func:`agrad.optim.inject_hyperparams`) is
    checked by shape and dtype; its value is returned where it is known (not a JAX
    tracer), else ``None`` (nothing more to check).
    """
    if is_scalar(value):
        return value
    if is_hyper_array(value):
        if tuple(value.shape) != ():
            msg = (
                f"{fn}: invalid {name}: an array of shape {tuple(value.shape)} "
                "(expected a number or a 0-d array)"
            )
            raise ValueError(msg)
        if "float" not in str(value.dtype):
            msg = f"{fn}: {name} must be a number or a 0-d real floating array, got dtype {value.dtype}"
            raise TypeError(msg)
        return concrete_value(value)
    msg = f"{fn}: {name} must be a Python number or a 0-d array, got {type(value).__name__}"
    raise TypeError(msg)


def check_nonnegative(fn: str, **values: Any) -> None:
    """Each value is a finite number >= 0 (a 0-d array: by value where known)."""
    for name, v in values.items():
        x = _check_number(fn, name, v)
        if x is not None and not (math.isfinite(x) and x >= 0.0):
            _fail(fn, name, x, "a finite number >= 0")


def check_positive(fn: str, **values: Any) -> None:
    """Each value is a finite number > 0 (a 0-d array: by value where known)."""
    for name, v in values.items():
        x = _check_number(fn, name, v)
        if x is not None and not (math.isfinite(x) and x > 0.0):
            _fail(fn, name, x, "a finite number > 0")


def check_unit_interval(fn: str, *, closed: bool = False, **values: Any) -> None:
    """Each value is in ``[0, 1)`` (``[0, 1]`` with ``closed``; a 0-d array: by value where known)."""
    for name, v in values.items():
        x = _check_number(fn, name, v)
        if x is None:
            continue
        ok = 0.0 <= x <= 1.0 if closed else 0.0 <= x < 1.0
        if not ok:
            _fail(fn, name, x, "a number in [0, 1]" if closed else "a number in [0, 1)")


def hyper_float(v: Any) -> Any:
    """A hyperparameter as the rules use it: a Python ``float``, or the 0-d array itself."""
    return v if is_hyper_array(v) else float(v)


def static_int(fn: str, name: str, value: Any) -> None:
    """Refuse an array for a hyperparameter that decides the program's structure."""
    if is_hyper_array(value):
        msg = (
            f"{fn}: {name} must be a Python value, not an array: it decides the structure "
            "of the state or of the computation, so it cannot be injected (keep it in "
            "static_args of inject_hyperparams)"
        )
        raise TypeError(msg)


def check_betas(fn: str, betas: Any) -> tuple[Any, Any]:
    """``betas`` is a pair of numbers (or 0-d arrays) in ``[0, 1)``; returned as floats (arrays kept)."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        msg = f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}"
        raise ValueError(msg) from None
    check_unit_interval(fn, **{"betas[0]": b1, "betas[1]": b2})
    return hyper_float(b1), hyper_float(b2)
