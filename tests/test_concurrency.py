"""Trace state is per thread: 8 threads differentiating at once get the single-threaded results.

Every thread computes a different function of different data; a barrier inside the
differentiated function holds all 8 traces open at the same moment, so their tapes
are being recorded concurrently. Results are compared with closed-form NumPy
gradients and, bit for bit, with the same computations run one after another.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import agrad
import agrad.optim as optim
from agrad.autograd.tape.traced import TracedArray
from agrad.testing import to_numpy
from conftest import asarray

N_THREADS = 8


def _problem(k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + k)
    return rng.standard_normal((6, 3)), rng.standard_normal(3)


def _loss(k: int, xp_a: Any, wait: Callable[[], None]) -> Callable[[Any], Any]:
    """L_k(w) = sum(tanh(A_k w)^2) + (k+1) sum(w^3): a different function per thread."""

    def loss(w: Any) -> Any:
        xp = agrad.array_namespace(w)
        h = xp.tanh(xp.matmul(xp_a, w))
        wait()  # every thread is now inside its own trace
        return xp.sum(h * h) + float(k + 1) * xp.sum(w**3.0)

    return loss


def _reference(k: int) -> np.ndarray:
    a, w = _problem(k)
    t = np.tanh(a @ w)
    return a.T @ (2 * t * (1 - t**2)) + 3.0 * (k + 1) * w**2


def _keeps_history(x: Any) -> bool:
    """Whether ``x`` still carries gradient history (a traced array, tensor or JAX tracer)."""
    if isinstance(x, TracedArray) or getattr(x, "requires_grad", False):
        return True
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, jax.core.Tracer)


def _run(xp: Any, k: int, wait: Callable[[], None]) -> tuple[np.ndarray, np.ndarray, bool]:
    a, w = _problem(k)
    w_arr = agrad.variable(asarray(xp, w))
    y, g = agrad.execute_with_gradients(_loss(k, asarray(xp, a), wait), w_arr)
    second = agrad.grad(
        lambda v: agrad.array_namespace(v).sum(agrad.grad(_loss(k, asarray(xp, a), wait))(v))
    )
    h = second(asarray(xp, w))
    plain = not any(_keeps_history(r) for r in (y, g, h))
    return to_numpy(g), to_numpy(h), plain


def test_eight_threads_get_the_single_threaded_gradients(xp) -> None:
    serial = [_run(xp, k, lambda: None) for k in range(N_THREADS)]
    barrier = threading.Barrier(N_THREADS, timeout=60)
    calls = [0] * N_THREADS

    def job(k: int) -> tuple[np.ndarray, np.ndarray, bool]:
        def wait() -> None:
            if calls[k] == 0:  # first trace of this thread: meet the other threads there
                barrier.wait()
            calls[k] += 1

        return _run(xp, k, wait)

    with ThreadPoolExecutor(N_THREADS) as pool:
        parallel = list(pool.map(job, range(N_THREADS)))

    for k in range(N_THREADS):
        g, h, plain = parallel[k]
        np.testing.assert_allclose(g, _reference(k), rtol=1e-12)
        np.testing.assert_array_equal(g, serial[k][0])
        np.testing.assert_array_equal(h, serial[k][1])
        assert plain, "a thread got traced arrays back: trace depth leaked between threads"


def test_eight_threads_training_concurrently_match_serial_training(tape_xp) -> None:
    """Full steps (gradient + Adam) in 8 threads at once equal the same runs done serially."""

    def train(k: int) -> np.ndarray:
        a, w = _problem(k)
        params = {"w": agrad.variable(asarray(tape_xp, w))}
        opt = optim.adam(lr=0.05)
        state = opt.init(params)
        a_arr = asarray(tape_xp, a)
        lazy = agrad.namespace.library_name(tape_xp) == "dask"
        for _ in range(5 if lazy else 20):
            _, g = agrad.execute_with_gradients(
                lambda p: _loss(k, a_arr, lambda: None)(p["w"]), params
            )
            params, state = opt.step(params, g, state)
            if lazy:  # keep dask's graphs short (see docs/distributed.md)
                params["w"].value = params["w"].value.persist()
                state = state._replace(
                    exp_avg={"w": state.exp_avg["w"].persist()},
                    exp_avg_sq={"w": state.exp_avg_sq["w"].persist()},
                )
        return to_numpy(params["w"])

    serial = [train(k) for k in range(N_THREADS)]
    with ThreadPoolExecutor(N_THREADS) as pool:
        parallel = list(pool.map(train, range(N_THREADS)))
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(p, s)


def test_trace_depth_is_per_thread(xp) -> None:
    """While 4 threads hold traces open, 4 others call ``agrad.grad`` at top level: they must
    get plain arrays (top level), not results that keep history (nested), and exact values."""
    barrier = threading.Barrier(N_THREADS, timeout=60)
    lock = threading.Lock()
    odd_finished = threading.Event()
    finished = [0]

    def hold_a_trace_open(k: int) -> np.ndarray:
        a, w = _problem(k)

        def wait() -> None:
            barrier.wait()
            assert odd_finished.wait(60)

        _, g = agrad.execute_with_gradients(_loss(k, asarray(xp, a), wait), asarray(xp, w))
        return to_numpy(g)

    def top_level_grads(k: int) -> tuple[np.ndarray, bool]:
        a, w = _problem(k)
        barrier.wait()  # the even threads are inside their traces now
        try:
            g = agrad.grad(_loss(k, asarray(xp, a), lambda: None))(asarray(xp, w))
            plain = not _keeps_history(g)
            return to_numpy(g), plain
        finally:
            with lock:
                finished[0] += 1
                if finished[0] == N_THREADS // 2:
                    odd_finished.set()

    with ThreadPoolExecutor(N_THREADS) as pool:
        futures = [
            pool.submit(top_level_grads if k % 2 else hold_a_trace_open, k)
            for k in range(N_THREADS)
        ]
        results = [f.result(timeout=120) for f in futures]
    for k, res in enumerate(results):
        g, plain = res if k % 2 else (res, True)
        np.testing.assert_allclose(g, _reference(k), rtol=1e-12)
        assert plain, f"thread {k}: a top-level grad kept its history (trace depth is shared)"
