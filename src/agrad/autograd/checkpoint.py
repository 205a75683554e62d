"""``checkpoint``: rematerialisation, trading a second forward pass for memory.

On the tape, ``checkpoint(f)(*args)`` records one node that holds only ``f``'s inputs
and output; the backward pass runs ``f`` again under :func:`~agrad.vjp` and pulls the
cotangent back through that fresh, short-lived tape. torch: ``torch.utils.checkpoint``
(non-reentrant); JAX: ``jax.checkpoint``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from agrad.autograd.adapters import adapter_for
from agrad.autograd.custom import CustomVJP, _array_args
from agrad.autograd.tape.traced import TracedArray
from agrad.autograd.transformations import vjp
from agrad.namespace import array_namespace

__all__ = ["checkpoint"]


def checkpoint(f: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``f`` that keeps only its inputs for the backward pass and recomputes the rest.

    The same values and gradients as ``f`` (the forward runs once more in the backward
    pass); ``f`` takes arrays positionally (keywords are static) and returns one array.
    """

    def recompute(g: Any, ans: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        _, pull = vjp(functools.partial(f, **kwargs), *args)
        return pull(g)

    spec = CustomVJP(f, recompute, once_differentiable=False)
    spec.name = f"checkpoint({getattr(f, '__name__', 'f')})"

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        arrays = _array_args(args)
        if not arrays:
            return f(*args, **kwargs)
        traced = [a for a in arrays if isinstance(a, TracedArray)]
        if traced:
            return adapter_for(type(traced[0])._ns).custom_vjp(spec, args, kwargs)
        adapter = adapter_for(array_namespace(*arrays))
        if adapter.name in ("torch", "jax"):
            return adapter.checkpoint(f, args, kwargs)
        return f(*args, **kwargs)

    return wrapped
