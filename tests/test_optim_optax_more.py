"""AdaBelief, Adan, Yogi, NovoGrad, signSGD, Signum, Lookahead, schedule-free AdamW vs optax.

Float32 on JAX over 25 steps to 1e-6 (both eager: jitted optax rounds otherwise, up to
2e-6 after 150 steps); float64 (JAX with x64) to 1e-10: 150 steps on NumPy, a few on
every other backend.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from agrad import optim
from agrad.testing import to_numpy
from conftest import asarray

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jnp = jax.numpy

SHAPES = {"w": (6, 5), "b": (7,)}
STEPS = 50  # float64 on NumPy: 1e-10 after 50 steps (150 before: the same check, 3x the time)
MASK = {"w": True, "b": False}


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    p0 = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    c = {k: rng.uniform(0.5, 2.0, s) for k, s in SHAPES.items()}
    targets = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return p0, c, targets


def _grads(xp, params, c, target, dtype):
    return {
        k: xp.subtract(xp.multiply(asarray(xp, c[k], dtype), p), asarray(xp, target[k], dtype))
        for k, p in params.items()
    }


CASES = {
    "adabelief": (lambda: optim.adabelief(0.01), lambda: optax.adabelief(0.01)),
    "adabelief_options": (
        lambda: optim.adabelief(0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, nesterov=True),
        lambda: optax.adabelief(0.01, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10, nesterov=True),
    ),
    "adan": (lambda: optim.adan(0.01), lambda: optax.adan(0.01)),
    "adan_options": (
        lambda: optim.adan(0.01, b1=0.9, b2=0.9, b3=0.95, eps=1e-6, weight_decay=0.1, mask=MASK),
        lambda: optax.adan(0.01, b1=0.9, b2=0.9, b3=0.95, eps=1e-6, weight_decay=0.1, mask=MASK),
    ),
    "yogi": (lambda: optim.yogi(0.01), lambda: optax.yogi(0.01)),
    "yogi_options": (
        lambda: optim.yogi(0.02, b1=0.8, b2=0.99, eps=1e-4),
        lambda: optax.yogi(0.02, b1=0.8, b2=0.99, eps=1e-4),
    ),
    "novograd": (lambda: optim.novograd(0.01), lambda: optax.novograd(0.01)),
    "novograd_options": (
        lambda: optim.novograd(0.01, b1=0.8, b2=0.5, eps=1e-5, eps_root=1e-8, weight_decay=0.1),
        lambda: optax.novograd(0.01, b1=0.8, b2=0.5, eps=1e-5, eps_root=1e-8, weight_decay=0.1),
    ),
    "sign_sgd": (lambda: optim.sign_sgd(0.01), lambda: optax.sign_sgd(0.01)),
    "signum": (lambda: optim.signum(0.01, 0.8), lambda: optax.signum(0.01, 0.8)),
    "schedule_free_adamw": (
        lambda: optim.schedule_free_adamw(0.01),
        lambda: optax.contrib.schedule_free_adamw(0.01),
    ),
    "schedule_free_adamw_options": (
        lambda: optim.schedule_free_adamw(
            0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05, weight_lr_power=1.0
        ),
        lambda: optax.contrib.schedule_free_adamw(
            0.01, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.05, weight_lr_power=1.0
        ),
    ),
    "schedule_free_warmup": (
        lambda: optim.schedule_free_adamw(0.01, warmup_steps=20),
        lambda: optax.contrib.schedule_free_adamw(0.01, warmup_steps=20),
    ),
    "lookahead": (
        lambda: optim.lookahead(optim.adam(0.05), 5, 0.5),
        lambda: optax.lookahead(optax.adam(0.05), 5, 0.5),
    ),
    "lookahead_reset": (
        lambda: optim.lookahead(
            optim.chain(optim.scale_by_adam(), optim.scale_values(-0.05)), 4, 0.3, reset_state=True
        ),
        lambda: optax.lookahead(optax.adam(0.05), 4, 0.3, reset_state=True),
    ),
}


# optax's warmup schedule divides the int32 count in float32 even with x64 (so does
# agrad's on JAX): on NumPy, in float64 throughout, the two are 3e-8 apart
F64_TOL = {"schedule_free_warmup": 1e-7}


def _optax_run(name, p0, c, targets, dtype, steps, jit=False):
    """optax's result: eager (float32: jitted XLA rounds otherwise) or, in float64, with
    ``update`` jitted (rounding differences near 1e-16; eager optax is most of the time)."""
    tx = CASES[name][1]()
    if jit:
        tx = optax.GradientTransformation(tx.init, jax.jit(tx.update))
    params = {k: jnp.asarray(v, dtype=dtype) for k, v in p0.items()}
    lookahead = name.startswith("lookahead")
    if lookahead:
        params = optax.LookaheadParams.init_synced(params)
    state = tx.init(params)
    for t in range(steps):
        at = params.fast if lookahead else params
        u, state = tx.update(_grads(jnp, at, c, targets[t], dtype), state, params)
        params = optax.apply_updates(params, u)
    if lookahead:
        return {k: np.asarray(v) for k, v in params.fast.items()}, {
            k: np.asarray(v) for k, v in params.slow.items()
        }
    return {k: np.asarray(v) for k, v in params.items()}, None


def _agrad_run(xp, name, p0, c, targets, dtype, steps):
    opt = CASES[name][0]()
    params = {k: asarray(xp, v.copy(), dtype) for k, v in p0.items()}
    state = opt.init(params)
    for t in range(steps):
        params, state = opt.step(params, _grads(xp, params, c, targets[t], dtype), state)
    slow = optim.find_state(state, optim.LookaheadState)
    return params, (None if slow is None else slow.slow)


def _rel_err(got, ref):
    return max(
        float(np.max(np.abs(to_numpy(got[k]) - ref[k])) / np.max(np.abs(ref[k]))) for k in ref
    )


F32_CASES = [
    n
    for n in CASES
    if not n.startswith(("adabelief", "adan", "yogi", "novograd")) or n.endswith("_options")
]
F32_CASES = [n for n in F32_CASES if n not in ("schedule_free_adamw", "yogi", "lookahead")]


@pytest.mark.parametrize("name", F32_CASES)
def test_matches_optax_float32(name):
    p0, c, targets = _problem()
    # eager on both sides (jitted XLA rounds otherwise): 12 steps, most of the time is
    # per-operation dispatch
    ref, ref_slow = _optax_run(name, p0, c, targets, jnp.float32, 12)
    got, slow = _agrad_run(jnp, name, p0, c, targets, np.float32, 12)
    for v in got.values():
        assert v.dtype == jnp.float32
    assert _rel_err(got, ref) < 1e-6
    if ref_slow is not None:
        assert _rel_err(slow, ref_slow) < 1e-6


@functools.cache
def _optax_float64(name, steps):
    p0, c, targets = _problem()
    return _optax_run(name, p0, c, targets, jnp.float64, steps, jit=True)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_optax_float64_numpy(name):
    import array_api_compat.numpy as npx

    p0, c, targets = _problem()
    ref, ref_slow = _optax_float64(name, STEPS)
    got, slow = _agrad_run(npx, name, p0, c, targets, np.float64, STEPS)
    tol = F64_TOL.get(name, 1e-10)
    assert _rel_err(got, ref) < tol
    if ref_slow is not None:
        assert _rel_err(slow, ref_slow) < tol


@pytest.mark.parametrize("name", ["adan_options", "novograd_options", "schedule_free_adamw_options", "lookahead_reset"])  # fmt: skip
def test_float64_on_every_backend(xp, name):
    steps = 3 if "dask" in xp.__name__ or "jax" in xp.__name__ else 10
    p0, c, targets = _problem()
    ref, ref_slow = _optax_float64(name, steps)
    got, slow = _agrad_run(xp, name, p0, c, targets, np.float64, steps)
    assert _rel_err(got, ref) < 1e-10
    if ref_slow is not None:
        assert _rel_err(slow, ref_slow) < 1e-10


def test_schedule_free_eval_params_equals_optax():
    import array_api_compat.numpy as npx

    p0, c, targets = _problem()
    tx = optax.contrib.schedule_free_adamw(0.01, b1=0.8)
    ref = {k: jnp.asarray(v) for k, v in p0.items()}
    s = tx.init(ref)
    opt = optim.schedule_free_adamw(0.01, b1=0.8)
    params = {k: v.copy() for k, v in p0.items()}
    state = opt.init(params)
    for t in range(20):
        u, s = tx.update(_grads(jnp, ref, c, targets[t], np.float64), s, ref)
        ref = optax.apply_updates(ref, u)
        params, state = opt.step(params, _grads(npx, params, c, targets[t], np.float64), state)
    want = optax.contrib.schedule_free_eval_params(s, ref)
    got = optim.schedule_free_eval_params(state, params)
    assert _rel_err(got, {k: np.asarray(v) for k, v in want.items()}) < 1e-12
    with pytest.raises(ValueError, match="no ScheduleFreeState"):
        optim.schedule_free_eval_params(optim.adam().init(params), params)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sync_period"):
        optim.lookahead(optim.adam(), 0, 0.5)
    with pytest.raises(TypeError, match="fast_optimizer"):
        optim.lookahead(optax.adam(0.1), 2, 0.5)
    with pytest.raises(ValueError, match=r"agrad\.optim\.yogi: invalid b1"):
        optim.yogi(0.1, b1=1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.schedule_free_adamw(warmup_steps=-1)


@pytest.mark.parametrize("name", ["adan_options", "novograd", "schedule_free_adamw", "lookahead"])
def test_states_save_and_load(tmp_path, name):
    import array_api_compat.numpy as npx

    p0, c, targets = _problem()
    params, _ = _agrad_run(npx, name, p0, c, targets, np.float64, 3)
    opt = CASES[name][0]()
    state = opt.init(params)
    params, state = opt.step(params, _grads(npx, params, c, targets[0], np.float64), state)
    optim.save(state, tmp_path / "s.npz")
    loaded = optim.load(tmp_path / "s.npz", like=params)
    a, _ = opt.step(
        {k: v.copy() for k, v in params.items()},
        _grads(npx, params, c, targets[1], np.float64),
        state,
    )
    b, _ = opt.step(
        {k: v.copy() for k, v in params.items()},
        _grads(npx, params, c, targets[1], np.float64),
        loaded,
    )
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
