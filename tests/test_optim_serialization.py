"""Optimizer state save/load across frameworks: train on torch, continue on another library."""

from __future__ import annotations

from typing import Any, NamedTuple

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


class SignState(NamedTuple):
    """A custom optimizer's state record, defined at module level as docs/custom-optimizer.md does."""

    count: int
    momentum: Any


def _signum(lr: float, beta: float = 0.9) -> optim.GradientTransformation:
    from agrad.namespace import array_namespace
    from agrad.pytree import tree_map

    def init(params):
        return SignState(0, tree_map(lambda p: array_namespace(p).zeros_like(p), params))

    def update(grads, state, params=None):
        m = tree_map(lambda m, g: beta * m + (1.0 - beta) * g, state.momentum, grads)
        return tree_map(lambda m: -lr * array_namespace(m).sign(m), m), SignState(
            state.count + 1, m
        )

    return optim.GradientTransformation("signum", init, update, {"lr": lr}, needs_params=False)


def _signum_reference(p0, steps, lr=0.01, beta=0.9):
    """Signum in plain NumPy, the reference."""
    import array_api_compat.numpy as npx

    p = {k: v.copy() for k, v in p0.items()}
    m = {k: np.zeros_like(v) for k, v in p0.items()}
    for t in range(steps):
        g = _grads(npx, p, t)
        for k in p:
            m[k] = beta * m[k] + (1.0 - beta) * g[k]
            p[k] = p[k] - lr * np.sign(m[k])
    return p


def test_custom_state_type_saves_and_loads_without_registration(tmp_path):
    """A user's NamedTuple state goes through save/load as agrad's own do: its class is
    found by its recorded module and name, and training continues across frameworks."""
    import array_api_compat.numpy as npx

    opt = _signum(lr=0.01)
    params = {k: torch.asarray(v) for k, v in _p0().items()}
    params, state = _train(torch, opt, params, opt.init(params), 0, 6)
    optim.save(state, tmp_path / "s.npz")
    loaded = optim.load(tmp_path / "s.npz", like={k: np.asarray(v) for k, v in params.items()})
    assert type(loaded) is SignState and loaded.count == 6
    assert type(loaded.momentum["w"]) is np.ndarray
    params = {k: np.asarray(v).copy() for k, v in params.items()}
    params, loaded = _train(npx, opt, params, loaded, 6, 6)
    ref = _signum_reference(_p0(), 12)
    for k in ref:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=1e-12)


def test_custom_state_type_that_cannot_be_found_is_named(tmp_path, monkeypatch):
    class LocalState(NamedTuple):
        count: int

    optim.save(LocalState(1), tmp_path / "a.npz")
    with pytest.raises(
        ValueError, match="defined inside a function; define the state class at module level"
    ):
        optim.load(tmp_path / "a.npz", like=np.zeros(2))
    assert optim.load(tmp_path / "a.npz", like=np.zeros(2), types=[LocalState]) == LocalState(1)
    with pytest.raises(TypeError, match="types holds 3, which is not a NamedTuple class"):
        optim.load(tmp_path / "a.npz", like=np.zeros(2), types=[3])
    optim.save(SignState(1, {"w": np.zeros(2)}), tmp_path / "b.npz")
    monkeypatch.setitem(globals(), "SignState", None)
    with pytest.raises(
        ValueError,
        match=r"record '.*:SignState' that cannot be found: module .* defines no NamedTuple",
    ):
        optim.load(tmp_path / "b.npz", like={"w": np.zeros(2)})


def test_custom_state_type_with_changed_fields_is_refused(tmp_path, monkeypatch):
    optim.save(SignState(1, {"w": np.zeros(2)}), tmp_path / "c.npz")

    class SignState2(NamedTuple):
        count: int
        momentum: Any
        extra: Any

    monkeypatch.setitem(globals(), "SignState", SignState2)
    with pytest.raises(
        ValueError,
        match=r"saved with fields \['count', 'momentum'\], but that class now has fields",
    ):
        optim.load(tmp_path / "c.npz", like={"w": np.zeros(2)})


def test_a_module_named_in_a_file_is_never_imported(tmp_path):
    import json
    import sys
    import zipfile

    optim.save(SignState(1, {"w": np.zeros(2)}), tmp_path / "d.npz")
    with zipfile.ZipFile(tmp_path / "d.npz") as z:
        meta = json.loads(str(np.load(z.open("__agrad_meta__.npy"))))
        arrays = {n: z.read(n) for n in z.namelist() if n != "__agrad_meta__.npy"}
    meta["state"]["cls"] = "antigravity:SignState"  # importing it would open a browser
    with zipfile.ZipFile(tmp_path / "e.npz", "w") as z:
        buf = __import__("io").BytesIO()
        np.save(buf, np.array(json.dumps(meta)))
        z.writestr("__agrad_meta__.npy", buf.getvalue())
        for n, data in arrays.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match=r"import 'antigravity' .* before loading"):
        optim.load(tmp_path / "e.npz", like={"w": np.zeros(2)})
    assert "antigravity" not in sys.modules


def test_torch_save_of_a_state_loads_with_weights_only(tmp_path):
    import io

    params = {k: torch.asarray(v) for k, v in _p0().items()}
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(lr=0.1, amsgrad=True))
    params, state = _train(torch, opt, params, opt.init(params), 0, 3)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(buf, weights_only=True)
    buf.seek(0)
    with torch.serialization.safe_globals(optim.state_types()):
        loaded = torch.load(buf, weights_only=True)
    assert type(loaded.states[1]).__name__ == "AdamState" and loaded.states[1].count == 3
    for a, b in zip(flatten(loaded)[0], flatten(state)[0]):
        assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    names = {c.__name__ for c in optim.state_types()}
    assert {"AdamState", "ChainState", "SGDState", "FactoredState", "EmptyState"} <= names
