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

    def vjp(self, flat_func, leaves, retain):
        """``jax.vjp``; ``vjp_fn(cotangents, retain, batched=False)`` (``jax.vmap`` when batched)."""
        outs, pullback = jax.vjp(lambda *xs: list(flat_func(list(xs))), *leaves)

        def vjp_fn(cotangents: list[Any], retain_grads: bool, batched: bool = False) -> list[Any]:
            cots = [jnp.zeros_like(o) if c is None else c for o, c in zip(outs, cotangents)]
            grads = jax.vmap(pullback)(cots) if batched else pullback(cots)
            return [jnp.conj(g) if jnp.iscomplexobj(g) else g for g in grads]

        return outs, vjp_fn

    def linearize(self, flat_func, leaves, retain):
        """``jax.linearize``: ``(outs, jvp_fn(tangents, retain, batched=False))``."""
        outs, lin = jax.linearize(lambda *xs: list(flat_func(list(xs))), *leaves)

        def jvp_fn(
            tangents: list[Any], retain_out: bool = False, batched: bool = False
        ) -> list[Any]:
            if batched:
                return list(jax.vmap(lambda *ts: lin(*ts))(*tangents))
            return list(lin(*tangents))

        return outs, jvp_fn

    def custom_vjp(self, spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``spec`` as a ``jax.custom_vjp`` (keyword arguments are static)."""
        return _custom_vjp(spec, kwargs)(*args)

    def checkpoint(self, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``jax.checkpoint``: the inside of ``f`` is recomputed in the backward pass."""
        return jax.checkpoint(lambda *xs: f(*xs, **kwargs))(*args)

    def writable(self, dst: Any, new: Any) -> bool:
        return False


def _custom_vjp(spec: Any, kwargs: dict[str, Any]) -> Any:
    """``jax.custom_vjp`` of ``spec``; with ``spec.once`` a second derivative raises."""

    @jax.custom_vjp
    def fn(*args: Any) -> Any:
        return spec.fwd(*args, **kwargs)

    def fwd(*args: Any) -> Any:
        ans = spec.fwd(*args, **kwargs)
        return ans, (ans, args)

    def run(g: Any, ans: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        grads = spec.call_bwd(g, ans, args, kwargs, len(args))
        return tuple(jnp.zeros_like(a) if c is None else c for a, c in zip(args, grads))

    if spec.once:
        run = _once(spec.name, run)

    fn.defvjp(fwd, lambda res, g: run(g, res[0], res[1]))
    return fn


def _once(name: str, run: Any) -> Any:
    """``run`` wrapped so that differentiating its result raises a clear error."""

    @jax.custom_vjp
    def guarded(g: Any, ans: Any, args: tuple[Any, ...]) -> Any:
        return run(g, ans, args)

    def refuse(res: Any, gg: Any) -> Any:
        msg = (
            f"{name}: its VJP was declared once-differentiable "
            "(custom_vjp(..., once_differentiable=True)) and cannot be differentiated again"
        )
        raise RuntimeError(msg)

    guarded.defvjp(lambda g, ans, args: (run(g, ans, args), None), refuse)
    return guarded


ADAPTER = JaxAdapter()
