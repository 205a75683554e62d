"""Learning-rate schedules: pure functions of the 0-based step count, as torch's lr_scheduler.

A schedule is a callable ``count -> float`` that can be passed anywhere a learning
rate is accepted (``adam(lr=cosine_annealing_lr(1e-3, T_max=1000))``); the optimizer
calls it with the number of steps taken so far, so step ``t`` (1-based) uses
``schedule(t - 1)``, which is the value torch's scheduler holds after ``t - 1`` calls
of ``scheduler.step()``. Closed forms follow torch's ``_get_closed_form_lr`` (values
agree with the stepped torch schedulers to rounding, tested over 1000 steps).

Every schedule takes a Python int or a 0-d integer array (a JAX tracer under
``jax.jit``, the count of an optax state): with an array, the value is computed by
array operations (``where`` instead of ``if``) in float64 where the library has it
(float32 in JAX without x64), so the same schedule works in an eager loop, inside a
jitted agrad or optax step, and under ``jax.lax.scan``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat

from agrad.optim.numerics import python_numbers, scalar_dtype

__all__ = [
    "Schedule",
    "constant",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "exponential_lr",
    "join",
    "linear_lr",
    "multistep_lr",
    "one_cycle_lr",
    "polynomial_lr",
    "step_lr",
    "warmup_cosine",
]

Schedule = Callable[[Any], Any]


def _is_number(count: Any) -> bool:
    return isinstance(count, (int, float))


class _Array:
    """The operations a schedule needs, on a 0-d array count (its library's functions).

    ``t`` is the count as a 0-d float (float64 where the library has it); Python
    numbers mixed in become arrays of that dtype where a function needs arrays.
    """

    def __init__(self, count: Any):
        self.xp = array_api_compat.array_namespace(count)
        self.dtype = scalar_dtype(self.xp, count)
        self.t = self.xp.astype(count, self.dtype)

    def arr(self, x: Any) -> Any:
        return x if hasattr(x, "shape") else self.xp.full_like(self.t, x)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.xp.where(cond, self.arr(a), self.arr(b))

    def minimum(self, a: Any, b: Any) -> Any:
        return self.xp.minimum(self.arr(a), self.arr(b))

    def cos(self, x: Any) -> Any:
        return self.xp.cos(self.arr(x))

    def floor(self, x: Any) -> Any:
        return self.xp.floor(self.arr(x))


class _Named:
    """A schedule with a readable ``repr``."""

    __slots__ = ("__weakref__", "fn", "text")

    def __init__(self, text: str, fn: Schedule):
        self.text = text
        self.fn = fn

    def __call__(self, count: int) -> float:
        return self.fn(count)

    def __repr__(self) -> str:
        return self.text


def _check(fn: str, cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(f"agrad.optim.{fn}: {what}")


@python_numbers
def constant(value: float) -> Schedule:
    """:math:`\\gamma_t = \\gamma` (``optax.constant_schedule``)."""
    return _Named(f"constant({value!r})", lambda count: value)


@python_numbers
def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``torch.optim.lr_scheduler.ConstantLR``: :math:`\\gamma f` for :math:`t < T`, then :math:`\\gamma`."""
    _check("constant_lr", 0 <= factor <= 1, f"factor must be in [0, 1], got {factor}")

    def fn(count: Any) -> Any:
        if _is_number(count):
            return lr * (factor + (count >= total_iters) * (1 - factor))
        a = _Array(count)
        return lr * a.where(a.t >= total_iters, 1.0, factor)

    return _Named(f"constant_lr({lr!r}, factor={factor!r}, total_iters={total_iters})", fn)


@python_numbers
def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``StepLR``: :math:`\\gamma_t = \\gamma \\cdot g^{\\lfloor t / s\\rfloor}`."""
    _check("step_lr", step_size >= 1, f"step_size must be >= 1, got {step_size}")
    return _Named(
        f"step_lr({lr!r}, step_size={step_size}, gamma={gamma!r})",
        lambda count: (
            lr
            * gamma ** (count // step_size if _is_number(count) else _Array(count).t // step_size)
        ),
    )


@python_numbers
def multistep_lr(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``MultiStepLR``: :math:`\\gamma_t = \\gamma\\, g^{\\#\\{m_i \\le t\\}}`."""
    ms = sorted(int(m) for m in milestones)

    def fn(count: Any) -> Any:
        if _is_number(count):
            return lr * gamma ** bisect.bisect_right(ms, count)
        a = _Array(count)
        passed = a.arr(0.0)
        for m in ms:
            passed = passed + a.where(a.t >= m, 1.0, 0.0)
        return lr * gamma**passed

    return _Named(f"multistep_lr({lr!r}, milestones={ms}, gamma={gamma!r})", fn)


@python_numbers
def exponential_lr(lr: float, gamma: float) -> Schedule:
    """``ExponentialLR``: :math:`\\gamma_t = \\gamma\\, g^t`."""
    return _Named(
        f"exponential_lr({lr!r}, gamma={gamma!r})",
        lambda count: lr * gamma ** (count if _is_number(count) else _Array(count).t),
    )


@python_numbers
def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    """``CosineAnnealingLR`` (SGDR without restarts; Loshchilov & Hutter, ICLR 2017).

    .. math:: \\gamma_t = \\eta_{min} + (\\gamma - \\eta_{min}) \\frac{1 + \\cos(\\pi t / T_{max})}{2}
    """
    _check("cosine_annealing_lr", T_max >= 1, f"T_max must be >= 1, got {T_max}")

    def fn(count: Any) -> Any:
        if _is_number(count):
            return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * count / T_max)) / 2
        a = _Array(count)
        return eta_min + (lr - eta_min) * (1 + a.cos(a.t * (math.pi / T_max))) / 2

    return _Named(f"cosine_annealing_lr({lr!r}, T_max={T_max}, eta_min={eta_min!r})", fn)


@python_numbers
def cosine_annealing_warm_restarts(
    lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0
) -> Schedule:
    """``CosineAnnealingWarmRestarts`` (SGDR; Loshchilov & Hutter, ICLR 2017).

    .. math:: \\gamma_t = \\eta_{min} + (\\gamma - \\eta_{min}) \\frac{1 + \\cos(\\pi T_{cur} / T_i)}{2}

    where :math:`T_{cur}` counts steps since the last restart and the period
    :math:`T_i` starts at :math:`T_0` and is multiplied by :math:`T_{mult}` at each restart.
    """
    fn_name = "cosine_annealing_warm_restarts"
    _check(fn_name, T_0 >= 1 and int(T_0) == T_0, f"T_0 must be an integer >= 1, got {T_0}")
    _check(
        fn_name,
        T_mult >= 1 and int(T_mult) == T_mult,
        f"T_mult must be an integer >= 1, got {T_mult}",
    )

    def fn(count: Any) -> Any:
        if _is_number(count):
            t_cur, t_i = count, T_0
            while t_cur >= t_i:
                t_cur -= t_i
                t_i *= T_mult
            return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
        a = _Array(count)
        if T_mult == 1:
            t_cur, t_i = a.t - T_0 * a.floor(a.t / T_0), T_0
        else:
            # the restart n with start(n) <= t < start(n+1), start(n) = T_0 (m^n - 1)/(m - 1):
            # the closed form of torch's step(epoch), then corrected by one either way
            # where rounding of the logarithm put it off by one at a boundary
            n = a.floor(a.xp.log(a.t / T_0 * (T_mult - 1) + 1) / math.log(T_mult))

            def start(k: Any) -> Any:
                return T_0 * (T_mult**k - 1) / (T_mult - 1)

            n = a.where(a.t < start(n), n - 1, n)
            n = a.where(a.t >= start(n + 1), n + 1, n)
            t_cur, t_i = a.t - start(n), T_0 * T_mult**n
        return eta_min + (lr - eta_min) * (1 + a.cos(t_cur * math.pi / t_i)) / 2

    return _Named(f"{fn_name}({lr!r}, T_0={T_0}, T_mult={T_mult}, eta_min={eta_min!r})", fn)


@python_numbers
def linear_lr(
    lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5
) -> Schedule:
    """``LinearLR``: the factor goes linearly from ``start_factor`` to ``end_factor`` in ``total_iters`` steps.

    .. math:: \\gamma_t = \\gamma\\left(f_0 + (f_1 - f_0)\\frac{\\min(t, T)}{T}\\right)
    """
    _check(
        "linear_lr", 0 < start_factor <= 1, f"start_factor must be in (0, 1], got {start_factor}"
    )
    _check("linear_lr", 0 <= end_factor <= 1, f"end_factor must be in [0, 1], got {end_factor}")
    _check("linear_lr", total_iters >= 1, f"total_iters must be >= 1, got {total_iters}")

    def fn(count: Any) -> Any:
        done = (
            min(total_iters, count)
            if _is_number(count)
            else _Array(count).minimum(total_iters, _Array(count).t)
        )
        return lr * (start_factor + (end_factor - start_factor) * done / total_iters)

    return _Named(
        f"linear_lr({lr!r}, start_factor={start_factor!r}, end_factor={end_factor!r}, total_iters={total_iters})",
        fn,
    )


@python_numbers
def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``PolynomialLR``: :math:`\\gamma_t = \\gamma (1 - \\min(t, T)/T)^p`."""
    _check("polynomial_lr", total_iters >= 1, f"total_iters must be >= 1, got {total_iters}")

    def fn(count: Any) -> Any:
        done = (
            min(total_iters, count)
            if _is_number(count)
            else _Array(count).minimum(total_iters, _Array(count).t)
        )
        return lr * (1.0 - done / total_iters) ** power

    return _Named(f"polynomial_lr({lr!r}, total_iters={total_iters}, power={power!r})", fn)


@python_numbers
def one_cycle_lr(
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    anneal_strategy: str = "cos",
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    three_phase: bool = False,
) -> Schedule:
    """``OneCycleLR`` (Smith & Topin, "Super-Convergence", 2018).

    From ``max_lr / div_factor`` up to ``max_lr`` over ``pct_start * total_steps`` steps,
    then down to ``max_lr / (div_factor * final_div_factor)`` (cosine or linear
    annealing; with ``three_phase``, back to the initial value first).
    """
    fn_name = "one_cycle_lr"
    _check(fn_name, total_steps >= 1, f"total_steps must be >= 1, got {total_steps}")
    _check(fn_name, 0 <= pct_start <= 1, f"pct_start must be in [0, 1], got {pct_start}")
    _check(
        fn_name,
        anneal_strategy in ("cos", "linear"),
        f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}",
    )
    initial = max_lr / div_factor
    final = initial / final_div_factor
    if three_phase:
        phases = [
            (float(pct_start * total_steps) - 1, initial, max_lr),
            (float(2 * pct_start * total_steps) - 2, max_lr, initial),
            (total_steps - 1, initial, final),
        ]
    else:
        phases = [
            (float(pct_start * total_steps) - 1, initial, max_lr),
            (total_steps - 1, max_lr, final),
        ]

    def anneal(start: float, end: float, pct: Any, cos: Callable = math.cos) -> Any:
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def fn(count: Any) -> Any:
        if not _is_number(count):  # every phase, the first whose end is not passed selected
            a = _Array(count)
            out = None
            start_steps = [0.0] + [end for end, _, _ in phases[:-1]]
            for i in reversed(range(len(phases))):
                end_step, lo, hi = phases[i]
                pct = (a.t - start_steps[i]) / (end_step - start_steps[i])
                value = a.arr(anneal(lo, hi, pct, a.cos))
                out = value if out is None else a.where(a.t <= end_step, value, out)
            return out
        if count > total_steps:
            msg = f"agrad.optim.one_cycle_lr: step {count} is past total_steps={total_steps}"
            raise ValueError(msg)
        start_step = 0.0
        for i, (end_step, lo, hi) in enumerate(phases):
            if count <= end_step or i == len(phases) - 1:
                return anneal(lo, hi, (count - start_step) / (end_step - start_step))
            start_step = end_step
        raise AssertionError("unreachable")

    return _Named(f"one_cycle_lr({max_lr!r}, total_steps={total_steps})", fn)


@python_numbers
def join(schedules: Sequence[Schedule], milestones: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``milestones[i-1]`` on, restarted at 0 (``SequentialLR``, ``optax.join_schedules``).

    .. math:: \\gamma_t = s_i(t - m_{i-1}) \\text{ for } m_{i-1} \\le t < m_i
    """
    scheds = list(schedules)
    ms = [int(m) for m in milestones]
    _check(
        "join",
        len(ms) == len(scheds) - 1,
        f"expected {len(scheds) - 1} milestones for {len(scheds)} schedules, got {len(ms)}",
    )
    _check("join", ms == sorted(ms), f"milestones must be increasing, got {ms}")

    def fn(count: Any) -> Any:
        if _is_number(count):
            i = bisect.bisect_right(ms, count)
            return scheds[i](count - (ms[i - 1] if i > 0 else 0))
        # every schedule at its own restarted count, the one whose range holds count selected
        a = _Array(count)
        xp = a.xp
        out = a.arr(scheds[0](count))
        for m, sched in zip(ms, scheds[1:]):
            shifted = xp.where(count >= m, count - m, xp.zeros_like(count))
            out = a.where(count >= m, sched(shifted), out)
        return out

    return _Named(f"join({scheds!r}, milestones={ms})", fn)


@python_numbers
def warmup_cosine(
    lr: float,
    warmup_steps: int,
    total_steps: int,
    warmup_start_factor: float = 1e-3,
    eta_min: float = 0.0,
) -> Schedule:
    """Linear warmup then cosine annealing: ``SequentialLR([LinearLR, CosineAnnealingLR])``.

    .. math::
        \\gamma_t = \\gamma\\left(f_0 + (1-f_0)\\tfrac{t}{W}\\right) \\text{ for } t < W,\\quad
        \\eta_{min} + (\\gamma-\\eta_{min})\\frac{1+\\cos(\\pi (t-W)/(T-W))}{2} \\text{ after}

    Reference: Goyal et al., "Accurate, Large Minibatch SGD", 2017 (warmup);
    Loshchilov & Hutter, ICLR 2017 (cosine).
    """
    _check(
        "warmup_cosine",
        1 <= warmup_steps < total_steps,
        f"need 1 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}",
    )
    return join(
        [
            linear_lr(lr, warmup_start_factor, 1.0, warmup_steps),
            cosine_annealing_lr(lr, total_steps - warmup_steps, eta_min),
        ],
        [warmup_steps],
    )
