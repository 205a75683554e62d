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


def test_numpy_scalars_are_weak_in_namespace_inference() -> None:
    """``np.float64`` (NumPy's 0-d result) means NumPy only when nothing else is an array."""
    torch = pytest.importorskip("torch")
    assert library_name(agrad.array_namespace(np.float64(1.0))) == "numpy"
    assert library_name(agrad.array_namespace(np.float32(1.0), np.float64(2.0))) == "numpy"
    t = torch.ones(2, dtype=torch.float64)
    assert library_name(agrad.array_namespace(np.float64(0.1), t)) == "torch"
    assert library_name(agrad.array_namespace(t, np.float32(0.1))) == "torch"
    # a learning rate computed with NumPy goes with torch parameters
    params = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
    grads = {"w": torch.tensor([1.0, -1.0], dtype=torch.float64)}
    out = agrad.gradient_descent_update(params, grads, np.float64(0.5), inplace=False)
    np.testing.assert_array_equal(out["w"].numpy(), [0.5, 2.5])


def test_a_subclass_of_variable_counts_as_the_array_it_holds():
    torch = pytest.importorskip("torch")

    class Parameter(agrad.Variable):
        __slots__ = ()

    a, b = Parameter(np.ones(2)), Parameter(torch.ones(2))
    assert agrad.array_namespace(a) is agrad.array_namespace(np.ones(2))
    assert agrad.array_namespace(b) is agrad.array_namespace(torch.ones(2))  # not cached by type
