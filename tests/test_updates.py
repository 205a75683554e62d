"""The seed's updates on every backend: against torch.optim, in-place semantics, dtype/device;
0-d NumPy parameters stay arrays (seed updates and ``agrad.optim`` alike)."""

import numpy as np
import pytest

import agrad
import agrad.optim as optim
from agrad.pytree import flatten
from agrad.testing import assert_same_kind, to_numpy
from conftest import asarray


def _quadratic_problem(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((4, 3)),
        "b": rng.standard_normal(3),
        "a": rng.standard_normal((4, 3)) * 2.0,
    }


def _loss(w, b, a):
    xp = agrad.array_namespace(w, b)
    return xp.sum(xp.tanh(w * a) ** 2.0) + xp.sum((b - 0.5) ** 4.0) + xp.sum(xp.matmul(w, b))


def test_adam_update_equals_torch_adam(xp):
    import torch

    data = _quadratic_problem()
    lr, betas, eps = 0.01, (0.8, 0.95), 1e-7
    tw = torch.tensor(data["w"], requires_grad=True)
    tb = torch.tensor(data["b"], requires_grad=True)
    ta = torch.tensor(data["a"])
    opt = torch.optim.Adam([tw, tb], lr=lr, betas=betas, eps=eps)

    params = {
        "w": agrad.variable(asarray(xp, data["w"])),
        "b": agrad.variable(asarray(xp, data["b"])),
    }
    a = asarray(xp, data["a"])
    m = {k: xp.zeros_like(asarray(xp, data[k])) for k in params}
    v = {k: xp.zeros_like(asarray(xp, data[k])) for k in params}
    for step in range(1, 101):
        opt.zero_grad()
        _loss(tw, tb, ta).backward()
        opt.step()
        _, g = agrad.execute_with_gradients(lambda p: _loss(p["w"], p["b"], a), params)
        params, m, v = agrad.adam_update(params, g, lr, m, v, step, betas[0], betas[1], eps)
        if agrad.namespace.library_name(xp) == "dask":  # keep dask's lazy graphs short
            for k in params:
                params[k].value, m[k], v[k] = (
                    params[k].value.persist(),
                    m[k].persist(),
                    v[k].persist(),
                )
    for k, ref in (("w", tw), ("b", tb)):
        got = to_numpy(params[k])
        np.testing.assert_allclose(got, ref.detach().numpy(), rtol=1e-12, atol=0)
        np.testing.assert_allclose(
            to_numpy(m[k]), opt.state[ref]["exp_avg"].numpy(), rtol=1e-12, atol=1e-300
        )
        np.testing.assert_allclose(
            to_numpy(v[k]), opt.state[ref]["exp_avg_sq"].numpy(), rtol=1e-12, atol=1e-300
        )


def test_gradient_descent_update_values(xp):
    w = asarray(xp, [1.0, 2.0, 3.0])
    g = asarray(xp, [0.5, -1.0, 2.0])
    out = agrad.gradient_descent_update(w, g, 0.1, inplace=False)
    np.testing.assert_allclose(to_numpy(out), [0.95, 2.1, 2.8], rtol=1e-15)
    np.testing.assert_array_equal(to_numpy(w), [1.0, 2.0, 3.0])  # inplace=False touched nothing


def test_inplace_keeps_identity_where_writable(xp):
    name = agrad.namespace.library_name(xp)
    w_raw = asarray(xp, [1.0, 2.0])
    w = agrad.variable(w_raw)
    g = asarray(xp, [1.0, 1.0])
    out = agrad.gradient_descent_update(w, g, 0.5)
    np.testing.assert_allclose(to_numpy(out), [0.5, 1.5])
    if name == "jax":
        assert out is not w  # immutable: a new array
        np.testing.assert_allclose(to_numpy(w), [1.0, 2.0])
    else:
        assert out is w
        np.testing.assert_allclose(to_numpy(w), [0.5, 1.5])
    if name == "torch":
        assert out.requires_grad and out.is_leaf
    # raw (non-variable) arrays are written in place too, except on JAX
    raw = asarray(xp, [1.0, 2.0])
    out = agrad.gradient_descent_update({"p": raw}, {"p": g}, 0.5)
    if name == "jax":
        assert out["p"] is not raw
    else:
        assert out["p"] is raw
        np.testing.assert_allclose(to_numpy(raw), [0.5, 1.5])


def test_adam_inplace_updates_state_and_returns_it(xp):
    name = agrad.namespace.library_name(xp)
    w = agrad.variable(asarray(xp, [1.0, -2.0]))
    m, v = asarray(xp, [0.0, 0.0]), asarray(xp, [0.0, 0.0])
    g = asarray(xp, [0.5, 0.5])
    w2, m2, v2 = agrad.adam_update(w, g, 0.1, m, v, 1)
    if name != "jax":
        assert w2 is w and m2 is m and v2 is v
    np.testing.assert_allclose(to_numpy(m2), [0.05, 0.05], rtol=1e-14)
    np.testing.assert_allclose(to_numpy(v2), [0.00025, 0.00025], rtol=1e-12)


def test_pytrees_nested(xp):
    ws = {
        "layer": [asarray(xp, [1.0]), (asarray(xp, [2.0]), asarray(xp, [[3.0]]))],
        "bias": asarray(xp, 4.0),
    }
    gs = {
        "bias": asarray(xp, 1.0),
        "layer": [asarray(xp, [1.0]), (asarray(xp, [1.0]), asarray(xp, [[1.0]]))],
    }
    out = agrad.gradient_descent_update(ws, gs, 1.0, inplace=False)
    assert isinstance(out["layer"], list) and isinstance(out["layer"][1], tuple)
    np.testing.assert_allclose(to_numpy(out["layer"][1][1]), [[2.0]])
    np.testing.assert_allclose(to_numpy(out["bias"]), 3.0)


def test_float32_stays_float32(xp):
    w = agrad.variable(asarray(xp, [1.0, 2.0], dtype=np.float32))
    _, g = agrad.execute_with_gradients(lambda w: agrad.array_namespace(w).sum(w * w), w)
    m, v = xp.zeros_like(g), xp.zeros_like(g)
    w2, m2, v2 = agrad.adam_update(w, g, 0.1, m, v, 3)
    for arr in (g, w2, m2, v2):
        assert arr.dtype == xp.float32
    w3 = agrad.gradient_descent_update(w2, g, 0.1)
    assert w3.dtype == xp.float32


def test_strict_device_keeps_state_on_device():
    strict = pytest.importorskip("array_api_strict")
    dev = strict.Device("device1")
    w = agrad.variable(strict.asarray([1.0, 2.0], device=dev))
    _, g = agrad.execute_with_gradients(
        lambda w: strict.sum(w * w) if False else agrad.array_namespace(w).sum(w * w), w
    )
    m, v = strict.zeros_like(g), strict.zeros_like(g)
    w2, m2, v2 = agrad.adam_update(w, g, 0.1, m, v, 1)
    for arr in (g, w2, m2, v2):
        assert arr.device == dev
    assert_same_kind(w2.value, strict.asarray([0.0, 0.0], device=dev))


def test_learning_rate_array_is_differentiable_inside_a_trace(tape_xp):
    """d/d(lr) of L(w - lr g) = -g . L'(w - lr g): checked against the analytic value."""
    w = asarray(tape_xp, [1.0, -2.0, 0.5])
    g = asarray(tape_xp, [0.3, 0.1, -0.4])

    def f(lr):
        w2 = agrad.gradient_descent_update(w, g, lr, inplace=False)
        return agrad.array_namespace(lr).sum(w2 * w2)

    lr = asarray(tape_xp, 0.1)
    _, dlr = agrad.execute_with_gradients(f, lr)
    w_np, g_np = np.array([1.0, -2.0, 0.5]), np.array([0.3, 0.1, -0.4])
    expected = np.sum(-2 * g_np * (w_np - 0.1 * g_np))
    np.testing.assert_allclose(float(to_numpy(dlr)), expected, rtol=1e-12)


def _zero_d_cases() -> list:
    return [
        pytest.param("gradient_descent", id="gradient_descent_update"),
        pytest.param("adam_update", id="adam_update"),
        pytest.param("adam", id="optim.adam"),
        pytest.param("sgd", id="optim.sgd"),
    ]


@pytest.mark.parametrize("kind", _zero_d_cases())
def test_zero_d_numpy_parameters_stay_arrays(kind: str) -> None:
    """NumPy gives scalars (``np.float64``) for 0-d operands; updates must hand back arrays,
    or the next in-place step has nothing to write into."""
    params = {"bias": np.array(0.5), "w": np.ones(2)}
    grads = {"bias": np.array(0.25), "w": np.ones(2)}
    if kind == "adam_update":
        m, v = (
            {k: np.zeros_like(p) for k, p in params.items()},
            {k: np.zeros_like(p) for k, p in params.items()},
        )
        out = agrad.adam_update(params, grads, 0.1, m, v, 1, inplace=False)
    elif kind == "gradient_descent":
        out = agrad.gradient_descent_update(params, grads, 0.1, inplace=False)
    else:
        opt = optim.adam(lr=0.1) if kind == "adam" else optim.sgd(lr=0.1, momentum=0.9)
        out = opt.step(params, grads, opt.init(params), inplace=False)
    for leaf in flatten(out)[0]:
        if hasattr(leaf, "dtype"):
            assert type(leaf) is np.ndarray, f"got {type(leaf).__name__}"
