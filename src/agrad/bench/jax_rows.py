"""JAX rows: one ``jax.jit`` training step (grad + update) with agrad.optim vs with optax.

The step is the one a JAX user writes: ``jax.value_and_grad`` of a small MLP's loss,
the optimizer's ``update``, ``optax.apply_updates``, all in one jitted function, the
parameters and state passed in and returned (no donation, both sides alike). Only the
optimizer differs: ``agrad.optim.<rule>`` (through :func:`agrad.optim.to_optax`) or
``optax.<rule>`` with the same hyperparameters. Float32, JAX's default precision
(x64 off while these rows run); the target is agrad <= 1.2x optax.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np

from agrad.bench._harness import Row, Settings, timed_row

__all__ = ["jax_rows", "jitted_step"]

LR = 1e-3


def _rules() -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    import optax

    from agrad import optim

    return {
        "adam": (lambda: optim.adam(LR), lambda: optax.adam(LR)),
        "adamw": (
            lambda: optim.adamw(LR, weight_decay=1e-2),
            lambda: optax.adamw(LR, weight_decay=1e-2),
        ),
        "sgd-momentum": (
            lambda: optim.sgd(LR, momentum=0.9),
            lambda: optax.sgd(LR, momentum=0.9),
        ),
        "rmsprop": (
            lambda: optim.rmsprop(LR, alpha=0.99, eps=1e-8),
            lambda: optax.rmsprop(LR, decay=0.99, eps=1e-8),
        ),
        "lion": (lambda: optim.lion(LR), lambda: optax.lion(LR)),
        "lamb": (lambda: optim.lamb(LR), lambda: optax.lamb(LR)),
        "adafactor": (lambda: optim.adafactor(LR), lambda: optax.adafactor(LR)),
    }


def _sizes(settings: Settings) -> list[int]:
    return [64, 32, 10] if settings.tiny else [784, 1024, 1024, 10]


def _mlp_problem(sizes: list[int], batch: int) -> tuple[dict[str, Any], Any, Any]:
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    params = {}
    for i, (a, b) in enumerate(pairwise(sizes)):
        params[f"w{i}"] = jnp.asarray(rng.standard_normal((a, b), dtype=np.float32) / np.sqrt(a))
        params[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    x = jnp.asarray(rng.standard_normal((batch, sizes[0]), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, sizes[-1], batch))
    return params, x, y


def _loss(params: dict[str, Any], x: Any, y: Any) -> Any:
    import jax
    import jax.numpy as jnp

    n = len(params) // 2
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = jnp.tanh(h)
    logp = jax.nn.log_softmax(h)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def jitted_step(tx: Any, params: Any, x: Any, y: Any) -> Callable[[], None]:
    """A zero-argument function running one jitted step of ``tx`` (compiled on creation)."""
    import jax
    import optax

    @jax.jit
    def step(params: Any, state: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    box = [params, tx.init(params)]

    def run() -> None:
        p, s, loss = step(box[0], box[1], x, y)
        loss.block_until_ready()
        box[0], box[1] = p, s

    run()  # compile outside the timing
    return run


def jax_rows(settings: Settings) -> list[Row]:
    """One row per rule: agrad.optim's jitted step vs optax's, x64 off while they run."""
    try:
        import jax
        import optax  # noqa: F401
    except ImportError:
        return []
    from agrad import optim

    rows: list[Row] = []
    sizes = _sizes(settings)
    shape = "x".join(map(str, sizes))
    with jax.enable_x64(False):
        params, x, y = _mlp_problem(sizes, 64 if settings.tiny else 256)
        for rule, (make_agrad, make_optax) in _rules().items():
            name = f"jit step {rule}, MLP {shape}"
            if settings.filter and settings.filter not in f"jax {name}":
                continue
            a_fn = jitted_step(optim.to_optax(make_agrad()), params, x, y)
            p_fn = jitted_step(make_optax(), params, x, y)
            rows.append(
                timed_row(
                    "jax",
                    name,
                    (f"agrad.optim.{rule.split('-')[0]} (jax.jit)", a_fn),
                    (f"optax.{rule.split('-')[0]} (jax.jit)", p_fn),
                    1.2,
                    settings,
                )
            )
    return rows
