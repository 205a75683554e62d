"""More of optax's optimizers: AdaBelief, Adan, Yogi, NovoGrad, signSGD/Signum, Lookahead, schedule-free AdamW.

As in :mod:`agrad.optim.optax_family`, each is a :func:`~agrad.optim.chain` of small
transforms following optax 0.2's ``alias.py`` (and ``contrib`` for schedule-free)
one for one, evaluated in optax's order: equal to optax on JAX to 1e-6 in float32 and
to rounding in float64 (tested). The learning rate is called ``lr``; the rest keep
optax's names. Branches on the step count go through :func:`_select` (a Python
choice for a Python count, ``xp.where`` for a 0-d array count), so the rules also run
under a tracer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import array_api_compat

from agrad.optim.base import GradientTransformation, chain, is_array, namespace_of
from agrad.optim.numerics import (
    add_scalar,
    as_count,
    check_lr,
    check_nonnegative,
    check_unit_interval,
    div_scalar,
    full_scalar,
    is_hyper_array,
    is_scalar,
    leaf_scalar,
    next_count,
    python_numbers,
    scale,
    static_int,
    step_number,
)
from agrad.optim.optax_family import _ema_updates
from agrad.optim.transforms import (
    _empty_init,
    _first_leaf,
    _new_count,
    add_decayed_weights,
    scale_by_learning_rate,
    select_tree,
)
from agrad.pytree import flatten_leaves, leaves_like, tree_map, unflatten

__all__ = [
    "LookaheadState",
    "ScaleByAdanState",
    "ScaleByBeliefState",
    "ScaleByNovogradState",
    "ScaleByRmsWithCountState",
    "ScaleByYogiState",
    "ScheduleFreeState",
    "adabelief",
    "adan",
    "lookahead",
    "novograd",
    "scale_by_adan",
    "scale_by_belief",
    "scale_by_novograd",
    "scale_by_rms",
    "scale_by_sign",
    "scale_by_yogi",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "sign_sgd",
    "signum",
    "yogi",
]


class ScaleByBeliefState(NamedTuple):
    count: int
    mu: Any
    nu: Any


class ScaleByAdanState(NamedTuple):
    m: Any
    v: Any
    n: Any
    g: Any
    t: int


class ScaleByYogiState(NamedTuple):
    count: int
    mu: Any
    nu: Any


class ScaleByNovogradState(NamedTuple):
    count: int
    mu: Any
    nu: Any


class ScaleByRmsWithCountState(NamedTuple):
    count: int
    nu: Any


class LookaheadState(NamedTuple):
    """The fast optimizer's state, the steps since the last sync, and the slow parameters."""

    fast_state: Any
    steps_since_sync: int
    slow: Any


class ScheduleFreeState(NamedTuple):
    b1: Any
    weight_sum: Any
    step_count: int
    max_lr: Any
    base_optimizer_state: Any
    z: Any


def _select(xp: Any, cond: Any, a: Any, b: Any) -> Any:
    """``a`` where ``cond`` else ``b``: a Python choice for a Python bool, ``xp.where`` for an array."""
    if isinstance(cond, bool):
        return a if cond else b
    if not is_array(a) and not is_array(b):
        return xp.where(cond, a, b)
    like = a if is_array(a) else b
    a = a if is_array(a) else xp.full_like(like, a)
    b = b if is_array(b) else xp.full_like(like, b)
    return xp.where(cond, a, b)


def _moment(xp: Any, g: Any, m: Any, decay: float) -> Any:
    """optax's ``update_moment`` of order 1: :math:`(1-\\beta) g + \\beta m`."""
    return xp.add(scale(xp, g, 1 - decay), scale(xp, m, decay))


def _moment2(xp: Any, g: Any, m: Any, decay: float) -> Any:
    """optax's ``update_moment_per_elem_norm`` of order 2: :math:`(1-\\beta) g^2 + \\beta m`."""
    return xp.add(scale(xp, xp.multiply(g, g), 1 - decay), scale(xp, m, decay))


def _debias(xp: Any, x: Any, decay: float, t: Any) -> Any:
    """optax's ``bias_correction``: :math:`x / (1 - \\beta^t)`, the divisor computed in the
    step's dtype and rounded once to ``x``'s (``t`` is the 1-based step, a 0-d float)."""
    return x / leaf_scalar(xp, 1 - decay**t, x)


def _zeros(params: Any) -> Any:
    xp = namespace_of(params)
    return tree_map(xp.zeros_like, params)


@python_numbers
def scale_by_belief(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief's rescaling (``optax.scale_by_belief``).

    .. math::
        m_t = (1-\\beta_1) g_t + \\beta_1 m_{t-1},\\quad
        s_t = (1-\\beta_2)(g_t - m_t)^2 + \\beta_2 s_{t-1} + \\epsilon_{root},\\quad
        u_t = \\frac{\\hat m_t}{\\sqrt{s_t/(1-\\beta_2^t)} + \\epsilon}

    with :math:`\\hat m_t = m_t/(1-\\beta_1^t)`, or with Nesterov
    :math:`\\hat m_t = \\beta_1 m_t/(1-\\beta_1^{t+1}) + (1-\\beta_1) g_t/(1-\\beta_1^t)`.
    """

    def init(params: Any) -> ScaleByBeliefState:
        return ScaleByBeliefState(_new_count(params), _zeros(params), _zeros(params))

    def update(updates: Any, state: ScaleByBeliefState, params: Any):
        xp = namespace_of(updates)
        like = _first_leaf(updates)
        t = step_number(xp, state.count, like)
        mu = tree_map(lambda g, m: _moment(xp, g, m, b1), updates, state.mu)
        nu = tree_map(
            lambda g, m, s: add_scalar(xp, _moment2(xp, xp.subtract(g, m), s, b2), eps_root),
            updates,
            mu,
            state.nu,
        )

        def one(g: Any, m: Any, s: Any) -> Any:
            if nesterov:
                m_hat = xp.add(
                    scale(xp, _debias(xp, m, b1, t + 1), b1),
                    scale(xp, _debias(xp, g, b1, t), 1 - b1),
                )
            else:
                m_hat = _debias(xp, m, b1, t)
            return xp.divide(m_hat, add_scalar(xp, xp.sqrt(_debias(xp, s, b2, t)), eps))

        count = next_count(xp, state.count, like)
        return tree_map(one, updates, mu, nu), ScaleByBeliefState(count, mu, nu)

    hyper = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root, "nesterov": nesterov}
    return GradientTransformation("scale_by_belief", init, update, hyper, needs_params=False)


@python_numbers
def adabelief(
    lr: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief (``optax.adabelief``): Adam with the variance of the gradient around its EMA.

    .. math:: \\theta_t = \\theta_{t-1} - \\gamma\\, u_t

    with :math:`u_t` from :func:`scale_by_belief`. Reference: Zhuang et al.,
    "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
    NeurIPS 2020.
    """
    fn = "agrad.optim.adabelief"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1, b2=b2)
    check_nonnegative(fn, eps=eps, eps_root=eps_root)
    return chain(
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
        scale_by_learning_rate(lr),
        name="adabelief",
        hyperparams=dict(lr=lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov),
    )


@python_numbers
def scale_by_adan(
    b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8, eps_root: float = 0.0
) -> GradientTransformation:
    """Adan's rescaling (``optax.scale_by_adan``), algorithm 1 of the paper.

    With :math:`\\Delta_t = g_t - g_{t-1}` (0 at the first step):

    .. math::
        m_t = (1-\\beta_1) g_t + \\beta_1 m_{t-1},\\
        v_t = (1-\\beta_2)\\Delta_t + \\beta_2 v_{t-1},\\
        n_t = (1-\\beta_3)(g_t + (1-\\beta_2)\\Delta_t)^2 + \\beta_3 n_{t-1}

        u_t = \\frac{\\hat m_t + (1-\\beta_2)\\hat v_t}{\\sqrt{\\hat n_t + \\epsilon_{root}} + \\epsilon}

    (hats: divided by :math:`1-\\beta^t`).
    """

    def init(params: Any) -> ScaleByAdanState:
        zeros = [_zeros(params) for _ in range(4)]
        return ScaleByAdanState(*zeros, _new_count(params))

    def update(updates: Any, state: ScaleByAdanState, params: Any):
        xp = namespace_of(updates)
        leaves, treedef = flatten_leaves(updates)
        first = as_count(xp, state.t, leaves[0]) == 0
        t = step_number(xp, state.t, leaves[0])
        olds = [leaves_like(x, updates) for x in (state.m, state.v, state.n, state.g)]
        out, ms, vs, ns = [], [], [], []
        for g, m, v, n, g_prev in zip(leaves, *olds):
            diff = _select(xp, first, xp.zeros_like(g), xp.subtract(g, g_prev))
            m = _moment(xp, g, m, b1)
            v = _moment(xp, diff, v, b2)
            sq = xp.add(g, scale(xp, diff, 1 - b2))
            n = _moment2(xp, sq, n, b3)
            u = xp.add(_debias(xp, m, b1, t), scale(xp, _debias(xp, v, b2, t), 1 - b2))
            root = xp.sqrt(add_scalar(xp, _debias(xp, n, b3, t), eps_root))
            out.append(xp.divide(u, add_scalar(xp, root, eps)))
            ms.append(m)
            vs.append(v)
            ns.append(n)
        trees = [unflatten(treedef, x) for x in (ms, vs, ns)]
        count = next_count(xp, state.t, leaves[0])
        return unflatten(treedef, out), ScaleByAdanState(*trees, updates, count)

    hyper = {"b1": b1, "b2": b2, "b3": b3, "eps": eps, "eps_root": eps_root}
    return GradientTransformation("scale_by_adan", init, update, hyper, needs_params=False)


@python_numbers
def adan(
    lr: Any,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 1e-8,
    weight_decay: float = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """Adan (``optax.adan``): Nesterov-style momentum on gradients and their differences.

    .. math:: \\theta_t = \\theta_{t-1} - \\gamma\\,(u_t + \\lambda\\theta_{t-1})

    with :math:`u_t` from :func:`scale_by_adan`; ``mask`` picks the decayed leaves.
    Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models", 2022.
    """
    fn = "agrad.optim.adan"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1, b2=b2, b3=b3)
    check_nonnegative(fn, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return chain(
        scale_by_adan(b1, b2, b3, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
        name="adan",
        hyperparams=dict(lr=lr, b1=b1, b2=b2, b3=b3, eps=eps, weight_decay=weight_decay),
    )


@python_numbers
def scale_by_yogi(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
) -> GradientTransformation:
    """Yogi's rescaling (``optax.scale_by_yogi``): an additive second-moment update.

    .. math::
        m_t = (1-\\beta_1) g_t + \\beta_1 m_{t-1},\\quad
        v_t = v_{t-1} - (1-\\beta_2)\\,\\mathrm{sign}(v_{t-1} - g_t^2)\\, g_t^2,\\quad
        u_t = \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{v_t/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon}

    with :math:`m_0 = v_0` the initial accumulator value.
    """

    def init(params: Any) -> ScaleByYogiState:
        xp = namespace_of(params)

        def full(p: Any) -> Any:
            return full_scalar(xp, p, initial_accumulator_value)

        # two separate arrays (an in-place step writes both); `p * 1.0` would turn a
        # 0-d NumPy array into a NumPy scalar
        return ScaleByYogiState(_new_count(params), tree_map(full, params), tree_map(full, params))

    def update(updates: Any, state: ScaleByYogiState, params: Any):
        xp = namespace_of(updates)
        like = _first_leaf(updates)
        t = step_number(xp, state.count, like)
        mu = tree_map(lambda g, m: _moment(xp, g, m, b1), updates, state.mu)

        def second(g: Any, v: Any) -> Any:
            g2 = xp.multiply(g, g)
            return xp.subtract(v, xp.multiply(scale(xp, xp.sign(xp.subtract(v, g2)), 1 - b2), g2))

        nu = tree_map(second, updates, state.nu)
        out = tree_map(
            lambda m, v: xp.divide(
                _debias(xp, m, b1, t),
                add_scalar(xp, xp.sqrt(add_scalar(xp, _debias(xp, v, b2, t), eps_root)), eps),
            ),
            mu,
            nu,
        )
        return out, ScaleByYogiState(next_count(xp, state.count, like), mu, nu)

    hyper = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root}
    hyper["initial_accumulator_value"] = initial_accumulator_value
    return GradientTransformation("scale_by_yogi", init, update, hyper, needs_params=False)


@python_numbers
def yogi(lr: Any, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3) -> GradientTransformation:
    """Yogi (``optax.yogi``): :math:`\\theta_t = \\theta_{t-1} - \\gamma u_t` with :func:`scale_by_yogi`.

    Reference: Zaheer et al., "Adaptive Methods for Nonconvex Optimization", NeurIPS 2018.
    """
    fn = "agrad.optim.yogi"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1, b2=b2)
    check_nonnegative(fn, eps=eps)
    return chain(
        scale_by_yogi(b1, b2, eps),
        scale_by_learning_rate(lr),
        name="yogi",
        hyperparams=dict(lr=lr, b1=b1, b2=b2, eps=eps),
    )


def _sq_norm(xp: Any, g: Any) -> Any:
    """:math:`\\lVert g\\rVert_2^2` as optax computes it (``jnp.linalg.norm(g) ** 2``)."""
    return xp.sqrt(xp.sum(xp.multiply(g, g))) ** 2


@python_numbers
def scale_by_novograd(
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """NovoGrad's rescaling (``optax.scale_by_novograd``): a per-layer second moment.

    .. math::
        v_t = (1-\\beta_2)\\lVert g_t\\rVert^2 + \\beta_2 v_{t-1}\\ (v_1 = \\lVert g_1\\rVert^2),\\quad
        a_t = \\frac{g_t}{\\sqrt{v_t + \\epsilon_{root}} + \\epsilon} + \\lambda\\theta_{t-1},\\quad
        m_t = \\beta_1 m_{t-1} + a_t\\ (m_1 = a_1)

    and the output is :math:`m_t`; :math:`v_t` is one number per leaf.
    """

    def init(params: Any) -> ScaleByNovogradState:
        xp = namespace_of(params)
        nu = tree_map(
            lambda p: xp.asarray(0.0, dtype=p.dtype, device=array_api_compat.device(p)), params
        )
        return ScaleByNovogradState(_new_count(params), _zeros(params), nu)

    def update(updates: Any, state: ScaleByNovogradState, params: Any):
        xp = namespace_of(updates, params)
        leaves, treedef = flatten_leaves(updates)
        first = as_count(xp, state.count, leaves[0]) == 0
        decay = is_hyper_array(weight_decay) or weight_decay != 0
        p_leaves = leaves_like(params, updates) if decay else [None] * len(leaves)
        mus, nus = [], []
        for g, p, m, v in zip(
            leaves, p_leaves, leaves_like(state.mu, updates), leaves_like(state.nu, updates)
        ):
            sq = _sq_norm(xp, g)
            v = _select(
                xp,
                first,
                xp.astype(sq, v.dtype),
                xp.add(scale(xp, sq, 1 - b2), scale(xp, v, b2)),
            )
            a = xp.divide(g, add_scalar(xp, xp.sqrt(add_scalar(xp, v, eps_root)), eps))
            if decay:
                a = xp.add(a, scale(xp, p, weight_decay))
            m = _select(xp, first, a, xp.add(scale(xp, m, b1), a))
            mus.append(m)
            nus.append(v)
        mu, nu = unflatten(treedef, mus), unflatten(treedef, nus)
        return mu, ScaleByNovogradState(next_count(xp, state.count, leaves[0]), mu, nu)

    hyper = {"b1": b1, "b2": b2, "eps": eps, "eps_root": eps_root, "weight_decay": weight_decay}
    return GradientTransformation(
        "scale_by_novograd",
        init,
        update,
        hyper,
        needs_params=is_hyper_array(weight_decay) or weight_decay != 0,
    )


@python_numbers
def novograd(
    lr: Any,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """NovoGrad (``optax.novograd``): :math:`\\theta_t = \\theta_{t-1} - \\gamma m_t` with :func:`scale_by_novograd`.

    Reference: Ginsburg et al., "Stochastic Gradient Methods with Layer-wise Adaptive
    Moments for Training of Deep Networks", 2019.
    """
    fn = "agrad.optim.novograd"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1, b2=b2)
    check_nonnegative(fn, eps=eps, eps_root=eps_root, weight_decay=weight_decay)
    return chain(
        scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
        scale_by_learning_rate(lr),
        name="novograd",
        hyperparams=dict(
            lr=lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay
        ),
    )


def scale_by_sign() -> GradientTransformation:
    """Replace each update by its sign (``optax.scale_by_sign``): :math:`u \\leftarrow \\mathrm{sign}(u)`."""

    def update(updates: Any, state: Any, params: Any):
        xp = namespace_of(updates)
        return tree_map(xp.sign, updates), state

    return GradientTransformation("scale_by_sign", _empty_init, update, {}, needs_params=False)


@python_numbers
def sign_sgd(lr: Any) -> GradientTransformation:
    """signSGD (``optax.sign_sgd``): :math:`\\theta_t = \\theta_{t-1} - \\gamma\\,\\mathrm{sign}(g_t)`.

    Reference: Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
    Problems", ICML 2018.
    """
    check_lr("agrad.optim.sign_sgd", lr)
    return chain(
        scale_by_sign(), scale_by_learning_rate(lr), name="sign_sgd", hyperparams=dict(lr=lr)
    )


@python_numbers
def signum(lr: Any, beta: float = 0.9) -> GradientTransformation:
    """Signum (``optax.signum``): the sign of an EMA of the gradients.

    .. math:: m_t = (1-\\beta) g_t + \\beta m_{t-1},\\quad \\theta_t = \\theta_{t-1} - \\gamma\\,\\mathrm{sign}(m_t)

    Reference: Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex
    Problems", ICML 2018.
    """
    fn = "agrad.optim.signum"
    check_lr(fn, lr)
    check_unit_interval(fn, beta=beta)
    return chain(
        _ema_updates(beta),
        scale_by_sign(),
        scale_by_learning_rate(lr),
        name="signum",
        hyperparams=dict(lr=lr, beta=beta),
    )


@python_numbers
def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    reset_state: bool = False,
) -> GradientTransformation:
    """Lookahead (``optax.lookahead``): every ``sync_period`` steps, pull slow weights toward fast ones.

    With :math:`u_t` the fast optimizer's update and, on a sync step,
    :math:`\\Delta = \\theta^{fast}_{t-1} + u_t - \\theta^{slow}`:

    .. math::
        \\theta^{slow} \\leftarrow \\theta^{slow} + \\alpha\\Delta,\\qquad
        \\theta^{fast}_t = \\theta^{fast}_{t-1} + u_t - (1-\\alpha)\\Delta
        \\ (= \\theta^{slow} \\text{ after the sync})

    (plain :math:`\\theta^{fast}_t = \\theta^{fast}_{t-1} + u_t` otherwise). optax
    passes ``LookaheadParams(fast, slow)`` as the parameters; here the parameters are
    the fast ones (gradients are taken there) and the slow ones live in the state:
    read them with ``find_state(state, LookaheadState).slow`` (for evaluation). With
    ``reset_state`` the fast optimizer's state restarts at each sync. Reference: Zhang
    et al., "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019.
    """
    fn = "agrad.optim.lookahead"
    if not isinstance(fast_optimizer, GradientTransformation):
        msg = f"{fn}: fast_optimizer must be an agrad transformation, got {type(fast_optimizer).__name__}"
        raise TypeError(msg)
    static_int(fn, "sync_period", sync_period)
    if not (
        isinstance(sync_period, int) and not isinstance(sync_period, bool) and sync_period >= 1
    ):
        raise ValueError(f"{fn}: sync_period must be an integer >= 1, got {sync_period!r}")
    check_unit_interval(fn, closed=True, slow_step_size=slow_step_size)

    def init(params: Any) -> LookaheadState:
        return LookaheadState(
            fast_optimizer.inner_init(params),
            _new_count(params),
            tree_map(lambda p: p * 1.0, params),
        )

    def update(updates: Any, state: LookaheadState, params: Any):
        xp = namespace_of(updates, params)
        fast_updates, fast_state = fast_optimizer.inner_update(updates, state.fast_state, params)
        like = _first_leaf(updates)
        since = as_count(xp, state.steps_since_sync, like)
        sync = since == sync_period - 1

        def fast(p: Any, u: Any, s: Any) -> Any:
            diff = xp.subtract(xp.add(p, u), s)
            return _select(xp, sync, xp.subtract(u, scale(xp, diff, 1 - slow_step_size)), u)

        def slow(p: Any, u: Any, s: Any) -> Any:
            diff = xp.subtract(xp.add(p, u), s)
            return _select(xp, sync, xp.add(s, scale(xp, diff, slow_step_size)), s)

        out = tree_map(fast, params, fast_updates, state.slow)
        new_slow = tree_map(slow, params, fast_updates, state.slow)
        if reset_state:
            fast_state = select_tree(xp, sync, fast_optimizer.inner_init(params), fast_state)
        steps = (since + 1) % sync_period
        return out, LookaheadState(fast_state, steps, new_slow)

    hyper = dict(
        fast_optimizer=fast_optimizer,
        sync_period=sync_period,
        slow_step_size=slow_step_size,
        reset_state=reset_state,
    )
    return GradientTransformation("lookahead", init, update, hyper, needs_params=True)


def _lowest_float(xp: Any, leaves: list[Any]) -> Any:
    """The floating dtype of the fewest bits among ``leaves`` (optax's ``tree.dtype(params, 'lowest')``)."""
    return min((p.dtype for p in leaves), key=lambda d: xp.finfo(d).bits)


@python_numbers
def schedule_free(
    base_optimizer: GradientTransformation,
    lr: Any,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
) -> GradientTransformation:
    """Schedule-free wrapper (``optax.contrib.schedule_free``) around a base optimizer.

    With :math:`z` the base optimizer's iterate and :math:`y` the parameters
    (where gradients are taken), :math:`x` the averaged (evaluation) point:

    .. math::
        \\gamma_{max} = \\max_{s\\le t}\\gamma_s,\\ w_t = \\gamma_{max}^{p},\\
        c_t = \\frac{w_t}{\\sum_{s\\le t} w_s},\\ z_t = z_{t-1} + u_t

        x_{t-1} = \\frac{y_{t-1} - (1-\\beta_1) z_{t-1}}{\\beta_1},\\
        x_t = (1-c_t) x_{t-1} + c_t z_t,\\
        y_t = \\beta_1 x_t + (1-\\beta_1) z_t

    A schedule ``lr`` is read at the 1-based step count, as optax does. Evaluate the
    model at :func:`schedule_free_eval_params`. Reference: Defazio et al., "The Road
    Less Scheduled", 2024.
    """
    fn = "agrad.optim.schedule_free"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1)
    check_nonnegative(fn, weight_lr_power=weight_lr_power)

    def init(params: Any) -> ScheduleFreeState:
        xp = namespace_of(params)
        leaves = flatten_leaves(params)[0]
        dtype = _lowest_float(xp, leaves)
        dev = array_api_compat.device(leaves[0])

        def zero() -> Any:
            return xp.asarray(0.0, dtype=dtype, device=dev)

        return ScheduleFreeState(
            xp.asarray(b1, dtype=dtype, device=dev),
            zero(),
            _new_count(params, 1),
            zero(),
            base_optimizer.inner_init(params),
            tree_map(lambda p: p * 1.0, params),
        )

    def update(updates: Any, state: ScheduleFreeState, params: Any):
        xp = namespace_of(updates, params)
        lr_t = lr(state.step_count) if callable(lr) else lr
        lr_a = (
            lr_t
            if is_array(lr_t)
            else xp.asarray(
                lr_t, dtype=state.max_lr.dtype, device=array_api_compat.device(state.max_lr)
            )
        )
        lr_a = xp.astype(lr_a, state.max_lr.dtype)
        max_lr = xp.maximum(state.max_lr, lr_a)
        weight = max_lr ** leaf_scalar(xp, weight_lr_power, max_lr)
        total = xp.add(state.weight_sum, weight)
        safe = xp.where(total == 0.0, xp.ones_like(total), total)
        ck = xp.where(total == 0.0, xp.zeros_like(total), xp.divide(weight, safe))
        nan = xp.logical_or(xp.isnan(weight), xp.isnan(total))
        ck = xp.where(nan, xp.full_like(ck, float("nan")), ck)
        base_updates, base_state = base_optimizer.inner_update(
            updates, state.base_optimizer_state, params
        )
        z = tree_map(lambda zi, ui: xp.astype(xp.add(zi, ui), zi.dtype), state.z, base_updates)

        def one(y: Any, z_old: Any, z_new: Any) -> Any:
            prev_x = div_scalar(xp, xp.subtract(y, scale(xp, z_old, 1.0 - b1)), b1)
            c = xp.astype(ck, y.dtype)
            x = xp.add(xp.multiply(prev_x, 1.0 - c), xp.multiply(c, z_new))
            new = xp.add(scale(xp, x, b1), scale(xp, z_new, 1.0 - b1))
            return xp.subtract(new, y)

        out = tree_map(one, params, state.z, z)
        count = next_count(xp, state.step_count, state.max_lr)
        new_state = ScheduleFreeState(state.b1, total, count, max_lr, base_state, z)
        return out, new_state

    hyper = dict(base_optimizer=base_optimizer, lr=lr, b1=b1, weight_lr_power=weight_lr_power)
    return GradientTransformation("schedule_free", init, update, hyper, needs_params=True)


def _warmup_constant(lr: float, warmup_steps: int) -> Callable[[Any], Any]:
    """``optax.warmup_constant_schedule(0, lr, warmup_steps)``: linear from 0, then ``lr``."""

    def schedule(count: Any) -> Any:
        if is_scalar(count):
            frac = 1 - min(max(count / warmup_steps, 0.0), 1.0) if warmup_steps > 0 else 0.0
            return (0.0 - lr) * frac + lr
        xp = namespace_of(count)
        frac = 1 - xp.clip(count / warmup_steps, min=0.0, max=1.0)
        return (0.0 - lr) * frac + lr

    return schedule


@python_numbers
def schedule_free_adamw(
    lr: float = 0.0025,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
) -> GradientTransformation:
    """Schedule-free AdamW (``optax.contrib.schedule_free_adamw``).

    :func:`schedule_free` around
    ``chain(scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
    add_decayed_weights(weight_decay), scale_by_learning_rate(lr))``, with ``lr``
    warmed up linearly from 0 over ``warmup_steps`` when given. Reference: Defazio et
    al., "The Road Less Scheduled", 2024.
    """
    fn = "agrad.optim.schedule_free_adamw"
    if callable(lr):
        raise TypeError(f"{fn}: lr must be a number or a 0-d array, got {type(lr).__name__}")
    check_lr(fn, lr)
    if warmup_steps is not None:
        static_int(fn, "warmup_steps", warmup_steps)
    check_unit_interval(fn, b1=b1, b2=b2)
    check_nonnegative(fn, eps=eps, weight_decay=weight_decay)
    if warmup_steps is not None and not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(
            f"{fn}: warmup_steps must be None or an integer >= 0, got {warmup_steps!r}"
        )
    rate: Any = lr if warmup_steps is None else _warmup_constant(lr, warmup_steps)
    base = chain(
        scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(rate),
    )
    out = schedule_free(base, rate, b1, weight_lr_power)
    return GradientTransformation(
        "schedule_free_adamw",
        out.inner_init,
        out.inner_update,
        dict(lr=lr, warmup_steps=warmup_steps, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
        needs_params=True,
    )


def schedule_free_eval_params(state: Any, params: Any) -> Any:
    """The point to evaluate a schedule-free model at (``optax.contrib.schedule_free_eval_params``).

    .. math:: x = \\frac{y - (1-\\beta_1) z}{\\beta_1}

    ``state`` is (or contains) a :class:`ScheduleFreeState`.
    """
    from agrad.optim.transforms import find_state

    sf = find_state(state, ScheduleFreeState)
    if sf is None:
        raise ValueError("schedule_free_eval_params: state holds no ScheduleFreeState")
    xp = namespace_of(params)
    return tree_map(
        lambda y, z: xp.divide(xp.subtract(y, xp.multiply(z, 1.0 - sf.b1)), sf.b1), params, sf.z
    )


@python_numbers
def scale_by_rms(
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
) -> GradientTransformation:
    """Divide by the root of an EMA of squared updates (``optax.scale_by_rms``).

    .. math::
        v_t = (1-\\beta) g_t^2 + \\beta v_{t-1},\\quad \\hat v_t = v_t/(1-\\beta^t)
        \\text{ (bias correction) or } v_t,\\quad
        u_t = g_t/\\sqrt{\\hat v_t + \\epsilon} \\text{ or } g_t/(\\sqrt{\\hat v_t} + \\epsilon)
    """
    check_nonnegative("agrad.optim.scale_by_rms", eps=eps, initial_scale=initial_scale)
    check_unit_interval("agrad.optim.scale_by_rms", closed=True, decay=decay)

    def init(params: Any) -> ScaleByRmsWithCountState:
        xp = namespace_of(params)
        nu = tree_map(lambda p: full_scalar(xp, p, initial_scale), params)
        return ScaleByRmsWithCountState(_new_count(params), nu)

    def update(updates: Any, state: ScaleByRmsWithCountState, params: Any):
        xp = namespace_of(updates)
        like = _first_leaf(updates)
        t = step_number(xp, state.count, like)
        nu = tree_map(lambda g, v: _moment2(xp, g, v, decay), updates, state.nu)

        def one(g: Any, v: Any) -> Any:
            v_hat = _debias(xp, v, decay, t) if bias_correction else v
            if eps_in_sqrt:
                root = xp.sqrt(add_scalar(xp, v_hat, eps))
            else:
                root = add_scalar(xp, xp.sqrt(v_hat), eps)
            scaling = 1.0 / root
            return xp.multiply(scaling, g)

        count = next_count(xp, state.count, like)
        return tree_map(one, updates, nu), ScaleByRmsWithCountState(count, nu)

    hyper = {"decay": decay, "eps": eps, "eps_in_sqrt": eps_in_sqrt}
    hyper["bias_correction"] = bias_correction
    return GradientTransformation("scale_by_rms", init, update, hyper, needs_params=False)
