"""Behaviour on every backend: in place where writable, functional on JAX, dtype and device
kept, a learned learning rate differentiable through ``opt.step``, 0-d and NumPy-scalar
inputs. Bad input is refused in ``test_bad_input_optim.py``."""

from __future__ import annotations

import numpy as np
import pytest

import agrad
from agrad import optim
from agrad.pytree import flatten
from agrad.testing import to_numpy
from conftest import asarray

SHAPES = {"w": (3, 4), "b": (4,)}

OPTIMIZERS = {
    "sgd": lambda lr: optim.sgd(lr=lr, momentum=0.9, nesterov=True, weight_decay=0.1),
    "adam": lambda lr: optim.adam(lr=lr, amsgrad=True, weight_decay=0.1),
    "adamw": lambda lr: optim.adamw(lr=lr),
    "nadam": lambda lr: optim.nadam(lr=lr, decoupled_weight_decay=True, weight_decay=0.1),
    "radam": lambda lr: optim.radam(lr=lr, weight_decay=0.1),
    "rmsprop": lambda lr: optim.rmsprop(lr=lr, centered=True, momentum=0.5),
    "adagrad": lambda lr: optim.adagrad(lr=lr, lr_decay=0.01),
    "adadelta": lambda lr: optim.adadelta(lr=lr),
    "adamax": lambda lr: optim.adamax(lr=lr),
    "lion": lambda lr: optim.lion(lr),
    "lamb": lambda lr: optim.lamb(lr),
}


def _np_tree(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def _tree(xp, seed=0, dtype=None, device=None):
    return {k: asarray(xp, v, dtype, device) for k, v in _np_tree(seed).items()}


def _grads(xp, params):
    ns = agrad.array_namespace(*params.values())
    return {k: ns.sin(p) + p * 0.5 for k, p in params.items()}


def _state_arrays(state):
    return [x for x in flatten(state)[0] if hasattr(x, "shape")]


def _address(x):
    if hasattr(x, "data_ptr"):
        return x.data_ptr()
    return x.__array_interface__["data"][0]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_inplace_reuses_every_buffer(backend, name):
    """Steady state on NumPy and torch: params and state keep their objects and memory."""
    from agrad.testing import load_backend

    xp, reason = load_backend(backend)
    if xp is None:
        pytest.skip(reason)
    params = _tree(xp)
    opt = OPTIMIZERS[name](0.01)
    state = opt.init(params)
    params, state = opt.step(params, _grads(xp, params), state)
    objs = {k: v for k, v in params.items()}
    addrs = {k: _address(v) for k, v in params.items()}
    s_objs = _state_arrays(state)
    s_addrs = [_address(x) for x in s_objs]
    for _ in range(3):
        before = {k: to_numpy(v).copy() for k, v in params.items()}
        new_params, state = opt.step(params, _grads(xp, params), state)
        for k in params:
            assert new_params[k] is objs[k] and _address(new_params[k]) == addrs[k]
            assert not np.array_equal(to_numpy(new_params[k]), before[k])
        now = _state_arrays(state)
        assert len(now) == len(s_objs)
        assert all(a is b for a, b in zip(now, s_objs))
        assert [_address(x) for x in now] == s_addrs
        params = new_params


def test_jax_is_functional():
    jnp = pytest.importorskip("jax.numpy")
    params = _tree(jnp)
    before = {k: np.asarray(v).copy() for k, v in params.items()}
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    new, new_state = opt.step(params, _grads(jnp, params), state)
    for k in params:
        np.testing.assert_array_equal(np.asarray(params[k]), before[k])
        assert not np.array_equal(np.asarray(new[k]), before[k])
    assert float(jnp.max(jnp.abs(state.exp_avg["w"]))) == 0.0
    assert new_state.count == 1


def test_variables_are_written(tape_xp):
    params = {k: agrad.variable(v) for k, v in _tree(tape_xp).items()}
    boxes = dict(params)
    before = {k: to_numpy(v).copy() for k, v in params.items()}
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    params, state = opt.step(
        params, _grads(tape_xp, {k: v.value for k, v in params.items()}), state
    )
    for k in params:
        assert params[k] is boxes[k]
        assert not np.array_equal(to_numpy(params[k]), before[k])


def test_inplace_false_touches_nothing(xp):
    params = _tree(xp)
    opt = optim.sgd(lr=0.1, momentum=0.9)
    state = opt.init(params)
    params, state = opt.step(params, _grads(xp, params), state)
    snap = [to_numpy(x).copy() for x in list(params.values()) + _state_arrays(state)]
    new, new_state = opt.step(params, _grads(xp, params), state, inplace=False)
    for x, s in zip(list(params.values()) + _state_arrays(state), snap):
        np.testing.assert_array_equal(to_numpy(x), s)
    assert new_state.count == state.count + 1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float32_params_keep_float32_state(xp, name):
    params = _tree(xp, dtype=np.float32)
    opt = OPTIMIZERS[name](0.01)
    state = opt.init(params)
    for _ in range(2):
        params, state = opt.step(params, _grads(xp, params), state)
    for x in list(params.values()) + _state_arrays(state):
        if tuple(x.shape) == ():  # a step count (int32) or a per-step scalar, not a buffer
            continue
        assert x.dtype == xp.float32, (name, x.dtype)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_array_api_strict_device_is_kept(name):
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device("device1")
    params = _tree(xs, device=dev)
    opt = OPTIMIZERS[name](0.01)
    state = opt.init(params)
    for _ in range(2):
        params, state = opt.step(params, _grads(xs, params), state)
    for x in list(params.values()) + _state_arrays(state):
        assert x.device == dev


LEARNABLE = ["sgd", "adam", "adamw", "nadam", "radam", "rmsprop", "adagrad", "adadelta", "adamax"]


@pytest.mark.parametrize("name", LEARNABLE)
def test_learned_lr_gradient_through_step(xp, name):
    """d loss(params after 3 steps) / d lr by agrad equals central finite differences."""
    p0 = _tree(xp)

    def unrolled(lr):
        opt = OPTIMIZERS[name](lr)
        params, state = p0, opt.init(p0)
        for _ in range(3):
            params, state = opt.step(params, _grads(xp, params), state, inplace=False)
        ns = agrad.array_namespace(*params.values())
        return ns.sum(ns.multiply(params["w"], params["w"])) + ns.sum(ns.sin(params["b"]))

    lr0 = asarray(xp, 0.05)
    value, grad = agrad.execute_with_gradients(unrolled, lr0)
    h = 1e-6
    fd = (float(unrolled(0.05 + h)) - float(unrolled(0.05 - h))) / (2 * h)
    assert float(grad) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    assert float(value) == pytest.approx(float(unrolled(0.05)), rel=1e-12)


def test_single_array_params(xp):
    p = asarray(xp, np.arange(4.0))
    opt = optim.sgd(lr=0.5)
    state = opt.init(p)
    p2, _ = opt.step(p, asarray(xp, np.ones(4)), state, inplace=False)
    np.testing.assert_array_equal(to_numpy(p2), np.arange(4.0) - 0.5)


def test_validation_keeps_no_copy_of_the_state():
    """The state check remembers shapes and dtypes, not arrays."""
    opt = optim.rmsprop(lr=0.1, centered=True)
    params = _np_tree()
    state = opt.init(params)
    opt.update(_grads(np, params), state, params)
    held = [x for t in opt._templates.values() for x in flatten(t)[0]]
    assert held and not any(isinstance(x, np.ndarray) for x in held)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "lamb"])
def test_zero_d_numpy_results_are_arrays(name):
    """NumPy returns scalars for 0-d operands; params, updates and state stay 0-d arrays,
    so a later in-place step writes into them (values as for a 1-element array)."""
    opt = OPTIMIZERS[name](0.1)
    params, grads = {"b": np.array(0.5)}, {"b": np.array(0.25)}
    state = opt.init(params)
    updates, u_state = opt.update(grads, state, params)
    new_p, new_s = opt.step(params, grads, state, inplace=False)
    for leaf in flatten((updates, u_state, new_p, new_s))[0]:
        if hasattr(leaf, "dtype"):
            assert type(leaf) is np.ndarray and leaf.shape == ()
    ref_opt = OPTIMIZERS[name](0.1)
    ref_p, ref_s = ref_opt.step({"b": np.array([0.5])}, {"b": np.array([0.25])},
                                ref_opt.init({"b": np.array([0.5])}), inplace=False)  # fmt: skip
    np.testing.assert_array_equal(new_p["b"], ref_p["b"][0])
    target = new_p["b"]
    again, _ = opt.step(new_p, grads, new_s)  # in place into the 0-d arrays returned above
    assert again["b"] is target
    ref_again, _ = ref_opt.step(ref_p, {"b": np.array([0.25])}, ref_s)
    np.testing.assert_array_equal(again["b"], ref_again["b"][0])


NUMPY_SCALAR_CASES = {
    "sgd": lambda c: optim.sgd(lr=c(0.1), momentum=c(0.5), weight_decay=c(0.01)),
    "adam": lambda c: optim.adam(lr=c(0.1), betas=(c(0.9), c(0.999)), eps=c(1e-8)),
    "adamw": lambda c: optim.adamw(lr=c(0.125), weight_decay=c(0.01)),
    "rmsprop": lambda c: optim.rmsprop(lr=c(0.1), momentum=c(0.5)),
    "adagrad": lambda c: optim.adagrad(lr=c(0.1), lr_decay=c(0.01)),
    "lamb": lambda c: optim.lamb(c(0.1)),
    "lars": lambda c: optim.lars(c(0.1), weight_decay=c(0.01)),
    "clip": lambda c: optim.chain(optim.clip_by_global_norm(c(1.0)), optim.sgd(lr=c(0.1))),
    "schedule": lambda c: optim.adam(lr=optim.schedules.exponential_lr(c(0.1), c(0.5))),
}


@pytest.mark.parametrize("name", list(NUMPY_SCALAR_CASES))
@pytest.mark.parametrize("numpy_scalar", [np.float64, np.float32])
def test_numpy_scalar_hyperparameters_with_torch(name, numpy_scalar):
    """NumPy scalars as hyperparameters become Python numbers: they work with torch
    parameters (generic and fast paths) and give what the same Python floats give."""
    torch = pytest.importorskip("torch")
    make = NUMPY_SCALAR_CASES[name]
    p = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g = torch.tensor([0.5, 1.0, -1.5], dtype=torch.float64)

    def run(opt, inplace):
        params, state = {"w": p.clone()}, opt.init({"w": p.clone()})
        for _ in range(3):
            params, state = opt.step(params, {"w": g.clone()}, state, inplace=inplace)
        return params["w"].numpy()

    opt = make(numpy_scalar)
    assert not any(isinstance(v, np.generic) for v in flatten(opt.hyperparams)[0])
    ref = make(lambda x: float(numpy_scalar(x)))
    for inplace in (False, True):
        np.testing.assert_array_equal(run(opt, inplace), run(ref, inplace))
