"""What to call instead of the NumPy-style array methods that the standard does not have.

Users reach for ``x.sum()``, ``x.reshape(...)`` or ``x.astype(...)`` out of habit; a
traced array has only the standard's attributes, so each of these raises an
``AttributeError`` whose message names the standard function to call
(:func:`missing_attribute`).
"""

from __future__ import annotations

__all__ = ["HINTS", "missing_attribute"]

#: NumPy-style method -> the standard's way of doing it (``xp`` is the array's namespace).
HINTS: dict[str, str] = {
    "sum": "xp.sum(x, axis=...)",
    "prod": "xp.prod(x, axis=...)",
    "mean": "xp.mean(x, axis=...)",
    "std": "xp.std(x, axis=..., correction=...)",
    "var": "xp.var(x, axis=..., correction=...)",
    "max": "xp.max(x, axis=...)",
    "min": "xp.min(x, axis=...)",
    "argmax": "xp.argmax(x, axis=...)",
    "argmin": "xp.argmin(x, axis=...)",
    "all": "xp.all(x, axis=...)",
    "any": "xp.any(x, axis=...)",
    "cumsum": "xp.cumulative_sum(x, axis=...)",
    "cumprod": "xp.cumulative_prod(x, axis=...)",
    "reshape": "xp.reshape(x, shape)",
    "flatten": "xp.reshape(x, (-1,))",
    "ravel": "xp.reshape(x, (-1,))",
    "squeeze": "xp.squeeze(x, axis=...)",
    "transpose": "xp.permute_dims(x, axes) or x.mT",
    "swapaxes": "xp.permute_dims(x, axes) or xp.moveaxis(x, source, destination)",
    "astype": "xp.astype(x, dtype)",
    "copy": "xp.asarray(x, copy=True)",
    "clip": "xp.clip(x, min, max)",
    "round": "xp.round(x)",
    "conj": "xp.conj(x)",
    "conjugate": "xp.conj(x)",
    "real": "xp.real(x)",
    "imag": "xp.imag(x)",
    "dot": "xp.matmul(x, y), xp.vecdot(x, y) or xp.tensordot(x, y, axes=...)",
    "sort": "xp.sort(x, axis=...)",
    "argsort": "xp.argsort(x, axis=...)",
    "nonzero": "xp.nonzero(x)",
    "repeat": "xp.repeat(x, repeats, axis=...)",
    "take": "xp.take(x, indices, axis=...)",
    "diagonal": "xp.linalg.diagonal(x)",
    "trace": "xp.linalg.trace(x)",
    "flip": "xp.flip(x, axis=...)",
    "fill": "xp.full_like(x, value)",
    "item": "float(x), int(x) or bool(x) (reading the value ends differentiability)",
    "tolist": (
        "agrad.stop_gradient(x) and the base library's own conversion (reading the "
        "value ends differentiability)"
    ),
    "numpy": "agrad.stop_gradient(x) (reading the value ends differentiability)",
}


def missing_attribute(cls_name: str, name: str) -> AttributeError:
    """The error for ``x.<name>`` on a traced array: the standard function to call, if known."""
    hint = HINTS.get(name)
    if hint is None:
        return AttributeError(f"{cls_name!r} object has no attribute {name!r}")
    msg = (
        f"{cls_name!r} object has no attribute {name!r}: it is not in the Array API "
        f"standard; call {hint} instead, with xp = array_namespace(x)"
    )
    return AttributeError(msg)
