"""vjp, jvp, jacobian (rev/fwd), hessian, hvp, elementwise_grad on every backend.

References are torch.func (jacrev, jvp, vjp, hessian) on float64 tensors, to 1e-10;
the functions are written once against the Array API.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import agrad
from agrad.testing._compare import to_numpy
from agrad.testing.plugin import backend_fixture
from conftest import asarray
from references import fd_grads

torch = pytest.importorskip("torch")
tfunc = pytest.importorskip("torch.func")

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"  # inside torch.func.jvp
)

TOL = {"rtol": 1e-10, "atol": 1e-10}
W = np.random.default_rng(1).standard_normal((3, 4)) / 2


def close(got, want):
    np.testing.assert_allclose(to_numpy(got), np.asarray(want), **TOL)


def f_vec(x, w):
    """R^4 x R^(3x4) -> R^3: tanh(w x) * sin(x[:3]) + x[1:] ** 2."""
    xp = agrad.array_namespace(x, w)
    return xp.multiply(xp.tanh(xp.matmul(w, x)), xp.sin(x[:3])) + xp.multiply(x[1:], x[1:])


def f_scalar(x):
    xp = agrad.array_namespace(x)
    return xp.sum(xp.multiply(xp.sin(x), xp.multiply(x, x))) + xp.sum(xp.exp(x[:2] * 0.5))


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def ref(fn, *arrays):
    """``fn`` on torch tensors, with the namespace functions of array_api_compat.torch."""
    return fn(*[t(a) for a in arrays])


@pytest.fixture
def data(rng):
    return rng.standard_normal(4), rng.standard_normal(4)


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_jacobian_matches_torch_func(xp, data, mode):
    x0, _ = data
    got = agrad.jacobian(f_vec, mode=mode)(asarray(xp, x0), asarray(xp, W))
    want = tfunc.jacrev(f_vec)(t(x0), t(W)).numpy()
    assert got.shape == (3, 4)
    close(got, want)


def test_jacobian_argnums_tuple(xp, data):
    x0, _ = data
    jx, jw = agrad.jacobian(f_vec, argnums=(0, 1))(asarray(xp, x0), asarray(xp, W))
    wx, ww = tfunc.jacrev(f_vec, argnums=(0, 1))(t(x0), t(W))
    assert jw.shape == (3, 3, 4)
    close(jx, wx.numpy())
    close(jw, ww.numpy())


def test_jvp_and_vjp_match_torch_func(xp, data, rng):
    x0, v0 = data
    x, w, v = asarray(xp, x0), asarray(xp, W), asarray(xp, v0)
    out, tan = agrad.jvp(f_vec, (x, w), (v, asarray(xp, np.zeros_like(W))))
    ro, rt = tfunc.jvp(f_vec, (t(x0), t(W)), (t(v0), t(np.zeros_like(W))))
    close(out, ro.numpy())
    close(tan, rt.numpy())
    u0 = rng.standard_normal(3)
    out, pull = agrad.vjp(f_vec, x, w)
    gx, gw = pull(asarray(xp, u0))
    _, rpull = tfunc.vjp(f_vec, t(x0), t(W))
    rx, rw = rpull(t(u0))
    close(gx, rx.numpy())
    close(gw, rw.numpy())
    gx2, _ = pull(asarray(xp, 2 * u0))  # the pullback is reusable
    close(gx2, 2 * rx.numpy())


def test_hessian_hvp_elementwise_grad(xp, data):
    x0, v0 = data
    x, v = asarray(xp, x0), asarray(xp, v0)
    h_ref = tfunc.hessian(f_scalar)(t(x0)).numpy()
    close(agrad.hessian(f_scalar)(x), h_ref)
    (hv,) = agrad.hvp(f_scalar, (x,), (v,))
    close(hv, h_ref @ v0)

    def elementwise(x):
        xp_ = agrad.array_namespace(x)
        return xp_.multiply(xp_.sin(x), xp_.exp(x))

    close(agrad.elementwise_grad(elementwise)(x), np.exp(x0) * (np.sin(x0) + np.cos(x0)))


def test_forward_and_reverse_compose_in_any_order(xp, data):
    """jvp of grad, grad of jvp, and a third derivative, against torch.func."""
    x0, v0 = data
    x, v = asarray(xp, x0), asarray(xp, v0)
    h_ref = tfunc.hessian(f_scalar)(t(x0)).numpy()
    _, jg = agrad.jvp(agrad.grad(f_scalar), (x,), (v,))
    close(jg, h_ref @ v0)

    def directional(x):
        return agrad.jvp(f_scalar, (x,), (v,))[1]

    close(agrad.grad(directional)(x), h_ref @ v0)


# The tape (numpy, strict, cupy) and torch; Dask and JAX (30 s and 16 s here) run the
# second-order tests above.
third_xp = backend_fixture(["numpy", "array_api_strict", "torch", "cupy"], name="third_xp")


def test_third_derivative(third_xp, data):
    x0, v0 = data
    x = asarray(third_xp, x0)
    third = agrad.jacobian(agrad.hessian(f_scalar))(x)
    close(third, tfunc.jacfwd(tfunc.hessian(f_scalar))(t(x0)).numpy())


def test_pytree_inputs_and_outputs(xp, rng):
    p0 = {"w": rng.standard_normal((2, 3)), "b": rng.standard_normal(2)}
    x0 = rng.standard_normal(3)

    def model(p, x):
        xp_ = agrad.array_namespace(x, p["w"])
        y = xp_.tanh(xp_.matmul(p["w"], x) + p["b"])
        return {"y": y, "s": xp_.sum(xp_.multiply(y, y))}

    params = {k: asarray(xp, a) for k, a in p0.items()}
    jac = agrad.jacobian(model)(params, asarray(xp, x0))
    want = tfunc.jacrev(model)({k: t(a) for k, a in p0.items()}, t(x0))
    assert set(jac) == {"y", "s"} and set(jac["y"]) == {"w", "b"}
    assert jac["y"]["w"].shape == (2, 2, 3) and jac["s"]["b"].shape == (2,)
    for out in ("y", "s"):
        for k in ("w", "b"):
            close(jac[out][k], want[out][k].numpy())


def test_float32_stays_float32(xp, data):
    x0, v0 = data
    x = asarray(xp, x0, dtype=np.float32)
    w = asarray(xp, W, dtype=np.float32)
    assert agrad.jacobian(f_vec)(x, w).dtype == x.dtype
    assert agrad.jvp(f_scalar, (x,), (asarray(xp, v0, dtype=np.float32),))[1].dtype == x.dtype


def test_batched_jacobian_is_one_pass_and_the_fallback_loops(monkeypatch):
    import agrad.autograd.adapters.tape as tape_adapter

    calls = []
    real = tape_adapter.batched_backward

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tape_adapter, "batched_backward", spy)
    x0 = np.random.default_rng(2).standard_normal(4)
    x, w = np.asarray(x0), np.asarray(W)
    close(agrad.jacobian(f_vec)(x, w), tfunc.jacrev(f_vec)(t(x0), t(W)).numpy())
    assert calls  # the batched pass ran (and succeeded: the values above)

    def with_concat(x):  # concat has no batched rule: one backward pass per row
        xp_ = agrad.array_namespace(x)
        return xp_.concat([xp_.sin(x), xp_.sum(x * x, axis=0, keepdims=True)])

    got = agrad.jacobian(with_concat)(x)
    close(
        got, tfunc.jacrev(lambda x: torch.cat([torch.sin(x), (x * x).sum(0, keepdim=True)]))(t(x0))
    )


# -- random functions built from the namespace ------------------------------------------

UNARY = ["sin", "cos", "tanh", "exp_half", "square", "softplus", "scale"]
BINARY = ["add_x", "mul_x", "matmul", "sum_keep", "transpose", "row_sums"]


def build(ops):
    """A function R^4 -> R^4 from a sequence of op names; written once for every namespace."""

    def f(x):
        xp_ = agrad.array_namespace(x)
        h = x
        for op in ops:
            if op == "exp_half":
                h = xp_.exp(h * 0.5)
            elif op == "square":
                h = xp_.multiply(h, h)
            elif op == "softplus":
                h = xp_.log(1.0 + xp_.exp(h))
            elif op == "scale":
                h = h * 0.7 - 0.1
            elif op == "add_x":
                h = h + x
            elif op == "mul_x":
                h = xp_.multiply(h, xp_.sin(x))
            elif op == "matmul":
                m = xp_.asarray(np.eye(4)[::-1] * 0.5 + 0.25)
                h = xp_.matmul(m, h)
            elif op == "sum_keep":
                h = h - xp_.mean(h, axis=0, keepdims=True)
            elif op == "transpose":
                h = xp_.reshape(xp_.permute_dims(xp_.reshape(h, (2, 2)), (1, 0)), (4,))
            elif op == "row_sums":  # a reduction over one axis, broadcast back
                m = xp_.reshape(h, (2, 2))
                h = xp_.reshape(xp_.multiply(m, xp_.sum(m, axis=1, keepdims=True)), (4,))
            else:
                h = getattr(xp_, op)(h)
        return h

    return f


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ops=st.lists(st.sampled_from(UNARY + BINARY), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_random_functions_against_torch_func(xp, ops, seed):
    f = build(ops)
    rng = np.random.default_rng(seed)
    x0, v0 = rng.standard_normal(4), rng.standard_normal(4)
    x, v = asarray(xp, x0), asarray(xp, v0)
    j_ref = tfunc.jacrev(f)(t(x0)).numpy()
    close(agrad.jacobian(f)(x), j_ref)
    close(agrad.jacobian(f, mode="fwd")(x), j_ref)
    close(agrad.jvp(f, (x,), (v,))[1], j_ref @ v0)

    def scalar(x):
        return agrad.array_namespace(x).sum(f(x))

    h_ref = tfunc.hessian(scalar)(t(x0)).numpy()
    close(agrad.hvp(scalar, (x,), (v,))[0], h_ref @ v0)


# -- bad input ---------------------------------------------------------------------------


def test_bad_input_is_named(xp, data):
    x0, v0 = data
    x = asarray(xp, x0)
    with pytest.raises(ValueError, match=r"tangents\[0\] has shape \(3,\).*expected shape \(4,\)"):
        agrad.jvp(f_scalar, (x,), (asarray(xp, v0[:3]),))
    _, pull = agrad.vjp(f_vec, x, asarray(xp, W))
    with pytest.raises(ValueError, match=r"cotangent has shape \(4,\).*expected shape \(3,\)"):
        pull(asarray(xp, v0))
    with pytest.raises(IndexError, match="argnums=2"):
        agrad.jacobian(f_vec, argnums=2)(x, asarray(xp, W))
    with pytest.raises(ValueError, match="mode must be 'rev' or 'fwd'"):
        agrad.jacobian(f_vec, mode="sideways")
    with pytest.raises(TypeError, match=r"args\[0\] has dtype"):
        agrad.jacobian(f_scalar)(asarray(xp, [1, 2], dtype=np.int64))
    with pytest.raises(TypeError, match="output is float"):
        agrad.jacobian(lambda x: 1.0)(x)


def _fd_hessian(fn, x, h=1e-4):
    """Central second differences of a float64 NumPy scalar function."""
    n = x.size
    out = np.zeros((n, n))
    eye = np.eye(n) * h
    for i in range(n):
        for j in range(n):
            out[i, j] = (
                fn(x + eye[i] + eye[j])
                - fn(x + eye[i] - eye[j])
                - fn(x - eye[i] + eye[j])
                + fn(x - eye[i] - eye[j])
            ) / (4 * h * h)
    return out


def test_tape_against_finite_differences(tape_xp, data):
    """The tape's Jacobians (both modes) and Hessian against finite differences of NumPy code."""
    x0, _ = data
    x = asarray(tape_xp, x0)
    for mode in ("rev", "fwd"):
        jac = to_numpy(agrad.jacobian(f_vec, mode=mode)(x, asarray(tape_xp, W)))
        for i in range(3):
            (fd,) = fd_grads(lambda x, i=i: f_vec(x, W)[i], x0)
            np.testing.assert_allclose(jac[i], fd, rtol=1e-6, atol=1e-8)
    hess = to_numpy(agrad.hessian(f_scalar)(x))
    np.testing.assert_allclose(hess, _fd_hessian(lambda x: float(f_scalar(x)), x0), atol=1e-5)


def every_batched_rule(x):
    """R^6 -> R^(2x3): reshape, permute_dims, expand_dims, squeeze, broadcast_to, sum and
    mean over axes, matmul of 1-D, 2-D and stacked operands, elementwise with broadcasting."""
    xp_ = agrad.array_namespace(x)
    m = xp_.reshape(x, (2, 3))
    mt = xp_.permute_dims(m, (1, 0))  # (3, 2)
    s = xp_.sum(m, axis=1, keepdims=True)  # (2, 1)
    c = xp_.mean(m, axis=0)  # (3,)
    v = xp_.matmul(m, c)  # (2,) from 2-D @ 1-D
    w = xp_.matmul(c, mt)  # (2,) from 1-D @ 2-D
    stacked = xp_.matmul(xp_.expand_dims(m, axis=0), mt)  # (1, 2, 2)
    sq = xp_.squeeze(stacked, axis=0)  # (2, 2)
    b = xp_.broadcast_to(xp_.expand_dims(v * w, axis=1), (2, 3))
    return xp_.tanh(m * s) + b + xp_.matmul(sq, m) - xp_.sin(xp_.matrix_transpose(mt))


def test_every_batched_rule_in_one_pass(tape_xp, monkeypatch, rng):
    import agrad.autograd.adapters.tape as tape_adapter

    used = []
    real = tape_adapter.batched_backward

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)  # raises NotBatchable if any rule had no batched form
        used.append(1)
        return out

    monkeypatch.setattr(tape_adapter, "batched_backward", spy)
    x0 = rng.standard_normal(6)
    got = agrad.jacobian(every_batched_rule)(asarray(tape_xp, x0))
    assert used
    close(got, tfunc.jacrev(every_batched_rule)(t(x0)).numpy())
