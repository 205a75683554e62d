"""Gradients on every backend against torch.autograd and finite differences."""

import numpy as np
import pytest

import agrad
from agrad.testing import assert_same_kind, to_numpy
from conftest import asarray
from references import fd_grads, torch_grads

# name -> (function of (xp, *arrays) returning an array, input shapes)
OPS = {
    "add_broadcast": (lambda xp, a, b: a + b, [(3, 4), (4,)]),
    "radd_scalar": (lambda xp, a: 2.0 + a, [(3,)]),
    "sub_broadcast": (lambda xp, a, b: a - b, [(3, 4), (3, 1)]),
    "rsub_scalar": (lambda xp, a: 1.0 - a, [(3,)]),
    "mul": (lambda xp, a, b: a * b, [(2, 3), (2, 3)]),
    "div": (lambda xp, a, b: a / (b * b + 1.0), [(2, 3), (3,)]),
    "rdiv_scalar": (lambda xp, a: 1.0 / (a * a + 1.0), [(3,)]),
    "pow_scalar": (lambda xp, a: a**3.0, [(4,)]),
    "pow_both": (lambda xp, a, b: (a * a + 1.0) ** b, [(4,), (4,)]),
    "rpow": (lambda xp, a: 2.0**a, [(4,)]),
    "neg": (lambda xp, a: -a, [(3,)]),
    "matmul": (lambda xp, a, b: a @ b, [(3, 4), (4, 5)]),
    "matmul_batched": (lambda xp, a, b: xp.matmul(a, b), [(2, 3, 4), (4, 5)]),
    "matmul_vec_mat": (lambda xp, a, b: xp.matmul(a, b), [(4,), (4, 5)]),
    "matmul_mat_vec": (lambda xp, a, b: xp.matmul(a, b), [(3, 4), (4,)]),
    "matmul_vec_vec": (lambda xp, a, b: xp.matmul(a, b), [(4,), (4,)]),
    "matmul_vec_batch": (lambda xp, a, b: xp.matmul(a, b), [(4,), (2, 4, 3)]),
    "tensordot_int": (lambda xp, a, b: xp.tensordot(a, b, axes=1), [(2, 3), (3, 4)]),
    "tensordot_pairs": (
        lambda xp, a, b: xp.tensordot(a, b, axes=([1, 0], [0, 2])),
        [(3, 2, 4), (2, 5, 3)],
    ),
    "exp": (lambda xp, a: xp.exp(a), [(3,)]),
    "log": (lambda xp, a: xp.log(a * a + 1.0), [(3,)]),
    "tanh": (lambda xp, a: xp.tanh(a), [(3,)]),
    "sqrt": (lambda xp, a: xp.sqrt(a * a + 1.0), [(3,)]),
    "sin": (lambda xp, a: xp.sin(a), [(3,)]),
    "cos": (lambda xp, a: xp.cos(a), [(3,)]),
    "abs": (lambda xp, a: xp.abs(a), [(5,)]),
    "maximum": (lambda xp, a, b: xp.maximum(a, b), [(3, 4), (4,)]),
    "where": (lambda xp, a, b: xp.where(a > 0, a, b * 2.0), [(3, 4), (3, 4)]),
    "sum_axis": (lambda xp, a: xp.sum(a, axis=1), [(3, 4)]),
    "sum_keepdims": (lambda xp, a: xp.sum(a, axis=(0, 2), keepdims=True), [(2, 3, 4)]),
    "mean": (lambda xp, a: xp.mean(a, axis=0), [(3, 4)]),
    "mean_all": (lambda xp, a: xp.mean(a), [(3, 4)]),
    "max_axis": (lambda xp, a: xp.max(a, axis=1), [(3, 4)]),
    "max_all": (lambda xp, a: xp.max(a), [(3, 4)]),
    "reshape": (lambda xp, a: xp.reshape(a, (4, 3)), [(3, 4)]),
    "permute_dims": (lambda xp, a: xp.permute_dims(a, (2, 0, 1)), [(2, 3, 4)]),
    "T": (lambda xp, a: a.T, [(2, 3)]),
    "mT": (lambda xp, a: a.mT, [(2, 3, 4)]),
    "expand_dims": (lambda xp, a: xp.expand_dims(a, axis=1), [(3, 4)]),
    "broadcast_to": (lambda xp, a: xp.broadcast_to(a, (2, 3, 4)), [(3, 1)]),
    "concat": (lambda xp, a, b: xp.concat([a, b], axis=1), [(2, 3), (2, 2)]),
    "stack": (lambda xp, a, b: xp.stack([a, b], axis=1), [(2, 3), (2, 3)]),
    "getitem_slices": (lambda xp, a: a[1:, ::2], [(3, 4)]),
    "getitem_int_newaxis": (lambda xp, a: a[..., None, 0], [(3, 4)]),
    "getitem_repeat": (lambda xp, a: a[0, :] * a[0, ...] + a[1:2, :], [(3, 4)]),
}


def _inputs(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


def _loss(fn):
    """A scalar that depends on every output element differently."""

    def loss(xp, *args):
        out = fn(xp, *args)
        return xp.sum(out * out) + xp.sum(xp.sin(out))

    return loss


@pytest.mark.parametrize("name", list(OPS))
def test_op_gradient_matches_torch(xp, name):
    fn, shapes = OPS[name]
    data = _inputs(shapes)
    loss = _loss(fn)
    ref_y, ref_grads = torch_grads(loss, *data)
    args = tuple(asarray(xp, d) for d in data)
    y, grads = agrad.execute_with_gradients(lambda a: loss(agrad.array_namespace(*a), *a), args)
    assert float(to_numpy(y)) == pytest.approx(ref_y, rel=1e-12)
    for g, ref, arg in zip(grads, ref_grads, args):
        assert_same_kind(g, arg)
        np.testing.assert_allclose(to_numpy(g), ref, rtol=1e-10, atol=1e-12)


def test_composite_matches_finite_differences(xp):
    def f(xp, a, b):
        h = xp.tanh(xp.matmul(a, b))
        return xp.mean(xp.exp(h) * xp.abs(b[0:1, :] + 0.3)) + xp.max(xp.sqrt(h * h + 1.0))

    import array_api_compat.numpy as cnp

    data = _inputs([(3, 4), (4, 2)], seed=3)
    fd = fd_grads(lambda a, b: f(cnp, a, b), *data)
    args = tuple(asarray(xp, d) for d in data)
    _, grads = agrad.execute_with_gradients(lambda a: f(agrad.array_namespace(*a), *a), args)
    for g, ref in zip(grads, fd):
        np.testing.assert_allclose(to_numpy(g), ref, rtol=1e-6, atol=1e-8)


def mlp_loss(params, x, t):
    xp = agrad.array_namespace(params["w1"], x)
    h = xp.tanh(xp.matmul(x, params["w1"]) + params["b1"])
    out = xp.matmul(h, params["w2"]) + params["b2"]
    return xp.mean((out - t) ** 2.0)


def _mlp_data(xp, dtype=None, device=None):
    rng = np.random.default_rng(7)
    data = {
        "w1": rng.standard_normal((5, 8)) * 0.5,
        "b1": rng.standard_normal(8) * 0.1,
        "w2": rng.standard_normal((8, 3)) * 0.5,
        "b2": np.zeros(3),
    }
    params = {k: asarray(xp, v, dtype, device) for k, v in data.items()}
    x = asarray(xp, rng.standard_normal((16, 5)), dtype, device)
    t = asarray(xp, rng.standard_normal((16, 3)), dtype, device)
    return data, params, x, t


def test_mlp_gradients_identical_across_backends(xp):
    import array_api_compat.numpy as cnp

    data, params, x, t = _mlp_data(xp)
    _, ref_params, ref_x, ref_t = _mlp_data(cnp)
    _, ref = agrad.execute_with_gradients(lambda p: mlp_loss(p, ref_x, ref_t), ref_params)
    y, grads = agrad.execute_with_gradients(lambda p: mlp_loss(p, x, t), params)
    assert set(grads) == set(params)
    for k in params:
        assert_same_kind(grads[k], params[k])
        np.testing.assert_allclose(to_numpy(grads[k]), ref[k], rtol=1e-10, atol=1e-10)

    # and against torch.autograd on the same function
    def torch_loss(txp, w1, b1, w2, b2, x_, t_):
        return mlp_loss({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, x_, t_)

    keys = ["w1", "b1", "w2", "b2"]
    _, tg = torch_grads(torch_loss, *[data[k] for k in keys], to_numpy(x), to_numpy(t))
    for k, g in zip(keys, tg[:4]):
        np.testing.assert_allclose(to_numpy(grads[k]), g, rtol=1e-10, atol=1e-12)


def test_float32_inputs_give_float32_gradients(xp):
    _, params, x, t = _mlp_data(xp, dtype=np.float32)
    y, grads = agrad.execute_with_gradients(lambda p: mlp_loss(p, x, t), params)
    assert y.dtype == xp.float32
    for k, g in grads.items():
        assert g.dtype == xp.float32, k


def test_strict_non_default_device_keeps_gradients_there():
    strict = pytest.importorskip("array_api_strict")
    dev = strict.Device("device1")
    _, params, x, t = _mlp_data(strict, device=dev)
    y, grads = agrad.execute_with_gradients(lambda p: mlp_loss(p, x, t), params)
    assert y.device == dev
    for g in grads.values():
        assert g.device == dev


def test_variables_and_plain_arrays_both_differentiated(xp):
    a = asarray(xp, [1.0, 2.0])
    v = agrad.variable(asarray(xp, [3.0, 4.0]))
    assert agrad.is_variable(v)
    y, (ga, gv) = agrad.execute_with_gradients(
        lambda xs: agrad.array_namespace(*xs).sum(xs[0] * xs[1]), (a, v)
    )
    np.testing.assert_allclose(to_numpy(ga), [3.0, 4.0])
    np.testing.assert_allclose(to_numpy(gv), [1.0, 2.0])


def test_extras_are_returned_plain(xp):
    x = asarray(xp, [1.0, 2.0, 3.0])

    def f(x):
        ns = agrad.array_namespace(x)
        h = x * 2.0
        return ns.sum(h), h, "label"

    y, g, h, label = agrad.execute_with_gradients(f, x)
    assert label == "label"
    np.testing.assert_allclose(to_numpy(h), [2.0, 4.0, 6.0])
    np.testing.assert_allclose(to_numpy(g), [2.0, 2.0, 2.0])
    assert not agrad.is_variable(h) or xp.__name__.startswith("jax")


def test_unused_input_gets_zero_gradient(xp):
    a, b = asarray(xp, [1.0, 2.0]), asarray(xp, [[3.0]])
    _, (ga, gb) = agrad.execute_with_gradients(
        lambda xs: agrad.array_namespace(xs[0]).sum(xs[0]), (a, b)
    )
    np.testing.assert_array_equal(to_numpy(gb), [[0.0]])
    assert gb.dtype == b.dtype


def test_stop_gradient(xp):
    x = asarray(xp, [1.0, 2.0])

    def f(x):
        ns = agrad.array_namespace(x)
        return ns.sum(x * agrad.stop_gradient(x))

    _, g = agrad.execute_with_gradients(f, x)
    np.testing.assert_allclose(to_numpy(g), [1.0, 2.0])


def test_value_and_grad_and_grad(xp):
    def f(w, x, scale):
        ns = agrad.array_namespace(w)
        return ns.sum(ns.tanh(w * x)) * scale

    w, x = asarray(xp, [0.5, -1.0]), asarray(xp, [2.0, 3.0])
    val, g = agrad.value_and_grad(f)(w, x, 2.0)
    expected = 2.0 * x_np() * (1 - np.tanh(w_np() * x_np()) ** 2)
    np.testing.assert_allclose(to_numpy(g), expected, rtol=1e-12)
    gw, gx = agrad.grad(f, argnums=(0, 1))(w, x, 2.0)
    np.testing.assert_allclose(to_numpy(gw), expected, rtol=1e-12)
    (g2, aux) = agrad.grad(lambda w: (f(w, x, 1.0), "aux"), has_aux=True)(w)
    assert aux == "aux"


def w_np():
    return np.array([0.5, -1.0])


def x_np():
    return np.array([2.0, 3.0])


def test_grad_of_grad(xp):
    x = asarray(xp, 0.7)

    def f(x):
        ns = agrad.array_namespace(x)
        return ns.sin(x) * x**3.0

    d1 = agrad.grad(f)
    d2 = agrad.grad(lambda x: d1(x))
    d3 = agrad.grad(lambda x: d2(x))
    v = 0.7
    np.testing.assert_allclose(
        float(to_numpy(d1(x))), np.cos(v) * v**3 + 3 * v**2 * np.sin(v), rtol=1e-12
    )
    second = -np.sin(v) * v**3 + 6 * v**2 * np.cos(v) + 6 * v * np.sin(v)
    np.testing.assert_allclose(float(to_numpy(d2(x))), second, rtol=1e-12)
    third = -np.cos(v) * v**3 - 9 * v**2 * np.sin(v) + 18 * v * np.cos(v) + 6 * np.sin(v)
    np.testing.assert_allclose(float(to_numpy(d3(x))), third, rtol=1e-10)


def test_one_step_maml_matches_analytic(xp):
    """Outer gradient through an inner gradient step: L(w - a * dl/dw) with l = L = sum(c * w^2)/2..."""
    c = np.array([1.0, 2.0, 0.5])
    d = np.array([0.3, -0.2, 1.0])
    alpha = 0.1
    w0 = np.array([1.0, -1.0, 2.0])
    cx, dx = asarray(xp, c), asarray(xp, d)

    def inner_loss(w):
        ns = agrad.array_namespace(w)
        return ns.sum(ns.multiply(cx, w * w)) * 0.5

    def outer_loss(w):
        ns = agrad.array_namespace(w)
        _, g = agrad.execute_with_gradients(inner_loss, w, retain_grads=True)
        w_adapted = agrad.gradient_descent_update(w, g, alpha, inplace=False)
        return ns.sum(ns.multiply(dx, w_adapted * w_adapted))

    y, g = agrad.execute_with_gradients(outer_loss, asarray(xp, w0))
    # w' = (1 - alpha c) w;  L = sum d w'^2;  dL/dw = 2 d (1 - alpha c)^2 w
    factor = 1 - alpha * c
    np.testing.assert_allclose(float(to_numpy(y)), np.sum(d * (factor * w0) ** 2), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(g), 2 * d * factor**2 * w0, rtol=1e-12)


def test_inner_retain_false_returns_plain_arrays_inside_outer_trace(tape_xp):
    from agrad.autograd.tape.traced import TracedArray

    def outer(w):
        _, g = agrad.execute_with_gradients(lambda v: agrad.array_namespace(v).sum(v * w), w)
        assert not isinstance(g, TracedArray)
        return agrad.array_namespace(w).sum(w * w)

    agrad.execute_with_gradients(outer, asarray(tape_xp, [1.0, 2.0]))
