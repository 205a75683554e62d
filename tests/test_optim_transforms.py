"""Transforms and composition against optax and torch: clipping, weight decay with a mask,
schedules, gradient accumulation, skipping non-finite steps, parameter EMA, param groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agrad
from agrad import optim
from agrad.testing import to_numpy
from conftest import asarray

optax = pytest.importorskip("optax")
jnp = pytest.importorskip("jax.numpy")
torch = pytest.importorskip("torch")

SHAPES = {"w": (3, 4), "b": (4,)}


def _tree(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) * scale for k, s in SHAPES.items()}


def _to(xp, tree):
    return {k: asarray(xp, np.array(v)) for k, v in tree.items()}


def _close(got, ref, rtol=1e-12, atol=1e-14):
    for k in ref:
        np.testing.assert_allclose(to_numpy(got[k]), np.asarray(ref[k]), rtol=rtol, atol=atol)


@pytest.mark.parametrize("scale", [0.1, 10.0])
def test_clip_by_global_norm_matches_optax(xp, scale):
    u, p = _tree(1, scale), _tree(2)
    ref, _ = optax.clip_by_global_norm(1.0).update(_to(jnp, u), None, _to(jnp, p))
    t = optim.clip_by_global_norm(1.0)
    got, _ = t.update(_to(xp, u), t.init(_to(xp, p)), _to(xp, p))
    _close(got, ref)
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in u.values()))
    assert float(optim.global_norm(_to(xp, u))) == pytest.approx(norm, rel=1e-12)


def test_clip_matches_optax(xp):
    u, p = _tree(1, 3.0), _tree(2)
    ref, _ = optax.clip(0.5).update(_to(jnp, u), None)
    t = optim.clip(0.5)
    got, _ = t.update(_to(xp, u), t.init(_to(xp, p)), _to(xp, p))
    _close(got, ref)


@pytest.mark.parametrize("mask", [None, {"w": True, "b": False}, "callable"])
def test_add_decayed_weights_with_mask_matches_optax(xp, mask):
    u, p = _tree(1), _tree(2)
    m = (lambda params: {"w": False, "b": True}) if mask == "callable" else mask
    ref, _ = optax.add_decayed_weights(0.3, m).update(
        _to(jnp, u), optax.add_decayed_weights(0.3, m).init(_to(jnp, p)), _to(jnp, p)
    )
    t = optim.add_decayed_weights(0.3, m)
    got, _ = t.update(_to(xp, u), t.init(_to(xp, p)), _to(xp, p))
    _close(got, ref)


def test_scale_by_schedule_matches_optax(xp):
    sched = optim.exponential_lr(0.5, 0.9)
    ref_t = optax.scale_by_schedule(sched)
    t = optim.scale_by_schedule(sched)
    p = _to(xp, _tree(2))
    s_ref, s = ref_t.init(_to(jnp, _tree(2))), t.init(p)
    for i in range(5):
        u = _tree(10 + i)
        ref, s_ref = ref_t.update(_to(jnp, u), s_ref)
        got, s = t.update(_to(xp, u), s, p)
        _close(got, ref)


def _optax_train(opt, p0, grads_seq):
    params = _to(jnp, p0)
    state = opt.init(params)
    for g in grads_seq:
        u, state = opt.update(_to(jnp, g), state, params)
        params = optax.apply_updates(params, u)
    return params


def _agrad_train(xp, opt, p0, grads_seq):
    params = _to(xp, p0)
    state = opt.init(params)
    for g in grads_seq:
        params, state = opt.step(params, _to(xp, g), state)
    return params, state


def test_chain_clip_then_lamb_like_matches_optax(xp):
    """A chain of four transforms equals the same optax chain."""
    p0 = _tree(0)
    grads = [_tree(100 + i, 3.0) for i in range(20)]
    ref = _optax_train(
        optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.clip(0.4),
            optax.add_decayed_weights(0.1, {"w": True, "b": False}),
            optax.scale_by_schedule(lambda c: -0.1 * 0.95**c),
        ),
        p0,
        grads,
    )
    got, _ = _agrad_train(
        xp,
        optim.chain(
            optim.clip_by_global_norm(1.0),
            optim.clip(0.4),
            optim.add_decayed_weights(0.1, {"w": True, "b": False}),
            optim.scale_by_schedule(lambda c: -0.1 * 0.95**c),
        ),
        p0,
        grads,
    )
    _close(got, ref)


def _torch_params(p0):
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in p0.items()}


def test_chain_clip_by_global_norm_then_adam_matches_torch(xp):
    """Clipping first, then torch's Adam on the clipped gradients."""
    p0 = _tree(0)
    grads = [_tree(100 + i, 3.0) for i in range(30)]
    tp = _torch_params(p0)
    topt = torch.optim.Adam(list(tp.values()), lr=0.05, foreach=False)
    for g in grads:
        norm = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
        for k in tp:
            tp[k].grad = torch.tensor(g[k] if norm < 1.0 else g[k] / norm * 1.0)
        topt.step()
    got, _ = _agrad_train(
        xp, optim.chain(optim.clip_by_global_norm(1.0), optim.adam(lr=0.05)), p0, grads
    )
    _close(got, {k: v.numpy() for k, v in tp.items()}, rtol=1e-10)


def test_multi_steps_matches_torch_gradient_accumulation(xp):
    k = 4
    p0 = _tree(0)
    grads = [_tree(200 + i) for i in range(40)]
    tp = _torch_params(p0)
    topt = torch.optim.SGD(list(tp.values()), lr=0.1, momentum=0.9, foreach=False)
    for start in range(0, 40, k):
        for name in tp:
            acc = grads[start][name]
            for j in range(1, k):
                acc = acc + grads[start + j][name]
            tp[name].grad = torch.tensor(acc / k)
        topt.step()
    got, state = _agrad_train(xp, optim.multi_steps(optim.sgd(lr=0.1, momentum=0.9), k), p0, grads)
    _close(got, {n: v.numpy() for n, v in tp.items()}, rtol=1e-12)
    assert state.gradient_step == 10 and state.mini_step == 0


def test_multi_steps_gives_zero_updates_between(xp):
    opt = optim.multi_steps(optim.sgd(lr=0.1), 3)
    p = _to(xp, _tree(0))
    s = opt.init(p)
    u, s = opt.update(_to(xp, _tree(1)), s, p)
    for v in u.values():
        assert float(xp.max(xp.abs(v))) == 0.0
    assert s.mini_step == 1


def test_apply_if_finite_skips_and_counts(xp):
    p0 = _tree(0)
    grads = [_tree(300 + i) for i in range(12)]
    bad = {3, 7, 8}
    seq = []
    for i, g in enumerate(grads):
        if i in bad:
            g = dict(g, w=np.full(SHAPES["w"], np.nan))
        seq.append(g)
    tp = _torch_params(p0)
    topt = torch.optim.Adam(list(tp.values()), lr=0.05, foreach=False)
    for i, g in enumerate(seq):
        if i in bad:
            continue
        for k in tp:
            tp[k].grad = torch.tensor(g[k])
        topt.step()
    got, state = _agrad_train(xp, optim.apply_if_finite(optim.adam(lr=0.05), 2), p0, seq)
    _close(got, {k: v.numpy() for k, v in tp.items()}, rtol=1e-12)
    assert state.total_notfinite == 3
    assert state.notfinite_count == 0 and state.last_finite
    assert state.inner_state.count == 12 - 3


def test_apply_if_finite_gives_up_after_max_consecutive(xp):
    opt = optim.apply_if_finite(optim.sgd(lr=0.1), 1)
    p = _to(xp, _tree(0))
    s = opt.init(p)
    nan = _to(xp, {k: np.full(s_, np.nan) for k, s_ in SHAPES.items()})
    p, s = opt.step(p, nan, s)
    assert s.notfinite_count == 1 and np.all(np.isfinite(to_numpy(p["w"])))
    p, s = opt.step(p, nan, s)
    assert s.notfinite_count == 2 and np.all(np.isnan(to_numpy(p["w"])))


def test_ema_params_matches_torch_averaged_model(xp):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    p0 = _tree(0)
    grads = [_tree(400 + i) for i in range(25)]
    module = torch.nn.Module()
    for k, v in p0.items():
        module.register_parameter(k, torch.nn.Parameter(torch.tensor(v)))
    ema_model = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=False)
    topt = torch.optim.Adam(module.parameters(), lr=0.05, foreach=False)
    for g in grads:
        for k, p in module.named_parameters():
            p.grad = torch.tensor(g[k])
        topt.step()
        ema_model.update_parameters(module)
    ref = {k: getattr(ema_model.module, k).detach().numpy() for k in p0}
    got, state = _agrad_train(
        xp, optim.chain(optim.adam(lr=0.05), optim.ema_params(0.9)), p0, grads
    )
    ema = optim.find_state(state, optim.EmaParamsState).ema
    _close(ema, ref, rtol=1e-12)
    _close(got, {k: v.detach().numpy() for k, v in module.named_parameters()}, rtol=1e-12)


def test_partition_matches_torch_param_groups(xp):
    """Two labels with different hyperparameters equal torch's two param groups."""
    p0 = _tree(0)
    grads = [_tree(500 + i) for i in range(30)]
    tp = _torch_params(p0)
    topt = torch.optim.Adam(
        [
            {"params": [tp["w"]], "lr": 0.05, "weight_decay": 0.1},
            {"params": [tp["b"]], "lr": 0.01, "amsgrad": True},
        ],
        foreach=False,
    )
    for g in grads:
        for k in tp:
            tp[k].grad = torch.tensor(g[k])
        topt.step()
    opt = optim.partition(
        {
            "decayed": optim.adam(lr=0.05, weight_decay=0.1),
            "bias": optim.adam(lr=0.01, amsgrad=True),
        },
        {"w": "decayed", "b": "bias"},
    )
    got, _ = _agrad_train(xp, opt, p0, grads)
    _close(got, {k: v.numpy() for k, v in tp.items()}, rtol=1e-12)


def test_partition_mixes_optimizer_families(xp):
    p0 = _tree(0)
    grads = [_tree(600 + i) for i in range(15)]
    tp = _torch_params(p0)
    t_sgd = torch.optim.SGD([tp["w"]], lr=0.1, momentum=0.5, foreach=False)
    t_rms = torch.optim.RMSprop([tp["b"]], lr=0.01, centered=True, foreach=False)
    for g in grads:
        for k in tp:
            tp[k].grad = torch.tensor(g[k])
        t_sgd.step()
        t_rms.step()
    opt = optim.partition(
        {"s": optim.sgd(lr=0.1, momentum=0.5), "r": optim.rmsprop(lr=0.01, centered=True)},
        lambda params: {"w": "s", "b": "r"},
    )
    got, _ = _agrad_train(xp, opt, p0, grads)
    _close(got, {k: v.numpy() for k, v in tp.items()}, rtol=1e-12)


def test_masked_applies_inner_to_masked_leaves_only(xp):
    u, p = _tree(1, 5.0), _tree(2)
    t = optim.masked(optim.clip(0.1), {"w": True, "b": False})
    got, _ = t.update(_to(xp, u), t.init(_to(xp, p)), _to(xp, p))
    _close(got, {"w": np.clip(u["w"], -0.1, 0.1), "b": u["b"]})


def test_scale_by_learning_rate_with_schedule(xp):
    t = optim.scale_by_learning_rate(optim.step_lr(1.0, 2, 0.5))
    p = _to(xp, _tree(0))
    s = t.init(p)
    factors = []
    for _ in range(5):
        u, s = t.update(_to(xp, {k: np.ones(v) for k, v in SHAPES.items()}), s, p)
        factors.append(float(u["b"][0]))
    assert factors == [-1.0, -1.0, -0.5, -0.5, -0.25]
    assert agrad.array_namespace(u["w"]) is agrad.array_namespace(p["w"])


@settings(max_examples=25, deadline=None)
@given(
    max_norm=st.floats(1e-3, 10.0),
    scale=st.floats(1e-3, 100.0),
    seed=st.integers(0, 2**16),
)
def test_clip_by_global_norm_property(max_norm, scale, seed):
    """Any threshold and gradient size: equal to optax, and the result's norm is at most max_norm."""
    import array_api_compat.numpy as npx

    u, p = _tree(seed, scale), _tree(seed + 1)
    ref, _ = optax.clip_by_global_norm(max_norm).update(_to(jnp, u), None, _to(jnp, p))
    t = optim.clip_by_global_norm(max_norm)
    got, _ = t.update(_to(npx, u), t.init(_to(npx, p)), _to(npx, p))
    _close(got, ref)
    assert (
        float(optim.global_norm(got)) <= max_norm * (1 + 1e-12)
        or float(optim.global_norm(_to(npx, u))) < max_norm
    )


def _jitted_run(tx, params, grads_seq, apply):
    """A jitted update per step (JAX float32); returns the parameters and the state."""
    import jax

    step = jax.jit(lambda p, s, g: tx.update(g, s, p))
    state = tx.init(params)
    for g in grads_seq:
        u, state = step(params, state, g)
        params = apply(params, u)
    return params, state


def _nan_sequence():
    rng = np.random.default_rng(5)
    p0 = _tree(6)
    seq = [{k: rng.standard_normal(v.shape) for k, v in p0.items()} for _ in range(10)]
    seq[4]["w"][0, 0] = np.nan  # mini-step 2 of 3: emits nothing
    seq[7]["b"][1] = np.inf  # the emitting mini-step
    return p0, seq


_OPTAX_NAN_REF: list = []


def _optax_nan_reference():
    """``optax.apply_if_finite(optax.MultiSteps(sgd))`` on the sequence, jitted, once."""
    if not _OPTAX_NAN_REF:
        p0, seq = _nan_sequence()
        tx = optax.apply_if_finite(optax.MultiSteps(optax.sgd(0.1, momentum=0.9), 3), 2)
        ref, state = _jitted_run(
            tx,
            {k: jnp.asarray(v) for k, v in p0.items()},
            [{k: jnp.asarray(v) for k, v in g.items()} for g in seq],
            optax.apply_updates,
        )
        _OPTAX_NAN_REF.append((ref, int(state.total_notfinite)))
    return _OPTAX_NAN_REF[0]


def test_apply_if_finite_around_multi_steps_catches_a_nan_mini_step_like_optax(xp):
    """A NaN or inf on a mini-step that emits nothing is caught (the incoming gradients
    are checked, as optax does) instead of poisoning the accumulator: equal to
    ``optax.apply_if_finite(optax.MultiSteps(...))``, counters included."""
    p0, seq = _nan_sequence()
    opt = optim.apply_if_finite(optim.multi_steps(optim.sgd(0.1, momentum=0.9), 3), 2)
    params = _to(xp, p0)
    state = opt.init(params)
    for g in seq:
        params, state = opt.step(params, _to(xp, g), state, inplace=False)
    ref, total = _optax_nan_reference()
    _close(params, ref, rtol=1e-7, atol=1e-8)  # optax's MultiSteps averages as a running mean
    assert int(to_numpy(state.total_notfinite)) == total == 2
    assert np.all(np.isfinite(to_numpy(params["w"])))


@pytest.mark.parametrize("kind", ["masked", "partition"])
def test_masked_and_partition_with_unsorted_dicts_under_jit_match_optax(kind):
    """Insertion-ordered (unsorted) params and mask dicts: jax.jit returns the dicts
    sorted, and the state still fits (it lists leaves in sorted-key order); equal to
    ``optax.masked`` / ``optax.partition``."""
    import jax

    with jax.enable_x64(False):
        rng = np.random.default_rng(7)
        shapes = {"w": (6, 5), "s": (), "b": (5,)}  # not sorted
        p0 = {k: jnp.asarray(rng.standard_normal(s), dtype=jnp.float32) for k, s in shapes.items()}
        seq = [
            {k: jnp.asarray(rng.standard_normal(s), dtype=jnp.float32) for k, s in shapes.items()}
            for _ in range(3)
        ]
        mask = {"s": True, "b": False, "w": True}  # another order
        labels = {"b": "y", "w": "x", "s": "x"}
        if kind == "masked":
            ours = optim.masked(optim.scale_by_adam(), mask)
            theirs = optax.masked(optax.scale_by_adam(), mask)
        else:
            ours = optim.partition({"x": optim.scale_by_adam(), "y": optim.sgd(0.1)}, labels)
            theirs = optax.partition({"x": optax.scale_by_adam(), "y": optax.sgd(0.1)}, labels)

        def apply(p, u):
            return {k: p[k] + u[k] for k in p}

        got, _ = _jitted_run(ours, p0, seq, apply)
        ref, _ = _jitted_run(theirs, p0, seq, optax.apply_updates)
        eager, _ = _jitted_run(ours, dict(reversed(list(p0.items()))), seq, apply)
    _close(got, ref, rtol=1e-6, atol=1e-7)
    _close(eager, ref, rtol=1e-6, atol=1e-7)


def test_masked_with_nothing_masked_passes_updates_through(xp):
    """An all-False mask leaves every update unchanged (optax.masked does the same)."""
    p0 = _to(xp, _tree(8))
    opt = optim.masked(optim.adam(0.1), {"w": False, "b": False})
    state = opt.init(p0)
    g = _to(xp, _tree(9))
    updates, _ = opt.update(g, state, p0)
    _close(updates, {k: to_numpy(v) for k, v in g.items()})
