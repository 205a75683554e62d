"""The native fast paths of ``opt.step`` agree with the generic (reference) path."""

from __future__ import annotations

import numpy as np
import pytest

import agrad
from agrad.optim import fastpath

torch = pytest.importorskip("torch")

# small (gathered), one-chunk, several chunks (> CHUNK elements), 0-d
SHAPES = [(3,), (5, 4), (), (7,), (210, 300), (2, 3, 4), (9000,), (300, 250)]

CONFIGS = [
    ("adam", {}),
    ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("adam", {"betas": (0.3, 0.9)}),  # lerp's other branch
    ("adam", {"weight_decay": 0.1}),
    ("adam", {"amsgrad": True}),
    ("adam", {"maximize": True}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.3, "lr": 0.05}),
    ("adam", {"weight_decay": 0.3, "lr": 0.05, "decoupled_weight_decay": True}),
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01}),
]


def _arrays(library: str, dtype: str, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    out = [np.asarray(x) for x in out]
    if library == "torch":
        return [torch.from_numpy(x.copy()) for x in out]
    return out


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else np.asarray(x)


def _run(monkeypatch, name, kw, library, dtype, fast, steps=4, structure="list"):
    opt = getattr(agrad.optim, name)(**kw)
    params = _arrays(library, dtype, 0)
    if structure == "dict":
        params = {f"p{i}": p for i, p in enumerate(params)}
    state = opt.init(params)
    monkeypatch.setattr(fastpath, "enabled", fast)
    for k in range(steps):
        grads = _arrays(library, dtype, k + 1)
        if structure == "dict":
            grads = {f"p{i}": g for i, g in enumerate(grads)}
        before = [_to_numpy(g).copy() for g in (grads.values() if structure == "dict" else grads)]
        handled = fastpath.try_step(opt, params, grads, state) if fast else None
        if handled is not None:
            params, state = handled
        else:
            params, state = opt.step(params, grads, state)
        after = [_to_numpy(g) for g in (grads.values() if structure == "dict" else grads)]
        for b, a in zip(before, after):
            np.testing.assert_array_equal(a, b)  # gradients are never modified
    leaves = list(params.values()) if structure == "dict" else params
    return [_to_numpy(p) for p in leaves], state, handled is not None


def _tol(dtype: str) -> dict:
    return {"rtol": 1e-11, "atol": 1e-13} if dtype == "float64" else {"rtol": 2e-5, "atol": 1e-6}


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=[f"{n}-{kw}" for n, kw in CONFIGS])
def test_fast_path_matches_generic(monkeypatch, library, dtype, name, kw):
    ref, ref_state, _ = _run(monkeypatch, name, kw, library, dtype, fast=False)
    got, state, handled = _run(monkeypatch, name, kw, library, dtype, fast=True)
    numpy_unsupported = library == "numpy" and (
        kw.get("amsgrad")
        or kw.get("maximize")
        or (name != "adamw" and kw.get("weight_decay") and not kw.get("decoupled_weight_decay"))
    )
    assert handled == (not numpy_unsupported)
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype and r.shape == g.shape
        np.testing.assert_allclose(g, r, **_tol(dtype))
    assert state.count == ref_state.count == 4
    for field in state._fields[1:]:
        a, b = getattr(state, field), getattr(ref_state, field)
        if a is None:
            assert b is None
            continue
        for x, y in zip(a, b):
            np.testing.assert_allclose(_to_numpy(x), _to_numpy(y), **_tol(dtype))


NUMPY_BITWISE = [
    ("adam", {}),
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.3, "lr": 0.05}),
    ("adam", {"weight_decay": 0.3, "lr": 0.05, "decoupled_weight_decay": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(
    ("name", "kw"), NUMPY_BITWISE, ids=[f"{n}-{kw}" for n, kw in NUMPY_BITWISE]
)
def test_numpy_fast_path_is_bitwise_generic(monkeypatch, dtype, name, kw):
    """The NumPy kernels round exactly as the generic path (AdamW's decoupled decay
    included: the generic update is ``(p * decay + step) - p``, added to ``p``)."""
    ref, ref_state, _ = _run(monkeypatch, name, kw, "numpy", dtype, fast=False)
    got, state, handled = _run(monkeypatch, name, kw, "numpy", dtype, fast=True)
    assert handled
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(g, r)
    for field in state._fields[1:]:
        a, b = getattr(state, field), getattr(ref_state, field)
        for x, y in zip(a or [], b or []):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_dict_params_take_the_fast_path(monkeypatch, library):
    ref, _, _ = _run(monkeypatch, "adam", {}, library, "float64", fast=False, structure="dict")
    got, _, handled = _run(monkeypatch, "adam", {}, library, "float64", fast=True, structure="dict")
    assert handled
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r, rtol=1e-11, atol=1e-13)


def test_step_writes_in_place_and_keeps_objects():
    opt = agrad.optim.adam(lr=0.1)
    params = [np.ones(4), np.ones((2, 3))]
    ids = [id(p) for p in params]
    state = opt.init(params)
    m_ids = [id(m) for m in state.exp_avg]
    new, state = opt.step(params, [np.ones(4), np.ones((2, 3))], state)
    assert [id(p) for p in new] == ids
    assert [id(m) for m in state.exp_avg] == m_ids
    assert state.count == 1
    np.testing.assert_allclose(params[0], 0.9)


def test_unsupported_inputs_fall_back_to_generic():
    opt = agrad.optim.adam(lr=0.1)
    # agrad variables, schedules, mixed libraries: not the fast path's business
    params = [agrad.variable(np.ones(3))]
    state = opt.init(params)
    assert fastpath.try_step(opt, params, [np.ones(3)], state) is None
    sched = agrad.optim.adam(lr=np.asarray(0.1))
    p = [np.ones(3)]
    assert fastpath.try_step(sched, p, [np.ones(3)], sched.init(p)) is None
    assert fastpath.try_step(opt, [np.ones(3)], [torch.ones(3)], opt.init([np.ones(3)])) is None
    # a shape mismatch is reported by the generic path's checks
    p = [np.ones(3)]
    with pytest.raises(ValueError, match="shape"):
        opt.step(p, [np.ones(4)], opt.init(p))


def test_read_only_numpy_raises_like_generic():
    opt = agrad.optim.sgd(lr=0.1)
    p = np.ones(3)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        opt.step([p], [np.ones(3)], opt.init([p]))
    np.testing.assert_array_equal(p, 1.0)


def test_torch_leaf_requiring_grad_is_updated_under_no_grad():
    opt = agrad.optim.adam(lr=0.1)
    p = torch.ones(3, requires_grad=True)
    state = opt.init([p])
    (q,), state = opt.step([p], [torch.ones(3)], state)
    assert q is p and p.requires_grad
    np.testing.assert_allclose(p.detach().numpy(), 0.9, rtol=1e-6)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_nested_and_mixed_trees(monkeypatch, library):
    def make(seed):
        a = _arrays(library, "float64", seed)
        return {"x": a[0], "inner": {"y": a[1], "z": [a[2], a[3]]}, "w": a[4]}

    results = []
    for fast in (False, True):
        opt = agrad.optim.adam(lr=0.01)
        params = make(0)
        state = opt.init(params)
        monkeypatch.setattr(fastpath, "enabled", fast)
        for k in range(3):
            params, state = opt.step(params, make(k + 1), state)
        results.append(params)
    ref, got = (agrad.pytree.flatten(r)[0] for r in results)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(_to_numpy(g), _to_numpy(r), rtol=1e-11, atol=1e-13)
    params = make(0)
    opt = agrad.optim.sgd(lr=0.1)
    assert fastpath.try_step(opt, params, make(1), opt.init(params)) is not None


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_non_contiguous_arrays(monkeypatch, name):
    rng = np.random.default_rng(0)
    results = []
    for fast in (False, True):
        params = [np.asfortranarray(rng.standard_normal(s)) for s in [(400, 300), (50, 40), (6, 5)]]
        params.append(rng.standard_normal((40, 50))[::2, ::3])
        opt = getattr(agrad.optim, name)(lr=0.01)
        state = opt.init(params)
        monkeypatch.setattr(fastpath, "enabled", fast)
        for _ in range(3):
            grads = [np.asfortranarray(rng.standard_normal(p.shape)) for p in params]
            params, state = opt.step(params, grads, state)
        results.append(params)
        rng = np.random.default_rng(0)
    for r, g in zip(*results):
        np.testing.assert_array_equal(g, r)
