"""The optimizers the kernel-generating executors (CuPy, Dask) are tested with, and the
reference they are compared with.

Every torch-family optimizer (several option sets), lion, lamb, lars and adafactor,
transforms composed by ``chain``, and two rules a user writes as in
docs/custom-optimizer.md (Signum, AdaBelief). A case is a name and a factory, so each
test gets a fresh optimizer (and a fresh program cache).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

import agrad
import agrad.optim as ao
from agrad.pytree import flatten_leaves, tree_map

#: Operations computed by a platform's math library; everything else is IEEE
#: correctly rounded, and a program without these agrees with NumPy bit for bit.
TRANSCENDENTAL = frozenset({"exp", "expm1", "log", "log1p", "pow", "tanh", "sin", "cos"})


class SignumState(NamedTuple):
    momentum: Any


class InputsAsState(NamedTuple):
    last: Any  # the gradient (the old value never read)
    before: Any  # the parameters' old values


def inputs_as_state() -> ao.GradientTransformation:
    """A user's rule whose new state values are its inputs, not computed: the gradient
    (``last``, whose old value it never reads) and the parameters it was given
    (``before``: their old values, where the same step writes their new ones)."""

    def init(params: Any) -> InputsAsState:
        zeros = lambda p: agrad.array_namespace(p).zeros_like(p)  # noqa: E731
        return InputsAsState(tree_map(zeros, params), tree_map(zeros, params))

    def update(grads: Any, state: InputsAsState, params: Any) -> tuple[Any, InputsAsState]:
        updates = tree_map(lambda g, b: -0.1 * g - 0.01 * b, grads, state.before)
        return updates, InputsAsState(grads, params)

    return ao.GradientTransformation("inputs-as-state", init, update, {})


def signum(lr: float = 1e-2, beta: float = 0.9) -> ao.GradientTransformation:
    """docs/custom-optimizer.md's Signum, as a user writes it."""

    def init(params):
        return SignumState(tree_map(lambda p: agrad.array_namespace(p).zeros_like(p), params))

    def update(grads, state, params=None):
        momentum = tree_map(lambda m, g: beta * m + (1.0 - beta) * g, state.momentum, grads)
        updates = tree_map(lambda m: -lr * agrad.array_namespace(m).sign(m), momentum)
        return updates, SignumState(momentum)

    return ao.GradientTransformation(
        "signum", init, update, {"lr": lr, "beta": beta}, needs_params=False
    )


class AdaBeliefState(NamedTuple):
    count: int
    mu: Any
    s: Any


def adabelief(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """AdaBelief (Zhuang et al. 2020) as a user writes it against the Array API."""

    def init(params):
        def zeros(p):
            return agrad.array_namespace(p).zeros_like(p)

        return AdaBeliefState(0, tree_map(zeros, params), tree_map(zeros, params))

    def update(grads, state, params=None):
        t = state.count + 1
        mu = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        s = tree_map(
            lambda v, g, m: b2 * v + (1 - b2) * (g - m) * (g - m) + eps, state.s, grads, mu
        )
        c1, c2 = 1 - b1**t, 1 - b2**t

        def step(m, v):
            xp = agrad.array_namespace(m)
            return -lr * (m / c1) / (xp.sqrt(v / c2) + eps)

        return tree_map(step, mu, s), AdaBeliefState(t, mu, s)

    return ao.GradientTransformation("adabelief", init, update, {"lr": lr}, needs_params=False)


CASES: dict[str, Any] = {
    "sgd": lambda: ao.sgd(lr=0.1),
    "sgd-nesterov-wd": lambda: ao.sgd(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: ao.adam(lr=1e-2),
    "adam-amsgrad-wd": lambda: ao.adam(lr=1e-2, amsgrad=True, weight_decay=0.1),
    "adamw": lambda: ao.adamw(lr=1e-2),
    "rmsprop-centered": lambda: ao.rmsprop(lr=1e-2, momentum=0.9, centered=True),
    "nadam": lambda: ao.nadam(lr=1e-2),
    "radam": lambda: ao.radam(lr=1e-2),
    "adagrad": lambda: ao.adagrad(lr=0.1),
    "adadelta": lambda: ao.adadelta(),
    "adamax": lambda: ao.adamax(lr=1e-2),
    "lion": lambda: ao.lion(1e-3),
    "lamb": lambda: ao.lamb(1e-3),
    "lars": lambda: ao.lars(1e-2),
    "adafactor": lambda: ao.adafactor(1e-2),
    "chain-clip-adam": lambda: ao.chain(
        ao.clip_by_global_norm(1.0), ao.scale_by_adam(), ao.scale_by_learning_rate(1e-2)
    ),
    "chain-decay-trust": lambda: ao.chain(
        ao.scale_by_adam(),
        ao.add_decayed_weights(0.01),
        ao.scale_by_trust_ratio(),
        ao.scale_values(-1e-2),
    ),
    "user-signum": signum,
    "user-adabelief": adabelief,
}


def leaves(shapes: list[tuple[int, ...]], dtype: Any, seed: int) -> tuple[list, list]:
    """Random parameters and three steps of gradients, NumPy, of ``shapes`` and ``dtype``."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(3)]
    return params, grads


def reference(factory: Any, params: list, grads: list) -> list[tuple[list, Any]]:
    """The reference both executors are compared with: generic steps on array-api-strict,
    one per gradient list in ``grads``; the parameters (NumPy) and state after each."""
    import array_api_strict as strict

    opt = factory()
    p = [strict.asarray(x) for x in params]
    s = opt.init(p)
    out = []
    for g in grads:
        p, s = opt.step(p, [strict.asarray(x) for x in g], s, inplace=False)
        out.append(([np.asarray(x) for x in p], s))
    return out


def state_arrays(state: Any) -> list:
    """The state's array leaves, as NumPy arrays, in flat order."""
    return [np.asarray(x) for x in flatten_leaves(state)[0] if hasattr(x, "shape")]


def state_numbers(state: Any) -> list:
    """The state's leaves that are Python numbers, in flat order."""
    return [x for x in flatten_leaves(state)[0] if not hasattr(x, "shape")]
