"""Differentiating through array-api-extra, code written for the standard by others.

Each function runs on agrad's traced arrays (array-api-extra finds the tracing namespace
through ``__array_namespace__``) and on torch tensors for the reference gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

import agrad
from agrad.testing import to_numpy
from references import torch_grads

xpx = pytest.importorskip("array_api_extra")

CASES = {
    "sinc": (lambda xp, a: xpx.sinc(a, xp=xp), [(6,)]),
    "cov": (lambda xp, a: xpx.cov(a, xp=xp), [(3, 5)]),
    "kron": (lambda xp, a, b: xpx.kron(a, b, xp=xp), [(2, 3), (3, 2)]),
    "pad": (lambda xp, a: xpx.pad(a, 2, xp=xp) * 1.5, [(3, 4)]),
    "pad_pairs": (lambda xp, a: xpx.pad(a, ((1, 0), (0, 2)), constant_values=0.5, xp=xp), [(2, 3)]),
    "atleast_nd": (lambda xp, a: xpx.atleast_nd(a, ndim=3, xp=xp) * 2.0, [(4,)]),
    "expand_dims": (lambda xp, a: xpx.expand_dims(a, axis=(0, 2), xp=xp), [(3, 4)]),
    "create_diagonal": (lambda xp, a: xpx.create_diagonal(a, xp=xp), [(4,)]),
}


def _loss(fn):
    def loss(xp, *args):
        out = fn(xp, *args)
        return xp.sum(out * out) + xp.sum(xp.sin(out))

    return loss


@pytest.mark.filterwarnings("ignore:`xpx.expand_dims` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_array_api_extra_gradient_matches_torch(backend, name):
    xp = pytest.importorskip("array_api_compat.numpy" if backend == "numpy" else backend)
    fn, shapes = CASES[name]
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(s) for s in shapes]
    loss = _loss(fn)
    ref_value, ref_grads = torch_grads(loss, *data)
    value, grads = agrad.execute_with_gradients(
        lambda xs: loss(agrad.array_namespace(*xs), *xs), [xp.asarray(d) for d in data]
    )
    assert float(to_numpy(value)) == pytest.approx(ref_value, rel=1e-10)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(to_numpy(g), r, rtol=1e-9, atol=1e-11)
