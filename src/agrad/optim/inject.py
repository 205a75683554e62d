"""Hyperparameters as state, changeable at run time (``optax.inject_hyperparams``).

``opt = inject_hyperparams(adam)(lr=1e-3)`` keeps ``lr`` in the state as a 0-d array
(``state.hyperparams["lr"]``), which the rule reads at every step; change it with
``state = state.with_hyperparams(lr=1e-4)`` (or by assigning into the dict, as with
optax). Being state, it works under ``jax.jit`` without recompiling and is saved and
loaded with the rest of the state by :func:`agrad.optim.save`/:func:`~agrad.optim.load`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from agrad.optim.base import GradientTransformation, is_array, namespace_of
from agrad.optim.numerics import scalar_like
from agrad.pytree import flatten_leaves

__all__ = ["InjectHyperparamsState", "inject_hyperparams"]


class InjectHyperparamsState(NamedTuple):
    """The injected hyperparameters (name -> 0-d array) and the optimizer's own state."""

    hyperparams: dict
    inner_state: Any

    def with_hyperparams(self, **values: Any) -> InjectHyperparamsState:
        """A copy with new hyperparameter values (numbers or 0-d arrays), each kept in
        the dtype and on the device of the value it replaces."""
        new = dict(self.hyperparams)
        for k, v in values.items():
            if k not in new:
                msg = (
                    f"agrad.optim.inject_hyperparams: {k!r} is not an injected hyperparameter "
                    f"(injected: {sorted(new)})"
                )
                raise KeyError(msg)
            old = new[k]
            if is_array(old):
                import array_api_compat

                xp = namespace_of(old)
                v = xp.asarray(v, dtype=old.dtype, device=array_api_compat.device(old))
            new[k] = v
        return self._replace(hyperparams=new)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        is_array(v) and tuple(v.shape) == ()
    )


def inject_hyperparams(
    factory: Callable[..., GradientTransformation], static_args: Iterable[str] = ()
) -> Callable[..., GradientTransformation]:
    """Wrap an optimizer constructor so its numeric hyperparameters live in the state.

    ``inject_hyperparams(adam)(lr=1e-3, betas=(0.9, 0.99))`` returns a transformation
    whose state is :class:`InjectHyperparamsState`: ``hyperparams`` holds each numeric
    keyword argument (``lr`` here; a tuple such as ``betas`` stays fixed) as a 0-d
    array of the per-step scalar dtype (float64 where the library has it, float32 in
    JAX without x64) on the parameters' device; each step rebuilds the rule with
    those values, so a new value takes effect at the next step, under ``jax.jit``
    too. Arguments named in ``static_args`` stay Python values. A hyperparameter the
    rule needs as a Python number (one that decides the state's structure, such as
    ``momentum`` of ``sgd``) is refused when the wrapper is built, with a message
    that says to list it in ``static_args``.
    """
    static_names = set(static_args)
    name = getattr(factory, "__name__", "factory")

    def build(**kwargs: Any) -> GradientTransformation:
        fn = f"agrad.optim.inject_hyperparams({name})"
        injected = {k: v for k, v in kwargs.items() if k not in static_names and _is_number(v)}
        fixed = {k: v for k, v in kwargs.items() if k not in injected}
        probe = factory(**kwargs)
        for k, v in injected.items():
            try:
                import numpy as np

                factory(**fixed, **{**injected, k: np.asarray(float(v))})
            except (TypeError, ValueError) as err:
                msg = (
                    f"{fn}: {k} cannot be injected ({name} needs it as a Python number: {err}); "
                    f"keep it fixed with inject_hyperparams({name}, static_args=({k!r},))"
                )
                raise TypeError(msg) from None

        def init(params: Any) -> InjectHyperparamsState:
            leaves = [x for x in flatten_leaves(params)[0] if is_array(x)]
            if leaves:
                xp = namespace_of(leaves[0])
                hp = {k: scalar_like(xp, leaves[0], v) for k, v in injected.items()}
            else:
                hp = dict(injected)
            return InjectHyperparamsState(hp, probe.inner_init(params))

        def update(updates: Any, state: InjectHyperparamsState, params: Any):
            opt = factory(**fixed, **state.hyperparams)
            out, inner = opt.inner_update(updates, state.inner_state, params)
            return out, InjectHyperparamsState(dict(state.hyperparams), inner)

        return GradientTransformation(
            f"inject_hyperparams({probe.name})",
            init,
            update,
            dict(probe.hyperparams),
            needs_params=probe.needs_params,
            complex_params=probe.complex_params,
        )

    return build
