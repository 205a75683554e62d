"""Creation functions whose scalar arguments a traced 0-d array can reach, differentiable.

``linspace(start, stop, num)``, ``arange(start, stop, step)``, ``full(shape, v)`` and
``full_like(x, v)`` take their values from Python scalars in the standard; given a
traced 0-d array instead they are primitives of it, so the gradient is never silently
dropped. With ``t_i`` the fraction ``i / (num - 1)`` (``i / num`` without endpoint):

- ``linspace``: ``y_i = start + (stop - start) t_i``, so ``d/dstart = sum(g (1 - t))``
  and ``d/dstop = sum(g t)``;
- ``arange``: ``y_i = start + i step``, so ``d/dstart = sum(g)``,
  ``d/dstep = sum(g i)``; ``stop`` only sets the length (its derivative is 0);
- ``full`` and ``full_like``: ``y_i = v``, so ``d/dv = sum(g)``;
- ``fft.fftfreq`` and ``fft.rfftfreq`` in the sample spacing ``d``:
  ``f_k = k / (n d)``, so ``d/dd = -sum(g f) / d``.

Values are the base's own (the traced scalars are read as Python numbers). Without a
traced argument these are the plain creation functions, whose result is a constant
of the live trace. A traced argument's dtype is the result's when ``dtype`` is not
given, so a float32 scalar gives a float32 result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agrad.autograd.tape.helpers import is_complex
from agrad.autograd.tape.traced import (
    CONSTANT,
    TracedArray,
    box_constants,
    primitive,
    strip,
)
from agrad.autograd.tape.vjp import vjp

__all__ = ["DIFFERENTIABLE_CREATION", "creation_functions", "frequency_functions"]

#: The creation functions made differentiable in their scalar arguments here.
DIFFERENTIABLE_CREATION = ("linspace", "arange", "full", "full_like")


def _python_scalar(v: Any) -> Any:
    """A raw 0-d array as the Python number the base's creation functions expect."""
    if v is None or isinstance(v, (bool, int, float, complex)):
        return v
    kind = str(v.dtype)
    if "complex" in kind:
        return complex(v)
    if "float" in kind:
        return float(v)
    if "bool" in kind:
        return bool(v)
    return int(v)


def _like(ns: Any, total: Any, arg: Any) -> Any:
    """A summed cotangent as a gradient of the 0-d array ``arg`` (its dtype, real if it is)."""
    if is_complex(ns, total) and not is_complex(ns, arg):
        total = ns.real(total)
    if total.dtype != arg.dtype:
        total = ns.astype(total, arg.dtype)
    return ns.reshape(total, tuple(arg.shape))


def _fraction(ns: Any, ans: Any, num: int, endpoint: bool) -> Any:
    """``t_i = i / (num - 1)`` (``i / num`` without endpoint), real, on ``ans``'s device."""
    raw = strip(ans)
    real = ns._base.real(raw) if "complex" in str(raw.dtype) else raw
    dev = ns._base_device(raw)
    return ns._base.linspace(0.0, 1.0, num, endpoint=endpoint, dtype=real.dtype, device=dev)


def _linspace_start(ns, g, ans, start, stop, *, num, endpoint=True, **_):
    t = _fraction(ns, ans, num, endpoint)
    return _like(ns, ns.sum(ns.multiply(g, 1.0 - t)), start)


def _linspace_stop(ns, g, ans, start, stop, *, num, endpoint=True, **_):
    return _like(ns, ns.sum(ns.multiply(g, _fraction(ns, ans, num, endpoint))), stop)


def _arange_start(ns, g, ans, start, stop, step, **_):
    return _like(ns, ns.sum(g), start)


def _arange_step(ns, g, ans, start, stop, step, **_):
    raw = strip(ans)
    index = ns._base.arange(raw.shape[0], dtype=raw.dtype, device=ns._base_device(raw))
    return _like(ns, ns.sum(ns.multiply(g, index)), step)


def _fill(ns, g, ans, *args, **_):
    return _like(ns, ns.sum(g), args[-1])


def _has_gradient(v: Any) -> bool:
    while isinstance(v, TracedArray):
        if v._node is not CONSTANT:
            return True
        v = v._value
    return False


def _dtype_of(dtype: Any, *scalars: Any) -> Any:
    """``dtype``, or the dtype of the first array among ``scalars`` (float32 stays float32)."""
    if dtype is not None:
        return dtype
    for s in scalars:
        if hasattr(s, "dtype") and "int" not in str(s.dtype) and "bool" not in str(s.dtype):
            return s.dtype
    return None


def _device_of(device: Any, ns: Any, *scalars: Any) -> Any:
    if device is not None:
        return device
    for s in scalars:
        if hasattr(s, "dtype"):
            return ns._base_device(strip(s))
    return None


def creation_functions(ns: Any, base: Any) -> dict[str, Callable[..., Any]]:
    """``linspace``, ``arange``, ``full`` and ``full_like`` of the tracing namespace ``ns``."""

    def linspace_raw(start, stop, *, num, endpoint=True, dtype=None, device=None):
        return base.linspace(
            _python_scalar(start),
            _python_scalar(stop),
            num,
            endpoint=endpoint,
            dtype=dtype,
            device=device,
        )

    def arange_raw(start, stop, step, *, dtype=None, device=None):
        return base.arange(
            _python_scalar(start),
            _python_scalar(stop),
            _python_scalar(step),
            dtype=dtype,
            device=device,
        )

    def full_raw(value, *, shape, dtype=None, device=None):
        return base.full(shape, _python_scalar(value), dtype=dtype, device=device)

    def full_like_raw(x, value, *, dtype=None, device=None):
        return base.full_like(x, _python_scalar(value), dtype=dtype, device=device)

    linspace_p = primitive("linspace", linspace_raw, vjp(_linspace_start, _linspace_stop), ns)
    arange_p = primitive("arange", arange_raw, vjp(_arange_start, None, _arange_step), ns)
    full_p = primitive("full", full_raw, vjp(_fill), ns)
    full_like_p = primitive("full_like", full_like_raw, vjp(None, _fill), ns)

    def linspace(
        start: Any,
        stop: Any,
        /,
        num: int,
        *,
        dtype: Any = None,
        device: Any = None,
        endpoint: bool = True,
    ) -> Any:
        """``num`` evenly spaced values; differentiable in a traced ``start`` and ``stop``."""
        if _has_gradient(start) or _has_gradient(stop):
            return linspace_p(
                start,
                stop,
                num=int(num),
                endpoint=endpoint,
                dtype=_dtype_of(dtype, start, stop),
                device=_device_of(device, ns, start, stop),
            )
        out = linspace_raw(
            strip(start), strip(stop), num=int(num), endpoint=endpoint, dtype=dtype, device=device
        )
        return box_constants(ns, out)

    def arange(
        start: Any,
        /,
        stop: Any = None,
        step: Any = 1,
        *,
        dtype: Any = None,
        device: Any = None,
    ) -> Any:
        """``start, start + step, ...`` below ``stop``; differentiable in ``start``, ``step``."""
        if stop is None:
            start, stop = 0, start
        if _has_gradient(start) or _has_gradient(step) or _has_gradient(stop):
            return arange_p(
                start,
                stop,
                step,
                dtype=_dtype_of(dtype, start, step, stop),
                device=_device_of(device, ns, start, stop, step),
            )
        out = arange_raw(strip(start), strip(stop), strip(step), dtype=dtype, device=device)
        return box_constants(ns, out)

    def full(shape: Any, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Any:
        """An array of ``shape`` filled with ``fill_value``; differentiable in a traced one."""
        if _has_gradient(fill_value):
            return full_p(
                fill_value,
                shape=shape,
                dtype=_dtype_of(dtype, fill_value),
                device=_device_of(device, ns, fill_value),
            )
        out = full_raw(strip(fill_value), shape=shape, dtype=dtype, device=device)
        return box_constants(ns, out)

    def full_like(x: Any, /, fill_value: Any, *, dtype: Any = None, device: Any = None) -> Any:
        """``full(x.shape, fill_value)`` with ``x``'s dtype; differentiable in ``fill_value``."""
        if _has_gradient(fill_value):
            return full_like_p(x, fill_value, dtype=dtype, device=device)
        out = full_like_raw(strip(x), strip(fill_value), dtype=dtype, device=device)
        return box_constants(ns, out)

    linspace._agrad_raw = base.linspace  # type: ignore[attr-defined]
    arange._agrad_raw = base.arange  # type: ignore[attr-defined]
    full._agrad_raw = base.full  # type: ignore[attr-defined]
    full_like._agrad_raw = base.full_like  # type: ignore[attr-defined]
    return {"linspace": linspace, "arange": arange, "full": full, "full_like": full_like}


def _frequency_d(ns, g, ans, d, **_):
    # f_k = k / (n d), so df_k/dd = -f_k / d
    return _like(ns, ns.negative(ns.divide(ns.sum(ns.multiply(g, ans)), d)), d)


def frequency_functions(ns: Any, base_fft: Any) -> dict[str, Callable[..., Any]]:
    """``fft.fftfreq`` and ``fft.rfftfreq``, differentiable in a traced sample spacing ``d``.

    ``f_k = k / (n d)``, so ``d/dd = -sum(g f) / d``.
    """
    out: dict[str, Callable[..., Any]] = {}
    for name in ("fftfreq", "rfftfreq"):
        raw = getattr(base_fft, name, None)
        if raw is None:
            continue

        def freq_raw(d, *, n, dtype=None, device=None, raw=raw):
            kwargs = {} if dtype is None else {"dtype": dtype}
            return raw(n, d=_python_scalar(d), device=device, **kwargs)

        prim = primitive(f"fft.{name}", freq_raw, vjp(_frequency_d), ns)

        def freq(
            n: int,
            /,
            *,
            d: Any = 1.0,
            dtype: Any = None,
            device: Any = None,
            raw=raw,
            prim=prim,
            name=name,
        ) -> Any:
            if _has_gradient(d):
                dtype = _dtype_of(dtype, d)
                return prim(d, n=n, dtype=dtype, device=_device_of(device, ns, d))
            kwargs = {} if dtype is None else {"dtype": dtype}
            return box_constants(ns, raw(n, d=_python_scalar(strip(d)), device=device, **kwargs))

        freq.__name__ = freq.__qualname__ = name
        freq.__doc__ = (
            f"``fft.{name}`` of the base; differentiable in a traced ``d`` "
            "(``f_k = k / (n d)``, so ``d/dd = -sum(g f) / d``)."
        )
        freq._agrad_raw = raw  # type: ignore[attr-defined]
        out[name] = freq
    return out
