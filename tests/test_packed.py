"""Packed mode: parameters as views of flat buffers; steps agree with torch.optim."""

from __future__ import annotations

import numpy as np
import pytest

import agrad
from agrad.optim import fastpath

torch = pytest.importorskip("torch")

SHAPES = [(4, 3), (3,), (), (2, 2, 5), (70,)]


def _params(seed: int, dtype=np.float64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]


def test_views_share_the_buffer_numpy():
    params = {"a": np.ones((2, 3)), "b": np.zeros(4, np.float32), "c": np.full(5, 2.0)}
    packed = agrad.optim.pack(params)
    assert len(packed.buffers) == 2  # float64 and float32
    assert packed.buffers[0].shape == (11,) and packed.buffers[1].shape == (4,)
    assert list(packed.params) == ["a", "b", "c"]
    for k, v in params.items():
        assert packed.params[k].shape == v.shape and packed.params[k].dtype == v.dtype
        np.testing.assert_array_equal(packed.params[k], v)
    packed.buffers[0][...] = 7.0
    np.testing.assert_array_equal(packed.params["a"], 7.0)
    np.testing.assert_array_equal(packed.params["c"], 7.0)
    params["a"][...] = 0.0  # the originals are copied, not aliased
    np.testing.assert_array_equal(packed.params["a"], 7.0)


def test_views_share_the_buffer_torch():
    packed = agrad.optim.pack([torch.ones(2, 3), torch.zeros(4)])
    with torch.no_grad():
        packed.buffers[0].fill_(3.0)
    assert float(packed.params[0][1, 2]) == 3.0 and float(packed.params[1][0]) == 3.0


def test_flatten_copies_and_checks_shapes():
    packed = agrad.optim.pack([np.ones(3), np.ones((2, 2))])
    (flat,) = packed.flatten([np.arange(3.0), np.full((2, 2), 5.0)])
    np.testing.assert_array_equal(flat, [0, 1, 2, 5, 5, 5, 5])
    with pytest.raises(ValueError, match="shape"):
        packed.flatten([np.ones(4), np.ones((2, 2))])
    with pytest.raises(ValueError):
        packed.flatten([np.ones(3)])


def test_grad_views_are_free_and_torch_accumulates_into_them():
    layer = [torch.randn(3, 2), torch.randn(2)]
    packed = agrad.optim.pack(layer)
    grads = packed.grad_views()
    assert packed.flatten(grads)[0] is packed._grad_buffers[0]
    p = [x.requires_grad_(True) for x in packed.params]
    for x, g in zip(p, grads):
        x.grad = g
    (p[0].sum() * 2 + p[1].sum()).backward()
    np.testing.assert_array_equal(packed.flatten(grads)[0].numpy(), [2.0] * 6 + [1.0] * 2)


def _torch_reference(opt_cls, kw, steps, dtype):
    params = [torch.from_numpy(p).requires_grad_(True) for p in _params(0, dtype)]
    opt = opt_cls(params, foreach=False, **kw)
    for k in range(steps):
        for p, g in zip(params, _params(k + 1, dtype)):
            p.grad = torch.from_numpy(g)
        opt.step()
    return [p.detach().numpy() for p in params]


CASES = [
    ("adam", "Adam", {"lr": 0.01}),
    ("adam", "Adam", {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.1}),
    ("adamw", "AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("sgd", "SGD", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize(("name", "torch_name", "kw"), CASES)
def test_packed_steps_match_torch_optim(monkeypatch, library, fast, name, torch_name, kw):
    steps = 6
    ref = _torch_reference(getattr(torch.optim, torch_name), kw, steps, np.float64)
    params = _params(0)
    if library == "torch":
        params = [torch.from_numpy(p) for p in params]
    packed = agrad.optim.pack(params)
    opt = getattr(agrad.optim, name)(**kw)
    state = opt.init(packed.buffers)
    monkeypatch.setattr(fastpath, "enabled", fast)
    for k in range(steps):
        grads = _params(k + 1)
        if library == "torch":
            grads = [torch.from_numpy(g) for g in grads]
        state = packed.step(opt, grads, state)
    assert state.count == steps
    for r, p in zip(ref, packed.params):
        got = p.numpy() if library == "torch" else p
        assert got.shape == r.shape
        np.testing.assert_allclose(got, r, rtol=1e-10, atol=1e-12)


def test_packed_float32_matches_unpacked_step():
    params = _params(0, np.float32)
    plain = [p.copy() for p in params]
    packed = agrad.optim.pack(params)
    opt = agrad.optim.adam(lr=0.01)
    s_packed, s_plain = opt.init(packed.buffers), opt.init(plain)
    for k in range(5):
        grads = _params(k + 1, np.float32)
        s_packed = packed.step(opt, grads, s_packed)
        plain, s_plain = opt.step(plain, grads, s_plain)
    for a, b in zip(packed.params, plain):
        np.testing.assert_array_equal(a, b)  # elementwise rules: packing changes nothing


def test_packed_on_immutable_arrays_rebinds():
    jnp = pytest.importorskip("jax.numpy")
    packed = agrad.optim.pack([jnp.ones(3), jnp.ones((2, 2))])
    opt = agrad.optim.sgd(lr=0.5)
    state = opt.init(packed.buffers)
    state = packed.step(opt, [jnp.ones(3), jnp.ones((2, 2))], state)
    np.testing.assert_allclose(np.asarray(packed.params[1]), 0.5)
    assert state.count == 1


def test_torch_parameters_stay_leaves_viewing_the_buffer():
    w = torch.nn.Parameter(torch.ones(3, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    packed = agrad.optim.pack({"w": w, "b": b})
    assert not packed.buffers[0].requires_grad
    pw, pb = packed.params["w"], packed.params["b"]
    assert pw.requires_grad and pw.is_leaf and pb.requires_grad
    grads = packed.grad_views()
    pw.grad, pb.grad = grads["w"], grads["b"]
    (pw.sum() + 2 * pb.sum()).backward()
    opt = agrad.optim.sgd(lr=0.5)
    state = packed.step(opt, grads, opt.init(packed.buffers))
    assert state.count == 1
    np.testing.assert_allclose(pw.detach().numpy(), 0.5)
    np.testing.assert_allclose(pb.detach().numpy(), -1.0)


def test_agrad_variables_come_back_as_variables():
    params = {"w": agrad.variable(np.ones((2, 2))), "b": agrad.variable(np.zeros(2))}
    packed = agrad.optim.pack(params)
    assert all(agrad.is_variable(v) for v in packed.params.values())
    x = np.array([[1.0, 2.0]])

    def loss(p):
        xp = agrad.array_namespace(p["w"])
        return xp.sum(xp.matmul(x, p["w"]) + p["b"])

    opt = agrad.optim.sgd(lr=0.1)
    state = opt.init(packed.buffers)
    grads = agrad.grad(loss)(packed.params)
    state = packed.step(opt, grads, state)
    np.testing.assert_allclose(packed.params["w"].value, [[0.9, 0.9], [0.8, 0.8]])
    np.testing.assert_allclose(packed.buffers[0][4:], -0.1)
