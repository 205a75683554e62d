"""Optimizer state save/load across frameworks: train on torch, continue on another library."""

from __future__ import annotations

import numpy as np
import pytest

from agrad import optim
from agrad.pytree import flatten
from agrad.testing import to_numpy
from conftest import asarray

torch = pytest.importorskip("torch")

SHAPES = {"w": (3, 4), "b": (4,)}


def _p0():
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s) for k, s in SHAPES.items()}


def _grads(xp, params, t):
    rng = np.random.default_rng(1000 + t)
    return {
        k: xp.subtract(xp.multiply(p, 1.5), asarray(xp, rng.standard_normal(SHAPES[k])))
        for k, p in params.items()
    }


def _train(xp, opt, params, state, start, n):
    for t in range(start, start + n):
        params, state = opt.step(params, _grads(xp, params, t), state)
    return params, state


OPTS = {
    "adam_amsgrad": lambda: optim.adam(lr=0.05, amsgrad=True, weight_decay=0.1),
    "nadam": lambda: optim.nadam(lr=0.05),
    "rmsprop": lambda: optim.rmsprop(lr=0.01, centered=True, momentum=0.5),
    "sgd_schedule": lambda: optim.sgd(lr=optim.cosine_annealing_lr(0.1, 100), momentum=0.9),
    "composite": lambda: optim.chain(
        optim.apply_if_finite(
            optim.multi_steps(
                optim.partition(
                    {"a": optim.adamw(lr=0.05), "s": optim.sgd(lr=0.1, momentum=0.5)},
                    {"w": "a", "b": "s"},
                ),
                2,
            ),
            3,
        ),
        optim.ema_params(0.9),
    ),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_torch_then_numpy_equals_uninterrupted(tmp_path, name):
    import array_api_compat.numpy as npx
    import array_api_compat.torch as txp

    opt = OPTS[name]()
    p_t = {k: torch.tensor(v) for k, v in _p0().items()}
    p_t, s_t = _train(txp, opt, p_t, opt.init(p_t), 0, 50)
    path = tmp_path / "state.npz"
    optim.save(s_t, path)

    p_n = {k: v.numpy().copy() for k, v in p_t.items()}
    s_n = optim.load(path, like=p_n)
    assert flatten(s_n)[1] == flatten(opt.init(p_n))[1]
    p_n, _ = _train(npx, opt, p_n, s_n, 50, 50)

    ref = {k: np.array(v) for k, v in _p0().items()}
    ref, _ = _train(npx, opt, ref, opt.init(ref), 0, 100)
    ref_t = {k: torch.tensor(v) for k, v in _p0().items()}
    ref_t, _ = _train(txp, opt, ref_t, opt.init(ref_t), 0, 100)
    for k in ref:
        np.testing.assert_allclose(p_n[k], ref[k], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(p_n[k], ref_t[k].numpy(), rtol=1e-12, atol=1e-14)


def test_adafactor_factored_state_roundtrip(tmp_path):
    """Factored statistics (not shaped like the parameters) survive a save/load.

    Torch to torch here: Adafactor's decay rate is computed in float32 by the array
    library (as optax does), and float32 ``pow`` may differ by an ulp between libraries.
    """
    import array_api_compat.numpy as npx
    import array_api_compat.torch as txp

    opt = optim.adafactor(0.05, min_dim_size_to_factor=2, momentum=0.9)
    p = {k: torch.tensor(v) for k, v in _p0().items()}
    p, s = _train(txp, opt, p, opt.init(p), 0, 50)
    optim.save(s, tmp_path / "s.npz")
    s2 = optim.load(tmp_path / "s.npz", like=p)
    p, _ = _train(txp, opt, p, s2, 50, 50)
    ref = {k: torch.tensor(v) for k, v in _p0().items()}
    ref, _ = _train(txp, opt, ref, opt.init(ref), 0, 100)
    for k in ref:
        np.testing.assert_allclose(p[k].numpy(), ref[k].numpy(), rtol=1e-12, atol=1e-14)
    like = {k: v.numpy().copy() for k, v in p.items()}
    s_np = optim.load(tmp_path / "s.npz", like=like)
    assert flatten(s_np)[1] == flatten(opt.init(like))[1]
    _train(npx, opt, like, s_np, 50, 2)


def test_loaded_state_takes_namespace_dtype_device_of_like(xp, tmp_path):
    import array_api_compat.torch as txp

    opt = optim.adam(lr=0.05, amsgrad=True)
    p_t = {k: torch.tensor(v) for k, v in _p0().items()}
    p_t, s_t = _train(txp, opt, p_t, opt.init(p_t), 0, 5)
    optim.save(s_t, tmp_path / "s.npz")
    like = {k: asarray(xp, v, np.float32) for k, v in _p0().items()}
    state = optim.load(tmp_path / "s.npz", like=like)
    for k in like:
        for field in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            x = getattr(state, field)[k]
            assert type(x) is type(like[k]) or "dask" in xp.__name__
            assert x.dtype == xp.float32
            np.testing.assert_allclose(
                to_numpy(x), getattr(s_t, field)[k].numpy().astype(np.float32), rtol=1e-6
            )
    assert state.count == 5
    like, state = opt.step(like, {k: v * 0.5 for k, v in like.items()}, state)
    assert state.count == 6


def test_load_onto_strict_device(tmp_path):
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device("device1")
    opt = optim.rmsprop(lr=0.01, momentum=0.9)
    p = {k: np.array(v) for k, v in _p0().items()}
    import array_api_compat.numpy as npx

    p, s = _train(npx, opt, p, opt.init(p), 0, 3)
    optim.save(s, tmp_path / "s.npz")
    like = {k: asarray(xs, v, device=dev) for k, v in p.items()}
    state = optim.load(tmp_path / "s.npz", like=like)
    for x in flatten(state)[0]:
        if hasattr(x, "shape"):
            assert x.device == dev


def test_load_single_array_params(tmp_path):
    opt = optim.adam(lr=0.1)
    p = np.ones(3)
    s = opt.init(p)
    optim.save(s, tmp_path / "s.npz")
    assert optim.load(tmp_path / "s.npz", like=np.zeros(3)).count == 0
    with pytest.raises(
        ValueError, match=r"state\.exp_avg has shape \(3,\) but like has shape \(4,\)"
    ):
        optim.load(tmp_path / "s.npz", like=np.zeros(4))
