"""VJP rules for the ``fft`` extension, written with the tracing namespace.

Every transform is linear, so its VJP is its adjoint: the adjoint of ``fft`` with
normalisation ``norm`` is ``ifft`` with the dual normalisation (``backward`` <->
``forward``, ``ortho`` fixed), and vice versa. Zero-padding (``n`` larger than the
input) is undone by cropping and cropping by zero-padding. ``rfft`` embeds its half
spectrum in a full one; ``irfft``'s adjoint doubles the bins that stand for two
conjugate frequencies (as torch does). Keys are ``"fft.<name>"``.
"""

from __future__ import annotations

from typing import Any

from agrad.autograd.tape.helpers import along, dual_norm, fft_axes, fit
from agrad.autograd.tape.traced import strip
from agrad.autograd.tape.vjp import VJP, vjp

__all__ = ["RULES"]


def _resize(ns: Any, a: Any, axis: int, size: int) -> Any:
    """``a`` cropped or zero-padded at the end of ``axis`` to ``size``."""
    axis %= a.ndim
    current = a.shape[axis]
    if current == size:
        return a
    if current > size:
        return a[along(axis, a.ndim, slice(0, size))]
    pad_shape = (*a.shape[:axis], size - current, *a.shape[axis + 1 :])
    pad = ns._base.zeros(pad_shape, dtype=a.dtype, device=ns._base_device(strip(a)))
    return ns.concat([a, pad], axis=axis)


def _c2c(adjoint_name: str):
    def rule(ns, g, ans, x, n=None, axis=-1, norm="backward"):
        r = getattr(ns.fft, adjoint_name)(g, axis=axis, norm=dual_norm(norm))
        return fit(ns, _resize(ns, r, axis, x.shape[axis]), x)

    return vjp(rule)


def _c2c_n(adjoint_name: str):
    def rule(ns, g, ans, x, s=None, axes=None, norm="backward"):
        axes, _ = fft_axes(x, s, axes)
        r = getattr(ns.fft, adjoint_name)(g, axes=axes, norm=dual_norm(norm))
        for ax in axes:
            r = _resize(ns, r, ax, x.shape[ax])
        return fit(ns, r, x)

    return vjp(rule)


def _rfft(ns, g, ans, x, n=None, axis=-1, norm="backward"):
    n = x.shape[axis] if n is None else n
    # ifft with n zero-pads the half spectrum to the full one
    r = ns.real(ns.fft.ifft(g, n=n, axis=axis, norm=dual_norm(norm)))
    return fit(ns, _resize(ns, r, axis, x.shape[axis]), x)


def _irfft(ns, g, ans, x, n=None, axis=-1, norm="backward"):
    n = 2 * (x.shape[axis] - 1) if n is None else n
    r = ns.fft.rfft(g, axis=axis, norm=dual_norm(norm))
    bins = r.shape[axis]
    doubled = n - bins  # bins 1..doubled stand for a frequency and its conjugate
    base = ns._base
    idx = base.arange(bins, device=ns._base_device(strip(r)))
    w = base.astype(base.logical_and(idx >= 1, idx <= doubled), base.float64) + 1.0
    shape = [1] * r.ndim
    shape[axis % r.ndim] = bins
    w = base.astype(base.reshape(w, tuple(shape)), ns.real(strip(r)).dtype)
    return fit(ns, _resize(ns, ns.multiply(r, w), axis, x.shape[axis]), x)


def _fftshift(ns, g, ans, x, axes=None):
    return ns.fft.ifftshift(g, axes=axes)


def _ifftshift(ns, g, ans, x, axes=None):
    return ns.fft.fftshift(g, axes=axes)


RULES: dict[str, VJP] = {
    "fft.fft": _c2c("ifft"),
    "fft.ifft": _c2c("fft"),
    "fft.fftn": _c2c_n("ifftn"),
    "fft.ifftn": _c2c_n("fftn"),
    "fft.rfft": vjp(_rfft),
    "fft.irfft": vjp(_irfft),
    "fft.fftshift": vjp(_fftshift),
    "fft.ifftshift": vjp(_ifftshift),
}
