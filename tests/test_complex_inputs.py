"""Complex inputs: every backend returns torch.autograd's gradient (the conjugate-Wirtinger
convention, ``dL/dx + i dL/dy`` for a real loss ``L`` of ``z = x + i y``)."""

import numpy as np
import pytest

import agrad
from agrad.namespace import library_name
from agrad.testing import to_numpy


def _loss(xp, z, w):
    return xp.sum(xp.real(z * z)) + xp.sum(xp.abs(z) ** 2.0) + xp.sum(xp.real(xp.conj(w) * z * z))


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_complex_gradient_matches_torch(xp, dtype):
    import array_api_compat.torch as txp
    import torch

    z_np = np.array([1 + 2j, 3 - 1j, -0.5 + 0.25j], dtype=dtype)
    w_np = np.array([0.5 - 1j, 2 + 0j, -1 + 1j], dtype=dtype)
    tz = torch.tensor(z_np, requires_grad=True)
    tw = torch.tensor(w_np, requires_grad=True)
    gz_ref, gw_ref = torch.autograd.grad(_loss(txp, tz, tw), (tz, tw))

    z, w = xp.asarray(z_np), xp.asarray(w_np)
    y, (gz, gw) = agrad.execute_with_gradients(
        lambda a: _loss(agrad.array_namespace(*a), *a), (z, w)
    )
    assert str(gz.dtype).endswith(dtype) and str(gw.dtype).endswith(dtype)
    tol = 1e-12 if dtype == "complex128" else 1e-5
    np.testing.assert_allclose(to_numpy(gz), gz_ref.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(to_numpy(gw), gw_ref.numpy(), rtol=tol, atol=tol)


def test_complex_variable_and_gradient_step(xp):
    v = agrad.variable(xp.asarray(np.array([1 + 1j, 2 - 1j])))
    assert agrad.is_variable(v)
    for _ in range(3):
        _, g = agrad.execute_with_gradients(
            lambda z: agrad.array_namespace(z).sum(agrad.array_namespace(z).abs(z) ** 2.0), v
        )
        out = agrad.gradient_descent_update(v, g, 0.25)
        if library_name(xp) == "jax":
            v = out
    # |z|^2 has gradient 2z: each step multiplies z by (1 - 2 * 0.25) = 0.5
    np.testing.assert_allclose(to_numpy(v), np.array([1 + 1j, 2 - 1j]) * 0.125, rtol=1e-12)
