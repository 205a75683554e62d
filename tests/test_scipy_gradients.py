"""Gradients through scipy.stats, scipy.special and array-api-extra, and NumPy ufuncs.

scipy's Array API code (``SCIPY_ARRAY_API=1``) runs in a subprocess
(``tests/scipy_gradient_cases.py``: scipy reads the flag once, at import): every case is
checked against central finite differences of scipy's own function on NumPy and
array_api_strict, the elementwise special functions at second order too. In this
process, NumPy and scipy.special ufuncs reaching a traced array go through its
``__array_ufunc__``: checked against finite differences, and anything without a rule
must raise naming the ufunc.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import agrad
import agrad.array_api_strict
import agrad.numpy

pytest.importorskip("scipy")
from scipy.special import _ufuncs as sp  # the ufuncs, whatever the flag

import scipy_gradient_cases as cases

NAMES = [*cases.STATS, *cases.SPECIAL, *cases.EXTRA]


@pytest.fixture(scope="module")
def scipy_results():
    env = {**os.environ, "SCIPY_ARRAY_API": "1"}
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    script = Path(__file__).with_name("scipy_gradient_cases.py")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("backend", cases.BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_gradient_through_scipy_matches_finite_differences(scipy_results, backend, name):
    err = scipy_results[f"{backend}:{name}"]
    assert not isinstance(err, str), err
    first, second = err
    assert first < 1e-6, f"{name} on {backend}: gradient's relative error {first:.3g}"
    assert second < 1e-4, f"{name} on {backend}: second derivative's error {second:.3g}"


def _fd(f, x, eps=1e-6):
    return np.array([(f(x + e) - f(x - e)) / (2 * eps) for e in np.eye(x.size) * eps])


@pytest.mark.parametrize(
    "ufunc",
    [sp.erf, sp.gammaln, sp.psi, sp.expit, sp.log_ndtr, sp.ndtri, np.cbrt, np.exp2, np.arctan],
    ids=lambda u: u.__name__,
)
def test_ufuncs_on_traced_arrays_differentiate_to_second_order(ufunc):
    x0 = np.array([0.2, 0.45, 0.7])

    def f(x):
        return agrad.numpy.sum(ufunc(x))

    first = agrad.grad(f)(x0)
    second = agrad.grad(lambda x: agrad.numpy.sum(agrad.grad(f)(x)))(x0)
    np.testing.assert_allclose(first, _fd(lambda v: float(np.sum(ufunc(v))), x0), rtol=1e-7)
    h = 1e-4  # elementwise: the second derivative by second differences of the values
    np.testing.assert_allclose(
        second, (ufunc(x0 + h) - 2 * ufunc(x0) + ufunc(x0 - h)) / h**2, rtol=1e-5
    )


def test_two_argument_ufuncs_and_raw_left_operands():
    x0 = np.array([0.5, 1.5, 2.0])
    got = agrad.grad(lambda x: agrad.numpy.sum(sp.xlogy(x, x + 1.0) + np.ones(3) * x))(x0)
    want = _fd(lambda v: float(np.sum(sp.xlogy(v, v + 1.0) + v)), x0)
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_ufuncs_on_traced_strict_arrays():
    import array_api_strict as xps

    x0 = np.array([0.2, 0.6])
    got = agrad.grad(lambda x: agrad.array_api_strict.sum(sp.erf(x)))(xps.asarray(x0))
    np.testing.assert_allclose(np.asarray(got), 2 / np.sqrt(np.pi) * np.exp(-(x0**2)))


def test_a_ufunc_without_a_rule_raises_naming_it():
    x = np.array([0.5, 1.5])
    with pytest.raises(NotImplementedError, match=r"scipy\.special\.j0 has no gradient rule"):
        agrad.grad(lambda x: agrad.numpy.sum(sp.j0(x)))(x)
    with pytest.raises(NotImplementedError, match=r"numpy\.heaviside has no gradient rule"):
        agrad.grad(lambda x: agrad.numpy.sum(np.heaviside(x, 0.5)))(x)
    with pytest.raises(NotImplementedError, match=r"add\.reduce"):
        agrad.grad(lambda x: np.add.reduce(x))(x)
    with pytest.raises(NotImplementedError, match=r"exp with out="):
        agrad.grad(lambda x: agrad.numpy.sum(np.exp(x, out=np.empty(2))))(x)


def test_an_argument_without_a_derivative_raises_naming_it():
    x = np.array([0.5, 1.5])
    with pytest.raises(NotImplementedError, match=r"gammainc is not differentiable in argument 0"):
        agrad.grad(lambda a: agrad.numpy.sum(sp.gammainc(a, 1.0)))(x)


def test_importing_a_tracing_namespace_leaves_scipy_unimported():
    """scipy reads SCIPY_ARRAY_API at import: ``special`` is made on first use only."""
    code = "import sys, agrad.numpy, agrad.array_api_strict; print('scipy' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]
