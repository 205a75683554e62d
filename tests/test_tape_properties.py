"""Property tests: random chains of standard functions, differentiated by agrad's tape,
against torch.autograd (first order) and finite differences (second order)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agrad
from agrad.testing import check_grads, to_numpy
from references import torch_grads

# Each step maps (xp, h, b) -> new h of shape (3, 4); b is a second (3, 4) input.
STEPS = {
    "sin": lambda xp, h, b: xp.sin(h),
    "tanh": lambda xp, h, b: xp.tanh(h),
    "exp_tanh": lambda xp, h, b: xp.exp(xp.tanh(h)),
    "mul": lambda xp, h, b: h * b,
    "add": lambda xp, h, b: xp.add(h, b),
    "div": lambda xp, h, b: h / (b * b + 1.0),
    "sqrt": lambda xp, h, b: xp.sqrt(h * h + 1.0),
    "log": lambda xp, h, b: xp.log(h * h + 1.0),
    "atan": lambda xp, h, b: xp.atan(h),
    "square": lambda xp, h, b: xp.square(h) * 0.5,
    "maximum": lambda xp, h, b: xp.maximum(h, b),
    "where": lambda xp, h, b: xp.where(h > 0.0, h, b * 0.5),
    "flip": lambda xp, h, b: xp.flip(h, axis=1),
    "roll": lambda xp, h, b: xp.roll(h, 1, axis=0),
    "matmul": lambda xp, h, b: xp.matmul(h, xp.matrix_transpose(b) @ b) * 0.2,
    "cumsum": lambda xp, h, b: xp.cumulative_sum(h, axis=1) * 0.5,
    "sort": lambda xp, h, b: xp.sort(h, axis=1),
    "center": lambda xp, h, b: h - xp.mean(h, axis=0, keepdims=True),
    "normalize": lambda xp, h, b: h / xp.sqrt(xp.sum(h * h, axis=1, keepdims=True) + 1.0),
    "logsumexp": lambda xp, h, b: (
        h - xp.log(xp.sum(xp.exp(h - xp.max(h, axis=1, keepdims=True)), axis=1, keepdims=True))
    ),
    "hypot": lambda xp, h, b: xp.hypot(h, b),
    "logaddexp": lambda xp, h, b: xp.logaddexp(h, b),
    "getitem": lambda xp, h, b: xp.concat([h[:, 2:], h[:, :2] * b[:, :2]], axis=1),
    "stack_sum": lambda xp, h, b: xp.sum(xp.stack([h, b, h * b]), axis=0),
    "transpose_reshape": lambda xp, h, b: xp.reshape(xp.permute_dims(h, (1, 0)), (3, 4)),
    "clip": lambda xp, h, b: xp.clip(h, min=-0.8, max=0.9),
    "var": lambda xp, h, b: h * xp.var(h, axis=1, keepdims=True),
}

chains = st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=6)
seeds = st.integers(0, 2**16)


def _chain(names):
    def f(xp, a, b):
        h = a
        for name in names:
            h = STEPS[name](xp, h, b)
        return xp.sum(h * h) + xp.sum(xp.sin(h))

    return f


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
@settings(max_examples=25, deadline=None)
@given(names=chains, seed=seeds)
def test_random_chain_matches_torch(backend, names, seed):
    xp = pytest.importorskip("array_api_compat.numpy" if backend == "numpy" else backend)
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))]
    f = _chain(names)
    ref_value, ref_grads = torch_grads(f, *data)
    value, grads = agrad.execute_with_gradients(
        lambda xs: f(agrad.array_namespace(*xs), *xs), [xp.asarray(d) for d in data]
    )
    assert float(to_numpy(value)) == pytest.approx(ref_value, rel=1e-10, abs=1e-10)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(to_numpy(g), r, rtol=1e-8, atol=1e-10)


SMOOTH_STEPS = sorted(set(STEPS) - {"maximum", "where", "sort", "clip"})


@settings(max_examples=10, deadline=None)
@given(names=st.lists(st.sampled_from(SMOOTH_STEPS), min_size=1, max_size=4), seed=seeds)
def test_random_smooth_chain_second_order(names, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    f = _chain(names)
    check_grads(lambda a, b: f(agrad.array_namespace(a, b), a, b), a, b, order=2)
