"""Adversarial input against the update entry points: one test per case of the reliability issue.

Each test asserts either the right number (against torch.optim, or the generic path)
or an exception with nothing modified (values, variable bindings, torch version
counters). The native fast paths have their own module (test_adversarial_fastpath.py),
unclear errors theirs (test_adversarial_errors.py); the tape's duplicate-index
``__setitem__`` is in test_tape_ops.py.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from typing import Any

import numpy as np
import pytest

import agrad
import agrad.numpy
import agrad.optim as optim
from agrad.autograd.adapters import adapter_for
from agrad.namespace import library_name
from agrad.optim import fastpath
from agrad.pytree import flatten
from agrad.testing import to_numpy
from conftest import asarray
from test_bad_input_matrix import assert_unchanged, record_inputs

torch = pytest.importorskip("torch")

# The entry points that write: each is called as run(params, grads, state_trees).
ENTRY_POINTS = ["gradient_descent_update", "adam_update", "adagrad", "adam", "apply_updates"]


def _call(kind: str, params: dict, grads: dict, inplace: bool = True) -> tuple[Any, Any]:
    """Run one entry point on ``params``; returns (the call, everything it could write)."""
    if kind == "gradient_descent_update":
        return (lambda: agrad.gradient_descent_update(params, grads, 0.1, inplace)), params
    if kind == "adam_update":
        mw = {k: v * 0.0 for k, v in grads.items()}
        vw = {k: v * 0.0 for k, v in grads.items()}
        call = lambda: agrad.adam_update(params, grads, 0.1, mw, vw, 1, inplace=inplace)  # noqa: E731
        return call, (params, mw, vw)
    if kind == "apply_updates":
        return (lambda: optim.apply_updates(params, grads, inplace)), params
    opt = optim.adagrad(lr=0.1) if kind == "adagrad" else optim.adam(lr=0.1)
    state = opt.init({k: v * 1.0 for k, v in params.items()})
    return (lambda: opt.step(params, grads, state, inplace)), (params, state)


@pytest.fixture(params=[True, False], ids=["fast-path-on", "generic-path"])
def fast(request, monkeypatch):
    monkeypatch.setattr(fastpath, "enabled", request.param)
    return request.param


# -- 1. aliasing ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ENTRY_POINTS)
def test_one_array_at_two_key_paths_is_refused(xp, kind, fast):
    if library_name(xp) == "jax":
        pytest.skip("JAX arrays are immutable: nothing is written in place")
    shared = agrad.variable(asarray(xp, [1.0, 2.0])) if library_name(xp) != "torch" else None
    if shared is None:
        shared = torch.tensor([1.0, 2.0], dtype=torch.float64)
    params = {"a": shared, "b": shared}
    grads = {"a": asarray(xp, [1.0, 1.0]), "b": asarray(xp, [1.0, 1.0])}
    call, watched = _call(kind, params, grads)
    before = record_inputs(watched)
    with pytest.raises(ValueError, match=r"\['a'\] and .*\['b'\] are the same array"):
        call()
    assert_unchanged(before)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_state_that_is_a_parameter_is_refused(lib, fast):
    make = np.array if lib == "numpy" else (lambda v: torch.tensor(v, dtype=torch.float64))
    params = {"w": make([1.0, 2.0])}
    opt = optim.adam(lr=0.1)
    state = opt.init(params)._replace(exp_avg={"w": params["w"]})
    before = record_inputs((params, state))
    with pytest.raises(ValueError, match=r"params\['w'\] and state\.exp_avg\['w'\] are the same"):
        opt.step(params, {"w": make([1.0, 1.0])}, state)
    assert_unchanged(before)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_exp_avg_that_is_exp_avg_sq_is_refused(lib, fast):
    make = np.array if lib == "numpy" else (lambda v: torch.tensor(v, dtype=torch.float64))
    params = {"w": make([1.0, 2.0])}
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    state = state._replace(exp_avg_sq=state.exp_avg)
    before = record_inputs((params, state))
    with pytest.raises(ValueError, match=r"exp_avg\['w'\] and state\.exp_avg_sq\['w'\] are the"):
        opt.step(params, {"w": make([1.0, 1.0])}, state)
    assert_unchanged(before)


@pytest.mark.parametrize("n", [100, 20_000])  # below and above the fast path's small-array size
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_overlapping_views_are_refused(lib, n, fast):
    base = np.ones(n + 10) if lib == "numpy" else torch.ones(n + 10, dtype=torch.float64)
    params = {"a": base[:n], "b": base[10:]}
    grads = {"a": params["a"] * 0.0 + 1.0, "b": params["b"] * 0.0 + 1.0}
    before = record_inputs(params)
    with pytest.raises(ValueError, match=r"params\['a'\] and params\['b'\] share memory"):
        optim.sgd(lr=0.1).step(params, grads, optim.sgd(lr=0.1).init(params))
    assert_unchanged(before)


def test_interleaved_numpy_views_that_do_not_overlap_are_written():
    """x[::2] and x[1::2] span the same bytes but share no element: both take their step."""
    base = np.ones(10)
    params = {"even": base[::2], "odd": base[1::2]}
    opt = optim.sgd(lr=0.5)
    opt.step(params, {"even": np.ones(5), "odd": np.full(5, 2.0)}, opt.init(params))
    np.testing.assert_array_equal(base, np.tile([0.5, 0.0], 5))


# -- 2. partial writes: refusals found before the first write -------------------------
def _inference_tensor():
    with torch.inference_mode():
        return torch.tensor([5.0, 6.0], dtype=torch.float64)


@pytest.mark.parametrize("kind", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("make_bad", "reason"),
    [
        (_inference_tensor, "it is an inference tensor"),
        (
            lambda: torch.tensor([5.0], dtype=torch.float64).expand(2),
            "its elements overlap in memory",
        ),
    ],
    ids=["inference-tensor", "expanded-view"],
)
def test_a_torch_leaf_that_refuses_writes_is_found_before_any_write(kind, make_bad, reason, fast):
    params = {
        "a": torch.tensor([1.0, 2.0], dtype=torch.float64),
        "b": torch.tensor([3.0, 4.0], dtype=torch.float64),
        "z": make_bad(),
    }
    grads = {k: torch.ones(2, dtype=torch.float64) for k in params}
    call, watched = _call(kind, params, grads)
    before = _snapshot(watched)
    with pytest.raises(ValueError, match=rf"cannot update \S*\['z'\] in place: {reason}"):
        call()
    assert _snapshot(watched) == before


def _snapshot(tree: Any) -> list[tuple[Any, ...]]:
    """Values and version counters (inference tensors have none) of every array leaf."""
    out = []
    for leaf in flatten(tree)[0]:
        if isinstance(leaf, torch.Tensor):
            version = None if leaf.is_inference() else leaf._version
            out.append((id(leaf), version, leaf.tolist()))
    return out


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adagrad"])
def test_sparse_gradient_is_refused_before_any_write(name, fast):
    emb = torch.nn.Embedding(6, 3, sparse=True, dtype=torch.float32)
    emb(torch.tensor([1, 2])).sum().backward()
    params = {
        "dense": torch.ones(
            4, dtype=torch.float32
        ),  # the float32 group a fused kernel writes first
        "emb": emb.weight,
    }
    grads = {"dense": torch.ones(4), "emb": emb.weight.grad}
    opt = getattr(optim, name)(lr=0.1)
    state = opt.init(params)
    before = record_inputs((params, state))
    with pytest.raises(
        TypeError, match=r"grads\['emb'\] cannot be used: it is a torch\.sparse_coo"
    ):
        opt.step(params, grads, state)
    assert_unchanged(before)


def test_an_interrupt_during_the_writes_is_held_until_every_write_is_done(monkeypatch):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    monkeypatch.setattr(fastpath, "enabled", False)
    params = {k: np.zeros(3) for k in "abcd"}
    adapter = adapter_for(agrad.array_namespace(params["a"]))
    write = adapter.write
    calls = []

    def interrupted_write(dst, new):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during the first write
        calls.append(dst)
        return write(dst, new)

    monkeypatch.setattr(adapter, "write", interrupted_write)
    opt = optim.sgd(lr=1.0)
    with pytest.raises(KeyboardInterrupt):
        opt.step(params, {k: np.ones(3) for k in params}, opt.init(params))
    assert len(calls) == 5  # the four parameters and the step count (a 0-d array)
    for p in params.values():
        np.testing.assert_array_equal(p, -1.0)  # every parameter took the step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


@pytest.mark.parametrize("handler", ["ignore", "python"])
def test_the_held_interrupt_goes_to_the_handler_that_was_there(monkeypatch, handler):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread only")
    monkeypatch.setattr(fastpath, "enabled", False)
    seen = []
    previous = (
        signal.SIG_IGN if handler == "ignore" else (lambda signum, frame: seen.append(signum))
    )
    original = signal.signal(signal.SIGINT, previous)
    try:
        params = {"a": np.zeros(3)}
        adapter = adapter_for(agrad.array_namespace(params["a"]))
        write = adapter.write

        def interrupted_write(dst, new):
            os.kill(os.getpid(), signal.SIGINT)
            return write(dst, new)

        monkeypatch.setattr(adapter, "write", interrupted_write)
        opt = optim.sgd(lr=1.0)
        opt.step(params, {"a": np.ones(3)}, opt.init(params))  # no KeyboardInterrupt
        assert signal.getsignal(signal.SIGINT) is previous
        assert seen == ([] if handler == "ignore" else [signal.SIGINT])
        np.testing.assert_array_equal(params["a"], -1.0)
    finally:
        signal.signal(signal.SIGINT, original)


# -- 3. stale autograd graphs ---------------------------------------------------------
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adagrad", "rmsprop"])
def test_a_stale_torch_graph_raises_after_an_in_place_step(name, fast):
    w = torch.ones(3, dtype=torch.float32, requires_grad=True)
    y = (w * w).sum()  # saves w for the backward pass
    opt = getattr(optim, name)(lr=0.1)
    params = {"w": w}
    opt.step(params, {"w": torch.ones(3)}, opt.init(params))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_the_seed_updates_bump_the_version_counter_too(fast):
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    y = (w * w).sum()
    agrad.adam_update(w, torch.ones(3, dtype=torch.float64), 0.1, w * 0.0, w.detach() * 0.0, 1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


# -- 4. half precision ----------------------------------------------------------------
def _half_arrays(lib: str, dtype_name: str, values):
    if lib == "torch":
        return torch.tensor(values, dtype=getattr(torch, dtype_name))
    if lib == "jax":
        jnp = pytest.importorskip("jax.numpy")
        return jnp.asarray(values, dtype=getattr(jnp, dtype_name))
    if lib == "dask":
        da = pytest.importorskip("dask.array")
        return da.from_array(np.asarray(values, dtype=dtype_name), chunks=2)
    return np.asarray(values, dtype=dtype_name)


HALF = [
    ("numpy", "float16"),
    ("torch", "float16"),
    ("torch", "bfloat16"),
    ("jax", "float16"),
    ("jax", "bfloat16"),
    ("dask", "float16"),
]


@pytest.mark.parametrize(("lib", "dtype_name"), HALF)
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adagrad", "nadam"])
def test_half_precision_computes_in_float32_on_every_path(lib, dtype_name, name, monkeypatch):
    """A zero gradient with the default eps (1e-8 is 0 in float16) stays finite, and every
    path (fast or generic, in place or not) gives what the float32 computation rounds to."""
    values, grad = [1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -0.25, 2.0]
    kwargs = {"lr": 0.1}
    if name == "sgd":
        kwargs["momentum"] = 0.9
    ref_p = {"w": np.asarray(values, np.float32)}
    ref_opt = getattr(optim, name)(**kwargs)
    ref_state = ref_opt.init(ref_p)
    results = []
    for fast in (True, False):
        monkeypatch.setattr(fastpath, "enabled", fast)
        for inplace in (True, False):
            p = {"w": _half_arrays(lib, dtype_name, values)}
            opt = getattr(optim, name)(**kwargs)
            state = opt.init(p)
            for _ in range(3):
                p, state = opt.step(p, {"w": _half_arrays(lib, dtype_name, grad)}, state, inplace)
            assert str(p["w"].dtype).endswith(dtype_name)
            w = p["w"].float() if lib == "torch" else p["w"]  # NumPy has no bfloat16
            results.append(to_numpy(w).astype(np.float32))
    for _ in range(3):
        ref_p, ref_state = ref_opt.step(ref_p, {"w": np.asarray(grad, np.float32)}, ref_state)
    assert all(np.isfinite(r).all() for r in results)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    # each step is rounded once to the half dtype: within a few half-precision ulps
    tol = 2.0**-8 if dtype_name == "float16" else 2.0**-5
    np.testing.assert_allclose(results[0], ref_p["w"], rtol=3 * tol, atol=3 * tol)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_adam_equals_torch_fused(dtype_name):
    dtype = getattr(torch, dtype_name)
    w0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    g = torch.tensor([0.0, 1.0, -0.25, 2.0], dtype=dtype)
    ref = w0.clone().requires_grad_(True)
    topt = torch.optim.Adam([ref], lr=0.1, fused=True)
    params = {"w": w0.clone()}
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    for _ in range(5):
        ref.grad = g.clone()
        topt.step()
        params, state = opt.step(params, {"w": g.clone()}, state, inplace=False)
    torch.testing.assert_close(params["w"], ref.detach(), rtol=0, atol=0)


# -- 6. every form of a learning rate is validated ------------------------------------
BAD_LR = [(math.nan, "nan"), (-1.0, "-1.0"), (math.inf, "inf")]


@pytest.mark.parametrize(("value", "shown"), BAD_LR)
@pytest.mark.parametrize("form", ["python", "numpy-0d", "torch-0d", "schedule"])
@pytest.mark.parametrize("name", ["sgd", "adam", "lion"])
def test_bad_lr_is_refused_in_every_form(name, form, value, shown):
    params = {"w": np.ones(2)}
    lr = {
        "python": value,
        "numpy-0d": np.asarray(value),
        "torch-0d": torch.tensor(value),
        "schedule": lambda count: value if count >= 1 else 0.1,
    }[form]
    match = rf"agrad\.optim\.({name}|scale_by_learning_rate): invalid lr\S*( \(the schedule's value at step 1\))?: {shown} \(expected a finite number >= 0\)"
    if form != "schedule":
        with pytest.raises(ValueError, match=match):
            getattr(optim, name)(lr)
        return
    opt = getattr(optim, name)(lr)
    state = opt.init(params)
    params, state = opt.step(params, {"w": np.ones(2)}, state)  # step 0: lr 0.1
    before = record_inputs((params, state))
    with pytest.raises(ValueError, match=match):
        opt.step(params, {"w": np.ones(2)}, state)
    assert_unchanged(before)


@pytest.mark.parametrize(("value", "shown"), BAD_LR)
def test_the_seed_api_refuses_a_bad_0d_lr(value, shown):
    w = np.ones(2)
    with pytest.raises(ValueError, match=rf"gradient_descent_update: invalid lr: {shown}"):
        agrad.gradient_descent_update(w, np.ones(2), np.asarray(value))
    np.testing.assert_array_equal(w, 1.0)


# a count is an int >= 0 or a 0-d integer array holding one (np.int64(1) is one)
BAD_COUNTS = [2.0, True, -1, -2, None, np.asarray(-1, np.int32), np.asarray(1.0), np.ones(2, int)]


@pytest.mark.parametrize("count", BAD_COUNTS)
def test_a_tampered_step_count_is_refused_on_every_path(count, fast):
    params = {"w": np.ones(3)}
    opt = optim.adam(lr=0.1)
    state = opt.init(params)._replace(count=count)
    before = record_inputs((params, state))
    match = r"state\.count should be an int >= 0 \(a step count\)|at \.count: .* has None"
    with pytest.raises(ValueError, match=match):
        opt.step(params, {"w": np.ones(3)}, state)
    assert_unchanged(before)


# -- 5. __setitem__ with a repeated position ------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "dask"])
def test_setitem_with_repeated_indices_differentiates_what_was_kept(backend):
    """x[[0, 0, 2]] = v keeps v[1] at position 0: v[0] gets no gradient (as JAX's .at[].set)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    xp = agrad.array_namespace(
        np.zeros(1) if backend == "numpy" else pytest.importorskip("dask.array").zeros(1)
    )
    weights = np.array([10.0, 1.0, 3.0])
    idx = np.array([0, 0, 2])

    def loss(v):
        ns = agrad.array_namespace(v)
        x = ns.zeros(3, dtype=ns.float64)
        x[ns.asarray(idx)] = v
        return ns.sum(x * ns.asarray(weights))

    v = xp.asarray(np.array([1.0, 2.0, 5.0]))
    got = to_numpy(agrad.grad(loss)(v))
    ref = jax.grad(lambda v: jnp.sum(jnp.zeros(3).at[idx].set(v) * weights))(
        jnp.asarray([1.0, 2.0, 5.0])
    )
    np.testing.assert_array_equal(got, np.asarray(ref))
    np.testing.assert_array_equal(got, [0.0, 10.0, 3.0])


def test_setitem_with_repeated_indices_and_a_broadcast_value():
    def loss(v):
        x = agrad.numpy.zeros((3, 2))
        x[np.array([1, 1, 0])] = v  # v (2,) broadcast to (3, 2); row 1 written twice
        return agrad.numpy.sum(x * np.arange(6.0).reshape(3, 2))

    # every write of v lands somewhere and is kept once per target row: rows 1 and 0
    np.testing.assert_array_equal(agrad.grad(loss)(np.array([1.0, 2.0])), [0.0 + 2.0, 1.0 + 3.0])
