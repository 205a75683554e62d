"""Adapter for JAX: native ``jax.vjp``; arrays are immutable, so updates are functional."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from agrad.autograd.adapters import Adapter

__all__ = ["ADAPTER", "JaxAdapter"]


def _stop(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if isinstance(x, jax.Array) else x, tree
    )


class JaxAdapter(Adapter):
    """Every floating JAX array is differentiable; ``variable`` returns the array itself."""

    name = "jax"

    def variable(self, x: Any) -> Any:
        return x

    def is_variable(self, x: Any) -> bool:
        return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)

    def stop_gradient(self, x: Any) -> Any:
        return jax.lax.stop_gradient(x)

    def value_and_grad(self, flat_func, leaves, retain):
        if not retain:
            leaves = [jax.lax.stop_gradient(x) for x in leaves]

        def f(*xs: Any) -> Any:
            return flat_func(list(xs))

        y, vjp, extras = jax.vjp(f, *leaves, has_aux=True)
        # JAX's cotangent of a complex input is the conjugate of torch's (and agrad's tape's)
        grads = [jnp.conj(g) if jnp.iscomplexobj(g) else g for g in vjp(jnp.ones_like(y))]
        if not retain:
            y, grads, extras = _stop(y), _stop(grads), _stop(extras)
        return y, grads, extras

    def writable(self, dst: Any, new: Any) -> bool:
        return False


ADAPTER = JaxAdapter()
