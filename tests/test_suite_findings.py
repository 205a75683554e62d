"""What the official Array API suite found in traced mode, checked against references.

Inside a gradient computation on array-api-strict: ``vecdot`` with unequal sizes along
``axis`` raises as array_api_strict's does; ``linalg.pinv`` with one ``rtol`` per matrix
gives torch's values and gradients; ``asarray(x, copy=True)`` of a traced array is a new
array that assignments into ``x`` leave alone.
"""

from __future__ import annotations

import numpy as np
import pytest

import agrad
from agrad.testing import to_numpy

strict = pytest.importorskip("array_api_strict")


def test_vecdot_refuses_unequal_sizes_along_axis_like_strict():
    a = strict.ones((1,))
    b = strict.ones((2,))
    with pytest.raises(ValueError):
        strict.vecdot(a, b)  # the reference refuses it

    def f(x):
        xp = agrad.array_namespace(x)
        return xp.vecdot(x, b)

    with pytest.raises(ValueError, match=r"vecdot: x1 has 1 elements along axis -1 and x2 has 2"):
        agrad.grad(f)(a)
    c = strict.ones((2, 3))
    with pytest.raises(ValueError, match="axis -2"):
        agrad.grad(
            lambda x: agrad.array_namespace(x).sum(
                agrad.array_namespace(x).vecdot(x, strict.ones((3, 3)), axis=-2)
            )
        )(c)


def test_pinv_with_one_rtol_per_matrix_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4, 2))
    a[1, :, 1] = a[1, :, 0] * (1 + 1e-3)  # nearly rank one: the tolerance decides
    rtol = np.asarray([1e-8, 1e-2, 1e-8])
    w = rng.standard_normal((3, 2, 4))

    def f(x):
        xp = agrad.array_namespace(x)
        return xp.sum(xp.linalg.pinv(x, rtol=strict.asarray(rtol)) * strict.asarray(w))

    value, grad = agrad.value_and_grad(f)(strict.asarray(a))
    ta = torch.tensor(a, requires_grad=True)
    tv = (torch.linalg.pinv(ta, rtol=torch.tensor(rtol)) * torch.tensor(w)).sum()
    (tg,) = torch.autograd.grad(tv, ta)
    np.testing.assert_allclose(float(value), tv.item(), rtol=1e-10)
    np.testing.assert_allclose(to_numpy(grad), tg.numpy(), rtol=1e-8, atol=1e-10)
    # and the value without a trace is strict's own
    np.testing.assert_allclose(
        to_numpy(
            agrad.array_namespace(grad).linalg.pinv(strict.asarray(a), rtol=strict.asarray(rtol))
        ),
        to_numpy(strict.linalg.pinv(strict.asarray(a), rtol=strict.asarray(rtol))),
        rtol=1e-12,
    )


def test_asarray_copy_of_a_traced_array_is_a_new_array():
    def f(x):
        xp = agrad.array_namespace(x)
        y = xp.asarray(x, copy=True)
        same = xp.asarray(x)
        x[0] = 0.0  # functional assignment: rebinds x only
        assert same is x
        return xp.sum(y * y) + xp.sum(x)

    g = agrad.grad(f)(strict.asarray([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(to_numpy(g), [2.0, 5.0, 7.0])  # d/dx of sum(x^2) + x[1:]


def test_vecdot_of_integer_arrays_keeps_their_dtype_inside_a_trace():
    seen = {}
    ints = {
        dt: strict.asarray([[1, 2], [3, 4]], dtype=getattr(strict, dt)) for dt in ("uint8", "int16")
    }

    def f(x):
        xp = agrad.array_namespace(x)
        for name, a in ints.items():
            seen[name] = xp.vecdot(xp.asarray(a), xp.asarray(a))  # constants of the trace
        return xp.sum(x)

    agrad.grad(f)(strict.asarray([1.0]))
    for name, a in ints.items():
        want = strict.vecdot(a, a)
        assert seen[name].dtype == want.dtype == a.dtype
        np.testing.assert_array_equal(to_numpy(seen[name]), to_numpy(want))
