"""The seed's functional updates: thin wrappers over ``agrad.optim.sgd`` and ``agrad.optim.adam``.

``gradient_descent_update`` and ``adam_update`` keep the seed's (Ivy's) signatures and
return values; the rule, the validation (structure, namespaces, shapes, dtypes,
devices, writability, aliasing, all before any write) and the in-place writing are
``agrad.optim``'s, so there is one Adam and one validator. Error messages name the
seed's own arguments (``ws``, ``dcdws``, ``mw``, ``vw``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from types import ModuleType
from typing import Any

from agrad.optim import adam, sgd
from agrad.optim.base import GradientTransformation, TreeNames, run_step
from agrad.optim.numerics import check_lr, check_nonnegative, check_unit_interval, is_scalar
from agrad.optim.torch_family import AdamState, SGDState
from agrad.pytree import check_same_structure

__all__ = ["adam_update", "gradient_descent_update"]

_SGD_NAMES = TreeNames(params="ws", grads="dcdws")
_ADAM_NAMES = TreeNames(
    params="ws", grads="dcdws", state_fields=((".exp_avg", "mw"), (".exp_avg_sq", "vw"))
)

# Optimizers by hyperparameters, per thread: the seed API is called every step with the
# same values, and an optimizer keeps its state-template cache between calls.
_local = threading.local()
_CACHE_SIZE = 16


def _optimizer(kind: str, lr: Any, *args: float) -> GradientTransformation:
    if not is_scalar(lr):  # an array learning rate (possibly traced): not cached
        return adam(lr, args[:2], args[2]) if kind == "adam" else sgd(lr)
    cache = getattr(_local, "optimizers", None)
    if cache is None:
        cache = _local.optimizers = OrderedDict()
    key = (kind, float(lr), *args)
    opt = cache.get(key)
    if opt is None:
        opt = adam(lr, args[:2], args[2]) if kind == "adam" else sgd(lr)
        cache[key] = opt
        if len(cache) > _CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return opt


def _check_step(fn: str, step: Any) -> int:
    """``step`` as a Python int: an integer (or integral 0-d array) that is at least 1."""
    msg = f"{fn}: step must be an integer (the 1-based step count), got {step!r}"
    if isinstance(step, (bool, float)):
        raise TypeError(msg)
    try:
        t = step.__index__()
    except (AttributeError, TypeError):
        raise TypeError(msg) from None
    if t < 1:
        raise ValueError(f"{fn}: step is the 1-based step count and must be >= 1, got {t}")
    return t


def gradient_descent_update(
    ws: Any,
    dcdws: Any,
    lr: float | Any,
    inplace: bool = True,
    *,
    xp: ModuleType | None = None,
) -> Any:
    """One step of gradient descent: ``w <- w - lr * dc/dw`` for every leaf (``agrad.optim.sgd``).

    Args:
        ws: parameters: an array, a variable, or a pytree of them (real or complex
            floating point; complex gradients follow torch's convention, so this is
            steepest descent on a real loss).
        dcdws: gradients with the structure, shapes and dtypes of ``ws``.
        lr: learning rate, a Python float or a 0-d array (differentiable when traced).
        inplace: write into ``ws`` where the library allows it (JAX arrays and arrays
            inside a gradient trace get new arrays); ``inplace=False`` touches nothing
            and, inside a trace, stays differentiable.

    Returns:
        The updated parameters, with the structure of ``ws``.
    """
    fn = "gradient_descent_update"
    check_lr(fn, lr)
    opt = _optimizer("sgd", lr)
    state = SGDState(count=0, momentum_buffer=None)
    new_ws, _ = run_step(opt, ws, dcdws, state, inplace=inplace, xp=xp, names=_SGD_NAMES, fn=fn)
    return new_ws


def adam_update(
    ws: Any,
    dcdws: Any,
    lr: float | Any,
    mw: Any,
    vw: Any,
    step: int,
    beta1: float = 0.9,
    beta2: float = 0.999,
    epsilon: float = 1e-7,
    inplace: bool = True,
    *,
    xp: ModuleType | None = None,
) -> tuple[Any, Any, Any]:
    """One Adam step (Kingma & Ba, 2015): ``agrad.optim.adam`` with the seed's signature.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t,\\quad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2

        w_t = w_{t-1} - \\frac{lr}{1-\\beta_1^t}\\,
              \\frac{m_t}{\\sqrt{v_t}/\\sqrt{1-\\beta_2^t} + \\epsilon}

    evaluated in torch's order. Results agree with ``torch.optim.Adam`` to rounding,
    not bit for bit (torch's CPU kernels fuse some multiply-adds): the tests require
    1e-12 relative over 100 float64 steps.

    Args:
        ws, dcdws, mw, vw: parameters, gradients, first and second moments: arrays or
            pytrees of one structure, shape and dtype.
        lr: learning rate (Python float or 0-d array).
        step: the 1-based step count ``t``.
        beta1, beta2: moment decay rates in ``[0, 1)``; epsilon: ``>= 0``.
        inplace: write ``ws``, ``mw`` and ``vw`` in place where possible.

    Returns:
        ``(ws_new, mw_new, vw_new)`` with the structure of ``ws``.

    Raises:
        ValueError: ``step < 1``, hyperparameters out of range, structure or shape
            mismatch, one array passed twice (``mw is vw``) with ``inplace=True``.
    """
    fn = "adam_update"
    t = _check_step(fn, step)
    check_unit_interval(fn, beta1=beta1, beta2=beta2)
    check_nonnegative(fn, epsilon=epsilon)
    check_lr(fn, lr)
    for name, tree in (("mw", mw), ("vw", vw)):
        check_same_structure(ws, tree, names=("ws", name))
    opt = _optimizer("adam", lr, float(beta1), float(beta2), float(epsilon))
    state = AdamState(count=t - 1, exp_avg=mw, exp_avg_sq=vw, max_exp_avg_sq=None)
    new_ws, new_state = run_step(
        opt, ws, dcdws, state, inplace=inplace, xp=xp, names=_ADAM_NAMES, fn=fn
    )
    return new_ws, new_state.exp_avg, new_state.exp_avg_sq
