"""agrad.testing.check_grads: passes on right derivatives, fails on wrong ones, any order."""

from __future__ import annotations

import numpy as np
import pytest

import agrad
import agrad.numpy as anp
from agrad.autograd.tape.traced import primitive, strip
from agrad.testing import check_grads


def _sin_with_first_order_only(ns):
    """sin whose VJP reads raw values: right gradients, but invisible to a second trace."""
    rule = (lambda ns_, g, ans, x: ns_.multiply(g, np.cos(strip(x))),)
    return primitive("sin_first_order_only", np.sin, rule, ns)


def f_smooth(a, b):
    xp = agrad.array_namespace(a, b)
    return xp.tanh(a @ b) * xp.sum(b * b), xp.exp(a[:, 0])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_passes_on_correct_derivatives(order):
    rng = np.random.default_rng(0)
    check_grads(f_smooth, rng.standard_normal((3, 2)), rng.standard_normal((2, 4)), order=order)


def test_float32_uses_a_wider_tolerance():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 2)).astype(np.float32)
    b = rng.standard_normal((2, 4)).astype(np.float32)
    check_grads(f_smooth, a, b, order=2)


def test_fails_on_a_wrong_gradient():
    x = np.linspace(-1.0, 1.0, 5)
    with pytest.raises(AssertionError, match="order 1"):
        check_grads(lambda x: x * agrad.stop_gradient(x), x, order=1)


def test_fails_on_a_wrong_second_derivative_only():
    sin = _sin_with_first_order_only(anp)
    x = np.linspace(-1.0, 1.0, 5)
    check_grads(lambda x: sin(x), x, order=1)
    with pytest.raises(AssertionError, match="order 2"):
        check_grads(lambda x: sin(x), x, order=2)


def test_argnums_and_non_float_arguments():
    idx = np.array([2, 0, 1])
    x = np.linspace(0.5, 1.5, 3)
    check_grads(lambda x, i: agrad.array_namespace(x).take(x * x, i), x, idx, order=2)
    with pytest.raises(ValueError, match="no floating-point"):
        check_grads(lambda i: i, idx)


@pytest.mark.parametrize("backend", ["array_api_strict", "torch", "jax"])
def test_other_namespaces(backend):
    from agrad.testing import load_backend

    xp, reason = load_backend(backend)
    if xp is None:
        pytest.skip(reason)
    x = xp.asarray(np.linspace(-1.0, 1.0, 4))

    def f(x):
        ns = agrad.array_namespace(x)
        return ns.sin(x) * ns.exp(x)

    check_grads(f, x, order=2)
