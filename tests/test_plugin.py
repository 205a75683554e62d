"""agrad's pytest plugin (``xp``, backend markers, ``--agrad-backends``) and the test helpers."""

from __future__ import annotations

import numpy as np
import pytest

import agrad
from agrad.testing import BACKENDS, assert_close, available_backends, check_grads, load_backend
from conftest import asarray

pytest_plugins = ["pytester"]

INSTALLED = available_backends()
MISSING = [b for b in BACKENDS if b not in INSTALLED]


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    pytester.makeini("[pytest]\naddopts = --strict-markers\nxfail_strict = true\n")
    return pytester.runpytest("-p", "no:cacheprovider", "-rs", *args)


def test_xp_fixture_runs_once_per_installed_backend(pytester):
    result = _run(
        pytester,
        """
import agrad

def test_namespace(xp, xp_name):
    x = xp.asarray([1.0, 2.0])
    assert agrad.array_namespace(x) is xp
    assert xp_name in repr(xp) or xp_name == "jax"
""",
        "-v",
    )
    result.assert_outcomes(passed=len(INSTALLED), skipped=len(MISSING))
    for name in INSTALLED:
        result.stdout.fnmatch_lines([f"*test_namespace?{name}? PASSED*"])
    if "cupy" in MISSING:
        result.stdout.fnmatch_lines(["*SKIPPED*CuPy*GPU*"])


def test_skip_and_xfail_markers_apply_per_backend(pytester):
    if not {"numpy", "torch"} <= set(INSTALLED):
        pytest.skip("needs numpy and torch")
    result = _run(
        pytester,
        """
import pytest

@pytest.mark.skip_backend("torch", reason="not for torch today")
@pytest.mark.xfail_backend("numpy", reason="numpy is special")
def test_marked(xp, xp_name):
    assert xp_name != "numpy"

@pytest.mark.xfail_backend("numpy", reason="but it passes")
def test_strict(xp):
    pass
""",
        "--agrad-backends",
        "numpy,torch",
    )
    # test_marked: numpy xfails, torch skipped; test_strict: numpy XPASS(strict) fails,
    # torch passes; every other backend is skipped by --agrad-backends
    others = len(BACKENDS) - 2
    result.assert_outcomes(xfailed=1, failed=1, passed=1, skipped=1 + 2 * others)
    result.stdout.fnmatch_lines(["*XPASS(strict)*but it passes*"])
    result.stdout.fnmatch_lines(["*SKIPPED*not for torch today*"])


def test_backend_marks_select_and_unknown_names_are_errors(pytester):
    result = _run(pytester, "def test_a(xp):\n    pass\n", "-m", "backend_numpy")
    result.assert_outcomes(passed=1)
    bad = _run(
        pytester,
        "import pytest\n\n@pytest.mark.skip_backend('tensorflow')\ndef test_b(xp):\n    pass\n",
    )
    assert bad.ret != 0
    bad.stdout.fnmatch_lines(["*skip_backend needs backend names*tensorflow*"])
    usage = _run(pytester, "def test_c(xp):\n    pass\n", "--agrad-backends", "numpy,mxnet")
    assert usage.ret == pytest.ExitCode.USAGE_ERROR


def test_tape_xp_is_built_by_backend_fixture(tape_xp):
    assert agrad.array_namespace(asarray(tape_xp, [1.0])) is tape_xp


def test_assert_close_checks_kind_before_values(xp, xp_name):
    x = asarray(xp, [1.0, 2.0])
    assert_close(x, asarray(xp, [1.0, 2.0 + 1e-13]))
    assert_close(x, np.asarray([1.0, 2.0]))  # a NumPy reference compares shape and values
    with pytest.raises(AssertionError, match="dtypes differ"):
        assert_close(x, asarray(xp, [1.0, 2.0], dtype=np.float32))
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close(x, asarray(xp, [[1.0, 2.0]]))
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        assert_close(x, asarray(xp, [1.0, 2.1]))
    other = (
        "torch" if xp_name != "torch" else "array_api_strict"
    )  # a NumPy desired is a plain reference
    other_xp, reason = load_backend(other)
    if other_xp is None:
        pytest.skip(reason)
    with pytest.raises(AssertionError, match="namespaces differ"):
        assert_close(x, asarray(other_xp, [1.0, 2.0]))


def test_assert_close_checks_device():
    xp, reason = load_backend("array_api_strict")
    if xp is None:
        pytest.skip(reason)
    a = xp.asarray([1.0], device=xp.Device("CPU_DEVICE"))
    b = xp.asarray([1.0], device=xp.Device("device1"))
    with pytest.raises(AssertionError, match="devices differ"):
        assert_close(a, b)


def test_assert_close_default_tolerance_follows_dtype(xp):
    a = asarray(xp, [1.0], dtype=np.float32)
    assert_close(a, asarray(xp, [1.0 + 5e-7], dtype=np.float32))
    with pytest.raises(AssertionError):
        assert_close(asarray(xp, [1.0]), asarray(xp, [1.0 + 5e-7]))


def test_check_grads_accepts_true_and_rejects_wrong_gradients(xp):
    x = asarray(xp, [0.3, -1.2, 2.0])

    def smooth(a):
        ns = agrad.array_namespace(a)
        return ns.sum(ns.sin(a) * a)

    check_grads(smooth, x, order=2)

    def half_blind(a):  # d/da (a * stop_gradient(a)) is a by agrad, 2a in truth
        return agrad.array_namespace(a).sum(a * agrad.stop_gradient(a))

    with pytest.raises(AssertionError):
        check_grads(half_blind, x, order=1)
