"""The tape's fast paths give the same results as its general ones.

Primitives take a fast path when their only traced argument is the first of at most two;
first-order backward passes run the VJP rules with a raw namespace; operators are bound
to the primitives;
``Variable`` updates write into NumPy arrays. None of this may change a result.
"""

from __future__ import annotations

import numpy as np
import pytest

import agrad
import agrad.numpy as anp
from agrad.autograd.adapters.tape import TapeAdapter
from agrad.autograd.tape.backward import backward
from agrad.autograd.tape.traced import (
    EscapedTracerError,
    Node,
    Trace,
    TracedArray,
    outer_trace_active,
)


def _loss(x, y):
    xp = agrad.array_namespace(x, y)
    z = xp.sin(x) * y + 0.5
    z = 2.0 - z / (1.0 + y * y)
    z = -(z**2) + abs(z) @ xp.ones((z.shape[-1],), dtype=z.dtype)[:, None]
    return xp.sum(xp.tanh(z) * x) + xp.sum(xp.concat([x, y], axis=0) ** 3)


def _grads(rules_ns_name: str, x, y):
    """Gradients of ``_loss`` with the backward rules run on ``anp`` or its raw namespace."""
    ns = anp
    trace = Trace()
    try:
        bx = ns._Traced(x, Node(None, ()), trace)
        by = ns._Traced(y, Node(None, ()), trace)
        out = _loss(bx, by)
        rules_ns = ns if rules_ns_name == "traced" else ns._raw_ns
        seed = np.ones_like(out._value)
        gx, gy = backward(rules_ns, trace.tape, out._node, seed, [bx._node, by._node])
    finally:
        trace.active = False
    return gx, gy


def test_raw_namespace_rules_match_traced_namespace_rules():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    raw = _grads("raw", x, y)
    traced = _grads("traced", x, y)
    for a, b in zip(raw, traced):
        assert type(a) is np.ndarray and not isinstance(a, TracedArray)
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-12, atol=1e-12)


def test_first_order_matches_second_order_pass():
    """The same gradient with and without an enclosing trace (raw vs traced rules)."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    g1 = agrad.grad(_loss)(x, y)
    # Inside an outer gradient the inner one runs with the tracing namespace.
    seen = {}

    def outer(x):
        g = agrad.grad(_loss)(x, y)
        seen["g"] = agrad.stop_gradient(g)
        return agrad.array_namespace(g).sum(g * g)

    agrad.grad(outer)(x)
    np.testing.assert_allclose(g1, seen["g"], rtol=1e-12)


def test_general_and_fast_primitive_paths_agree():
    """``square(x)``, ``multiply(x, 2.0)`` (fast path) and ``concat`` (general path)."""
    x = np.array([1.0, -2.0, 3.0])

    def f_fast(x):
        return anp.sum(anp.square(x) + anp.multiply(x, 2.0))

    def f_general(x):
        return anp.sum(anp.multiply(x, x) + 2.0 * anp.concat([x, x, x])[:3])

    np.testing.assert_allclose(agrad.grad(f_fast)(x), agrad.grad(f_general)(x))
    np.testing.assert_allclose(agrad.grad(f_fast)(x), 2 * x + 2.0)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv", "pow"])
def test_bound_operators_match_namespace_functions(op):
    names = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "divide"}
    fn = getattr(anp, names.get(op, op))
    x = np.array([0.5, 1.5, 2.5])

    def by_operator(x):
        return anp.sum(getattr(x, f"__{op}__")(1.5) + getattr(x, f"__r{op}__")(1.5))

    def by_function(x):
        return anp.sum(fn(x, 1.5) + fn(1.5, x))

    np.testing.assert_allclose(agrad.grad(by_operator)(x), agrad.grad(by_function)(x))


def test_second_order_still_works():
    x = np.array([0.3, -0.7])

    def f(x):
        return anp.sum(anp.sin(x) * x)

    h = agrad.grad(lambda x: anp.sum(agrad.grad(f)(x)))(x)
    np.testing.assert_allclose(h, 2 * np.cos(x) - x * np.sin(x))


def test_outer_trace_active_only_inside_an_enclosing_trace():
    t1 = Trace()
    try:
        assert not outer_trace_active(t1)
        t2 = Trace()
        try:
            assert outer_trace_active(t2)
        finally:
            t2.active = False
    finally:
        t1.active = False


def test_rebound_input_gets_its_gradient():
    def f(x):
        x[0] = 2.0 * x[1]
        return anp.sum(x * x)

    x = np.array([1.0, 3.0, 5.0])
    # x becomes [6, 3, 5]: d/dx0 = 0, d/dx1 = 2*3 + 2*6*2, d/dx2 = 10
    np.testing.assert_allclose(agrad.grad(f)(x), [0.0, 30.0, 10.0])


def test_escaped_tracer_still_raises_on_fast_paths():
    kept = {}

    def f(x):
        kept["x"] = x
        return anp.sum(x)

    agrad.grad(f)(np.ones(3))
    with pytest.raises(EscapedTracerError):
        anp.sin(kept["x"])
    with pytest.raises(EscapedTracerError):
        anp.multiply(kept["x"], 2.0)
    with pytest.raises(EscapedTracerError):
        kept["x"] * 2.0


def test_variable_write_into_numpy_array():
    adapter = TapeAdapter("numpy")
    buf = np.zeros(3)
    v = agrad.Variable(buf)
    adapter.write(v, np.arange(3.0))
    assert v.value is buf
    np.testing.assert_array_equal(buf, [0.0, 1.0, 2.0])
    # another shape or dtype, or a read-only array: rebound
    adapter.write(v, np.arange(4.0))
    assert v.value is not buf and v.value.shape == (4,)
    ro = np.zeros(2)
    ro.flags.writeable = False
    w = agrad.Variable(ro)
    adapter.write(w, np.ones(2))
    assert w.value is not ro and not ro.any()


# ---- agrad.autograd.tape.fast_numpy: NumPy's own results, bit for bit ----------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from agrad.autograd.tape.fast_numpy import FAST_NUMPY  # noqa: E402

_DTYPES = st.sampled_from([np.float64, np.float32, np.complex128, np.int64, np.int8, np.bool_])


@st.composite
def _array_and_axis(draw):
    x = draw(hnp.arrays(_DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)))
    if x.ndim == 0:
        return x, draw(st.sampled_from([None, ()]))
    axis = draw(
        st.none()
        | st.integers(-x.ndim, x.ndim - 1)
        | st.lists(st.integers(0, x.ndim - 1), unique=True, max_size=x.ndim).map(tuple)
    )
    return x, axis


def _same(a, b):
    """Same type, dtype, shape and bits (NaNs in the same places)."""
    assert type(a) is type(b)
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b, strict=True)


def _outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs), None
    except Exception as err:  # both sides must fail alike
        return None, type(err)


@settings(max_examples=150, deadline=None)
@given(_array_and_axis(), st.booleans())
def test_fast_reductions_equal_numpy(x_axis, keepdims):
    x, axis = x_axis
    for name, reference in (("sum", np.sum), ("max", np.max), ("min", np.min)):
        got, got_err = _outcome(FAST_NUMPY[name], x, axis=axis, keepdims=keepdims)
        want, want_err = _outcome(reference, x, axis=axis, keepdims=keepdims)
        assert got_err is want_err, name
        if want_err is None:
            _same(got, want)


def test_fast_sum_with_dtype_and_on_scalars():
    x = np.arange(6, dtype=np.int8).reshape(2, 3)
    _same(FAST_NUMPY["sum"](x, axis=0, dtype=np.float32), np.sum(x, axis=0, dtype=np.float32))
    s = np.float64(2.5)  # a NumPy scalar takes NumPy's own function
    _same(FAST_NUMPY["sum"](s), np.sum(s))
    _same(FAST_NUMPY["max"](s), np.max(s))


@pytest.mark.parametrize("copy", [None, True, False])
def test_fast_reshape_equals_numpy(copy):
    x = np.arange(12.0).reshape(3, 4)
    got = FAST_NUMPY["reshape"](x, (4, 3), copy=copy)
    _same(got, np.reshape(x, (4, 3), copy=copy))
    assert np.shares_memory(got, x) == (copy is not True)
    with pytest.raises(ValueError):
        FAST_NUMPY["reshape"](x.T, (12,), copy=False)  # needs a copy, and none allowed


def test_fast_matrix_transpose_equals_swapaxes():
    x = np.arange(24.0).reshape(2, 3, 4)
    _same(FAST_NUMPY["matrix_transpose"](x), np.swapaxes(x, -1, -2))
    with pytest.raises(ValueError, match="2-dimensional"):
        FAST_NUMPY["matrix_transpose"](np.ones(3))


def test_tracing_namespace_over_numpy_uses_the_fast_functions():
    for name, fast in FAST_NUMPY.items():
        assert anp._raw_ns.__dict__[name] is fast, name
        assert getattr(anp, name)._agrad_raw is fast, name


def test_ended_trace_lets_its_tape_go():
    """An escaped traced array keeps its own history, but not the rest of the tape."""
    import gc

    from agrad.autograd.tape.traced import RuleNode

    kept = {}

    def f(x):
        y = anp.sin(x) * 2.0  # two nodes, kept alive by the escaped y
        z = anp.exp(anp.cos(x) + 1.0) * 3.0  # four nodes, let go with the tape
        kept["y"] = y
        return anp.sum(y) + anp.sum(z)

    def live_nodes():
        gc.collect()
        return sum(type(o) is RuleNode for o in gc.get_objects())

    before = live_nodes()
    agrad.grad(f)(np.array([0.1, 0.2]))
    trace = kept["y"]._trace
    assert not trace.active and trace.tape is None
    assert live_nodes() - before == 2
    del kept["y"]
    assert live_nodes() == before


def test_fast_functions_take_numpys_own_path_for_numpy_only_arguments():
    x = np.arange(12.0).reshape(3, 4)
    out = np.empty(4)
    _same(FAST_NUMPY["sum"](x, 0), np.sum(x, 0))  # positional axis
    assert FAST_NUMPY["sum"](x, axis=0, out=out) is out
    _same(FAST_NUMPY["max"](x, axis=1, initial=100.0), np.max(x, axis=1, initial=100.0))
    _same(FAST_NUMPY["min"](x, where=x > 3, initial=50.0), np.min(x, where=x > 3, initial=50.0))
    _same(FAST_NUMPY["reshape"](x, (4, 3), order="F"), np.reshape(x, (4, 3), order="F"))
    _same(FAST_NUMPY["reshape"](x, shape=(2, 6)), np.reshape(x, shape=(2, 6)))
    # the tracing namespace has the standard's signatures (tests/test_signatures.py):
    # NumPy-only arguments are refused there, as array_api_strict refuses them
    with pytest.raises(TypeError, match="sum"):
        anp.sum(x, 1)
    with pytest.raises(TypeError, match="initial"):
        anp.max(x, axis=0, initial=7.0)


def test_unused_input_in_a_nested_gradient_mixes_with_traced_arrays_on_strict():
    """A zero gradient handed to an enclosing trace works with the strict operators."""
    xps = pytest.importorskip("array_api_strict")

    def inner(x, y):
        return agrad.array_namespace(x).sum(x * x)  # y is unused: its gradient is zero

    def outer(y):
        x = xps.asarray([1.0, 2.0])
        _, gy = agrad.grad(inner, argnums=(0, 1))(x, y)
        return agrad.array_namespace(y).sum(gy * y + y)  # operators on the zero gradient

    g = agrad.grad(outer)(xps.asarray([3.0, 4.0]))
    np.testing.assert_array_equal(np.asarray(g), [1.0, 1.0])
