"""The rest of torch.optim as per-parameter rules: Rprop, ASGD, Adafactor, Muon (and SparseAdam refused).

Like :mod:`agrad.optim.torch_family`, each constructor takes torch.optim's names and
defaults and evaluates the update in the order of torch 2.13's ``_single_tensor_*``
code (float64: equal to ``torch.optim`` to 1e-10 relative after 150 steps, tested).
Rules use array operations only (``xp.where`` instead of Python branches on values),
so they run unchanged under a tracer. L-BFGS, which drives its own closure, lives in
:mod:`agrad.optim.lbfgs`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, NoReturn

import array_api_compat

from agrad.optim.base import GradientTransformation, is_array
from agrad.optim.numerics import (
    check_lr,
    check_nonnegative,
    div_scalar,
    full_scalar,
    hyper_float,
    is_hyper_array,
    is_scalar,
    leaf_scalar,
    lerp,
    python_numbers,
    scale,
    static_int,
)
from agrad.optim.torch_family import _known, _neg, _nonzero, _torch_optimizer, _zeros

__all__ = [
    "ASGDState",
    "AdafactorTorchState",
    "MuonState",
    "RpropState",
    "adafactor_torch",
    "asgd",
    "muon",
    "rprop",
    "sparse_adam",
]


class RpropState(NamedTuple):
    count: int
    prev: Any
    step_size: Any


class ASGDState(NamedTuple):
    count: int
    eta: Any
    mu: Any
    ax: Any


class AdafactorTorchState(NamedTuple):
    count: int
    row_var: Any
    col_var: Any
    variance: Any


class MuonState(NamedTuple):
    count: int
    momentum_buffer: Any


def _scalar(xp: Any, value: Any, like: Any) -> Any:
    """``value`` (a Python number or a 0-d array) as a 0-d array of ``like``'s dtype and device."""
    if is_scalar(value):
        return xp.asarray(float(value), dtype=like.dtype, device=array_api_compat.device(like))
    return xp.astype(value, like.dtype)


def _lerp(xp: Any, a: Any, b: Any, w: Any) -> Any:
    """``torch.lerp(a, b, w)`` for a Python or a 0-d array weight (both branches, picked by ``xp.where``)."""
    if is_scalar(w) or (is_hyper_array(w) and w.dtype != a.dtype):
        return lerp(xp, a, b, w if is_hyper_array(w) else float(w))
    low = xp.add(a, xp.multiply(xp.subtract(b, a), w))
    high = xp.subtract(b, xp.multiply(xp.subtract(b, a), 1.0 - w))
    return xp.where(xp.abs(w) < 0.5, low, high)


def _norm(xp: Any, x: Any, **axis: Any) -> Any:
    return xp.sqrt(xp.sum(xp.multiply(x, x), **axis))


@python_numbers
def rprop(
    lr: float = 1e-2,
    etas: tuple[float, float] = (0.5, 1.2),
    step_sizes: tuple[float, float] = (1e-6, 50.0),
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Resilient backpropagation, as ``torch.optim.Rprop``.

    .. math::
        s = \\mathrm{sign}(g_t g_{t-1}),\\quad
        \\eta_t = \\mathrm{clip}(\\eta_{t-1} \\cdot (\\eta_+ \\text{ if } s>0,\\
            \\eta_- \\text{ if } s<0,\\ 1 \\text{ else}),\\ \\eta_{min}, \\eta_{max})

        g_t \\leftarrow 0 \\text{ where } s < 0,\\qquad
        \\theta_t = \\theta_{t-1} - \\mathrm{sign}(g_t)\\,\\eta_t

    with :math:`\\eta_0 = \\gamma` (the learning rate is read once, at ``init``, as torch
    does) and :math:`g_{t-1}` the previous (zeroed) gradient. Reference: Riedmiller &
    Braun, "A Direct Adaptive Method for Faster Backpropagation Learning: The RPROP
    Algorithm", ICNN 1993.
    """
    fn = "agrad.optim.rprop"
    if not (is_scalar(lr) or is_hyper_array(lr)):
        msg = f"{fn}: lr must be a number or a 0-d array (Rprop reads it once, as the initial step size), got {type(lr).__name__}"
        raise TypeError(msg)
    check_lr(fn, lr)
    try:
        etaminus, etaplus = (hyper_float(e) for e in etas)
        step_min, step_max = (hyper_float(s) for s in step_sizes)
    except (TypeError, ValueError):
        msg = f"{fn}: etas and step_sizes must be pairs of numbers, got {etas!r} and {step_sizes!r}"
        raise ValueError(msg) from None
    check_nonnegative(fn, **{"etas[0]": etaminus, "etas[1]": etaplus})
    e_minus, e_plus = _known(etaminus), _known(etaplus)
    if e_minus is not None and e_plus is not None and not 0.0 < e_minus < 1.0 < e_plus:
        msg = f"{fn}: invalid etas {etas!r} (expected 0 < etaminus < 1 < etaplus)"
        raise ValueError(msg)
    check_nonnegative(fn, **{"step_sizes[0]": step_min, "step_sizes[1]": step_max})

    def init_step_size(xp: Any, p: Any) -> Any:
        return full_scalar(xp, p, hyper_float(lr))

    def rule(xp, t, lr_t, _, g, p, prev, step_size):
        sign = xp.sign(xp.multiply(g, prev))
        factor = xp.where(sign > 0, full_scalar(xp, g, etaplus), xp.ones_like(g))
        factor = xp.where(sign < 0, full_scalar(xp, g, etaminus), factor)
        step_size = xp.multiply(step_size, factor)
        if is_hyper_array(step_min) or is_hyper_array(step_max):
            step_size = xp.minimum(
                xp.maximum(step_size, full_scalar(xp, step_size, step_min)),
                full_scalar(xp, step_size, step_max),
            )
        else:
            step_size = xp.clip(step_size, min=step_min, max=step_max)
        g = xp.where(sign < 0, xp.zeros_like(g), g)
        return xp.negative(xp.multiply(xp.sign(g), step_size)), (g, step_size)

    hyper = dict(lr=lr, etas=(etaminus, etaplus), step_sizes=(step_min, step_max))
    hyper["maximize"] = maximize
    return _torch_optimizer(
        "rprop", RpropState, {"prev": _zeros, "step_size": init_step_size}, rule, hyper
    )


@python_numbers
def asgd(
    lr: Any = 1e-2,
    lambd: float = 1e-4,
    alpha: float = 0.75,
    t0: float = 1e6,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Averaged stochastic gradient descent, as ``torch.optim.ASGD``.

    .. math::
        \\theta_t = \\theta_{t-1}(1 - \\lambda\\eta_t) - \\eta_t g_t,\\qquad
        \\bar\\theta_t = \\bar\\theta_{t-1} + \\mu_t(\\theta_t - \\bar\\theta_{t-1})
        \\ (\\bar\\theta_t = \\theta_t \\text{ where } \\mu_t = 1)

        \\eta_{t+1} = \\frac{\\gamma}{(1 + \\lambda\\gamma t)^{\\alpha}},\\quad
        \\mu_{t+1} = \\frac{1}{\\max(1, t - t_0)}

    with :math:`\\eta_1 = \\gamma`, :math:`\\mu_1 = 1`. The average
    :math:`\\bar\\theta` is the state's ``ax``; :math:`\\eta` and :math:`\\mu` are 0-d
    arrays per parameter (of its dtype), as torch keeps them. Reference: Polyak &
    Juditsky, "Acceleration of stochastic approximation by averaging", SIAM J. Control
    Optim. 1992.
    """
    fn = "agrad.optim.asgd"
    check_lr(fn, lr)
    check_nonnegative(fn, lambd=lambd, alpha=alpha, weight_decay=weight_decay)
    t0_value = _known(t0) if (is_scalar(t0) or is_hyper_array(t0)) else math.nan
    if t0_value is not None and not math.isfinite(t0_value):
        raise ValueError(f"{fn}: invalid t0: {t0!r} (expected a finite number)")
    lr0 = lr(0) if callable(lr) else lr

    def init_eta(xp: Any, p: Any) -> Any:
        return _scalar(xp, lr0, p)

    def init_mu(xp: Any, p: Any) -> Any:
        return _scalar(xp, 1.0, p)

    def rule(xp, t, lr_t, _, g, p, eta, mu, ax):
        if is_hyper_array(lambd):  # injected: torch's 1 - lambd * eta.item() in the step's dtype
            p = scale(xp, p, 1.0 - xp.multiply(xp.astype(lambd, t.dtype), xp.astype(eta, t.dtype)))
        else:
            p = xp.multiply(p, 1.0 - lambd * eta)
        p = xp.add(p, xp.multiply(g, xp.negative(eta)))
        averaged = xp.add(ax, xp.multiply(xp.subtract(p, ax), mu))
        ax = xp.where(mu == 1.0, p, averaged)
        # computed in the step's dtype (float64 where there is one), stored in p's, as
        # torch computes them in Python floats and stores them in its default dtype
        eta = leaf_scalar(xp, lr_t / ((1 + lambd * lr_t * t) ** alpha), p)
        mu = leaf_scalar(xp, 1.0 / xp.maximum(t - t0, xp.ones_like(t)), p)
        return p, (eta, mu, ax)

    hyper = dict(lr=lr, lambd=lambd, alpha=alpha, t0=t0, weight_decay=weight_decay)
    hyper["maximize"] = maximize
    return _torch_optimizer(
        "asgd",
        ASGDState,
        {"eta": init_eta, "mu": init_mu, "ax": _zeros},
        rule,
        hyper,
        returns_param=True,
    )


@python_numbers
def adafactor_torch(
    lr: Any = 1e-2,
    beta2_decay: float = -0.8,
    eps: tuple[float | None, float] = (None, 1e-3),
    d: float = 1.0,
    weight_decay: float = 0.0,
    *,
    maximize: bool = False,
) -> GradientTransformation:
    """Adafactor as ``torch.optim.Adafactor`` (torch's variant; optax's is :func:`~agrad.optim.adafactor`).

    With :math:`\\hat\\beta_t = t^{c}` (:math:`c` = ``beta2_decay``),
    :math:`\\rho_t = \\min(\\gamma, t^{-1/2})` and
    :math:`a_t = \\max(\\epsilon_2, \\mathrm{rms}(\\theta_{t-1}))\\,\\rho_t`: for
    :math:`\\theta \\in \\mathbb R^{\\dots\\times m\\times n}`

    .. math::
        R_t = \\mathrm{lerp}(R_{t-1}, \\tfrac1n \\lVert g\\rVert^2_{row}, \\hat\\beta_t),\\
        C_t = \\mathrm{lerp}(C_{t-1}, \\tfrac1m \\lVert g\\rVert^2_{col}, \\hat\\beta_t),\\
        V_t = \\frac{R_t C_t}{\\max(\\mathrm{mean}_{rows}(R_t), \\epsilon_1)}

    (for vectors :math:`V_t = \\mathrm{lerp}(V_{t-1}, g^2, \\hat\\beta_t)`), then
    :math:`u = g / \\sqrt{\\max(V_t, \\epsilon_1^2)}` and

    .. math::
        \\theta_t = \\theta_{t-1}(1-\\gamma\\lambda)
            - \\frac{a_t}{\\max(1, \\mathrm{rms}(u)/d)}\\, u

    :math:`\\epsilon_1` defaults to the machine epsilon of the parameter's dtype.
    Reference: Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost", ICML 2018.
    """
    fn = "agrad.optim.adafactor_torch"
    check_lr(fn, lr)
    decay_value = (
        _known(beta2_decay) if (is_scalar(beta2_decay) or is_hyper_array(beta2_decay)) else 1.0
    )
    if decay_value is not None and not decay_value <= 0.0:
        raise ValueError(f"{fn}: invalid beta2_decay: {beta2_decay!r} (expected a number <= 0)")
    try:
        eps1, eps2 = eps
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: eps must be a pair (eps1 or None, eps2), got {eps!r}") from None
    if eps1 is not None:
        check_nonnegative(fn, **{"eps[0]": eps1})
    check_nonnegative(fn, **{"eps[1]": eps2}, weight_decay=weight_decay)
    d_value = _known(d) if (is_scalar(d) or is_hyper_array(d)) else 0.0
    if d_value is not None and not d_value >= 1.0:
        raise ValueError(f"{fn}: invalid d: {d!r} (expected a number >= 1)")

    # a leaf's unused statistics are 0-d zeros (torch leaves them out)
    def row_shape(xp: Any, p: Any) -> Any:
        if p.ndim < 2:
            return _scalar(xp, 0.0, p)
        return xp.zeros_like(xp.sum(p, axis=-1, keepdims=True))

    def col_shape(xp: Any, p: Any) -> Any:
        if p.ndim < 2:
            return _scalar(xp, 0.0, p)
        return xp.zeros_like(xp.sum(p, axis=-2, keepdims=True))

    def variance(xp: Any, p: Any) -> Any:
        return xp.zeros_like(p) if p.ndim < 2 else _scalar(xp, 0.0, p)

    def rule(xp, t, lr_t, _, g, p, row_var, col_var, var):
        e1 = float(xp.finfo(p.dtype).eps) if eps1 is None else eps1
        w = leaf_scalar(xp, t**beta2_decay, p)  # 0-d, in p's dtype (p may be empty)
        e1_floor = full_scalar(xp, w, e1)  # a 0-d array
        inv_sqrt_t = 1 / (t**0.5)
        lr_s = xp.astype(lr_t, t.dtype) if is_array(lr_t) else xp.full_like(t, lr_t)
        rho = leaf_scalar(xp, xp.minimum(lr_s, inv_sqrt_t), p)
        rms_p = _norm(xp, p) / (math.prod(p.shape) ** 0.5)
        alpha = xp.multiply(xp.maximum(rms_p, full_scalar(xp, rms_p, eps2)), rho)
        if _nonzero(weight_decay):
            p = scale(xp, p, 1 - lr_t * weight_decay)
        if g.ndim > 1:
            row_mean = _norm(xp, g, axis=-1, keepdims=True) ** 2 / g.shape[-1]
            row_var = _lerp(xp, row_var, row_mean, w)
            col_mean = _norm(xp, g, axis=-2, keepdims=True) ** 2 / g.shape[-2]
            col_var = _lerp(xp, col_var, col_mean, w)
            row_avg = xp.mean(row_var, axis=-2, keepdims=True)
            estimate = xp.divide(xp.multiply(row_var, col_var), xp.maximum(row_avg, e1_floor))
        else:
            var = _lerp(xp, var, xp.multiply(g, g), w)
            estimate = var
        e1_sq = (
            xp.multiply(e1_floor, e1_floor) if is_hyper_array(e1) else full_scalar(xp, w, e1 * e1)
        )
        u = xp.multiply(1.0 / xp.sqrt(xp.maximum(estimate, e1_sq)), g)
        rms_u = div_scalar(xp, _norm(xp, u) / (math.prod(u.shape) ** 0.5), d)
        denom = xp.maximum(rms_u, xp.ones_like(rms_u))
        p = xp.add(p, xp.multiply(u, xp.negative(alpha) / denom))
        return p, (row_var, col_var, var)

    hyper = dict(lr=lr, beta2_decay=beta2_decay, eps=(eps1, eps2), d=d, weight_decay=weight_decay)
    hyper["maximize"] = maximize
    return _torch_optimizer(
        "adafactor_torch",
        AdafactorTorchState,
        {"row_var": row_shape, "col_var": col_shape, "variance": variance},
        rule,
        hyper,
        returns_param=True,
        weight_decay_in_rule=True,
    )


def _newton_schulz(
    xp: Any, g: Any, coefficients: tuple[float, float, float], steps: int, eps: float
) -> Any:
    """Orthogonalize a matrix by the quintic Newton-Schulz iteration torch's Muon uses.

    .. math::
        X_0 = G / \\max(\\lVert G\\rVert_F, \\epsilon),\\quad
        A = X X^T,\\ B = bA + cA^2,\\ X \\leftarrow aX + BX

    on :math:`G^T` where :math:`G` has more rows than columns.
    """
    a, b, c = coefficients
    tall = g.shape[0] > g.shape[1]
    x = xp.matrix_transpose(g) if tall else g
    norm = _norm(xp, x)
    x = xp.divide(x, xp.maximum(norm, full_scalar(xp, norm, eps)))
    for _ in range(steps):
        gram = xp.matmul(x, xp.matrix_transpose(x))
        update = xp.add(scale(xp, gram, b), scale(xp, xp.matmul(gram, gram), c))
        x = xp.add(scale(xp, x, a), xp.matmul(update, x))
    return xp.matrix_transpose(x) if tall else x


_NARROW = ("bfloat16", "float16")  # ns_dtypes torch rounds to, computing in float32


def _newton_schulz_rounded(
    xp: Any, g: Any, coefficients: tuple[float, float, float], steps: int, eps: float, low: Any
) -> Any:
    """:func:`_newton_schulz` with torch's roundings to a narrow dtype ``low`` (bfloat16).

    torch's Muon casts to bfloat16 and runs ``X @ X.T`` and two fused ``addmm``: each
    accumulates in float32 and rounds its result to bfloat16 once, ``bA + cA^2`` and
    ``aX + BX`` included. Here every operation runs in float32 on bfloat16 values and
    rounds where torch rounds: ``round(G)``, ``round(|X|)``, ``round(X/|X|)``, then per
    step ``A = round(XX^T)``, ``B = round(bA + cA^2)``, ``X = round(aX + BX)``. The result
    holds ``low``'s values in float32. Equal to torch bit for bit where both sum a
    product in the same order (on the CPU, small matrices); a different float32
    summation order (another gemm blocking) flips a bfloat16 rounding now and then.
    """
    f32 = xp.float32

    def rounded(v: Any) -> Any:
        return xp.astype(xp.astype(v, low), f32)

    a, b, c = coefficients
    tall = g.shape[0] > g.shape[1]
    x = rounded(xp.matrix_transpose(g) if tall else g)
    norm = rounded(_norm(xp, x))
    x = rounded(xp.divide(x, xp.maximum(norm, xp.full_like(norm, eps))))
    for _ in range(steps):
        gram = rounded(xp.matmul(x, xp.matrix_transpose(x)))
        update = rounded(xp.add(gram * b, xp.matmul(gram, gram) * c))
        x = rounded(xp.add(x * a, xp.matmul(update, x)))
    return xp.matrix_transpose(x) if tall else x


@python_numbers
def muon(
    lr: Any = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    ns_dtype: str | None = None,
) -> GradientTransformation:
    """Muon (momentum, orthogonalized by Newton-Schulz), as ``torch.optim.Muon``; 2-D parameters only.

    .. math::
        b_t = \\mathrm{lerp}(b_{t-1}, g_t, 1-\\mu),\\quad
        u_t = \\mathrm{lerp}(g_t, b_t, \\mu) \\text{ (Nesterov) or } b_t,\\quad
        O_t = \\mathrm{NS}_k(u_t)

        \\theta_t = \\theta_{t-1}(1 - \\gamma\\lambda) - \\gamma_{adj} O_t,\\qquad
        \\gamma_{adj} = \\gamma\\sqrt{\\max(1, A/B)} \\text{ (``original``) or }
            0.2\\,\\gamma\\sqrt{\\max(A, B)} \\text{ (``match_rms_adamw``)}

    for an :math:`A\\times B` parameter, with :math:`\\mathrm{NS}_k` the ``ns_steps``-step
    quintic Newton-Schulz iteration. torch runs the iteration in bfloat16; agrad runs it
    in the parameter's dtype unless ``ns_dtype`` names another (``"bfloat16"`` on
    namespaces that have it reproduces torch's rounding). Use it for the weight
    matrices and :func:`~agrad.optim.partition` another optimizer over the rest.
    Reference: Jordan et al., "Muon: An optimizer for hidden layers in neural networks",
    2024.
    """
    fn = "agrad.optim.muon"
    check_lr(fn, lr)
    check_nonnegative(fn, weight_decay=weight_decay, momentum=momentum, eps=eps)
    if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
        msg = f"{fn}: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got {adjust_lr_fn!r}"
        raise ValueError(msg)
    static_int(fn, "ns_steps", ns_steps)
    if not (isinstance(ns_steps, int) and 0 <= ns_steps < 100):
        raise ValueError(f"{fn}: ns_steps must be an integer in [0, 100), got {ns_steps!r}")
    try:
        coefficients = tuple(hyper_float(c) for c in ns_coefficients)
    except TypeError:
        coefficients = ()
    if len(coefficients) != 3:
        raise ValueError(f"{fn}: ns_coefficients must be 3 numbers, got {ns_coefficients!r}")

    def momentum_buffer(xp: Any, p: Any) -> Any:
        if p.ndim != 2:
            msg = f"{fn}: Muon only supports 2-D parameters, got one of shape {tuple(p.shape)}; use agrad.optim.partition to give the others another optimizer"
            raise ValueError(msg)
        return xp.zeros_like(p)

    def rule(xp, t, lr_t, _, g, p, buf):
        buf = lerp(xp, buf, g, 1 - momentum)
        u = lerp(xp, g, buf, momentum) if nesterov else buf
        if ns_dtype is not None:
            if not hasattr(xp, ns_dtype):
                msg = f"{fn}: ns_dtype={ns_dtype!r} is not a dtype of {xp.__name__}"
                raise ValueError(msg)
            if ns_dtype in _NARROW:  # torch's roundings, computing in float32
                o = _newton_schulz_rounded(
                    xp, u, coefficients, ns_steps, eps, getattr(xp, ns_dtype)
                )
            else:
                o = _newton_schulz(
                    xp, xp.astype(u, getattr(xp, ns_dtype)), coefficients, ns_steps, eps
                )
        else:
            o = _newton_schulz(xp, u, coefficients, ns_steps, eps)
        o = xp.astype(o, g.dtype)
        rows, cols = g.shape
        if adjust_lr_fn == "match_rms_adamw":
            ratio = 0.2 * math.sqrt(max(rows, cols))
        else:
            ratio = math.sqrt(max(1, rows / cols))
        return scale(xp, o, _neg(xp, lr_t * ratio)), (buf,)

    hyper = dict(
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=nesterov,
        ns_coefficients=coefficients,
        eps=eps,
        ns_steps=ns_steps,
        adjust_lr_fn=adjust_lr_fn,
        ns_dtype=ns_dtype,
    )
    return _torch_optimizer(
        "muon", MuonState, {"momentum_buffer": momentum_buffer}, rule, hyper, decoupled=True
    )


def sparse_adam(*args: Any, **kwargs: Any) -> NoReturn:
    """``torch.optim.SparseAdam`` is refused: agrad takes dense gradients only.

    Sparse tensors are not part of the Array API standard, and agrad refuses sparse
    gradients (a ``TypeError`` naming the leaf). Use :func:`~agrad.optim.adam` on dense
    gradients (``grad.to_dense()``; with dense gradients SparseAdam's lazy update of the
    touched rows becomes Adam's update of every row), or keep ``torch.optim.SparseAdam``
    for an ``nn.Embedding(sparse=True)`` and agrad for the rest.
    """
    msg = (
        "agrad.optim.sparse_adam: SparseAdam is not provided: agrad works on dense arrays "
        "(sparse tensors are not part of the Array API standard). Use agrad.optim.adam on "
        "dense gradients (grad.to_dense()), or torch.optim.SparseAdam for the sparse "
        "embedding and agrad for the other parameters"
    )
    raise NotImplementedError(msg)
