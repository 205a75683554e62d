"""The tracing namespaces as Array API namespaces: every name, faithful pass-through,
array attributes and methods, functional ``__setitem__`` and in-place operators,
untraced results for non-differentiable functions, ``NotImplementedError`` otherwise.

The official array-api-tests suite is not on PyPI; these are agrad's own conformance
checks against the 2024.12 name lists in :mod:`agrad.autograd.tape.standard`.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import agrad
from agrad.autograd.tape import standard
from agrad.autograd.tape.traced import CONSTANT, TracedArray
from agrad.testing import to_numpy
from references import torch_grads

TRACING = ["numpy", "array_api_strict", "dask"]
BASES = {
    "numpy": "array_api_compat.numpy",
    "array_api_strict": "array_api_strict",
    "dask": "array_api_compat.dask.array",
}


@pytest.fixture(params=[*TRACING, "array_api_strict-2023.12"])
def pair(request):
    """``(tracing namespace, base namespace)``; array-api-strict also at api_version 2023.12."""
    name, _, version = request.param.partition("-")
    base = pytest.importorskip(BASES[name])
    ns = importlib.import_module(f"agrad.{name}")
    if name != "array_api_strict":
        yield ns, base
        return
    saved = base.get_array_api_strict_flags()
    base.set_array_api_strict_flags(api_version=version or "2024.12")
    try:
        yield ns, base
    finally:
        base.set_array_api_strict_flags(**saved)


def test_every_standard_name_is_present(pair):
    ns, _ = pair
    missing = [
        n for n in standard.FUNCTIONS + standard.CONSTANTS + standard.DTYPES if not hasattr(ns, n)
    ]
    missing += [f"linalg.{n}" for n in standard.LINALG_FUNCTIONS if not hasattr(ns.linalg, n)]
    missing += [f"fft.{n}" for n in standard.FFT_FUNCTIONS if not hasattr(ns.fft, n)]
    assert not missing
    info = ns.__array_namespace_info__()
    assert info.default_dtypes()["real floating"] is not None
    assert ns.__array_api_version__


def test_traced_array_has_every_attribute_and_method(pair):
    """Each namespace's traced arrays (operators are bound to that namespace's functions)."""
    ns, _ = pair
    cls = ns._Traced
    assert issubclass(cls, TracedArray)
    names = standard.ARRAY_ATTRIBUTES + standard.ARRAY_METHODS
    operators = ["add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul"]
    operators += ["and", "or", "xor", "lshift", "rshift"]
    names += tuple(f"__{p}{op}__" for op in operators for p in ("r", "i"))
    assert [n for n in names if not hasattr(cls, n)] == []


def _same(actual, expected):
    if isinstance(expected, (tuple, list)):
        assert type(actual) is type(expected)
        for a, e in zip(actual, expected):
            _same(a, e)
        return
    assert type(actual) is type(expected)
    if hasattr(expected, "dtype"):
        assert actual.dtype == expected.dtype
        np.testing.assert_array_equal(to_numpy(actual), to_numpy(expected))
    else:
        assert actual == expected


PASS_THROUGH = [
    ("sum", lambda xp, a: ((a,), {"axis": 0})),
    ("var", lambda xp, a: ((a,), {"axis": 1, "correction": 1})),
    ("std", lambda xp, a: ((a,), {})),
    ("sort", lambda xp, a: ((a,), {"axis": 0, "descending": True})),
    ("argsort", lambda xp, a: ((a,), {})),
    ("tile", lambda xp, a: ((a, (2, 1)), {})),
    ("repeat", lambda xp, a: ((a, 2), {"axis": 1})),
    ("unstack", lambda xp, a: ((a,), {"axis": 1})),
    ("broadcast_arrays", lambda xp, a: ((a, a[0:1, :]), {})),
    ("meshgrid", lambda xp, a: ((a[0, :], a[:, 0]), {})),
    ("clip", lambda xp, a: ((a,), {"min": -0.5, "max": 0.5})),
    ("astype", lambda xp, a: ((a, xp.float32), {})),
    ("matmul", lambda xp, a: ((a, xp.matrix_transpose(a)), {})),
    ("concat", lambda xp, a: (([a, a],), {"axis": 1})),
    ("stack", lambda xp, a: (([a, a],), {})),
    ("where", lambda xp, a: ((a > 0, a, -a), {})),
    ("argmax", lambda xp, a: ((a,), {"axis": 1})),
    ("unique_all", lambda xp, a: ((a,), {})),
    ("max", lambda xp, a: ((a,), {"axis": 0})),
    ("cumulative_sum", lambda xp, a: ((a,), {"axis": 1})),
    ("expand_dims", lambda xp, a: ((a,), {"axis": 0})),
    ("take", lambda xp, a: ((a, xp.asarray([1, 0, 1])), {"axis": 1})),
    ("linalg.svd", lambda xp, a: ((a,), {"full_matrices": False})),
    ("linalg.matrix_norm", lambda xp, a: ((a,), {"ord": "nuc"})),
    ("linalg.vector_norm", lambda xp, a: ((a,), {"ord": 3})),
    ("linalg.outer", lambda xp, a: ((a[0, :], a[:, 0]), {})),
    ("linalg.trace", lambda xp, a: ((a[:, :3],), {})),
    ("fft.rfftn", lambda xp, a: ((a,), {})),
    ("fft.fftshift", lambda xp, a: ((a,), {})),
]


def _resolve(ns, qualname):
    obj = ns
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("qualname", [p[0] for p in PASS_THROUGH])
def test_without_trace_results_equal_the_base(pair, qualname):
    ns, base = pair
    make = dict(PASS_THROUGH)[qualname]
    try:
        base_fn = _resolve(base, qualname)
    except AttributeError:
        pytest.skip(f"{base.__name__} has no {qualname}")
    a = base.asarray(np.random.default_rng(0).standard_normal((3, 4)))
    args, kwargs = make(base, a)
    expected = base_fn(*args, **kwargs)
    actual = _resolve(ns, qualname)(*args, **kwargs)
    if base.__name__.startswith("array_api_compat.dask"):
        actual, expected = _compute(actual), _compute(expected)
    _same(actual, expected)


def _compute(x):
    if isinstance(x, (tuple, list)):
        return (
            type(x)(_compute(v) for v in x)
            if not hasattr(x, "_fields")
            else type(x)(*map(_compute, x))
        )
    return np.asarray(x.compute()) if hasattr(x, "compute") else x


def _grad(ns_base, f, *arrays):
    """Gradients of ``f(xp, *arrays)`` by agrad (tuple, one per array)."""
    _, grads = agrad.execute_with_gradients(
        lambda xs: f(agrad.array_namespace(*xs), *xs), list(arrays)
    )
    return [to_numpy(g) for g in grads]


def _setitem_then_inplace(xp, x, y, inplace=True):
    if not isinstance(x, TracedArray):  # the torch reference: a leaf cannot be written
        x = x + 0.0
    x[1:3] = y
    if inplace:
        x *= 2.0
        x += xp.sin(x)
    else:  # torch refuses in-place updates of values its backward pass needs
        x = x * 2.0
        x = x + xp.sin(x)
    x[0] = (x[3] if inplace else x[3] + 0.0) * y[0]
    return xp.sum(x * x)


def _index_update(xp, x, y, inplace=True):
    if not isinstance(x, TracedArray):
        x = x + 0.0
    z = x * 1.0
    z[..., 0] = z[..., 0] + y
    z[z > 1.0] = 0.5
    return xp.sum(xp.exp(z) * x)


@pytest.mark.parametrize("case", [_setitem_then_inplace, _index_update])
def test_setitem_and_inplace_operators_match_torch(pair, case):
    ns, base = pair
    rng = np.random.default_rng(3)
    shapes = [(5,), (2,)] if case is _setitem_then_inplace else [(3, 4), (3,)]
    data = [rng.standard_normal(s) for s in shapes]
    _, ref = torch_grads(lambda xp, *a: case(xp, *a, inplace=False), *data)
    got = _grad(base, case, *[base.asarray(d) for d in data])
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


def test_repeated_integer_indices_accumulate(pair):
    ns, base = pair
    rng = np.random.default_rng(4)
    data = rng.standard_normal((4, 3))

    paired = ns.__name__ != "agrad.dask"  # dask has no multi-array fancy indexing
    partial = ns.__name__ != "agrad.array_api_strict"  # strict: arrays index every axis

    def f(xp, a):
        rows = xp.asarray([3, 0, 3, 3, 1])
        taken = xp.take(a, rows, axis=0)
        out = xp.sum(taken * taken)
        if partial:
            out = out + xp.sum(a[rows, ...][:, 2])
        if paired:
            out = out + xp.sum(a[rows, xp.asarray([0, 2, 0, 0, 1])] * taken[:, 1])
        return out

    _, ref = torch_grads(f, data)
    (got,) = _grad(base, f, base.asarray(data))
    np.testing.assert_allclose(got, ref[0], rtol=1e-10, atol=1e-12)


def test_gradients_on_dask_match_torch():
    pytest.importorskip("dask")
    dxp = pytest.importorskip("array_api_compat.dask.array")
    rng = np.random.default_rng(5)
    data = [rng.standard_normal((3, 4)), rng.standard_normal((4,))]

    def f(xp, a, b):
        s = xp.sort(a * b, axis=1)
        t = xp.take_along_axis(a, xp.argsort(a, axis=0), axis=0)
        return (
            xp.sum(xp.tanh(s) * t)
            + xp.mean(xp.cumulative_sum(a, axis=1))
            + xp.sum(xp.tile(b, (2,)) ** 2.0)
        )

    _, ref = torch_grads(f, *data)
    got = _grad(dxp, f, *[dxp.asarray(d) for d in data])
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)


def test_unique_values_is_differentiable(pair):
    ns, base = pair
    if ns.__name__ == "agrad.dask":
        pytest.skip("dask's unique has unknown output shapes")
    x = np.array([2.0, 1.0, 2.0, 3.0, 1.0, 2.0])

    def f(xp, a):
        values = xp.unique_values(a)
        w = xp.asarray(np.array([10.0, 20.0, 30.0]))
        return xp.sum(xp.multiply(values, w)) + xp.sum(xp.unique_all(a).values)

    (got,) = _grad(base, f, base.asarray(x))
    np.testing.assert_allclose(got, [21.0, 11.0, 21.0, 31.0, 11.0, 21.0])


def test_nondifferentiable_functions_return_constants_of_the_trace(pair):
    """Inside a trace their results are traced arrays of it that carry no gradient."""
    ns, base = pair
    seen = []

    def f(xs):
        (x,) = xs
        xp = agrad.array_namespace(x)
        for r in (
            xp.argmax(x),
            xp.floor(x),
            xp.sign(x),
            xp.equal(x, x),
            x > 0.0,
            ~(x > 0.0),
            (x > 0.0) & (x < 1.0),
            xp.astype(x, xp.int64),
            xp.isnan(x),
            xp.round(x),
            xp.nonzero(x > 0.0)[0],
            xp.asarray(np.array([1.0, 2.0, 3.0])) if ns is agrad.numpy else xp.asarray([1.0]),
            xp.zeros((2,), dtype=x.dtype),
        ):
            seen.append((type(r), r._node is CONSTANT, r._trace is x._trace))
        return xp.sum(x)

    agrad.execute_with_gradients(f, [base.asarray(np.array([1.5, -2.0, 0.3]))])
    assert seen == [(ns._Traced, True, True)] * len(seen)


def test_function_without_rule_raises_naming_it():
    x = np.array([1.0, 2.0])
    with pytest.raises(NotImplementedError, match=r"agrad\.numpy\.cbrt"):
        agrad.grad(lambda x: agrad.array_namespace(x).sum(agrad.array_namespace(x).cbrt(x)))(x)
    with pytest.raises(NotImplementedError, match="full_matrices"):
        agrad.grad(
            lambda x: agrad.array_namespace(x).sum(agrad.array_namespace(x).linalg.svd(x)[0])
        )(np.ones((3, 2)) + np.eye(3, 2))


def test_function_missing_from_base_raises_naming_it():
    pytest.importorskip("dask")
    import agrad.dask as adask

    with pytest.raises(NotImplementedError, match=r"agrad\.dask\.linalg\.det"):
        adask.linalg.det(adask.asarray(np.eye(2)))


def test_array_attributes_and_conversions(pair):
    ns, base = pair
    checks = {}

    def f(x):
        xp = agrad.array_namespace(x)
        checks.update(
            ns=xp is ns,
            dtype=x.dtype == base.float64,
            shape=x.shape == (2, 3),
            ndim=x.ndim == 2,
            size=x.size == 6,
            T=x.T.shape == (3, 2),
            mT=x.mT.shape == (3, 2),
            device=x.device == base.asarray(np.ones(1)).device
            if ns.__name__ != "agrad.dask"
            else True,
            float=float(x[0, 0]) == 1.0,
            int=int(x[0, 1]) == 2,
            bool=bool(x[0, 0]),
            complex=complex(x[0, 0]) == 1.0,
            index=[10, 20, 30][xp.astype(x[0, 1], xp.int64)] == 30,
            len=len(x) == 2,
            to_device=isinstance(x.to_device(x.device), TracedArray),
        )
        return xp.sum(x.to_device(x.device) * 2.0)

    _, g = agrad.execute_with_gradients(
        f, base.asarray(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    )
    assert checks and all(checks.values()), checks
    np.testing.assert_allclose(to_numpy(g), 2.0)


def test_dlpack_export_reads_the_value():
    x = np.array([1.0, 2.0, 3.0])

    def f(x):
        xp = agrad.array_namespace(x)
        exported = np.from_dlpack(x)
        assert isinstance(exported, np.ndarray)
        np.testing.assert_array_equal(exported, [1.0, 2.0, 3.0])
        assert xp.from_dlpack(x) is x  # differentiable identity on a traced array
        return xp.sum(xp.from_dlpack(x) * x)

    np.testing.assert_allclose(agrad.grad(f)(x), 2 * x)


@pytest.mark.parametrize("version", ["2023.12", "2024.12"])
def test_python_scalars_in_functions_on_strict(version):
    strict = pytest.importorskip("array_api_strict")
    saved = strict.get_array_api_strict_flags()
    strict.set_array_api_strict_flags(api_version=version)
    try:
        x = strict.asarray(np.array([0.3, -1.2, 2.0]))

        def f(x):
            xp = agrad.array_namespace(x)
            y = (2.0 * x + 1.0) / 3.0 - x**2.0 + 2.0**x + 1.0 / (x * x + 1.0)
            y = y % 5.0
            if version >= "2024.12":
                y = y + xp.maximum(x, 0.5) + xp.where(x > 0.0, x, 0.0) + xp.atan2(x, 2.0)
                y = y + xp.add(x, 1.0) + xp.multiply(2.0, x)
            return xp.sum(y)

        g = agrad.grad(f)(x)

        def ref(xp, t):
            y = (2.0 * t + 1.0) / 3.0 - t**2.0 + 2.0**t + 1.0 / (t * t + 1.0)
            y = y % 5.0
            if version >= "2024.12":
                y = y + xp.maximum(t, xp.asarray(0.5, dtype=t.dtype)) + xp.where(t > 0.0, t, 0.0)
                y = y + xp.atan2(t, xp.asarray(2.0, dtype=t.dtype)) + (t + 1.0) + 2.0 * t
            return xp.sum(y)

        _, (expected,) = torch_grads(ref, to_numpy(x))
        np.testing.assert_allclose(to_numpy(g), expected, rtol=1e-12)
    finally:
        strict.set_array_api_strict_flags(**saved)


def test_setitem_on_an_input_is_differentiable_twice():
    import torch

    x0 = np.array([1.0, 2.0, 3.0])

    def g(x):
        xp = agrad.array_namespace(x)
        x[0] = x[1] * x[2]
        return xp.sum(x * x * x)

    def outer(x):
        return agrad.array_namespace(x).sum(agrad.grad(g)(x))

    t = torch.tensor(x0, requires_grad=True)
    y = t.clone()
    y[0] = t[1] * t[2]
    (g1,) = torch.autograd.grad((y**3).sum(), t, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), t)
    np.testing.assert_allclose(agrad.grad(g)(x0.copy()), g1.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(agrad.grad(outer)(x0.copy()), g2.numpy(), rtol=1e-12)


def test_arrays_created_inside_a_trace_are_constants(pair):
    ns, base = pair
    kept = []

    def f(x):
        xp = agrad.array_namespace(x)
        c = xp.full((3,), 2.0, dtype=x.dtype)
        kept.append(c)
        assert isinstance(c, TracedArray)  # a constant of the trace: mixes with x anywhere
        buf = xp.zeros((5,), dtype=x.dtype)
        buf[1:4] = x * c
        return xp.sum(buf * buf)

    x = base.asarray(np.array([1.0, -2.0, 0.5]))
    _, g = agrad.execute_with_gradients(f, x)
    np.testing.assert_allclose(to_numpy(g), 8.0 * to_numpy(x))
    # after the trace the constant is a plain value again: no escaped-tracer error
    out = ns.add(kept[0], base.asarray(np.ones(3)))
    assert not isinstance(out, TracedArray)
    np.testing.assert_allclose(to_numpy(out), [3.0, 3.0, 3.0])
    assert not isinstance(ns.zeros(2), TracedArray)  # outside traces: the base's own
