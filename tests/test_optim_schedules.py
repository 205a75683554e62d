"""Schedules equal torch.optim.lr_scheduler's values over 1000 steps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agrad.optim import schedules as S

torch = pytest.importorskip("torch")
lrs = torch.optim.lr_scheduler

N = 1000
BASE = 0.1


def torch_values(make, n=N, base=BASE):
    """``lr`` seen by optimizer step ``t`` for t = 1..n: the value after t-1 scheduler steps."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base)
    sched = make(opt)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return np.array(out)


CASES = {
    "constant_lr": (
        lambda o: lrs.ConstantLR(o, factor=0.25, total_iters=40),
        S.constant_lr(BASE, factor=0.25, total_iters=40),
    ),
    "step_lr": (lambda o: lrs.StepLR(o, step_size=70, gamma=0.7), S.step_lr(BASE, 70, 0.7)),
    "multistep_lr": (
        lambda o: lrs.MultiStepLR(o, milestones=[100, 300, 301, 800], gamma=0.5),
        S.multistep_lr(BASE, [800, 100, 300, 301], 0.5),
    ),
    "exponential_lr": (lambda o: lrs.ExponentialLR(o, gamma=0.995), S.exponential_lr(BASE, 0.995)),
    "cosine_annealing_lr": (
        lambda o: lrs.CosineAnnealingLR(o, T_max=300, eta_min=1e-3),
        S.cosine_annealing_lr(BASE, 300, 1e-3),
    ),
    "cosine_annealing_lr_full": (
        lambda o: lrs.CosineAnnealingLR(o, T_max=N, eta_min=0.0),
        S.cosine_annealing_lr(BASE, N),
    ),
    "warm_restarts": (
        lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=50, T_mult=2, eta_min=1e-4),
        S.cosine_annealing_warm_restarts(BASE, 50, 2, 1e-4),
    ),
    "warm_restarts_mult1": (
        lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=37),
        S.cosine_annealing_warm_restarts(BASE, 37),
    ),
    "linear_lr": (
        lambda o: lrs.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=400),
        S.linear_lr(BASE, 0.1, 0.9, 400),
    ),
    "polynomial_lr": (
        lambda o: lrs.PolynomialLR(o, total_iters=700, power=2.0),
        S.polynomial_lr(BASE, 700, 2.0),
    ),
    "one_cycle_cos": (
        lambda o: lrs.OneCycleLR(o, max_lr=1.0, total_steps=N, cycle_momentum=False),
        S.one_cycle_lr(1.0, N),
    ),
    "one_cycle_linear_three_phase": (
        lambda o: lrs.OneCycleLR(
            o,
            max_lr=0.5,
            total_steps=N,
            pct_start=0.25,
            anneal_strategy="linear",
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
            cycle_momentum=False,
        ),
        S.one_cycle_lr(
            0.5,
            N,
            pct_start=0.25,
            anneal_strategy="linear",
            three_phase=True,
            div_factor=10.0,
            final_div_factor=100.0,
        ),
    ),
    "warmup_cosine": (
        lambda o: lrs.SequentialLR(
            o,
            [
                lrs.LinearLR(o, start_factor=1e-3, end_factor=1.0, total_iters=100),
                lrs.CosineAnnealingLR(o, T_max=N - 100, eta_min=1e-5),
            ],
            milestones=[100],
        ),
        S.warmup_cosine(BASE, 100, N, 1e-3, 1e-5),
    ),
    "join_three": (
        lambda o: lrs.SequentialLR(
            o,
            [
                lrs.ConstantLR(o, factor=0.5, total_iters=1000),
                lrs.ExponentialLR(o, gamma=0.99),
                lrs.StepLR(o, step_size=50, gamma=0.5),
            ],
            milestones=[200, 500],
        ),
        S.join(
            [
                S.constant_lr(BASE, 0.5, 1000),
                S.exponential_lr(BASE, 0.99),
                S.step_lr(BASE, 50, 0.5),
            ],
            [200, 500],
        ),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_schedule_matches_torch(name):
    make, schedule = CASES[name]
    ref = torch_values(make)
    got = np.array([schedule(t) for t in range(N)])
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)


def test_constant_schedule():
    s = S.constant(0.3)
    assert [s(t) for t in (0, 5, 10**6)] == [0.3, 0.3, 0.3]


@settings(max_examples=20, deadline=None)
@given(
    T_0=st.integers(1, 60),
    T_mult=st.integers(1, 3),
    eta_min=st.floats(0.0, 0.05),
)
def test_warm_restarts_property(T_0, T_mult, eta_min):
    ref = torch_values(
        lambda o: lrs.CosineAnnealingWarmRestarts(o, T_0=T_0, T_mult=T_mult, eta_min=eta_min),
        n=300,
    )
    s = S.cosine_annealing_warm_restarts(BASE, T_0, T_mult, eta_min)
    np.testing.assert_allclose([s(t) for t in range(300)], ref, rtol=1e-9, atol=1e-15)
