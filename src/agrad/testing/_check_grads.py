"""``check_grads``: reverse-mode derivatives against central finite differences.

For a function ``f`` and random directions ``v`` (inputs) and ``u`` (outputs) the
reverse-mode gradient of ``L(x) = Re <u, f(x)>`` must satisfy

    Re <grad L(x), v>  ==  (L(x + eps v) - L(x - eps v)) / (2 eps) + O(eps^2),

with ``<a, b> = sum(conj(a) * b)`` (torch's convention for complex inputs). Order ``k``
checks the same identity for the gradient map ``x -> grad L(x)`` recursively, through
``execute_with_gradients(..., retain_grads=True)``, so it exercises the traced backward
pass. Works for every namespace agrad supports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["check_grads", "default_fd_settings"]


def default_fd_settings(dtype: Any) -> tuple[float, float, float]:
    """``(eps, rtol, atol)`` for finite differences in ``dtype``: wider steps for 32 bits."""
    name = str(dtype)
    if "float32" in name or "complex64" in name:
        return 1e-3, 3e-2, 3e-2
    if "float16" in name:
        return 1e-1, 2e-1, 2e-1
    return 1e-6, 1e-5, 1e-6


def _is_inexact(xp: Any, x: Any) -> bool:
    try:
        return bool(xp.isdtype(x.dtype, ("real floating", "complex floating")))
    except (AttributeError, TypeError):
        return False


def _random_like(xp: Any, x: Any, rng: Any) -> Any:
    import array_api_compat
    import numpy as np

    shape = tuple(x.shape)
    data = rng.standard_normal(shape)
    if xp.isdtype(x.dtype, "complex floating"):
        data = data + 1j * rng.standard_normal(shape)
    return xp.asarray(np.asarray(data), dtype=x.dtype, device=array_api_compat.device(x))


def _scalar(x: Any) -> float:
    """A 0-d array as a Python float (torch tensors detached first)."""
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def _outputs(out: Any) -> list[Any]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _namespace_of(x: Any, fallback: Any) -> Any:
    """``x``'s namespace; ``fallback`` for scalars that carry none (NumPy's 0-d results)."""
    import agrad

    try:
        return agrad.array_namespace(x)
    except TypeError:
        return fallback


def _as_array(ns: Any, x: Any) -> Any:
    """``x`` as an array of ``ns``; arrays pass untouched (NumPy scalars become 0-d arrays)."""
    import numpy as np

    if hasattr(x, "shape") and not isinstance(x, np.generic):
        return x
    return ns.asarray(x)


def _add(a: Any, b: Any, fallback: Any) -> Any:
    import agrad

    try:
        ns = agrad.array_namespace(a, b)
    except TypeError:
        ns = fallback
    return ns.add(_as_array(ns, a), _as_array(ns, b))


def _inner(xp: Any, a: Any, b: Any) -> Any:
    """``Re sum(conj(a) * b)`` as a 0-d array of ``xp`` (differentiable in ``b``)."""
    if xp.isdtype(a.dtype, "complex floating") or xp.isdtype(b.dtype, "complex floating"):
        return xp.sum(xp.real(xp.multiply(xp.conj(a), b)))
    return xp.sum(xp.multiply(a, b))


def _projected_loss(
    func: Callable[..., Any], us: list[Any], args: list[Any], argnums: Sequence[int], xp: Any
) -> Callable[[list[Any]], Any]:
    """``values -> Re <u, func(args with args[argnums] = values)>``, a 0-d array."""

    def loss(values: list[Any]) -> Any:
        full = list(args)
        for i, v in zip(argnums, values):
            full[i] = v
        total = None
        for u, o in zip(us, _outputs(func(*full))):
            ns = _namespace_of(o, xp)
            term = _inner(ns, _as_array(ns, u), _as_array(ns, o))
            total = term if total is None else _add(total, term, xp)
        return _as_array(_namespace_of(total, xp), total)

    return loss


def _check_order_one(
    func: Callable[..., Any],
    args: list[Any],
    argnums: Sequence[int],
    rng: Any,
    eps: float | None,
    rtol: float | None,
    atol: float | None,
    label: str,
) -> None:
    import agrad

    xp = agrad.array_namespace(*[args[i] for i in argnums])
    outs = _outputs(func(*args))
    us = [_random_like(_namespace_of(o, xp), _as_array(xp, o), rng) for o in outs]
    vs = {i: _random_like(xp, args[i], rng) for i in argnums}
    d_eps, d_rtol, d_atol = default_fd_settings(args[argnums[0]].dtype)
    eps = d_eps if eps is None else eps
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol

    loss_of = _projected_loss(func, us, args, argnums, xp)

    _, grads = agrad.execute_with_gradients(loss_of, [args[i] for i in argnums])
    reverse = sum(_scalar(_inner(xp, g, vs[i])) for g, i in zip(grads, argnums))
    plus = _scalar(loss_of([args[i] + eps * vs[i] for i in argnums]))
    minus = _scalar(loss_of([args[i] - eps * vs[i] for i in argnums]))
    numeric = (plus - minus) / (2 * eps)
    scale = max(abs(reverse), abs(numeric), 1.0)
    if abs(reverse - numeric) > atol + rtol * scale:
        msg = (
            f"check_grads ({label}): reverse mode gives directional derivative {reverse!r}, "
            f"central finite differences (eps={eps}) give {numeric!r}; "
            f"difference {abs(reverse - numeric):.3g} exceeds atol={atol} + rtol={rtol} * {scale:.3g}"
        )
        raise AssertionError(msg)


def check_grads(
    func: Callable[..., Any],
    *args: Any,
    order: int = 2,
    argnums: Sequence[int] | None = None,
    eps: float | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
) -> None:
    """Check reverse-mode derivatives of ``func`` up to ``order`` against finite differences.

    Args:
        func: ``func(*args)`` returns an array or a tuple of arrays (any shapes).
        args: the point; floating and complex arrays are differentiated (or ``argnums``).
        order: 1 checks gradients, 2 also the gradients of gradients (Hessian-vector
            products), and so on.
        eps, rtol, atol: step and tolerances; by default from the inputs' dtype
            (:func:`default_fd_settings`: ``1e-6, 1e-5, 1e-6`` for float64).
        seed: seed of the random directions.

    Raises:
        AssertionError: naming the order and both directional derivatives.

    Example:
        >>> import numpy as np, agrad
        >>> from agrad.testing import check_grads
        >>> check_grads(lambda x: agrad.array_namespace(x).sin(x) * x, np.linspace(0, 1, 5))
    """
    import numpy as np

    import agrad

    args = list(args)
    if argnums is None:
        argnums = [
            i
            for i, a in enumerate(args)
            if hasattr(a, "shape") and _is_inexact(agrad.array_namespace(a), a)
        ]
    argnums = list(argnums)
    if not argnums:
        msg = "check_grads: no floating-point array among the arguments to differentiate"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    _check_order_one(func, args, argnums, rng, eps, rtol, atol, "order 1")
    current = func
    for k in range(2, order + 1):
        current = _gradient_map(current, args, argnums, rng)
        _check_order_one(current, args, argnums, rng, eps, rtol, atol, f"order {k}")


def _gradient_map(
    func: Callable[..., Any], args: list[Any], argnums: Sequence[int], rng: Any
) -> Callable[..., Any]:
    """``x -> grad_x Re <u, func(x)>`` for a fixed random ``u``, differentiable again."""
    import agrad

    xp = agrad.array_namespace(*[args[i] for i in argnums])
    us = [_random_like(_namespace_of(o, xp), _as_array(xp, o), rng) for o in _outputs(func(*args))]

    def grad_fn(*xs: Any) -> tuple[Any, ...]:
        loss = _projected_loss(func, us, list(xs), argnums, xp)
        _, grads = agrad.execute_with_gradients(loss, [xs[i] for i in argnums], retain_grads=True)
        return tuple(grads)

    return grad_fn
