"""Optimizers without a torch.optim counterpart, as optax defines them: Lion, LAMB, LARS, Adafactor.

Each is a :func:`~agrad.optim.chain` of small transforms, following optax's
``alias.py`` one for one (and tested equal to optax on JAX in float32). The learning
rate is called ``lr`` (a float or a schedule); other hyperparameters keep optax's names.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat

from agrad.optim.base import GradientTransformation, chain, namespace_of
from agrad.optim.numerics import (
    add_scalar,
    as_count,
    check_lr,
    check_nonnegative,
    check_positive,
    check_unit_interval,
    div_scalar,
    full_scalar,
    is_hyper_array,
    leaf_scalar,
    next_count,
    python_numbers,
    scale,
    static_int,
    step_number,
)
from agrad.optim.torch_family import adam_direction, adam_moments
from agrad.optim.transforms import (
    _first_leaf,
    _new_count,
    add_decayed_weights,
    masked,
    scale_by_learning_rate,
    scale_values,
    trace,
)
from agrad.pytree import flatten_leaves, leaves_like, tree_map, unflatten

__all__ = [
    "FactoredState",
    "ScaleByAdamState",
    "ScaleByLionState",
    "adafactor",
    "clip_by_block_rms",
    "lamb",
    "lars",
    "lion",
    "scale_by_adam",
    "scale_by_factored_rms",
    "scale_by_lion",
    "scale_by_param_block_rms",
    "scale_by_trust_ratio",
]


class ScaleByAdamState(NamedTuple):
    count: Any
    mu: Any
    nu: Any


class ScaleByLionState(NamedTuple):
    count: Any
    mu: Any


class FactoredState(NamedTuple):
    count: Any
    v_row: Any
    v_col: Any
    v: Any


@python_numbers
def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> GradientTransformation:
    """Adam's rescaling without the learning rate (``optax.scale_by_adam``).

    .. math::
        m_t = (1-\\beta_1) g_t + \\beta_1 m_{t-1},\\ v_t = (1-\\beta_2) g_t^2 + \\beta_2 v_{t-1},\\
        u_t = \\frac{m_t/(1-\\beta_1^t)}{\\sqrt{v_t/(1-\\beta_2^t) + \\epsilon_{root}} + \\epsilon}
    """

    def init(params: Any) -> ScaleByAdamState:
        xp = namespace_of(params)
        zeros = tree_map(xp.zeros_like, params)
        return ScaleByAdamState(_new_count(params), zeros, tree_map(xp.zeros_like, params))

    def update(updates: Any, state: ScaleByAdamState, params: Any):
        xp = namespace_of(updates)
        g_leaves, treedef = flatten_leaves(updates)
        t = step_number(xp, state.count, g_leaves[0])
        moments = [
            adam_moments(xp, g, m, v, b1, b2, order="optax")
            for g, m, v in zip(
                g_leaves, leaves_like(state.mu, updates), leaves_like(state.nu, updates)
            )
        ]
        out = [
            adam_direction(xp, m, v, t, b1, b2, eps, -1.0, eps_root, order="optax")
            for m, v in moments
        ]
        mu = unflatten(treedef, [m for m, _ in moments])
        nu = unflatten(treedef, [v for _, v in moments])
        count = next_count(xp, state.count, g_leaves[0])
        return unflatten(treedef, out), ScaleByAdamState(count, mu, nu)

    return GradientTransformation(
        "scale_by_adam", init, update, {"b1": b1, "b2": b2, "eps": eps}, needs_params=False
    )


@python_numbers
def scale_by_lion(b1: float = 0.9, b2: float = 0.99) -> GradientTransformation:
    """Lion's sign update (``optax.scale_by_lion``).

    .. math:: u_t = \\mathrm{sign}((1-\\beta_1) g_t + \\beta_1 m_{t-1}),\\quad m_t = (1-\\beta_2) g_t + \\beta_2 m_{t-1}
    """

    def init(params: Any) -> ScaleByLionState:
        xp = namespace_of(params)
        return ScaleByLionState(_new_count(params), tree_map(xp.zeros_like, params))

    def update(updates: Any, state: ScaleByLionState, params: Any):
        xp = namespace_of(updates)
        out = tree_map(
            lambda g, m: xp.sign(xp.add(scale(xp, g, 1.0 - b1), scale(xp, m, b1))),
            updates,
            state.mu,
        )
        mu = tree_map(
            lambda g, m: xp.add(scale(xp, g, 1 - b2), scale(xp, m, b2)), updates, state.mu
        )
        count = next_count(xp, state.count, _first_leaf(updates))
        return out, ScaleByLionState(count, mu)

    return GradientTransformation(
        "scale_by_lion", init, update, {"b1": b1, "b2": b2}, needs_params=False
    )


def _norm(xp: Any, x: Any) -> Any:
    return xp.sqrt(xp.sum(xp.multiply(x, x)))


@python_numbers
def scale_by_trust_ratio(
    min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0
) -> GradientTransformation:
    """Layer-wise trust ratio (``optax.scale_by_trust_ratio``).

    .. math::
        u \\leftarrow u \\cdot \\frac{c\\, \\max(\\lVert\\theta\\rVert, n_{min})}{\\max(\\lVert u\\rVert, n_{min}) + \\epsilon}
        \\quad (1 \\text{ where either norm is } 0)
    """

    def update(updates: Any, state: Any, params: Any):
        xp = namespace_of(updates, params)

        def one(u: Any, p: Any) -> Any:
            p_norm = _norm(xp, p)
            u_norm = _norm(xp, u)
            p_norm = xp.maximum(p_norm, full_scalar(xp, p_norm, min_norm))
            u_norm = xp.maximum(u_norm, full_scalar(xp, u_norm, min_norm))
            zero = xp.logical_or(p_norm == 0.0, u_norm == 0.0)
            # a zero norm selects 1: divide by 1 there instead of by 0
            denom = xp.where(zero, xp.ones_like(u_norm), add_scalar(xp, u_norm, eps))
            ratio = xp.divide(scale(xp, p_norm, trust_coefficient), denom)
            return xp.multiply(u, xp.where(zero, xp.ones_like(ratio), ratio))

        return tree_map(one, updates, params), state

    from agrad.optim.transforms import _empty_init

    return GradientTransformation(
        "scale_by_trust_ratio",
        _empty_init,
        update,
        {"min_norm": min_norm, "trust_coefficient": trust_coefficient, "eps": eps},
    )


def _rms(xp: Any, x: Any) -> Any:
    return xp.sqrt(xp.mean(xp.multiply(x, x)))


@python_numbers
def clip_by_block_rms(threshold: float) -> GradientTransformation:
    """Divide each leaf by :math:`\\max(1, \\mathrm{rms}(u)/c)` (``optax.clip_by_block_rms``)."""

    def update(updates: Any, state: Any, params: Any):
        xp = namespace_of(updates)

        def one(u: Any) -> Any:
            denom = xp.maximum(xp.ones_like(_rms(xp, u)), div_scalar(xp, _rms(xp, u), threshold))
            return xp.divide(u, denom)

        return tree_map(one, updates), state

    from agrad.optim.transforms import _empty_init

    return GradientTransformation(
        "clip_by_block_rms", _empty_init, update, {"threshold": threshold}, needs_params=False
    )


@python_numbers
def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Multiply each leaf by :math:`\\max(\\mathrm{rms}(\\theta), s_{min})` (``optax.scale_by_param_block_rms``)."""

    def update(updates: Any, state: Any, params: Any):
        xp = namespace_of(updates, params)

        def one(u: Any, p: Any) -> Any:
            rms = _rms(xp, p)
            floor = full_scalar(xp, rms, min_scale)
            return xp.multiply(u, xp.where(rms <= floor, floor, rms))

        return tree_map(one, updates, params), state

    from agrad.optim.transforms import _empty_init

    return GradientTransformation(
        "scale_by_param_block_rms", _empty_init, update, {"min_scale": min_scale}
    )


def _decay_rate_pow(xp: Any, count: Any, offset: int, exponent: float, like: Any) -> Any:
    """:math:`1 - (c - o + 1)^{-e}` as a 0-d float32 array, computed as optax does."""
    t = xp.astype(as_count(xp, count, like) - offset + 1, xp.float32)
    if is_hyper_array(exponent):  # injected: in float32, as optax computes it
        return 1.0 - t ** xp.negative(xp.astype(exponent, xp.float32))
    return 1.0 - t ** (-exponent)


def _factored_dims(shape: tuple, factored: bool, min_dim: int) -> tuple[int, int] | None:
    if not factored or len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    if shape[order[-2]] < min_dim:
        return None
    return order[-2], order[-1]


@python_numbers
def scale_by_factored_rms(
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
) -> GradientTransformation:
    """Adafactor's factored second-moment rescaling (``optax.scale_by_factored_rms``).

    With :math:`\\hat\\beta_t = 1 - t^{-0.8}` and :math:`G = g^2 + \\epsilon`:
    for matrices :math:`R_t = \\hat\\beta_t R_{t-1} + (1-\\hat\\beta_t)\\,\\mathrm{mean}_{col}(G)`,
    :math:`C_t` likewise over rows, and
    :math:`u = g \\cdot (R/\\bar R)^{-1/2} \\cdot C^{-1/2}`; otherwise
    :math:`v_t = \\hat\\beta_t v_{t-1} + (1-\\hat\\beta_t) G`, :math:`u = g\\, v_t^{-1/2}`.
    Reference: Shazeer & Stern, "Adafactor", ICML 2018.
    """
    fn = "agrad.optim.scale_by_factored_rms"
    static_int(fn, "step_offset", step_offset)
    static_int(fn, "min_dim_size_to_factor", min_dim_size_to_factor)

    def init(params: Any) -> FactoredState:
        xp = namespace_of(params)
        leaves, treedef = flatten_leaves(params)
        rows, cols, vs = [], [], []
        for p in leaves:
            dims = _factored_dims(tuple(p.shape), factored, min_dim_size_to_factor)
            small = xp.zeros((1,), dtype=p.dtype, device=array_api_compat.device(p))
            if dims is not None:
                d1, d0 = dims
                rows.append(xp.zeros_like(xp.sum(p, axis=d0)))
                cols.append(xp.zeros_like(xp.sum(p, axis=d1)))
                vs.append(small)
            else:
                rows.append(small)
                cols.append(xp.zeros((1,), dtype=p.dtype, device=array_api_compat.device(p)))
                vs.append(xp.zeros_like(p))
        count = _new_count(params)
        return FactoredState(
            count, unflatten(treedef, rows), unflatten(treedef, cols), unflatten(treedef, vs)
        )

    def update(updates: Any, state: FactoredState, params: Any):
        xp = namespace_of(updates)
        leaves, treedef = flatten_leaves(updates)
        rows = leaves_like(state.v_row, updates)
        cols = leaves_like(state.v_col, updates)
        vs = leaves_like(state.v, updates)
        beta32 = _decay_rate_pow(xp, state.count, step_offset, decay_rate, leaves[0])
        one_minus32 = 1.0 - beta32
        out, n_rows, n_cols, n_vs = [], [], [], []
        for g, r, c, v in zip(leaves, rows, cols, vs):
            beta = leaf_scalar(xp, beta32, g)
            one_minus = leaf_scalar(xp, one_minus32, g)
            dims = _factored_dims(tuple(g.shape), factored, min_dim_size_to_factor)
            g_sq = add_scalar(xp, xp.multiply(g, g), epsilon)
            if dims is not None:
                d1, d0 = dims
                r = xp.add(r * beta, xp.mean(g_sq, axis=d0) * one_minus)
                c = xp.add(c * beta, xp.mean(g_sq, axis=d1) * one_minus)
                reduced_d1 = d1 - 1 if d1 > d0 else d1
                row_mean = xp.mean(r, axis=reduced_d1, keepdims=True)
                row_factor = xp.divide(r, row_mean) ** -0.5
                col_factor = c**-0.5
                u = xp.multiply(
                    xp.multiply(g, xp.expand_dims(row_factor, axis=d0)),
                    xp.expand_dims(col_factor, axis=d1),
                )
            else:
                v = xp.add(v * beta, g_sq * one_minus)
                u = xp.multiply(g, v**-0.5)
            out.append(u)
            n_rows.append(r)
            n_cols.append(c)
            n_vs.append(v)
        new_state = FactoredState(
            next_count(xp, state.count, leaves[0]),
            unflatten(treedef, n_rows),
            unflatten(treedef, n_cols),
            unflatten(treedef, n_vs),
        )
        return unflatten(treedef, out), new_state

    return GradientTransformation(
        "scale_by_factored_rms",
        init,
        update,
        {"factored": factored, "decay_rate": decay_rate},
        needs_params=False,
    )


@python_numbers
def lion(
    lr: Any, b1: float = 0.9, b2: float = 0.99, weight_decay: float = 1e-3, mask: Any = None
) -> GradientTransformation:
    """Lion (``optax.lion``): sign of an interpolated momentum, decoupled weight decay.

    .. math::
        \\theta_t = \\theta_{t-1} - \\gamma\\left(\\mathrm{sign}((1-\\beta_1) g_t + \\beta_1 m_{t-1}) + \\lambda\\theta_{t-1}\\right),\\quad
        m_t = (1-\\beta_2) g_t + \\beta_2 m_{t-1}

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.
    """
    fn = "agrad.optim.lion"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1, b2=b2)
    check_nonnegative(fn, weight_decay=weight_decay)
    return chain(
        scale_by_lion(b1, b2),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(lr),
        name="lion",
        hyperparams=dict(lr=lr, b1=b1, b2=b2, weight_decay=weight_decay),
    )


@python_numbers
def lamb(
    lr: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mask: Any = None,
) -> GradientTransformation:
    """LAMB (``optax.lamb``): Adam's direction plus weight decay, scaled by a layer-wise trust ratio.

    .. math::
        r_t = \\mathrm{adam}(g_t) + \\lambda\\theta_{t-1},\\quad
        \\theta_t = \\theta_{t-1} - \\gamma \\frac{\\lVert\\theta_{t-1}\\rVert}{\\lVert r_t\\rVert} r_t

    Reference: You et al., "Large Batch Optimization for Deep Learning: Training BERT
    in 76 minutes", ICLR 2020.
    """
    fn = "agrad.optim.lamb"
    check_lr(fn, lr)
    check_unit_interval(fn, b1=b1, b2=b2)
    check_positive(fn, eps=eps)
    check_nonnegative(fn, eps_root=eps_root, weight_decay=weight_decay)
    return chain(
        scale_by_adam(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(lr),
        name="lamb",
        hyperparams=dict(lr=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
    )


@python_numbers
def lars(
    lr: Any,
    weight_decay: float = 0.0,
    weight_decay_mask: Any = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: Any = True,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> GradientTransformation:
    """LARS (``optax.lars``): SGD with momentum on trust-ratio-scaled, weight-decayed gradients.

    .. math::
        r_t = \\frac{c \\lVert\\theta\\rVert}{\\lVert g_t + \\lambda\\theta\\rVert + \\epsilon}(g_t + \\lambda\\theta),\\quad
        m_t = -\\gamma r_t + \\mu m_{t-1},\\quad \\theta_t = \\theta_{t-1} + m_t

    Reference: You et al., "Large Batch Training of Convolutional Networks", 2017.
    """
    fn = "agrad.optim.lars"
    check_lr(fn, lr)
    check_nonnegative(
        fn,
        weight_decay=weight_decay,
        trust_coefficient=trust_coefficient,
        eps=eps,
        momentum=momentum,
    )
    return chain(
        add_decayed_weights(weight_decay, weight_decay_mask),
        masked(
            scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps), trust_ratio_mask
        ),
        scale_by_learning_rate(lr),
        trace(momentum, nesterov),
        name="lars",
        hyperparams=dict(lr=lr, weight_decay=weight_decay, momentum=momentum),
    )


@python_numbers
def adafactor(
    lr: Any = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    weight_decay_rate: float | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
) -> GradientTransformation:
    """Adafactor (``optax.adafactor``): factored second moments, block-RMS clipping, relative step.

    .. math::
        u = \\mathrm{factored\\_rms}(g),\\ u \\leftarrow u / \\max(1, \\mathrm{rms}(u)/d),\\
        u \\leftarrow \\gamma\\, \\max(\\mathrm{rms}(\\theta), 10^{-3})\\, u,\\
        \\theta_t = \\theta_{t-1} - u

    (optionally with momentum and weight decay). Reference: Shazeer & Stern,
    "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.
    """
    fn = "agrad.optim.adafactor"
    static_int(fn, "min_dim_size_to_factor", min_dim_size_to_factor)
    static_int(fn, "decay_offset", decay_offset)
    if lr is not None:
        check_lr(fn, lr)
    check_positive(fn, eps=eps)
    parts = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)]
    if clipping_threshold is not None:
        parts.append(clip_by_block_rms(clipping_threshold))
    if lr is not None:
        parts.append(scale_by_learning_rate(lr, flip_sign=False))
    if multiply_by_parameter_scale:
        parts.append(scale_by_param_block_rms())
    if momentum is not None:
        parts.append(_ema_updates(momentum))
    if weight_decay_rate is not None:
        parts.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    parts.append(scale_values(-1.0))
    return chain(
        *parts,
        name="adafactor",
        hyperparams=dict(lr=lr, decay_rate=decay_rate, clipping_threshold=clipping_threshold),
    )


def _ema_updates(decay: float) -> GradientTransformation:
    """``optax.ema(decay, debias=False)``: :math:`e_t = (1-\\beta) u_t + \\beta e_{t-1}`, output :math:`e_t`."""
    from agrad.optim.transforms import TraceState

    def init(params: Any) -> TraceState:
        xp = namespace_of(params)
        return TraceState(tree_map(xp.zeros_like, params))

    def update(updates: Any, state: TraceState, params: Any):
        xp = namespace_of(updates)
        ema = tree_map(
            lambda u, e: xp.add(scale(xp, u, 1 - decay), scale(xp, e, decay)), updates, state.trace
        )
        return ema, TraceState(ema)

    return GradientTransformation("ema", init, update, {"decay": decay}, needs_params=False)
