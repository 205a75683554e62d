"""optax both ways: an agrad optimizer as an ``optax.GradientTransformation``, and back.

``to_optax(agrad.optim.adam(1e-3))`` is an instance of ``optax.GradientTransformation``
(``init``/``update`` with optax's signatures), so it goes wherever optax expects one:
``jax.jit``, ``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``. Its
state is agrad's (``NamedTuple`` records of JAX arrays, counts as 0-d ``int32``), a
pytree like any optax state.

``from_optax(tx)`` makes an optax transformation a link of an agrad chain:
``agrad.optim.chain(from_optax(optax.clip_by_global_norm(1.0)), agrad.optim.adam(1e-3))``
(``chain`` also accepts the optax transformation itself and wraps it). optax runs on
JAX arrays only, so such a link refuses other backends with a clear message.
"""

from __future__ import annotations

from typing import Any

from agrad.optim.base import GradientTransformation
from agrad.pytree import flatten_leaves

__all__ = ["from_optax", "is_optax_transformation", "to_optax"]


def to_optax(opt: GradientTransformation) -> Any:
    """``opt`` as an ``optax.GradientTransformation`` (an instance of it).

    ``init(params)`` and ``update(updates, state, params=None)`` call ``opt``'s
    validated methods, which check only shapes and dtypes of traced arrays, so the
    result works under ``jax.jit`` and ``jax.lax.scan``. Extra keyword arguments
    optax passes along (``optax.with_extra_args_support``) are accepted and ignored.
    """
    import optax

    if not isinstance(opt, GradientTransformation):
        msg = f"agrad.optim.to_optax: expected an agrad.optim transformation, got {type(opt).__name__}"
        raise TypeError(msg)

    def init_fn(params: Any) -> Any:
        return opt.init(params)

    def update_fn(updates: Any, state: Any, params: Any = None, **extra_args: Any) -> Any:
        return opt.update(updates, state, params)

    return optax.GradientTransformation(init_fn, update_fn)


def is_optax_transformation(obj: Any) -> bool:
    """Whether ``obj`` is an optax transformation (without importing optax for a no)."""
    kind = type(obj)
    if not kind.__module__.startswith("optax"):
        return False
    return callable(getattr(obj, "init", None)) and callable(getattr(obj, "update", None))


def _check_jax(fn: str, tree: Any) -> None:
    for leaf in flatten_leaves(tree)[0]:
        if hasattr(leaf, "shape") and not type(leaf).__module__.startswith(("jax", "jaxlib")):
            lib = type(leaf).__module__.split(".")[0]
            msg = (
                f"{fn}: optax transformations run on JAX arrays, got a {lib} array "
                f"({type(leaf).__name__}); use agrad's own transformation of that name "
                "(agrad.optim.clip_by_global_norm, ...) on other backends"
            )
            raise TypeError(msg)


def from_optax(tx: Any, name: str | None = None) -> GradientTransformation:
    """An optax transformation as an agrad transformation, to compose with :func:`chain`.

    Its ``init``/``update`` are optax's, called on the validated JAX arrays of each call;
    the updates it returns are the additive updates agrad expects (optax's
    convention is agrad's). Any other namespace is refused with a ``TypeError`` before
    anything is computed or written.
    """
    if not is_optax_transformation(tx):
        msg = f"agrad.optim.from_optax: expected an optax transformation, got {type(tx).__name__}"
        raise TypeError(msg)
    label = name or f"from_optax({getattr(tx.init, '__qualname__', 'tx').split('.')[0]})"

    def init(params: Any) -> Any:
        _check_jax(f"agrad.optim.{label}.init", params)
        return tx.init(params)

    def update(updates: Any, state: Any, params: Any) -> tuple[Any, Any]:
        _check_jax(f"agrad.optim.{label}.update", updates)
        return tx.update(updates, state, params)

    return GradientTransformation(label, init, update, {"tx": tx}, needs_params=False)
