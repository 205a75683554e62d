"""torch.optim family vs torch.optim in float64: every option combination over 200 steps on
NumPy, all options together on every backend (50 steps; 8 on Dask, whose graphs grow)."""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agrad
from agrad import optim
from agrad.testing import to_numpy
from conftest import asarray

torch = pytest.importorskip("torch")

SHAPES = {"w": (3, 4), "b": (4,)}
RTOL = 1e-10


@contextmanager
def torch_float64_scalars():
    """torch keeps step counts and NAdam's mu_product in the default dtype; make it float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class Problem:
    """Gradients ``sign * (c * p - target_t)``: elementwise, so every library rounds alike."""

    def __init__(self, steps: int, seed: int = 0, sign: float = 1.0):
        rng = np.random.default_rng(seed)
        self.p0 = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
        self.c = {k: rng.uniform(0.5, 2.0, s) for k, s in SHAPES.items()}
        self.targets = [
            {k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(steps)
        ]
        self.sign = sign

    def grads(self, xp, params, t, like_np=None, dtype=None, device=None):
        out = {}
        for k, p in params.items():
            c = asarray(xp, self.c[k], dtype, device)
            tgt = asarray(xp, self.targets[t][k], dtype, device)
            g = xp.subtract(xp.multiply(c, p), tgt)
            out[k] = g * self.sign
        return out


TORCH_CLASSES = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "nadam": "NAdam",
    "radam": "RAdam",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "adamax": "Adamax",
}

# every option of each optimizer, with the values to combine; other values of the
# continuous hyperparameters are in FULL (every backend) and the hypothesis tests
OPTIONS = {
    "sgd": dict(
        lr=[0.05],
        momentum=[0.0, 0.9],
        dampening=[0.0, 0.3],
        weight_decay=[0.0, 0.1],
        nesterov=[False, True],
        maximize=[False, True],
    ),
    "adam": dict(
        lr=[0.05],
        weight_decay=[0.0, 0.1],
        amsgrad=[False, True],
        maximize=[False, True],
        decoupled_weight_decay=[False, True],
    ),
    "adamw": dict(lr=[0.05], weight_decay=[0.2], amsgrad=[False, True], maximize=[False, True]),
    "nadam": dict(
        lr=[0.05],
        weight_decay=[0.0, 0.1],
        decoupled_weight_decay=[False, True],
        maximize=[False, True],
    ),
    "radam": dict(
        lr=[0.05],
        weight_decay=[0.0, 0.1],
        decoupled_weight_decay=[False, True],
        maximize=[False, True],
    ),
    "rmsprop": dict(
        lr=[0.01],
        weight_decay=[0.0, 0.1],
        momentum=[0.0, 0.5],
        centered=[False, True],
        maximize=[False, True],
    ),
    "adagrad": dict(
        lr=[0.1],
        lr_decay=[0.0, 0.01],
        weight_decay=[0.0, 0.1],
        initial_accumulator_value=[0.0, 0.1],
        maximize=[False, True],
    ),
    "adadelta": dict(lr=[0.5], weight_decay=[0.0, 0.1], maximize=[False, True]),
    "adamax": dict(lr=[0.05], weight_decay=[0.0, 0.1], maximize=[False, True]),
}


def _combos(name):
    keys = list(OPTIONS[name])
    for values in itertools.product(*(OPTIONS[name][k] for k in keys)):
        kw = dict(zip(keys, values))
        if kw.get("nesterov") and (kw["momentum"] == 0 or kw["dampening"] != 0):
            continue
        yield kw


ALL_COMBOS = [
    pytest.param(name, kw, id=f"{name}-" + "-".join(f"{k}={v}" for k, v in kw.items()))
    for name in OPTIONS
    for kw in _combos(name)
]

# all options switched on (plus the plain default): used on every backend
FULL = {
    "sgd": dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True, maximize=True),
    "adam": dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True, maximize=True),
    "adamw": dict(lr=0.05, amsgrad=True, maximize=True),
    "nadam": dict(
        lr=0.05,
        weight_decay=0.1,
        momentum_decay=1e-2,
        decoupled_weight_decay=True,
        maximize=True,
    ),
    "radam": dict(lr=0.05, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
    "rmsprop": dict(
        lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True, maximize=True
    ),
    "adagrad": dict(
        lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1, maximize=True
    ),
    "adadelta": dict(rho=0.8, weight_decay=0.1, maximize=True),
    "adamax": dict(lr=0.05, weight_decay=0.1, maximize=True),
}


def torch_reference(name, kw, problem, steps):
    """Run torch.optim (single-tensor path) in float64; returns the parameters as NumPy."""
    import array_api_compat.torch as txp

    with torch_float64_scalars():
        params = {k: torch.tensor(v, dtype=torch.float64) for k, v in problem.p0.items()}
        opt = getattr(torch.optim, TORCH_CLASSES[name])(list(params.values()), foreach=False, **kw)
        for t in range(steps):
            grads = problem.grads(txp, params, t)
            for k, p in params.items():
                p.grad = grads[k]
            opt.step()
    return {k: v.numpy() for k, v in params.items()}


def run_agrad(xp, name, kw, problem, steps, dtype=None, device=None, inplace=True):
    params = {k: asarray(xp, np.array(v), dtype, device) for k, v in problem.p0.items()}
    opt = getattr(optim, name)(**kw)
    state = opt.init(params)
    for t in range(steps):
        grads = problem.grads(xp, params, t, dtype=dtype, device=device)
        params, state = opt.step(params, grads, state, inplace=inplace)
    return params, state


def max_rel_err(actual, desired):
    return max(
        float(
            np.max(
                np.abs(to_numpy(actual[k]) - desired[k]) / np.maximum(np.abs(desired[k]), 1e-300)
            )
        )
        for k in desired
    )


def _sign(kw):
    return -1.0 if kw.get("maximize") else 1.0


@pytest.mark.parametrize(("name", "kw"), ALL_COMBOS)
def test_matches_torch_every_option_numpy(name, kw):
    import array_api_compat.numpy as npx

    problem = Problem(200, sign=_sign(kw))
    ref = torch_reference(name, kw, problem, 200)
    got, _ = run_agrad(npx, name, kw, problem, 200)
    assert max_rel_err(got, ref) < RTOL


@pytest.mark.parametrize("name", list(FULL))
def test_matches_torch_on_every_backend(xp, name):
    kw = FULL[name]
    steps = 8 if "dask" in xp.__name__ else 200 if "numpy" in xp.__name__ else 50
    problem = Problem(steps, sign=_sign(kw))
    ref = torch_reference(name, kw, problem, steps)
    got, state = run_agrad(xp, name, kw, problem, steps)
    for k in ref:
        assert agrad.array_namespace(got[k]) is agrad.array_namespace(asarray(xp, ref[k]))
    assert max_rel_err(got, ref) < RTOL


@pytest.mark.parametrize("name", list(FULL))
def test_update_then_apply_equals_step(name):
    import array_api_compat.numpy as npx

    kw = FULL[name]
    problem = Problem(20, sign=_sign(kw))
    stepped, s1 = run_agrad(npx, name, kw, problem, 20)
    params = {k: np.array(v) for k, v in problem.p0.items()}
    opt = getattr(optim, name)(**kw)
    state = opt.init(params)
    for t in range(20):
        grads = problem.grads(npx, params, t)
        before = {k: v.copy() for k, v in params.items()}
        g_before = {k: v.copy() for k, v in grads.items()}
        updates, state = opt.update(grads, state, params)
        for k in params:  # update is pure
            np.testing.assert_array_equal(params[k], before[k])
            np.testing.assert_array_equal(grads[k], g_before[k])
        params = optim.apply_updates(params, updates, inplace=False)
    for k in params:
        np.testing.assert_array_equal(params[k], stepped[k])


@pytest.mark.parametrize("name", list(FULL))
def test_schedule_lr_matches_torch_lambda_lr(name):
    """``lr`` as a callable of the step count equals torch's LambdaLR driving the same lr."""
    import array_api_compat.numpy as npx

    kw = dict(FULL[name])
    base = kw.pop("lr", 1.0)

    def sched(count):
        return base * 0.97**count

    problem = Problem(60, sign=_sign(kw))
    import array_api_compat.torch as txp

    with torch_float64_scalars():
        params = {k: torch.tensor(v) for k, v in problem.p0.items()}
        opt = getattr(torch.optim, TORCH_CLASSES[name])(
            list(params.values()), lr=base, foreach=False, **kw
        )
        lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.97**e)
        for t in range(60):
            for k, g in problem.grads(txp, params, t).items():
                params[k].grad = g
            opt.step()
            lam.step()
    ref = {k: v.numpy() for k, v in params.items()}
    got, _ = run_agrad(npx, name, dict(kw, lr=sched), problem, 60)
    assert max_rel_err(got, ref) < RTOL


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lr=st.floats(1e-4, 0.2),
    b1=st.floats(0.0, 0.99),
    b2=st.floats(0.5, 0.9999),
    eps=st.floats(1e-10, 1e-2),
    wd=st.floats(0.0, 0.5),
    amsgrad=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_adam_hyperparameters_property(lr, b1, b2, eps, wd, amsgrad, seed):
    import array_api_compat.numpy as npx

    kw = dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, amsgrad=amsgrad)
    problem = Problem(30, seed=seed)
    ref = torch_reference("adam", kw, problem, 30)
    got, _ = run_agrad(npx, "adam", kw, problem, 30)
    assert max_rel_err(got, ref) < RTOL


@settings(max_examples=10, deadline=None)
@given(
    lr=st.floats(1e-4, 0.2),
    momentum=st.floats(0.0, 0.99),
    dampening=st.floats(0.0, 0.9),
    wd=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_sgd_hyperparameters_property(lr, momentum, dampening, wd, seed):
    import array_api_compat.numpy as npx

    kw = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=wd)
    problem = Problem(30, seed=seed)
    ref = torch_reference("sgd", kw, problem, 30)
    got, _ = run_agrad(npx, "sgd", kw, problem, 30)
    assert max_rel_err(got, ref) < RTOL


@pytest.mark.parametrize("beta2", [0.6, 0.5, 1 / 3])
def test_radam_small_beta2_is_never_rectified(xp, beta2):
    """beta2 <= 0.6 gives rho_inf <= 5: torch never rectifies; agrad must not evaluate the
    rectifier either (it divides by zero at beta2 = 0.6, takes a negative root below)."""
    import warnings

    kw = dict(lr=0.05, betas=(0.9, beta2), weight_decay=0.1)
    steps = 4 if "dask" in xp.__name__ else 12
    problem = Problem(steps)
    ref = torch_reference("radam", kw, problem, steps)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got, _ = run_agrad(xp, "radam", kw, problem, steps)
    assert max_rel_err(got, ref) < RTOL


def test_radam_injected_small_beta2_stays_finite():
    """An injected beta2 is an array: the unused rectifier is kept finite by a select."""
    import warnings

    import array_api_compat.numpy as npx

    kw = dict(lr=0.05, betas=(0.9, 0.6), weight_decay=0.1)
    problem = Problem(12)
    ref = torch_reference("radam", kw, problem, 12)
    params = {k: np.array(v) for k, v in problem.p0.items()}
    opt = optim.inject_hyperparams(optim.radam)(**kw)
    state = opt.init(params)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for t in range(12):
            params, state = opt.step(params, problem.grads(npx, params, t), state)
    assert max_rel_err(params, ref) < RTOL
