"""optax both ways (to_optax, from_optax, agrad schedules in optax) and inject_hyperparams.

References are optax's own optimizers run the same way; everything float32 with x64
off (the JAX default) unless a test says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest

from agrad import optim

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jnp = jax.numpy

SHAPES = {"b": (4,), "w": (5, 4)}
STEPS = 15


def _data(seed=0):
    rng = np.random.default_rng(seed)
    p0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    xs = rng.standard_normal((STEPS, 8, 5)).astype(np.float32)
    ys = rng.standard_normal((STEPS, 8, 4)).astype(np.float32)
    return p0, xs, ys


def _loss(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


def _train(tx, scan=True):
    """A jitted training loop (grad + update): lax.scan over the steps, or a jitted step."""
    p0, xs, ys = _data()
    params = {k: jnp.asarray(v) for k, v in p0.items()}

    def step(carry, batch):
        params, state = carry
        grads = jax.grad(_loss)(params, *batch)
        updates, state = tx.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    carry = (params, tx.init(params))
    if scan:
        carry, _ = jax.jit(lambda c: jax.lax.scan(step, c, (xs, ys)))(carry)
    else:
        jstep = jax.jit(step)
        for t in range(STEPS):
            carry, _ = jstep(carry, (xs[t], ys[t]))
    return carry


def _close(a, b, rtol=1e-5, atol=1e-6):
    for k in SHAPES:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=rtol, atol=atol)


def test_to_optax_is_a_gradient_transformation_and_equals_optax_adam():
    with jax.enable_x64(False):
        tx = optim.to_optax(optim.adam(1e-2))
        assert isinstance(tx, optax.GradientTransformation)
        got, state = _train(tx, scan=False)
        ref, _ = _train(optax.adam(1e-2), scan=False)
        assert state.count.dtype == jnp.int32 and int(state.count) == STEPS
    _close(got, ref)


def test_optax_chain_with_to_optax_lion_equals_optax_lion():
    with jax.enable_x64(False):
        kw = dict(b1=0.9, b2=0.99, weight_decay=0.01)
        got, _ = _train(
            optax.chain(optax.clip_by_global_norm(1.0), optim.to_optax(optim.lion(3e-3, **kw)))
        )
        ref, _ = _train(optax.chain(optax.clip_by_global_norm(1.0), optax.lion(3e-3, **kw)))
    _close(got, ref)


def test_multisteps_around_to_optax_equals_multisteps_around_optax():
    with jax.enable_x64(False):
        got, _ = _train(optax.MultiSteps(optim.to_optax(optim.adam(1e-2)), every_k_schedule=3))
        ref, _ = _train(optax.MultiSteps(optax.adam(1e-2), every_k_schedule=3))
    _close(got, ref)


def test_optax_inject_hyperparams_around_to_optax():
    """optax.inject_hyperparams with a factory of to_optax; lr changed mid-run in the state."""
    with jax.enable_x64(False):

        def run(tx):
            p0, xs, ys = _data()
            params = {k: jnp.asarray(v) for k, v in p0.items()}
            state = tx.init(params)

            @jax.jit
            def step(params, state, x, y):
                updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
                return optax.apply_updates(params, updates), state

            for t in range(STEPS):
                if t == STEPS // 2:
                    state.hyperparams["learning_rate"] = jnp.asarray(1e-3)
                params, state = step(params, state, xs[t], ys[t])
            return params

        got = run(
            optax.inject_hyperparams(
                lambda learning_rate: optim.to_optax(optim.adam(learning_rate))
            )(learning_rate=1e-2)
        )
        ref = run(optax.inject_hyperparams(optax.adam)(learning_rate=1e-2))
    _close(got, ref)


def test_agrad_chain_takes_an_optax_link():
    """chain(optax.clip_by_global_norm(1.0), adam) equals chain(agrad's clip, adam)."""
    with jax.enable_x64(False):
        got, _ = _train(
            optim.to_optax(optim.chain(optax.clip_by_global_norm(0.5), optim.adam(1e-2)))
        )
        wrapped = optim.chain(optim.from_optax(optax.clip_by_global_norm(0.5)), optim.adam(1e-2))
        again, _ = _train(optim.to_optax(wrapped))
        ref, _ = _train(
            optim.to_optax(optim.chain(optim.clip_by_global_norm(0.5), optim.adam(1e-2)))
        )
    _close(got, ref, rtol=1e-6)
    _close(again, got, rtol=0, atol=0)


def test_from_optax_refuses_other_backends_before_anything_changes():
    opt = optim.chain(optax.clip_by_global_norm(1.0), optim.sgd(0.1))
    params = {"w": np.ones(3, np.float32)}
    with pytest.raises(
        TypeError, match=r"optax transformations run on JAX arrays, got a numpy array"
    ):
        opt.init(params)
    np.testing.assert_array_equal(params["w"], 1.0)


SCHEDULES = [
    optim.cosine_annealing_lr(1e-2, T_max=20, eta_min=1e-4),
    optim.warmup_cosine(1e-2, 5, 30),
    optim.one_cycle_lr(1e-2, STEPS),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_agrad_schedule_as_optax_schedule_under_jit(sched):
    """optax.adam(learning_rate=agrad schedule) jitted equals optax.adam with the values tabled."""
    table = jnp.asarray([sched(t) for t in range(STEPS + 1)], dtype=jnp.float32)
    with jax.enable_x64(False):
        got, _ = _train(optax.adam(sched))
        ref, _ = _train(optax.adam(lambda count: table[count]))
    _close(got, ref)


# -- agrad.optim.inject_hyperparams -------------------------------------------------


def test_inject_hyperparams_lr_in_state_changes_the_step(xp):
    """Changing the injected lr mid-run equals two optimizers run back to back."""
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(5)
    gs = rng.standard_normal((6, 5))
    opt = optim.inject_hyperparams(optim.adam)(lr=0.1, betas=(0.9, 0.99))
    params = {"w": xp.asarray(p0)}
    state = opt.init(params)
    assert tuple(state.hyperparams["lr"].shape) == ()
    ref_opt, ref_opt2 = optim.adam(0.1, betas=(0.9, 0.99)), optim.adam(0.01, betas=(0.9, 0.99))
    ref = {"w": xp.asarray(p0)}
    ref_state = ref_opt.init(ref)
    for t in range(6):
        if t == 3:
            state = state.with_hyperparams(lr=0.01)
        params, state = opt.step(params, {"w": xp.asarray(gs[t])}, state, inplace=False)
        ref, ref_state = (ref_opt if t < 3 else ref_opt2).step(
            ref, {"w": xp.asarray(gs[t])}, ref_state, inplace=False
        )
    from agrad.testing import to_numpy

    np.testing.assert_allclose(to_numpy(params["w"]), to_numpy(ref["w"]), rtol=1e-12)


def test_inject_hyperparams_under_jit_saves_and_loads(tmp_path):
    with jax.enable_x64(False):
        opt = optim.inject_hyperparams(optim.sgd, static_args=("momentum",))(lr=0.1, momentum=0.9)
        params = {"w": jnp.ones(3)}
        state = opt.init(params)
        assert state.hyperparams["lr"].dtype == jnp.float32

        @jax.jit
        def step(params, state):
            updates, state = opt.update({"w": params["w"] * 2.0}, state, params)
            return optim.apply_updates(params, updates, inplace=False), state

        params, state = step(params, state)
        state = state.with_hyperparams(lr=0.0)
        before = np.asarray(params["w"])
        optim.save(state, tmp_path / "s.npz")
        loaded = optim.load(tmp_path / "s.npz", like=params)
        params, _ = step(params, loaded)
    assert float(loaded.hyperparams["lr"]) == 0.0
    np.testing.assert_array_equal(np.asarray(params["w"]), before - 0.0)


def test_inject_hyperparams_refuses_a_structural_hyperparameter():
    """sync_period decides when lookahead syncs: static, and the error says so."""
    with pytest.raises(
        TypeError, match=r"sync_period cannot be injected .*static_args=\('sync_period',\)"
    ):
        optim.inject_hyperparams(optim.lookahead)(
            fast_optimizer=optim.sgd(0.1), sync_period=2, slow_step_size=0.5
        )


def test_setting_hyperparams_raises_and_says_what_to_do():
    opt = optim.adam(0.1)
    with pytest.raises(
        TypeError, match=r"fixed when it is built.*inject_hyperparams\(agrad\.optim\.adam\)"
    ):
        opt.hyperparams["lr"] = 0.01
    with pytest.raises(TypeError, match="fixed when it is built"):
        opt.hyperparams.update(lr=0.01)
    assert opt.hyperparams["lr"] == 0.1
