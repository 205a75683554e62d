"""custom_vjp and checkpoint on every backend, against torch.func and finite differences."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import agrad
from agrad.testing._compare import to_numpy
from agrad.testing.plugin import backend_fixture
from conftest import asarray
from references import fd_grads

torch = pytest.importorskip("torch")
tfunc = pytest.importorskip("torch.func")

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"  # inside torch.func
)

TOL = {"rtol": 1e-10, "atol": 1e-10}


def close(got, want):
    np.testing.assert_allclose(to_numpy(got), np.asarray(want), **TOL)


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


# sin(x) * y with its VJP written once against the Array API.
@agrad.custom_vjp
def sin_times(x, y):
    xp = agrad.array_namespace(x, y)
    return xp.multiply(xp.sin(x), y)


@sin_times.defvjp
def _sin_times_vjp(g, ans, x, y):
    xp = agrad.array_namespace(g, x, y)
    return xp.multiply(g, xp.multiply(xp.cos(x), y)), xp.multiply(g, xp.sin(x))


def loss(x, y):
    xp = agrad.array_namespace(x, y)
    return xp.sum(xp.exp(sin_times(x, y)))


def torch_loss(x, y):
    return torch.exp(torch.sin(x) * y).sum()


def test_custom_vjp_defined_once_matches_torch_to_second_order(xp, rng):
    x0, y0 = rng.standard_normal(5), rng.standard_normal(5)
    x, y = asarray(xp, x0), asarray(xp, y0)
    gx, gy = agrad.grad(loss, argnums=(0, 1))(x, y)
    rx, ry = tfunc.grad(torch_loss, argnums=(0, 1))(t(x0), t(y0))
    close(gx, rx.numpy())
    close(gy, ry.numpy())
    h = agrad.hessian(lambda x: loss(x, y))(x)  # differentiates the user's VJP
    close(h, tfunc.hessian(lambda x: torch_loss(x, t(y0)))(t(x0)).numpy())


def test_forward_mode_goes_through_a_custom_vjp(xp, rng):
    """jvp transposes the custom VJP (JAX's own forward mode stops at custom_vjp)."""
    x0, v0 = rng.standard_normal(5), rng.standard_normal(5)
    x, v = asarray(xp, x0), asarray(xp, v0)
    _, got = agrad.jvp(lambda x: sin_times(x, x), (x,), (v,))
    _, want = tfunc.jvp(lambda x: torch.sin(x) * x, (t(x0),), (t(v0),))
    close(got, want.numpy())
    jac = agrad.jacobian(lambda x: sin_times(x, x), mode="fwd")(x)
    close(jac, np.diag(np.cos(x0) * x0 + np.sin(x0)))


@agrad.custom_vjp
def straight_through_round(x):
    xp = agrad.array_namespace(x)
    return xp.round(x)


straight_through_round.defvjp(lambda g, ans, x: (g,))


def test_custom_vjp_is_the_gradient_used(xp):
    """round has a zero derivative; the straight-through VJP says one, and it wins."""
    x = asarray(xp, [0.2, 1.7, -2.4])

    def f(x):
        xp_ = agrad.array_namespace(x)
        return xp_.sum(xp_.multiply(straight_through_round(x), x))

    close(agrad.grad(f)(x), np.round([0.2, 1.7, -2.4]) + np.array([0.2, 1.7, -2.4]))


@agrad.custom_vjp
def square_once(x):
    return x * x


square_once.defvjp(lambda g, ans, x: (2.0 * g * x,), once_differentiable=True)

once_xp = backend_fixture(["numpy", "array_api_strict", "torch", "jax", "cupy"], name="once_xp")


def test_once_differentiable_refuses_second_order(once_xp):
    x = asarray(once_xp, [0.5, -1.0])

    def f(x):
        return agrad.array_namespace(x).sum(square_once(x))

    close(agrad.grad(f)(x), [1.0, -2.0])
    with pytest.raises(RuntimeError, match="square_once: its VJP was declared once-differentiable"):
        agrad.hessian(f)(x)


def test_a_scipy_routine_becomes_differentiable(rng):
    """No Array API code at all in the forward or the VJP: NumPy and SciPy on raw arrays."""
    sl = pytest.importorskip("scipy.linalg")

    @agrad.custom_vjp
    def solve(a, b):
        return sl.solve(a, b)

    @solve.defvjp
    def _(g, x, a, b):
        gb = sl.solve(a.T, g)
        return -np.outer(gb, x), gb

    a0 = rng.standard_normal((4, 4)) + 4 * np.eye(4)
    b0 = rng.standard_normal(4)

    def f(a, b):
        return agrad.array_namespace(a).sum(solve(a, b) ** 2)

    ga, gb = agrad.grad(f, argnums=(0, 1))(a0, b0)
    ra, rb = tfunc.grad(lambda a, b: (torch.linalg.solve(a, b) ** 2).sum(), argnums=(0, 1))(
        t(a0), t(b0)
    )
    close(ga, ra.numpy())
    close(gb, rb.numpy())
    fa, fb = fd_grads(lambda a, b: np.sum(np.linalg.solve(a, b) ** 2), a0, b0)
    np.testing.assert_allclose(ga, fa, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gb, fb, rtol=1e-6, atol=1e-7)


def test_bad_vjp_is_named():
    @agrad.custom_vjp
    def two(x, y):
        return x * y

    two.defvjp(lambda g, ans, x, y: (g,))
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"two: its VJP returned 1 cotangent.*2 positional"):
        agrad.grad(lambda x: agrad.array_namespace(x).sum(two(x, x)))(x)
    two.defvjp(lambda g, ans, x, y: (g[:2], None))
    with pytest.raises(ValueError, match=r"cotangent of argument 0 has shape \(2,\).*\(3,\)"):
        agrad.grad(lambda x: agrad.array_namespace(x).sum(two(x, x)))(x)
    with pytest.raises(TypeError, match="no VJP was given"):
        agrad.custom_vjp(lambda x: x)(x)


# -- checkpoint ----------------------------------------------------------------------


def dense(h, w, b, *, scale=1.0):
    xp = agrad.array_namespace(h, w, b)
    return xp.tanh(xp.matmul(h, w) * scale + b)


def mlp(params, x, layer):
    xp = agrad.array_namespace(x, params[0][0])
    h = x
    for w, b in params:
        h = layer(h, w, b, scale=0.9)
    return xp.mean(xp.multiply(h, h))


def _mlp_problem(rng, depth, batch, width):
    params = [
        (rng.standard_normal((width, width)) / np.sqrt(width), rng.standard_normal(width) * 0.1)
        for _ in range(depth)
    ]
    return params, rng.standard_normal((batch, width))


def test_checkpoint_same_gradients_and_hessian(xp, rng):
    p0, x0 = _mlp_problem(rng, 3, 2, 3)
    params = [(asarray(xp, w), asarray(xp, b)) for w, b in p0]
    x = asarray(xp, x0)
    ck = agrad.checkpoint(dense)
    got = agrad.grad(mlp)(params, x, ck)
    want = tfunc.grad(mlp)([(t(w), t(b)) for w, b in p0], t(x0), dense)
    for (gw, gb), (rw, rb) in zip(got, want):
        close(gw, rw.numpy())
        close(gb, rb.numpy())
    h = agrad.hessian(lambda x: mlp(params, x, ck))(x)
    ref = tfunc.hessian(lambda x: mlp([(t(w), t(b)) for w, b in p0], x, dense))(t(x0))
    close(h, ref.numpy())


def test_checkpoint_keeps_only_the_inputs_on_the_tape(rng):
    """The tape holds one array per checkpointed layer instead of three (tracemalloc)."""
    params, x = _mlp_problem(rng, 16, 128, 32)
    ck = agrad.checkpoint(dense)
    g = agrad.grad(mlp)

    def peak(layer):
        g(params, x, layer)  # warm
        tracemalloc.start()
        try:
            g(params, x, layer)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(ck) < 0.6 * peak(dense)
