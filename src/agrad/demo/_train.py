"""The demo's training loop, written once and run unchanged on every backend.

:func:`train` converts the shared NumPy data and initial parameters with ``xp.asarray``
(copies, float64), wraps the parameters with ``agrad.variable`` and runs ``steps``
optimizer steps on fixed mini-batches. The only backend-aware line is :func:`settle`:
Dask builds graphs lazily, so each step's results are persisted before the next one,
or the graph (and the time per step) would grow with every step. On JAX an
``agrad.optim`` optimizer runs as one jitted step (gradient and update compiled
together, :func:`jax_step`), as a JAX user would write it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import agrad
from agrad.demo._data import Digits
from agrad.demo._model import accuracy, cross_entropy, mlp_logits
from agrad.demo._optimizers import DemoOptimizer
from agrad.pytree import flatten, unflatten

__all__ = ["RunResult", "batch_slices", "jax_step", "settle", "train"]


@dataclass
class RunResult:
    """What one backend's run produced (parameters as NumPy arrays for comparison)."""

    backend: str
    losses: list[float] = field(default_factory=list)
    final_loss: float = float("nan")
    test_accuracy: float = float("nan")
    seconds_per_step: float = float("nan")
    params: dict[str, Any] = field(default_factory=dict)


def batch_slices(n_rows: int, batch_size: int, steps: int) -> list[slice]:
    """Consecutive mini-batches cycling through ``n_rows`` rows (``batch_size <= 0``: all rows)."""
    if batch_size <= 0 or batch_size >= n_rows:
        return [slice(0, n_rows)] * steps
    per_epoch = n_rows // batch_size
    return [
        slice((i % per_epoch) * batch_size, (i % per_epoch + 1) * batch_size) for i in range(steps)
    ]


def settle(*trees: Any) -> tuple[Any, ...]:
    """Persist the Dask arrays among ``trees`` in one go; other arrays pass through unchanged."""
    from array_api_compat import is_dask_array

    leaves, treedef, _ = flatten(trees)
    raw = [x.value if isinstance(x, agrad.Variable) else x for x in leaves]
    lazy = [i for i, x in enumerate(raw) if is_dask_array(x)]
    if not lazy:
        return trees
    import dask

    for i, value in zip(lazy, dask.persist(*(raw[i] for i in lazy), optimize_graph=False)):
        if isinstance(leaves[i], agrad.Variable):
            leaves[i].value = value
        else:
            leaves[i] = value
    return unflatten(treedef, leaves)


def jax_step(optimizer: DemoOptimizer) -> Callable[..., Any]:
    """One ``jax.jit``-compiled training step: ``(params, state, x, onehot) -> (params, state, loss)``."""
    import jax

    def step(params: Any, state: Any, x: Any, onehot: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(batch_loss)(params, x, onehot)
        params, state = optimizer.step(params, grads, state)
        return params, state, loss

    return jax.jit(step)


def batch_loss(params: dict[str, Any], x: Any, onehot: Any) -> Any:
    """The training objective: cross-entropy of the MLP's logits."""
    return cross_entropy(mlp_logits(params, x), onehot)


def train(
    xp: ModuleType,
    backend: str,
    data: Digits,
    init_params: dict[str, Any],
    optimizer: DemoOptimizer,
    steps: int,
    batch_size: int = 256,
    on_step: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train the MLP from ``init_params`` on namespace ``xp``; the same code for every backend."""
    from agrad.testing import to_numpy

    x_train = xp.asarray(data.x_train, dtype=xp.float64, copy=True)
    t_train = xp.asarray(data.onehot_train, dtype=xp.float64, copy=True)
    plain = {k: xp.asarray(v, dtype=xp.float64, copy=True) for k, v in init_params.items()}
    state = optimizer.init(plain)
    params = {k: agrad.variable(v) for k, v in plain.items()}
    loss_and_grads = agrad.value_and_grad(batch_loss)

    jitted = jax_step(optimizer) if backend == "jax" and optimizer.jittable else None
    if jitted is not None:
        params = plain
    result = RunResult(backend)
    start = time.perf_counter()
    for step, rows in enumerate(batch_slices(data.x_train.shape[0], batch_size, steps), 1):
        if jitted is not None:
            params, state, loss = jitted(params, state, x_train[rows, :], t_train[rows, :])
        else:
            loss, grads = loss_and_grads(params, x_train[rows, :], t_train[rows, :])
            params, state = optimizer.step(params, grads, state)
            params, state, loss = settle(params, state, loss)
        result.losses.append(float(loss))
        if on_step is not None:
            on_step(step, result.losses[-1])
    result.seconds_per_step = (time.perf_counter() - start) / max(steps, 1)

    final = {k: agrad.stop_gradient(v) for k, v in params.items()}
    result.final_loss = float(batch_loss(final, x_train, t_train))
    x_test = xp.asarray(data.x_test, dtype=xp.float64)
    result.test_accuracy = accuracy(final, x_test, xp.asarray(data.labels_test))
    result.params = {k: to_numpy(v) for k, v in final.items()}
    return result
