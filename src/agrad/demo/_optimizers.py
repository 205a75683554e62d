"""The demo's optimizers: ``agrad.optim``'s when present, and the seed's two updates.

Each is wrapped in a :class:`DemoOptimizer` with ``init(params) -> state`` and
``step(params, grads, state) -> (params, state)``. ``step`` updates in place where the
library allows it and returns what the caller keeps, so one loop serves every backend
(JAX arrays are immutable and come back new).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import agrad

__all__ = ["DemoOptimizer", "default_lr", "make_optimizer", "optimizer_names"]

#: The seed's functional updates, available under their own names.
SEED_UPDATES = ("adam_update", "gradient_descent_update")
_NOT_OPTIMIZERS = {"apply_updates", "chain"}
_DEFAULT_LR = {
    "sgd": 0.5,
    "gradient_descent_update": 0.5,
    "adagrad": 0.1,
    "adadelta": 1.0,
    "lars": 0.5,
    "lion": 0.005,
}


@dataclass(frozen=True)
class DemoOptimizer:
    """An optimizer for the demo's loop: a name, ``init`` and ``step``.

    ``jittable``: ``step`` traces under ``jax.jit`` (every ``agrad.optim`` optimizer;
    the seed's updates keep a Python step count and run eagerly).
    """

    name: str
    init: Callable[[Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any]]
    jittable: bool = False


def _optim_factories() -> dict[str, Callable[..., Any]]:
    """``agrad.optim``'s optimizers: constructors of a transformation from a learning rate."""
    try:
        import agrad.optim as optim
    except ImportError:
        return {}
    found = {}
    for name in getattr(optim, "__all__", ()):
        if name in _NOT_OPTIMIZERS or not name.islower():  # TorchOptimizer: not loaded
            continue
        obj = getattr(optim, name, None)
        if not inspect.isfunction(obj):
            continue
        signature = inspect.signature(obj)
        returns = str(signature.return_annotation)
        is_optimizer = "GradientTransformation" in returns and not name.startswith("scale_by")
        if is_optimizer and "lr" in signature.parameters:
            found[name] = obj
    return found


def optimizer_names() -> list[str]:
    """Choices for ``--optimizer``: ``agrad.optim``'s (or ``adam``/``sgd``), then the seed's."""
    names = list(_optim_factories()) or ["adam", "sgd"]
    return names + list(SEED_UPDATES)


def default_lr(name: str) -> float:
    """A learning rate that trains the demo's MLP in about sixty steps."""
    return _DEFAULT_LR.get(name, 0.02)


def _zeros_like(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, p in params.items():
        raw = agrad.stop_gradient(p)
        out[key] = agrad.array_namespace(raw).zeros_like(raw)
    return out


def _seed_adam(lr: float) -> DemoOptimizer:
    def init(params: Any) -> Any:
        return 0, _zeros_like(params), _zeros_like(params)

    def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        t, m, v = state
        params, m, v = agrad.adam_update(params, grads, lr, m, v, t + 1)
        return params, (t + 1, m, v)

    return DemoOptimizer("adam_update", init, step)


def _seed_sgd(lr: float) -> DemoOptimizer:
    def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        return agrad.gradient_descent_update(params, grads, lr), state

    return DemoOptimizer("gradient_descent_update", lambda params: None, step)


def make_optimizer(name: str, lr: float | None = None) -> DemoOptimizer:
    """The optimizer ``name`` (see :func:`optimizer_names`) with learning rate ``lr``."""
    lr = default_lr(name) if lr is None else lr
    factories = _optim_factories()
    if name in factories:
        opt = factories[name](lr=lr)
        return DemoOptimizer(f"agrad.optim.{name}", opt.init, opt.step, jittable=True)
    if name in ("adam_update", "adam"):
        return _seed_adam(lr)
    if name in ("gradient_descent_update", "sgd"):
        return _seed_sgd(lr)
    msg = f"unknown optimizer {name!r}; choose one of {', '.join(optimizer_names())}"
    raise ValueError(msg)
