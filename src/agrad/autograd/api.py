"""The seed's gradient API, dispatched to the adapter of the inputs' namespace.

``execute_with_gradients`` is the one entry point; ``value_and_grad`` and ``grad`` are
JAX-style wrappers over it. Validation happens before ``func`` is called.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from agrad.autograd.adapters import adapter_for
from agrad.autograd.variable import Variable
from agrad.namespace import array_namespace, base_library, common_namespace
from agrad.pytree import flatten_leaves, key_paths, unflatten

__all__ = [
    "execute_with_gradients",
    "grad",
    "is_variable",
    "stop_gradient",
    "value_and_grad",
    "variable",
]

_local = threading.local()


def _depth() -> int:
    return getattr(_local, "depth", 0)


_REAL = "real floating"
_DIFFERENTIABLE = ("real floating", "complex floating")
# (namespace, dtype, kind) -> xp.isdtype's answer; dtypes are few and hashable.
_DTYPE_KINDS: dict[tuple[Any, Any, Any], bool] = {}


def _dtype_is(xp: ModuleType, x: Any, kind: Any) -> bool:
    try:
        dtype = x.dtype
    except AttributeError:
        return False
    key = (xp, dtype, kind)
    try:
        return _DTYPE_KINDS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable dtype: ask every time
        key = None
    try:
        answer = bool(xp.isdtype(dtype, kind))
    except (AttributeError, TypeError):
        return False
    if key is not None:
        _DTYPE_KINDS[key] = answer
    return answer


def _is_real_floating(xp: ModuleType, x: Any) -> bool:
    return _dtype_is(xp, x, _REAL)


def _is_differentiable(xp: ModuleType, x: Any) -> bool:
    """Real or complex floating point: the dtypes gradients are defined for."""
    return _dtype_is(xp, x, _DIFFERENTIABLE)


def variable(x: Any, *, xp: ModuleType | None = None) -> Any:
    """Return ``x`` as a variable: an array that gradients are computed for.

    torch: a leaf tensor with ``requires_grad=True`` (sharing ``x``'s memory). JAX: ``x``
    itself (JAX arrays are immutable values). NumPy, CuPy, Dask, array-api-strict: an
    :class:`agrad.Variable` box holding ``x``, rebindable by in-place updates.

    Raises:
        TypeError: ``x`` does not have a (real or complex) floating-point dtype.
    """
    xp = array_namespace(x, xp=xp)
    adapter = adapter_for(xp)
    if not _is_differentiable(xp, adapter.read(x)):
        msg = (
            f"agrad.variable: an array of dtype {x.dtype} cannot be differentiated; "
            "cast it to a floating-point dtype first"
        )
        raise TypeError(msg)
    return adapter.variable(x)


def is_variable(x: Any, *, xp: ModuleType | None = None) -> bool:
    """True if ``x`` is a variable of its library (see :func:`variable`)."""
    if isinstance(x, Variable):
        return True
    try:
        xp = array_namespace(x, xp=xp)
    except TypeError:
        return False
    return adapter_for(xp).is_variable(x)


def stop_gradient(x: Any, *, xp: ModuleType | None = None) -> Any:
    """The same values as ``x`` with no gradient flowing back (``d stop_gradient(x)/dx = 0``)."""
    return adapter_for(array_namespace(x, xp=xp)).stop_gradient(x)


def _split_output(out: Any) -> tuple[Any, tuple[Any, ...]]:
    if isinstance(out, tuple):
        if not out:
            raise TypeError(
                "execute_with_gradients: func returned an empty tuple; expected (y, *extra)"
            )
        return out[0], tuple(out[1:])
    return out, ()


def _check_scalar(y: Any, xp: ModuleType) -> None:
    shape = getattr(y, "shape", None)
    if shape is None or not hasattr(y, "dtype"):
        msg = (
            "execute_with_gradients: func must return an array y (or a tuple (y, *extra)) "
            f"to differentiate; it returned {type(y).__qualname__}"
        )
        raise TypeError(msg)
    try:
        y_ns = array_namespace(y)
    except TypeError:
        y_ns = None
    y_library = type(y).__module__ if y_ns is None else base_library(y_ns)
    if y_library != base_library(xp):
        msg = (
            f"execute_with_gradients: func returned y from {y_library} but xs are "
            f"{base_library(xp)} arrays; y must be computed from xs with their namespace "
            "(agrad.array_namespace(x))"
        )
        raise TypeError(msg)
    if math.prod(shape) != 1:
        msg = (
            "execute_with_gradients: y must be a scalar (0-d or size 1) to be "
            f"differentiated; func returned y of shape {tuple(shape)}"
        )
        raise ValueError(msg)
    if not _is_real_floating(y_ns, y):
        msg = (
            "execute_with_gradients: y must have a real floating-point dtype; func "
            f"returned y of dtype {y.dtype}"
        )
        raise TypeError(msg)


def execute_with_gradients(
    func: Callable[[Any], Any],
    xs: Any,
    retain_grads: bool = False,
    *,
    xp: ModuleType | None = None,
) -> tuple[Any, ...]:
    """Call ``func(xs)`` once and return ``(y, grads, *extra)``.

    ``func`` returns a scalar ``y`` or a tuple ``(y, *extra)``; ``grads`` has the pytree
    structure of ``xs`` and ``grads[k] = dy/dxs[k]``. ``xs`` may hold variables or plain
    arrays. Inside ``func`` the leaves of ``xs`` are traced arrays (or tensors/tracers
    of the native autograd), usable with ``array_namespace(x)``. An input that ``y``
    does not depend on gets a zero gradient.

    With ``retain_grads=False`` everything returned is a plain array without history.
    With ``retain_grads=True`` the results keep their history so an enclosing
    ``execute_with_gradients`` can differentiate through them (higher order).

    Raises:
        TypeError: leaves of ``xs`` come from two libraries, or are not floating
            point; ``func`` returns no array.
        ValueError: ``xs`` holds no array; ``y`` is not a scalar.
    """
    leaves, treedef = flatten_leaves(xs)
    if not leaves:
        raise ValueError("execute_with_gradients: xs contains no arrays to differentiate")

    def labels() -> list[str]:
        return [f"xs{p}" for p in key_paths(treedef)]

    xp = common_namespace(leaves, labels, "execute_with_gradients", xp)
    adapter = adapter_for(xp)
    raw = [adapter.read(x) for x in leaves]
    for i, x in enumerate(raw):
        if not _is_differentiable(xp, x):
            msg = (
                f"execute_with_gradients: {labels()[i]} has dtype {x.dtype}; only real or "
                "complex floating-point arrays can be differentiated"
            )
            raise TypeError(msg)

    def flat_func(inputs: list[Any]) -> tuple[Any, tuple[Any, ...]]:
        y, extras = _split_output(func(unflatten(treedef, inputs)))
        _check_scalar(y, xp)
        return y, extras

    _local.depth = _depth() + 1
    try:
        y, grads, extras = adapter.value_and_grad(flat_func, raw, bool(retain_grads))
    finally:
        _local.depth -= 1
    return (y, unflatten(treedef, grads), *extras)


def value_and_grad(
    func: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    *,
    xp: ModuleType | None = None,
) -> Callable[..., Any]:
    """Return ``f(*args) -> (value, grads)`` (``((value, aux), grads)`` with ``has_aux``).

    ``grads`` is the gradient with respect to ``args[argnums]`` (a tuple of them when
    ``argnums`` is a sequence), each with the pytree structure of its argument. Called
    inside another gradient computation the result keeps its history, so
    ``grad(grad(f))`` gives second derivatives.
    """
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        bad = [i for i in nums if not -len(args) <= i < len(args)]
        if bad:
            msg = (
                f"value_and_grad: argnums={argnums!r} but "
                f"{getattr(func, '__name__', 'func')} was called with {len(args)} "
                "positional argument(s)"
            )
            raise IndexError(msg)

        def f(xs: tuple[Any, ...]) -> Any:
            new_args = list(args)
            for i, x in zip(nums, xs):
                new_args[i] = x
            out = func(*new_args, **kwargs)
            if has_aux:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(
                        "value_and_grad(has_aux=True): func must return a pair (y, aux)"
                    )
                return out
            if isinstance(out, tuple):
                raise TypeError(
                    "value_and_grad: func returned a tuple; pass has_aux=True to return (y, aux)"
                )
            return (out,)

        xs = tuple(args[i] for i in nums)
        res = execute_with_gradients(f, xs, retain_grads=_depth() > 0, xp=xp)
        grads = res[1][0] if isinstance(argnums, int) else res[1]
        return ((res[0], res[2]), grads) if has_aux else (res[0], grads)

    wrapped.__name__ = f"value_and_grad({getattr(func, '__name__', 'func')})"
    return wrapped


def grad(
    func: Callable[..., Any],
    argnums: int | Sequence[int] = 0,
    has_aux: bool = False,
    *,
    xp: ModuleType | None = None,
) -> Callable[..., Any]:
    """Return ``f(*args) -> grads`` (``(grads, aux)`` with ``has_aux``); see :func:`value_and_grad`."""
    vg = value_and_grad(func, argnums, has_aux, xp=xp)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        value, grads = vg(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    wrapped.__name__ = f"grad({getattr(func, '__name__', 'func')})"
    return wrapped
