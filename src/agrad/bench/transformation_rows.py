"""Transformations on the tape (NumPy): batched Jacobians, forward mode, checkpointing.

Rows:

- ``jacobian`` of ``R^256 -> R^256`` in one batched backward pass against 256 separate
  ``grad`` calls (target: at least 10x faster) and against one backward pass per row
  over one recorded tape (what the tape does when a rule has no batched form);
- ``jvp`` (the transpose of the VJP) against ``grad`` of the same function, the price
  of forward mode without JVP rules;
- ``checkpoint``: peak ``tracemalloc`` memory of the gradient of a 16-layer MLP with
  every layer checkpointed against none (target: at most half), and its time (target:
  at most 1.5x).

BLAS runs on one thread here (``threadpoolctl``), as torch does in the other rows: the
batched Jacobian is one matrix product where the loop makes 256 matrix-vector products,
and a multi-threaded BLAS on a shared machine times its own thread contention.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import agrad
from agrad.bench._harness import Row, Settings, progress, timed_row
from agrad.bench.tape_rows import peak_memory_mib

__all__ = ["jacobian_problem", "mlp16_problem", "transformation_rows"]


def jacobian_problem(n: int, seed: int = 0) -> tuple[Callable[[Any], Any], np.ndarray]:
    """``(f, x)``: ``f(x) = tanh(W x) * sin(x) + x * x`` from ``R^n`` to ``R^n``, float64."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, n)) / np.sqrt(n)

    def f(x: Any) -> Any:
        xp = agrad.array_namespace(x)
        return xp.multiply(xp.tanh(xp.matmul(w, x)), xp.sin(x)) + x * x

    return f, rng.standard_normal(n)


def mlp16_problem(batch: int, width: int, depth: int = 16, seed: int = 0):
    """``(loss, params, x)``: a ``depth``-layer tanh MLP and its mean-square loss.

    ``loss(params, x, layer)`` applies ``layer(h, w, b)`` ``depth`` times, so the same
    network runs plain or with ``layer = agrad.checkpoint(plain_layer)``.
    """
    rng = np.random.default_rng(seed)
    params = [
        (rng.standard_normal((width, width)) / np.sqrt(width), np.zeros(width))
        for _ in range(depth)
    ]
    x = rng.standard_normal((batch, width))

    def loss(params: list[Any], x: Any, layer: Callable[..., Any]) -> Any:
        xp = agrad.array_namespace(x, params[0][0])
        h = x
        for w, b in params:
            h = layer(h, w, b)
        return xp.mean(h * h)

    return loss, params, x


def dense_tanh(h: Any, w: Any, b: Any) -> Any:
    """One layer: ``tanh(h w + b)``."""
    xp = agrad.array_namespace(h, w, b)
    return xp.tanh(xp.matmul(h, w) + b)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _jacobian_rows(settings: Settings) -> list[Row]:
    n = 16 if settings.tiny else 256
    f, x = jacobian_problem(n)
    jac = agrad.jacobian(f)

    def separate() -> Any:
        return np.stack([agrad.grad(lambda x, i=i: f(x)[i])(x) for i in range(n)])

    def row_loop() -> Any:  # one tape, one backward pass per row (the fallback)
        _, pull = agrad.vjp(f, x)
        return np.stack([pull(e)[0] for e in np.eye(n)])

    name = f"jacobian R^{n} -> R^{n}"
    a = ("agrad.jacobian (one batched pass)", lambda: jac(x))
    rows = [
        timed_row("transformations", name, a, (f"{n} agrad.grad calls", separate), 0.1, settings),
        timed_row(
            "transformations", name, a, ("one backward per row, one tape", row_loop), None, settings
        ),
    ]
    v = np.ones(n)
    g = agrad.grad(lambda x: agrad.array_namespace(x).sum(f(x)))
    rows.append(
        timed_row(
            "transformations",
            f"jvp vs grad, R^{n} -> R^{n}",
            ("agrad.jvp (transpose of the VJP)", lambda: agrad.jvp(f, (x,), (v,))),
            ("agrad.grad of sum(f)", lambda: g(x)),
            None,
            settings,
        )
    )
    return rows


def _checkpoint_rows(settings: Settings) -> list[Row]:
    batch, width = (32, 16) if settings.tiny else (1024, 128)
    loss, params, x = mlp16_problem(batch, width)
    layer = agrad.checkpoint(dense_tanh)
    plain = agrad.grad(loss)
    name = f"grad of a 16-layer MLP ({batch} x {width})"

    def with_ckpt() -> Any:
        return plain(params, x, layer)

    def without() -> Any:
        return plain(params, x, dense_tanh)

    a_vals, p_vals = [], []
    for rep in range(max(3, settings.reps // 2)):
        pair = [(a_vals, with_ckpt), (p_vals, without)]
        for vals, fn in pair if rep % 2 == 0 else pair[::-1]:
            vals.append(peak_memory_mib(fn))
    mem = Row(
        "transformations/memory",
        f"peak memory, {name}",
        "agrad.checkpoint on every layer",
        "no checkpoint",
        statistics.median(a_vals),
        statistics.median(p_vals),
        0.5,
        "MiB",
        "tracemalloc peak during the call",
        {"agrad": a_vals, "peer": p_vals},
    )
    progress(mem)
    timing = timed_row(
        "transformations",
        f"time, {name}",
        ("agrad.checkpoint on every layer", with_ckpt),
        ("no checkpoint", without),
        1.5,
        settings,
    )
    return [mem, timing]


def transformation_rows(settings: Settings) -> list[Row]:
    """Every transformation row (NumPy, BLAS on one thread)."""
    want = settings.filter
    rows: list[Row] = []
    with _one_blas_thread():
        if not want or want in "transformations jacobian jvp":  # --only matches a row kind
            rows += _jacobian_rows(settings)
        if not want or want in "transformations checkpoint memory":
            rows += _checkpoint_rows(settings)
    return rows
