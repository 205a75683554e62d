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
    """The injected hyperparameters (name -> 0-d array, or a tuple of them) and the optimizer's own state."""

    hyperparams: dict
    inner_state: Any

    def with_hyperparams(self, **values: Any) -> InjectHyperparamsState:
        """A copy with new hyperparameter values (numbers or 0-d arrays; a tuple such as
        ``betas`` as a tuple), each kept in the dtype and on the device of the value it
        replaces."""
        new = dict(self.hyperparams)
        for k, v in values.items():
            if k not in new:
                msg = (
                    f"agrad.optim.inject_hyperparams: {k!r} is not an injected hyperparameter "
                    f"(injected: {sorted(new)})"
                )
                raise KeyError(msg)
            old = new[k]
            if isinstance(old, tuple):
                if not isinstance(v, (tuple, list)) or len(v) != len(old):
                    msg = f"agrad.optim.inject_hyperparams: {k} holds {len(old)} values, got {v!r}"
                    raise ValueError(msg)
                new[k] = tuple(None if o is None else _like(o, x) for o, x in zip(old, v))
            else:
                new[k] = _like(old, v)
        return self._replace(hyperparams=new)


def _like(old: Any, v: Any) -> Any:
    """``v`` as a 0-d array of ``old``'s dtype and device (``v`` as it is if ``old`` is no array)."""
    if not is_array(old):
        return v
    import array_api_compat

    xp = namespace_of(old)
    return xp.asarray(v, dtype=old.dtype, device=array_api_compat.device(old))


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) or (
        is_array(v) and tuple(v.shape) == ()
    )


def _injectable(v: Any) -> bool:
    """A number, a 0-d array, or a non-empty tuple/list of them (``betas``)."""
    if isinstance(v, (tuple, list)):  # None entries (adafactor_torch's eps) stay None
        return any(_is_number(x) for x in v) and all(x is None or _is_number(x) for x in v)
    return _is_number(v)


def _as_arrays(v: Any, make: Callable[[Any], Any]) -> Any:
    if isinstance(v, (tuple, list)):
        return tuple(None if x is None else make(x) for x in v)
    return make(v)


def _probe_array(x: Any) -> Any:
    import numpy as np

    return x if is_array(x) else np.asarray(float(x))


def inject_hyperparams(
    factory: Callable[..., GradientTransformation], static_args: Iterable[str] = ()
) -> Callable[..., GradientTransformation]:
    """Wrap an optimizer constructor so its numeric hyperparameters live in the state.

    ``inject_hyperparams(adam)(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)`` returns
    a transformation whose state is :class:`InjectHyperparamsState`: ``hyperparams``
    holds each numeric keyword argument as a 0-d array (a tuple such as ``betas`` as a
    tuple of them) of the per-step scalar dtype (float64 where the library has it,
    float32 in JAX without x64) on the parameters' device; each step rebuilds the
    rule with those values, which the rule uses through array operations (rounded to
    each leaf's dtype: float32 stays float32), so a new value takes effect at the next
    step, under ``jax.jit`` too. Every numeric hyperparameter of agrad's constructors
    can be injected. Arguments named in ``static_args`` stay Python values; booleans
    (``amsgrad``, ``nesterov``, ``centered``, ``maximize``...), masks and schedules are
    never injected. A hyperparameter that decides the structure of the state or the
    computation (an integer such as ``every_k`` or ``sync_period``) is refused when
    the wrapper is built, with a message that says to list it in ``static_args``.
    """
    static_names = set(static_args)
    name = getattr(factory, "__name__", "factory")

    def build(**kwargs: Any) -> GradientTransformation:
        fn = f"agrad.optim.inject_hyperparams({name})"
        injected = {k: v for k, v in kwargs.items() if k not in static_names and _injectable(v)}
        fixed = {k: v for k, v in kwargs.items() if k not in injected}
        probe = factory(**kwargs)
        for k, v in injected.items():
            try:
                factory(**fixed, **{**injected, k: _as_arrays(v, _probe_array)})
            except (TypeError, ValueError) as err:
                msg = (
                    f"{fn}: {k} cannot be injected ({name} needs it as a Python value: {err}); "
                    f"keep it fixed with inject_hyperparams({name}, static_args=({k!r},))"
                )
                raise TypeError(msg) from None
        arrays = factory(**fixed, **{k: _as_arrays(v, _probe_array) for k, v in injected.items()})

        def to_state(xp: Any, like: Any, v: Any) -> Any:
            return _as_arrays(v, lambda x: x if is_array(x) else scalar_like(xp, like, x))

        def init(params: Any) -> InjectHyperparamsState:
            leaves = [x for x in flatten_leaves(params)[0] if is_array(x)]
            if leaves:
                xp = namespace_of(leaves[0])
                hp = {k: to_state(xp, leaves[0], v) for k, v in injected.items()}
            else:
                hp = dict(injected)
            # the rule with the state's arrays decides the state, as it decides the step
            # (an injected momentum of 0 keeps the buffer the array rule steps on)
            inner = (
                factory(**fixed, **hp).inner_init(params) if leaves else probe.inner_init(params)
            )
            return InjectHyperparamsState(hp, inner)

        def update(updates: Any, state: InjectHyperparamsState, params: Any):
            hp = dict(state.hyperparams)
            leaves = [x for x in flatten_leaves(updates)[0] if is_array(x)]
            if leaves:  # values assigned into the dict as numbers become arrays again
                xp = namespace_of(leaves[0])
                hp = {k: to_state(xp, leaves[0], v) for k, v in hp.items()}
            opt = factory(**fixed, **hp)
            out, inner = opt.inner_update(updates, state.inner_state, params)
            return out, InjectHyperparamsState(hp, inner)

        return GradientTransformation(
            f"inject_hyperparams({probe.name})",
            init,
            update,
            dict(probe.hyperparams),
            needs_params=probe.needs_params or arrays.needs_params,
            complex_params=probe.complex_params,
        )

    return build
