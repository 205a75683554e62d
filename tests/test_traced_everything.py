"""Inside a trace every array a tracing namespace returns is traced (issue 13, item 1).

Constants made with ``xp.asarray`` and the creation functions, and the results of
non-differentiable functions, are traced arrays of the trace that carry no gradient, so
operators and ``array_namespace`` mix them with the differentiated arrays on every tape
backend, array-api-strict's refusing operators included. Gradients are checked against
torch.autograd on the same data.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
import torch

import agrad
import agrad.array_api_strict
import agrad.numpy
from agrad.autograd.tape.traced import TracedArray
from agrad.demo._model import cross_entropy, mlp_logits
from agrad.testing import to_numpy


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 3)), rng.standard_normal(3), rng.standard_normal(4) > 0


def _loss(xp, w, c, m):
    """``asarray`` constants, operators and non-differentiable results mixed freely."""
    cc = xp.asarray(c)
    mm = xp.asarray(m)
    y = cc @ w  # a constant on the left: array-api-strict's own operator would refuse w
    keep = (y > 0.0) & mm | ~(y > -1.0)
    ns = array_api_compat.array_namespace(y, keep, mm, xp.argmax(y), xp.floor(y))
    z = ns.where(keep, y * y, y) + xp.ones(y.shape, dtype=y.dtype, device=y.device)
    return ns.sum(z * xp.linspace(0.5, 1.5, 4, dtype=y.dtype, device=y.device))


def _torch_grad(c, w, m):
    tw = torch.tensor(w, requires_grad=True)
    y = torch.tensor(c) @ tw
    keep = (y > 0) & torch.tensor(m) | ~(y > -1)
    z = torch.where(keep, y * y, y) + 1.0
    loss = torch.sum(z * torch.linspace(0.5, 1.5, 4, dtype=torch.float64))
    (g,) = torch.autograd.grad(loss, tw)
    return g.numpy()


def test_constants_and_nondifferentiable_results_mix_with_operators(tape_xp):
    c, w, m = _data()
    xw = tape_xp.asarray(w)

    def f(w):
        return _loss(agrad.array_namespace(w), w, tape_xp.asarray(c), tape_xp.asarray(m))

    got = agrad.grad(f)(xw)
    np.testing.assert_allclose(to_numpy(got), _torch_grad(c, w, m), rtol=1e-12)


def test_every_returned_array_belongs_to_the_trace(tape_xp):
    c, w, m = _data()
    seen = []

    def f(w):
        xp = agrad.array_namespace(w)
        for r in (
            xp.asarray(tape_xp.asarray(c)),
            xp.zeros((2,), dtype=w.dtype),
            xp.eye(2, dtype=w.dtype),
            w > 0.0,
            ~(w > 0.0),
            xp.isnan(w),
            xp.argmax(w),
            xp.astype(w, xp.int32),
            xp.exp(xp.asarray(tape_xp.asarray(c))),  # a primitive of constants only
            xp.mean(xp.asarray(tape_xp.asarray(c))),  # a derived function of one
            xp.unique_values(xp.floor(w)),
        ):
            seen.append(isinstance(r, TracedArray) and r._trace is w._trace)
        return xp.sum(w)

    agrad.grad(f)(tape_xp.asarray(w))
    assert seen == [True] * len(seen)


def test_raw_captured_arrays_still_work_as_constants():
    c, w, _ = _data()
    raw = np.asarray(c)
    got = agrad.grad(lambda w: agrad.numpy.sum((raw @ w) * raw[:, 0]))(w)
    np.testing.assert_allclose(got, c.T @ c[:, 0], rtol=1e-12)


def test_constants_outside_a_trace_are_raw_arrays():
    from array_api_strict._array_object import Array

    assert type(agrad.array_api_strict.asarray([1.0])) is Array
    assert type(agrad.array_api_strict.zeros(2) > 0) is Array


def test_nested_traces_box_constants_on_the_innermost():
    def f(x):
        xp = agrad.array_namespace(x)

        def inner(y):
            c = xp.asarray(np.array([2.0]))
            return xp.sum(c * y * x)

        return xp.sum(agrad.grad(inner)(x) * x)

    # d/dx [ sum(2 x * x) ] = 4x for the inner gradient 2x taken at y = x
    np.testing.assert_allclose(agrad.grad(f)(np.array([1.0, -3.0])), [4.0, -12.0])


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
def test_the_demo_model_written_with_operators_trains(backend):
    xp = agrad.array_api_strict if backend == "array_api_strict" else agrad.numpy
    base = xp._base
    rng = np.random.default_rng(1)
    x = base.asarray(rng.standard_normal((16, 4)))
    labels = rng.integers(0, 3, 16)
    onehot = base.asarray(np.eye(3)[labels])
    params = {
        "w1": base.asarray(rng.standard_normal((4, 8)) * 0.5),
        "b1": base.asarray(np.zeros(8)),
        "w2": base.asarray(rng.standard_normal((8, 3)) * 0.5),
        "b2": base.asarray(np.zeros(3)),
    }

    def loss(p):
        return cross_entropy(mlp_logits(p, x), onehot)

    first = float(loss(params))
    for _ in range(30):
        grads = agrad.grad(loss)(params)
        params = {k: params[k] - 0.5 * grads[k] for k in params}
    assert float(loss(params)) < 0.5 * first


@pytest.mark.parametrize(
    ("call", "standard"),
    [
        (lambda x: x.sum(), "xp.sum"),
        (lambda x: x.mean(), "xp.mean"),
        (lambda x: x.max(), "xp.max"),
        (lambda x: x.reshape((3,)), "xp.reshape"),
        (lambda x: x.flatten(), "xp.reshape"),
        (lambda x: x.astype("float32"), "xp.astype"),
        (lambda x: x.tolist(), "agrad.stop_gradient"),
        (lambda x: x.cumsum(), "xp.cumulative_sum"),
    ],
)
def test_numpy_style_methods_name_the_standard_function(tape_xp, call, standard):
    def f(x):
        with pytest.raises(AttributeError, match=rf"no attribute .*call {standard}"):
            call(x)
        return agrad.array_namespace(x).sum(x)

    agrad.grad(f)(tape_xp.asarray(np.ones(3)))


def test_unknown_attributes_keep_the_plain_error_and_hasattr_works():
    def f(x):
        assert not hasattr(x, "sum") and not hasattr(x, "__array_interface__")
        with pytest.raises(AttributeError, match=r"^'TracedArray' object has no attribute 'foo'$"):
            x.foo  # noqa: B018
        return agrad.numpy.sum(x)

    agrad.grad(f)(np.ones(3))


@pytest.mark.parametrize("name", ["var", "std"])
def test_complex_var_and_std_match_torch(name):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal(5), rng.standard_normal(5)

    def f(a, b):
        xp = agrad.array_namespace(a)
        z = xp.astype(a, xp.complex128) + xp.astype(b, xp.complex128) * 1j
        return getattr(xp, name)(z * z, correction=1)

    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    z = torch.complex(ta, tb)
    want = getattr(torch, name)(z * z, correction=1)
    tg = torch.autograd.grad(want, (ta, tb))
    value, grads = agrad.execute_with_gradients(lambda xs: f(*xs), [a, b])
    np.testing.assert_allclose(value, want.item(), rtol=1e-12)
    for g, t in zip(grads, tg):
        np.testing.assert_allclose(g, t.numpy(), rtol=1e-10)


@pytest.mark.parametrize("order", [1, 3, 4, float("inf")])
def test_complex_vector_norm_second_derivative_matches_torch(order):
    rng = np.random.default_rng(3)
    a, b, v = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)

    def f(a):
        xp = agrad.array_namespace(a)
        z = xp.astype(a, xp.complex128) + xp.asarray(b * 1j)
        return xp.linalg.vector_norm(z * z, ord=order)

    got = agrad.grad(lambda a: agrad.numpy.sum(agrad.grad(f)(a) * v))(a)
    ta = torch.tensor(a, requires_grad=True)
    y = torch.linalg.vector_norm(torch.complex(ta, torch.tensor(b)) ** 2, ord=order)
    (g,) = torch.autograd.grad(y, ta, create_graph=True)
    (h,) = torch.autograd.grad(torch.sum(g * torch.tensor(v)), ta)
    np.testing.assert_allclose(got, h.numpy(), rtol=1e-9, atol=1e-12)


def test_creation_functions_differentiate_traced_scalars():
    """The issue's examples: 7.5 (not 0) for linspace, 3 for full."""
    xp = agrad.numpy
    lin = agrad.grad(lambda x: xp.sum(xp.linspace(x, 2 * x, 5)))(np.asarray(1.5))
    full = agrad.grad(lambda x: xp.sum(xp.full((3,), x)))(np.asarray(1.5))
    assert (float(lin), float(full)) == (7.5, 3.0)
    f32 = agrad.grad(lambda x: xp.sum(xp.linspace(x, 2.0, 3)))(np.asarray(1.5, np.float32))
    assert f32.dtype == np.float32


def test_a_keyword_argument_with_a_gradient_is_refused_by_name():
    xp = agrad.numpy
    with pytest.raises(TypeError, match=r"linalg\.vector_norm: the keyword argument ord="):
        agrad.grad(lambda x: xp.linalg.vector_norm(x, ord=x[0]))(np.array([3.0, 1.0]))


def test_numpy_conversion_of_a_traced_array_with_a_gradient_is_refused():
    """np.asarray would compute on the value and drop the gradient silently."""

    def f(x):
        xp = agrad.array_namespace(x)
        np.testing.assert_array_equal(np.asarray(xp.asarray(np.ones(2))), np.ones(2))
        with pytest.raises(TypeError, match="carries a gradient"):
            np.asarray(x * 2.0)
        return xp.sum(x)

    agrad.grad(f)(np.ones(2))
