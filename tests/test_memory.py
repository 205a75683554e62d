"""Memory: nothing of the tape outlives a gradient step, and long training runs stay flat.

The weak-reference tests run with the cyclic garbage collector disabled: the tape must
be freed by reference counting alone, the moment the step returns (a reference cycle
would keep every traced array, tape node and saved forward value alive until the
collector happens to run). The long run trains a small model for 10,000 steps on
NumPy and compares resident memory and the number of live Python objects after a
warm-up with the end; the bounds are generous, the leak they catch (a few hundred
bytes or one object per step) is not.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

import agrad
import agrad.optim as optim
from agrad.autograd.tape.traced import Node, TracedArray
from conftest import asarray


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def tape_objects() -> int:
    """Live tape nodes and traced arrays (both are tracked by the garbage collector)."""
    return sum(issubclass(type(o), (Node, TracedArray)) for o in gc.get_objects())


def _mlp_loss(seen: list[weakref.ref], x: Any, y: Any) -> Any:
    def loss(p: dict[str, Any]) -> Any:
        xp = agrad.array_namespace(p["w1"])
        h = xp.tanh(xp.matmul(x, p["w1"]) + p["b1"])
        out = xp.matmul(h, p["w2"])
        r = out - y
        total = xp.mean(r * r)
        for t in (p["w1"], p["b1"], p["w2"], h, out, r, total):
            seen.append(weakref.ref(t))
        return total

    return loss


def _problem(xp: Any) -> tuple[dict[str, Any], Any, Any]:
    rng = np.random.default_rng(1)
    params = {
        "w1": agrad.variable(asarray(xp, rng.standard_normal((3, 5)) * 0.3)),
        "b1": agrad.variable(asarray(xp, np.zeros(5))),
        "w2": agrad.variable(asarray(xp, rng.standard_normal((5, 1)) * 0.3)),
    }
    return (
        params,
        asarray(xp, rng.standard_normal((8, 3))),
        asarray(xp, rng.standard_normal((8, 1))),
    )


def test_nothing_of_the_tape_stays_alive_after_a_training_step(xp) -> None:
    params, x, y = _problem(xp)
    opt = optim.adam(lr=0.01)
    state = opt.init(params)
    seen: list[weakref.ref] = []
    loss = _mlp_loss(seen, x, y)
    before = tape_objects()
    with no_cyclic_gc():
        for _ in range(3):
            _, grads = agrad.execute_with_gradients(loss, params)
            params, state = opt.step(params, grads, state)
        alive = [r() for r in seen if r() is not None]
        assert not alive, f"{len(alive)} arrays of the traced computation are still alive"
        assert tape_objects() == before


def test_retained_history_is_freed_with_the_results(tape_xp) -> None:
    """``retain_grads=True`` keeps the tape exactly as long as the returned arrays live."""
    seen: list[weakref.ref] = []

    def f(w):
        ns = agrad.array_namespace(w)
        s = ns.sin(w)
        seen.append(weakref.ref(s))
        return ns.sum(s * s)

    before = tape_objects()
    with no_cyclic_gc():
        outer = []

        def g(w):
            y, dw = agrad.execute_with_gradients(f, w, retain_grads=True)
            outer.append(weakref.ref(dw))
            return agrad.array_namespace(w).sum(dw)

        _, d2 = agrad.execute_with_gradients(g, asarray(tape_xp, [0.1, 0.2]))
        np.testing.assert_allclose(
            np.asarray(agrad.testing.to_numpy(d2)), 2 * np.cos(2 * np.array([0.1, 0.2])), rtol=1e-12
        )
        assert all(r() is None for r in seen + outer)
        assert tape_objects() == before


def test_tape_is_freed_when_func_raises(tape_xp) -> None:
    seen: list[weakref.ref] = []

    def f(w):
        h = w * 2.0
        seen.append(weakref.ref(h))
        return h  # not a scalar: execute_with_gradients raises after tracing

    before = tape_objects()
    with no_cyclic_gc():
        with pytest.raises(ValueError, match="y must be a scalar") as info:
            agrad.execute_with_gradients(f, asarray(tape_xp, [1.0, 2.0]))
        del info  # the traceback holds the frames that held the traced arrays
        assert all(r() is None for r in seen)
        assert tape_objects() == before


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_ten_thousand_numpy_steps_with_flat_memory() -> None:
    """Train a tiny model 10,000 steps: memory and live objects after 1,000 equal those at the end."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4))
    y = rng.standard_normal(16)

    def loss(p):
        xp = agrad.array_namespace(p["w"])
        r = xp.tanh(xp.matmul(x, p["w"]) + p["b"]) - y
        return xp.mean(r * r)

    params = {"w": agrad.variable(rng.standard_normal(4) * 0.1), "b": agrad.variable(np.zeros(()))}
    opt = optim.adam(lr=1e-2)
    state = opt.init(params)
    first_loss = float(loss({k: v.value for k, v in params.items()}))
    for step in range(10_000):
        _, grads = agrad.execute_with_gradients(loss, params)
        params, state = opt.step(params, grads, state)
        if step == 999:
            gc.collect()
            rss0, objects0 = _rss_bytes(), len(gc.get_objects())
    gc.collect()
    rss_growth = _rss_bytes() - rss0
    object_growth = len(gc.get_objects()) - objects0
    print(f"\n10,000 steps: RSS growth {rss_growth} bytes, live-object growth {object_growth}")
    assert state.count == 10_000
    assert float(loss({k: v.value for k, v in params.items()})) < first_loss  # it trained
    assert object_growth < 100, f"{object_growth} more live objects after 9,000 more steps"
    assert rss_growth < 8 * 2**20, f"resident memory grew by {rss_growth / 2**20:.1f} MiB"


def test_traced_allocations_do_not_grow_per_step() -> None:
    """tracemalloc over 1,000 steps after a traced warm-up: under 64 bytes per step.

    (Interpreter free lists and caches fill up during the warm-up; they account for a
    few KiB that do not grow with the number of steps.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4))
    params = [agrad.variable(rng.standard_normal(4)), agrad.variable(rng.standard_normal(()))]
    m = [np.zeros(4), np.zeros(())]
    v = [np.zeros(4), np.zeros(())]

    def loss(p):
        xp = agrad.array_namespace(p[0])
        return xp.sum(xp.sin(xp.matmul(x, p[0]) * p[1]) ** 2.0)

    def step(t: int) -> None:
        nonlocal params, m, v
        _, g = agrad.execute_with_gradients(loss, params)
        params, m, v = agrad.adam_update(params, g, 1e-3, m, v, t)

    for t in range(1, 101):
        step(t)
    tracemalloc.start()
    try:
        for t in range(101, 401):
            step(t)
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for t in range(401, 1401):
            step(t)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    print(f"\ntracemalloc: {growth} bytes more after 1,000 steps")
    assert growth < 64 * 1000, f"{growth} bytes more after 1,000 steps"
