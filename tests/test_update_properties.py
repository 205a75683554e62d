"""Property tests (hypothesis) for updates: in-place equals functional; containers don't matter.

For random parameter pytrees (1-4 leaves of assorted shapes) and random gradients over
1-3 steps, every optimizer of ``agrad.optim`` and both seed updates must satisfy:

1. ``inplace=True`` gives exactly the parameters and state of ``inplace=False``, and the
   in-place run really writes into the caller's arrays (where the library allows).
2. The result for each leaf does not depend on the container: a dict and a list of the
   same leaves, in any order, give the same per-leaf values. (Only transforms that
   combine leaves, such as a global norm, may differ by rounding from the summation
   order; they are compared to 1e-12.)

Runs on NumPy and torch, whose in-place paths differ (``x[...] = v`` vs ``copy_`` under
``no_grad``, plus each library's fast path in ``agrad.optim``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import agrad
import agrad.optim as optim
from agrad.pytree import flatten, tree_map
from agrad.testing import load_backend, to_numpy

OPTIMIZERS: dict[str, Callable[[], Any]] = {
    "sgd": lambda: optim.sgd(lr=0.1),
    "sgd-nesterov": lambda: optim.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: optim.adam(lr=0.01),
    "adam-amsgrad": lambda: optim.adam(lr=0.01, amsgrad=True, weight_decay=0.1),
    "adamw": lambda: optim.adamw(lr=0.01),
    "nadam": lambda: optim.nadam(lr=0.01),
    "radam": lambda: optim.radam(lr=0.01),
    "rmsprop-centered": lambda: optim.rmsprop(lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda: optim.adagrad(lr=0.1),
    "adadelta": lambda: optim.adadelta(),
    "adamax": lambda: optim.adamax(),
    "lamb": lambda: optim.lamb(lr=0.01),
    "lars": lambda: optim.lars(lr=0.1),
    "lion": lambda: optim.lion(lr=0.01),
    "adafactor": lambda: optim.adafactor(lr=0.01, min_dim_size_to_factor=2),
    "chain-clip-adam": lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adam(lr=0.01)),
    "apply-if-finite": lambda: optim.apply_if_finite(optim.adam(lr=0.01), 3),
    "multi-steps": lambda: optim.multi_steps(optim.adam(lr=0.01), 2),
}
#: transforms that combine leaves (sums over the whole tree): equal up to summation order
COMBINE_LEAVES = {"chain-clip-adam"}
BACKENDS = ["numpy", "torch"]
SHAPES = [(), (1,), (3,), (2, 3), (3, 2), (2, 2, 2)]

#: agrad.optim's fast paths (torch foreach kernels, chunked NumPy kernels), taken only by
#: in-place steps, round some operations differently from the generic functional path
#: (torch's ``p.add_(g, alpha=-lr)`` is one operation; the generic path rounds ``lr * g``
#: first), so the two may differ in the last bit: compared to 1e-13 there, exactly elsewhere.
FAST_PATH = {
    # every optimizer takes the recorded route in place; on torch its foreach program
    # fuses multiply-adds (addcmul, addcdiv, lerp), which round once: equal to rounding
    *(("torch", n) for n in OPTIMIZERS),
    # the seed updates are agrad.optim.sgd / adam, so they take the same fused kernels
    *(("torch", n) for n in ("gradient_descent_update", "adam_update")),
    *(("numpy", n) for n in ("sgd", "sgd-nesterov", "adam", "adam-amsgrad")),
}

PROPERTY_SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def problems(draw: st.DrawFn) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[int]]:
    """Parameters, gradients for each step, and a permutation of the leaves."""
    shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4))
    values = st.floats(-4.0, 4.0, allow_nan=False, width=64)
    params = [draw(arrays(np.float64, s, elements=values)) for s in shapes]
    n_steps = draw(st.integers(1, 3))
    grads = [[draw(arrays(np.float64, s, elements=values)) for s in shapes] for _ in range(n_steps)]
    order = draw(st.permutations(range(len(shapes))))
    return params, grads, list(order)


def _xp(backend: str) -> Any:
    xp, reason = load_backend(backend)
    if xp is None:
        pytest.skip(reason)
    return xp


def _arr(xp: Any, a: np.ndarray) -> Any:
    return xp.asarray(np.array(a, dtype=np.float64, copy=True))


def _numpy_tree(tree: Any) -> list[np.ndarray]:
    return [to_numpy(x).copy() for x in flatten(tree)[0] if hasattr(x, "shape")]


def _run_optimizer(name, xp, params, grads, inplace):
    opt = OPTIMIZERS[name]()
    state = opt.init(params)
    for g in grads:
        params, state = opt.step(params, g, state, inplace=inplace)
    return params, state


def _run_seed(name, xp, params, grads, inplace):
    if name == "gradient_descent_update":
        for g in grads:
            params = agrad.gradient_descent_update(params, g, 0.1, inplace=inplace)
        return params, None
    m, v = tree_map(xp.zeros_like, params), tree_map(xp.zeros_like, params)
    for t, g in enumerate(grads, start=1):
        params, m, v = agrad.adam_update(params, g, 0.01, m, v, t, inplace=inplace)
    return params, (m, v)


def _runner(name: str) -> Callable[..., Any]:
    return _run_optimizer if name in OPTIMIZERS else _run_seed


ALL = [*OPTIMIZERS, "gradient_descent_update", "adam_update"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(problem=problems())
def test_inplace_equals_functional(name: str, backend: str, problem) -> None:
    xp = _xp(backend)
    params, grads, _ = problem
    run = _runner(name)
    functional_in = [_arr(xp, p) for p in params]
    p_f, s_f = run(name, xp, functional_in, [[_arr(xp, g) for g in gs] for gs in grads], False)
    inplace_in = [_arr(xp, p) for p in params]
    p_i, s_i = run(name, xp, inplace_in, [[_arr(xp, g) for g in gs] for gs in grads], True)
    for a, b in zip(_numpy_tree((p_i, s_i)), _numpy_tree((p_f, s_f))):
        if (backend, name) in FAST_PATH:
            # fused multiply-adds round ``g + wd * p`` once; where that sum cancels (g=0.3,
            # p=-3, wd=0.1), Adam's normalisation m/sqrt(v) magnifies the last bit to ~1e-11
            atol = 1e-10 if backend == "torch" else 1e-15
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=atol)
        else:
            np.testing.assert_array_equal(a, b)
    for original, returned in zip(inplace_in, flatten(p_i)[0]):
        assert returned is original  # written into the caller's arrays
    for original, p in zip(functional_in, params):
        np.testing.assert_array_equal(to_numpy(original), p)  # inplace=False touched nothing


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ALL)
@PROPERTY_SETTINGS
@given(problem=problems())
def test_result_does_not_depend_on_container_or_leaf_order(name: str, backend: str, problem):
    xp = _xp(backend)
    params, grads, order = problem
    run = _runner(name)
    keys = [f"leaf{i}" for i in range(len(params))]
    as_list, _ = run(
        name, xp, [_arr(xp, p) for p in params], [[_arr(xp, g) for g in gs] for gs in grads], False
    )
    as_dict, _ = run(
        name,
        xp,
        {keys[i]: _arr(xp, params[i]) for i in order},
        [{keys[i]: _arr(xp, gs[i]) for i in order} for gs in grads],
        False,
    )
    reordered, _ = run(
        name,
        xp,
        [_arr(xp, params[i]) for i in order],
        [[_arr(xp, gs[i]) for i in order] for gs in grads],
        False,
    )
    assert list(as_dict) == [keys[i] for i in order]
    for i in range(len(params)):
        expected = to_numpy(as_list[i])
        for got in (as_dict[keys[i]], reordered[order.index(i)]):
            if name in COMBINE_LEAVES:
                np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12, atol=1e-15)
            else:
                np.testing.assert_array_equal(to_numpy(got), expected)
