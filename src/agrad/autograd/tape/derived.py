"""Functions of the standard differentiated through other primitives: no rule of their own.

``DERIVED[name]`` is ``impl(ns, *args, **kwargs)``, written with the tracing namespace.
The tracing namespace calls the base's own function when no argument is traced (so the
namespace stays a faithful pass-through), and ``impl`` when one is; where the base lacks
the function (Dask has no ``linalg.det`` ...), ``impl`` serves raw arrays too.
Extension functions are keyed ``"linalg.<name>"`` and ``"fft.<name>"``.
"""

from __future__ import annotations

import math
from typing import Any

from agrad.autograd.tape.helpers import (
    along,
    conj,
    dual_norm,
    fft_axes,
    is_complex,
    normalize_axes,
    reduced_count,
)
from agrad.autograd.tape.traced import strip

__all__ = ["DERIVED"]


# ---- statistics --------------------------------------------------------------------


def var(ns, x, /, *, axis=None, correction=0.0, keepdims=False):
    """``sum(conj(d) * d) / (N - correction)`` over ``axis``, ``d = x - mean(x)`` (real)."""
    n = reduced_count(tuple(x.shape), normalize_axes(axis, x.ndim))
    d = ns.subtract(x, ns.mean(x, axis=axis, keepdims=True))
    if is_complex(ns, d):
        squares = ns.add(ns.square(ns.real(d)), ns.square(ns.imag(d)))
    else:
        squares = ns.multiply(d, d)
    return ns.sum(squares, axis=axis, keepdims=keepdims) / (n - correction)


def std(ns, x, /, *, axis=None, correction=0.0, keepdims=False):
    """``sqrt(var(x))``."""
    return ns.sqrt(var(ns, x, axis=axis, correction=correction, keepdims=keepdims))


def vecdot(ns, x1, x2, /, *, axis=-1):
    """``sum(conj(x1) * x2, axis)`` in the inputs' dtype; sizes along ``axis`` must be equal."""
    n1, n2 = _axis_size(x1, axis), _axis_size(x2, axis)
    if n1 != n2:
        msg = (
            f"vecdot: x1 has {n1} elements along axis {axis} and x2 has {n2}; the "
            "standard contracts equal sizes only (shapes "
            f"{tuple(x1.shape)} and {tuple(x2.shape)})"
        )
        raise ValueError(msg)
    product = ns.multiply(conj(ns, x1), x2)
    if ns.isdtype(product.dtype, "integral"):  # sum would widen uint8 to uint64
        return ns.sum(product, axis=axis, dtype=product.dtype)
    return ns.sum(product, axis=axis)


def _axis_size(x: Any, axis: int) -> int | None:
    """The size of ``x`` along ``axis`` (negative: from the end; ``None`` if too short)."""
    shape = tuple(x.shape)
    return shape[axis] if -len(shape) <= axis < len(shape) else None


# ---- manipulation ------------------------------------------------------------------


def unstack(ns, x, /, *, axis=0):
    """The slices of ``x`` along ``axis``, as a tuple."""
    return tuple(x[along(axis, x.ndim, i)] for i in range(x.shape[axis]))


def tile(ns, x, repetitions, /):
    """``x`` repeated ``repetitions[i]`` times along each axis (broadcast, then reshape)."""
    ndim = max(len(repetitions), x.ndim)
    shape = (1,) * (ndim - x.ndim) + tuple(x.shape)
    reps = (1,) * (ndim - len(repetitions)) + tuple(repetitions)
    interleaved = tuple(v for s in shape for v in (1, s))
    expanded = tuple(v for r, s in zip(reps, shape) for v in (r, s))
    y = ns.broadcast_to(ns.reshape(x, interleaved), expanded)
    return ns.reshape(y, tuple(r * s for r, s in zip(reps, shape)))


def repeat(ns, x, repeats, /, *, axis=None):
    """Each element of ``x`` repeated along ``axis`` (flattened when ``axis`` is None)."""
    if axis is None:
        x = ns.reshape(x, (-1,))
        axis = 0
    axis %= x.ndim
    n = x.shape[axis]
    if isinstance(repeats, int):
        y = ns.expand_dims(x, axis=axis + 1)
        y = ns.broadcast_to(y, (*x.shape[: axis + 1], repeats, *x.shape[axis + 1 :]))
        return ns.reshape(y, (*x.shape[:axis], n * repeats, *x.shape[axis + 1 :]))
    base = ns._base
    source = base.arange(n, device=ns._base_device(strip(x)))
    return ns.take(x, base.repeat(source, strip(repeats)), axis=axis)


def _broadcast_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        sizes = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            msg = f"shapes {shapes} cannot be broadcast together"
            raise ValueError(msg)
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def broadcast_arrays(ns, *arrays):
    """The arrays broadcast against each other."""
    shape = _broadcast_shape(*(tuple(a.shape) for a in arrays))
    out = [ns.broadcast_to(a, shape) for a in arrays]
    kind = type(ns._base.broadcast_arrays(*(strip(a) for a in arrays[:1])))
    return out if kind is list else tuple(out)


def meshgrid(ns, *arrays, indexing="xy"):
    """Coordinate grids from 1-D arrays (``indexing='xy'`` swaps the first two axes)."""
    lengths = [a.shape[0] for a in arrays]
    order = list(range(len(arrays)))
    if indexing == "xy" and len(arrays) > 1:
        order[0], order[1] = 1, 0
        lengths[0], lengths[1] = lengths[1], lengths[0]
    out = []
    for i, a in enumerate(arrays):
        shape = [1] * len(arrays)
        shape[order[i]] = -1
        out.append(ns.broadcast_to(ns.reshape(a, tuple(shape)), tuple(lengths)))
    kind = type(ns._base.meshgrid(*(strip(a) for a in arrays[:1])))
    return out if kind is list else tuple(out)


def sort(ns, x, /, *, axis=-1, descending=False, stable=True):
    """``x`` sorted along ``axis``: a gather at ``argsort(x)``."""
    order = ns._base.argsort(strip(x), axis=axis, descending=descending, stable=stable)
    return ns._take_along_axis(x, order, axis=axis)


def diff(ns, x, /, *, axis=-1, n=1, prepend=None, append=None):
    """The ``n``-th forward difference along ``axis``."""
    parts = [p for p in (prepend, x, append) if p is not None]
    y = ns.concat(parts, axis=axis) if len(parts) > 1 else x
    for _ in range(n):
        m = y.shape[axis]
        y = ns.subtract(
            y[along(axis, y.ndim, slice(1, m))], y[along(axis, y.ndim, slice(0, m - 1))]
        )
    return y


def from_dlpack(ns, x, /, *, device=None, copy=None):
    """A traced array passes through as itself (the identity, differentiable)."""
    return ns.asarray(x, device=device)


# ---- linear algebra ----------------------------------------------------------------


def outer(ns, x1, x2, /):
    """``x1[:, None] * x2[None, :]``."""
    return ns.multiply(ns.reshape(x1, (-1, 1)), ns.reshape(x2, (1, -1)))


def trace(ns, x, /, *, offset=0, dtype=None):
    """Sum of the ``offset`` diagonal of each matrix."""
    return ns.sum(ns.linalg.diagonal(x, offset=offset), axis=-1, dtype=dtype)


def matrix_power(ns, x, n, /):
    """``x`` multiplied by itself ``n`` times (``inv(x)`` for negative ``n``)."""
    if n < 0:
        x, n = ns.linalg.inv(x), -n
    if n == 0:
        eye = ns.eye(x.shape[-1], dtype=x.dtype, device=ns._base_device(strip(x)))
        return ns.broadcast_to(eye, tuple(x.shape))
    result = None
    power = x
    while n:
        if n & 1:
            result = power if result is None else ns.matmul(result, power)
        n >>= 1
        if n:
            power = ns.matmul(power, power)
    return result


def matrix_norm(ns, x, /, *, keepdims=False, ord="fro"):
    """Frobenius, nuclear, spectral (2, -2) and induced (1, -1, inf, -inf) norms."""
    if ord == "fro":
        out = ns.linalg.vector_norm(x, axis=(-2, -1))
    elif ord == "nuc":
        out = ns.sum(ns.linalg.svdvals(x), axis=-1)
    elif ord in (2, -2):
        s = ns.linalg.svdvals(x)
        out = ns.max(s, axis=-1) if ord == 2 else ns.min(s, axis=-1)
    elif ord in (1, -1, math.inf, -math.inf):
        sums = ns.sum(ns.abs(x), axis=-2 if ord in (1, -1) else -1)
        out = ns.max(sums, axis=-1) if ord > 0 else ns.min(sums, axis=-1)
    else:
        msg = f"matrix_norm: unsupported ord {ord!r}"
        raise ValueError(msg)
    return ns.reshape(out, (*out.shape, 1, 1)) if keepdims else out


def pinv(ns, x, /, *, rtol=None):
    """Moore-Penrose inverse from the SVD: ``V diag(1/s) U^H`` for ``s > rtol * max(s)``.

    An array ``rtol`` has one tolerance per matrix (it broadcasts against ``x.shape[:-2]``).
    """
    u, s, vh = ns.linalg.svd(x, full_matrices=False)
    if rtol is None:
        rtol = max(x.shape[-2:]) * ns.finfo(x.dtype).eps
    s_raw = strip(s)
    rtol = strip(rtol)
    if getattr(rtol, "ndim", None) is not None:  # an array of the batch shape: one per matrix
        rtol = ns._base.expand_dims(rtol, axis=-1)
    cutoff = ns._base.max(s_raw, axis=-1, keepdims=True) * rtol
    keep = s_raw > cutoff
    s_inv = ns.where(keep, ns.divide(1.0, ns.where(keep, s, ns.ones_like(s))), ns.zeros_like(s))
    uh = ns.matrix_transpose(conj(ns, u))
    scaled = ns.multiply(ns.expand_dims(s_inv, axis=-1), uh)
    return ns.matmul(ns.matrix_transpose(conj(ns, vh)), scaled)


# ---- fft ---------------------------------------------------------------------------


def hfft(ns, x, /, *, n=None, axis=-1, norm="backward"):
    """FFT of a Hermitian-symmetric signal: ``irfft(conj(x))`` with the norm swapped."""
    return ns.fft.irfft(conj(ns, x), n=n, axis=axis, norm=dual_norm(norm))


def ihfft(ns, x, /, *, n=None, axis=-1, norm="backward"):
    """Inverse of ``hfft``: ``conj(rfft(x))`` with the norm swapped."""
    return ns.conj(ns.fft.rfft(x, n=n, axis=axis, norm=dual_norm(norm)))


def rfftn(ns, x, /, *, s=None, axes=None, norm="backward"):
    """``rfft`` over the last of ``axes``, then ``fft`` over the others."""
    axes, s = fft_axes(x, s, axes)
    y = ns.fft.rfft(x, n=s[-1], axis=axes[-1], norm=norm)
    for ax, n in zip(axes[:-1], s[:-1]):
        y = ns.fft.fft(y, n=n, axis=ax, norm=norm)
    return y


def irfftn(ns, x, /, *, s=None, axes=None, norm="backward"):
    """``ifft`` over all but the last of ``axes``, then ``irfft`` over the last."""
    axes, s = fft_axes(x, s, axes)
    y = x
    for ax, n in zip(axes[:-1], s[:-1]):
        y = ns.fft.ifft(y, n=n, axis=ax, norm=norm)
    return ns.fft.irfft(y, n=s[-1], axis=axes[-1], norm=norm)


DERIVED: dict[str, Any] = {
    "var": var,
    "std": std,
    "vecdot": vecdot,
    "unstack": unstack,
    "tile": tile,
    "repeat": repeat,
    "broadcast_arrays": broadcast_arrays,
    "meshgrid": meshgrid,
    "sort": sort,
    "diff": diff,
    "from_dlpack": from_dlpack,
    "linalg.outer": outer,
    "linalg.trace": trace,
    "linalg.vecdot": vecdot,
    "linalg.matrix_power": matrix_power,
    "linalg.matrix_norm": matrix_norm,
    "linalg.pinv": pinv,
    "fft.hfft": hfft,
    "fft.ihfft": ihfft,
    "fft.rfftn": rfftn,
    "fft.irfftn": irfftn,
}
