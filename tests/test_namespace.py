import subprocess
import sys
import textwrap

import numpy as np
import pytest

import agrad
from agrad.namespace import library_name
from conftest import asarray


def test_namespace_of_each_backend(xp):
    x = asarray(xp, [1.0, 2.0])
    assert agrad.array_namespace(x) is xp or library_name(agrad.array_namespace(x)) == library_name(
        xp
    )


def test_variable_counts_as_its_array(tape_xp):
    v = agrad.variable(asarray(tape_xp, [1.0]))
    assert agrad.array_namespace(v) is tape_xp


def test_traced_array_gives_tracing_namespace_even_mixed_with_raw(tape_xp):
    seen = {}

    def f(x):
        raw = asarray(tape_xp, [1.0, 1.0])
        seen["ns"] = agrad.array_namespace(raw, x, 2.0)
        return seen["ns"].sum(x)

    agrad.execute_with_gradients(f, asarray(tape_xp, [1.0, 2.0]))
    base = library_name(tape_xp)
    assert seen["ns"].__name__ == f"agrad.{base}"
    assert seen["ns"]._agrad_base_name == base


def test_mixed_frameworks_name_both():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"numpy \(argument 0\) and torch \(argument 1\)"):
        agrad.array_namespace(np.ones(2), torch.ones(2))


def test_not_an_array():
    with pytest.raises(TypeError, match="argument 0 of type str"):
        agrad.array_namespace("hello")
    with pytest.raises(TypeError, match="none of the inputs is an array"):
        agrad.array_namespace(1.0, None)


def test_import_and_numpy_step_import_no_framework():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import agrad
        w = agrad.variable(np.ones(3))
        y, g = agrad.execute_with_gradients(lambda w: agrad.array_namespace(w).sum(w * w), w)
        agrad.gradient_descent_update(w, g, 0.1)
        m, v = np.zeros(3), np.zeros(3)
        agrad.adam_update(w, g, 0.1, m, v, 1)
        loaded = [m for m in ("torch", "jax", "cupy", "dask", "array_api_strict") if m in sys.modules]
        assert not loaded, loaded
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_tracing_namespace_is_a_passthrough_without_trace():
    import array_api_compat.numpy as cnp

    import agrad.numpy as anp

    x = np.arange(6.0).reshape(2, 3)
    for name in ("sum", "exp", "tanh", "matmul", "reshape", "argmax", "linspace"):
        assert hasattr(anp, name), name
    np.testing.assert_array_equal(anp.sum(x, axis=0), cnp.sum(x, axis=0))
    np.testing.assert_array_equal(anp.concat([x, x], axis=1), cnp.concat([x, x], axis=1))
    assert anp.float64 == cnp.float64
    assert anp.linalg.matmul is anp.matmul
