"""Lion, LAMB, LARS, Adafactor equal optax on JAX over 200 float32 steps (to 1e-6)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from agrad import optim
from agrad.testing import to_numpy
from conftest import asarray

optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")

SHAPES = {"w": (40, 50), "b": (7,)}
STEPS = 200
TOL = 1e-6


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    p0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    c = {k: rng.uniform(0.5, 2.0, s).astype(np.float32) for k, s in SHAPES.items()}
    targets = [
        {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(STEPS)
    ]
    return p0, c, targets


def _grads(xp, params, c, target):
    return {
        k: xp.subtract(
            xp.multiply(asarray(xp, c[k], np.float32), p), asarray(xp, target[k], np.float32)
        )
        for k, p in params.items()
    }


CASES = {
    "lion": (
        lambda: optim.lion(1e-3, weight_decay=0.1),
        lambda: optax.lion(1e-3, weight_decay=0.1),
    ),
    "lamb": (
        lambda: optim.lamb(1e-2, weight_decay=0.1, mask={"w": True, "b": False}),
        lambda: optax.lamb(1e-2, weight_decay=0.1, mask={"w": True, "b": False}),
    ),
    "lars": (
        lambda: optim.lars(
            0.05,
            weight_decay=0.01,
            weight_decay_mask={"w": True, "b": False},
            trust_ratio_mask={"w": True, "b": False},
            nesterov=True,
        ),
        lambda: optax.lars(
            0.05,
            weight_decay=0.01,
            weight_decay_mask={"w": True, "b": False},
            trust_ratio_mask={"w": True, "b": False},
            nesterov=True,
        ),
    ),
    "adafactor": (
        lambda: optim.adafactor(min_dim_size_to_factor=32),
        lambda: optax.adafactor(min_dim_size_to_factor=32),
    ),
    "adafactor_options": (
        lambda: optim.adafactor(
            1e-2,
            momentum=0.9,
            weight_decay_rate=0.01,
            factored=False,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
        ),
        lambda: optax.adafactor(
            1e-2,
            momentum=0.9,
            weight_decay_rate=0.01,
            factored=False,
            multiply_by_parameter_scale=False,
            clipping_threshold=None,
        ),
    ),
}


def _optax_run(make, p0, c, targets):
    opt = make()
    params = {k: jnp.asarray(v) for k, v in p0.items()}
    state = opt.init(params)
    for t in range(STEPS):
        updates, state = opt.update(_grads(jnp, params, c, targets[t]), state, params)
        params = optax.apply_updates(params, updates)
    return {k: np.asarray(v) for k, v in params.items()}


def _rel_err(got, ref):
    """Largest elementwise error relative to each leaf's largest magnitude."""
    return max(
        float(np.max(np.abs(to_numpy(got[k]) - ref[k])) / np.max(np.abs(ref[k]))) for k in ref
    )


@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_on_jax_float32(name):
    make_agrad, make_optax = CASES[name]
    p0, c, targets = _problem()
    ref = _optax_run(make_optax, p0, c, targets)
    opt = make_agrad()
    params = {k: jnp.asarray(v) for k, v in p0.items()}
    state = opt.init(params)
    for t in range(STEPS):
        params, state = opt.step(params, _grads(jnp, params, c, targets[t]), state)
    for k in params:
        assert params[k].dtype == jnp.float32
    assert _rel_err(params, ref) < TOL


@pytest.mark.parametrize("name", ["lion", "lamb", "lars", "adafactor"])
def test_same_rule_on_every_backend(xp, name):
    """The optax family runs unchanged on every backend (float64 here; 10 steps vs optax)."""
    make_agrad, _ = CASES[name]
    p0, c, targets = _problem()
    steps = 10
    p64 = {k: v.astype(np.float64) for k, v in p0.items()}
    ref = _optax_float64(name, steps)
    opt = make_agrad()
    params = {k: asarray(xp, v.copy()) for k, v in p64.items()}
    state = opt.init(params)
    for t in range(steps):
        params, state = opt.step(params, _grads64(xp, params, c, targets[t]), state)
    assert _rel_err(params, ref) < 1e-6


@functools.cache
def _optax_float64(name, steps):
    p0, c, targets = _problem()
    opt = CASES[name][1]()
    ref = {k: jnp.asarray(v.astype(np.float64)) for k, v in p0.items()}
    state = opt.init(ref)
    for t in range(steps):
        u, state = opt.update(_grads64(jnp, ref, c, targets[t]), state, ref)
        ref = optax.apply_updates(ref, u)
    return {k: np.asarray(v) for k, v in ref.items()}


def _grads64(xp, params, c, target):
    return {
        k: xp.subtract(xp.multiply(asarray(xp, c[k]), p), asarray(xp, target[k]))
        for k, p in params.items()
    }


ZERO_NORM_CASES = {
    "lamb": (lambda: optim.lamb(0.5), lambda: optax.lamb(0.5)),
    "lars": (lambda: optim.lars(0.5), lambda: optax.lars(0.5)),
    "clip_by_global_norm": (
        lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.sgd(lr=0.5)),
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5)),
    ),
}


@pytest.mark.parametrize("name", list(ZERO_NORM_CASES))
@pytest.mark.parametrize("zero", ["grads", "params", "both"])
def test_zero_norms_equal_optax_without_warnings(name, zero):
    """A zero gradient or parameter norm selects the safe value without dividing by 0
    (NumPy would warn; warnings are errors here) and equals optax exactly."""
    make_agrad, make_optax = ZERO_NORM_CASES[name]
    p = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array(0.25)}
    g = {"w": np.array([[0.5, 4.0], [-1.0, 2.0]]), "b": np.array(-3.0)}
    if zero in ("params", "both"):
        p = {k: np.zeros_like(v) for k, v in p.items()}
    if zero in ("grads", "both"):
        g = {k: np.zeros_like(v) for k, v in g.items()}
    opt = make_optax()
    ref_p = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in p.items()}
    ref_u, _ = opt.update({k: jnp.asarray(v, dtype=jnp.float32) for k, v in g.items()},
                          opt.init(ref_p), ref_p)  # fmt: skip
    for lib in ("numpy", "jax"):
        xp = np if lib == "numpy" else jnp
        params = {k: xp.asarray(v, dtype=xp.float32) for k, v in p.items()}
        grads = {k: xp.asarray(v, dtype=xp.float32) for k, v in g.items()}
        agrad_opt = make_agrad()
        updates, _ = agrad_opt.update(grads, agrad_opt.init(params), params)
        for k in p:
            np.testing.assert_array_equal(to_numpy(updates[k]), np.asarray(ref_u[k]), err_msg=k)
