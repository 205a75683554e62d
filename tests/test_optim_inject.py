"""inject_hyperparams: every numeric hyperparameter of every constructor, changed mid-run.

References: the optimizer built anew with the new values at the change (every
constructor, every backend), ``torch.optim`` with ``param_groups[0][name]`` changed at
that step (the torch family), and ``optax.inject_hyperparams`` of optax's own
optimizer under ``jax.jit`` (the optax family).
"""

from __future__ import annotations

import numpy as np
import pytest

from agrad import optim
from agrad.testing import to_numpy
from agrad.testing.plugin import backend_fixture

o = optim
STEPS, AT = 4, 2
# eager Dask graphs grow with every step (20 s for one case): Dask runs one case below;
# JAX runs eagerly the cases optax has not (the others: under jit, against optax)
inject_xp = backend_fixture(["numpy", "torch", "array_api_strict", "cupy"], name="inject_xp")
jax_xp = backend_fixture(["jax"], name="jax_xp")
SHAPES = {"b": (4,), "w": (3, 4)}


# the cases the optax comparison under jax.jit runs (OPTAX below)
_OPTAX_NAMES = [
    "lion",
    "lamb",
    "lars",
    "adafactor",
    "adabelief",
    "adan",
    "yogi",
    "novograd",
    "sign_sgd",
    "signum",
    "schedule_free_adamw",
    "clip_by_global_norm",
    "clip",
    "add_decayed_weights",
    "scale_values",
    "trace",
    "scale_by_adam",
    "scale_by_trust_ratio",
    "clip_by_block_rms",
    "scale_by_param_block_rms",
    "scale_by_factored_rms",
    "scale_by_rms",
]


# name -> (factory, static kwargs, injected kwargs, the new values at step AT, shapes)
CASES: dict[str, tuple] = {
    # torch family
    "sgd": (
        o.sgd,
        {"nesterov": False},
        dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.1),
        dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.2),
    ),
    "sgd_nesterov": (
        o.sgd,
        {"nesterov": True},
        dict(lr=0.1, momentum=0.9, weight_decay=0.1),
        dict(lr=0.05, momentum=0.5, weight_decay=0.2),
    ),
    "adam": (
        o.adam,
        {"amsgrad": True},
        dict(lr=0.1, betas=(0.9, 0.99), eps=1e-3, weight_decay=0.1),
        dict(lr=0.05, betas=(0.5, 0.9), eps=1e-2, weight_decay=0.3),
    ),
    "adamw": (
        o.adamw,
        {},
        dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
        dict(lr=0.02, betas=(0.3, 0.9), eps=1e-3, weight_decay=0.2),
    ),
    "nadam": (
        o.nadam,
        {},
        dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, momentum_decay=0.01),
        dict(lr=0.02, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.2, momentum_decay=0.02),
    ),
    "radam": (
        o.radam,
        {},
        dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
        dict(lr=0.02, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.2),
    ),
    "rmsprop": (
        o.rmsprop,
        {"centered": False},
        dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.5),
        dict(lr=0.02, alpha=0.6, eps=1e-3, weight_decay=0.2, momentum=0.3),
    ),
    "rmsprop_centered": (
        o.rmsprop,
        {"centered": True},
        dict(lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.1, momentum=0.5),
        dict(lr=0.02, alpha=0.3, eps=1e-3, weight_decay=0.2, momentum=0.3),
    ),
    "adagrad": (
        o.adagrad,
        {},
        dict(lr=0.01, lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.1, eps=1e-8),
        dict(lr=0.02, lr_decay=0.2, weight_decay=0.2, initial_accumulator_value=0.5, eps=1e-3),
    ),
    "adadelta": (
        o.adadelta,
        {},
        dict(lr=0.5, rho=0.8, eps=1e-6, weight_decay=0.1),
        dict(lr=0.3, rho=0.3, eps=1e-3, weight_decay=0.2),
    ),
    "adamax": (
        o.adamax,
        {},
        dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
        dict(lr=0.02, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.2),
    ),
    "rprop": (
        o.rprop,
        {},
        dict(lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0)),
        dict(etas=(0.3, 1.5), step_sizes=(1e-3, 0.012)),
    ),
    "asgd": (
        o.asgd,
        {},
        dict(lr=0.01, lambd=1e-2, alpha=0.75, t0=2.0, weight_decay=0.1),
        dict(lr=0.02, lambd=1e-1, alpha=0.5, t0=1.0, weight_decay=0.2),
    ),
    "adafactor_torch": (
        o.adafactor_torch,
        {},
        dict(lr=0.01, beta2_decay=-0.8, eps=(1e-30, 1e-3), d=1.0, weight_decay=0.1),
        dict(lr=0.02, beta2_decay=-0.5, eps=(1e-20, 1e-2), d=1.5, weight_decay=0.2),
    ),
    "muon": (
        o.muon,
        {"ns_steps": 3},
        dict(
            lr=0.01,
            weight_decay=0.1,
            momentum=0.95,
            eps=1e-7,
            ns_coefficients=(3.4445, -4.7750, 2.0315),
        ),
        dict(lr=0.02, weight_decay=0.2, momentum=0.6, eps=1e-3, ns_coefficients=(3.0, -4.0, 2.0)),
        {"w": (3, 4)},
    ),
    # optax family
    "lion": (
        o.lion,
        {},
        dict(lr=0.01, b1=0.9, b2=0.99, weight_decay=0.1),
        dict(lr=0.02, b1=0.5, b2=0.8, weight_decay=0.2),
    ),
    "lamb": (
        o.lamb,
        {},
        dict(lr=0.01, b1=0.9, b2=0.99, eps=1e-6, eps_root=1e-8, weight_decay=0.1),
        dict(lr=0.02, b1=0.5, b2=0.8, eps=1e-3, eps_root=1e-4, weight_decay=0.2),
    ),
    "lars": (
        o.lars,
        {},
        dict(lr=0.1, weight_decay=0.1, trust_coefficient=0.01, eps=1e-6, momentum=0.9),
        dict(lr=0.05, weight_decay=0.2, trust_coefficient=0.05, eps=1e-3, momentum=0.5),
    ),
    "adafactor": (
        o.adafactor,
        {"min_dim_size_to_factor": 2},
        dict(
            lr=0.01,
            decay_rate=0.8,
            clipping_threshold=1.0,
            momentum=0.9,
            weight_decay_rate=0.1,
            eps=1e-30,
        ),
        dict(
            lr=0.02,
            decay_rate=0.6,
            clipping_threshold=0.5,
            momentum=0.5,
            weight_decay_rate=0.2,
            eps=1e-10,
        ),
    ),
    "adabelief": (
        o.adabelief,
        {},
        dict(lr=0.01, b1=0.9, b2=0.99, eps=1e-8, eps_root=1e-8),
        dict(lr=0.02, b1=0.5, b2=0.8, eps=1e-3, eps_root=1e-4),
    ),
    "adan": (
        o.adan,
        {},
        dict(lr=0.01, b1=0.98, b2=0.92, b3=0.99, eps=1e-8, eps_root=1e-8, weight_decay=0.1),
        dict(lr=0.02, b1=0.5, b2=0.6, b3=0.7, eps=1e-3, eps_root=1e-4, weight_decay=0.2),
    ),
    "yogi": (
        o.yogi,
        {},
        dict(lr=0.01, b1=0.9, b2=0.99, eps=1e-3),
        dict(lr=0.02, b1=0.5, b2=0.8, eps=1e-2),
    ),
    "novograd": (
        o.novograd,
        {},
        dict(lr=0.01, b1=0.9, b2=0.25, eps=1e-6, eps_root=1e-8, weight_decay=0.1),
        dict(lr=0.02, b1=0.5, b2=0.6, eps=1e-3, eps_root=1e-4, weight_decay=0.2),
    ),
    "sign_sgd": (o.sign_sgd, {}, dict(lr=0.01), dict(lr=0.02)),
    "signum": (o.signum, {}, dict(lr=0.01, beta=0.9), dict(lr=0.02, beta=0.5)),
    "schedule_free_adamw": (
        o.schedule_free_adamw,
        {},
        dict(lr=0.01, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1, weight_lr_power=2.0),
        dict(lr=0.02, b1=0.8, b2=0.8, eps=1e-3, weight_decay=0.2, weight_lr_power=1.0),
    ),
    "lookahead": (
        o.lookahead,
        {"fast_optimizer": o.sgd(0.1), "sync_period": 2},
        dict(slow_step_size=0.5),
        dict(slow_step_size=0.8),
    ),
    # transforms
    "clip_by_global_norm": (o.clip_by_global_norm, {}, dict(max_norm=1.0), dict(max_norm=0.5)),
    "clip": (o.clip, {}, dict(max_delta=0.5), dict(max_delta=0.2)),
    "add_decayed_weights": (
        o.add_decayed_weights,
        {},
        dict(weight_decay=0.1),
        dict(weight_decay=0.3),
    ),
    "scale_values": (o.scale_values, {}, dict(step_size=-0.1), dict(step_size=-0.3)),
    "trace": (o.trace, {"nesterov": True}, dict(decay=0.9), dict(decay=0.5)),
    "ema_params": (o.ema_params, {}, dict(decay=0.9), dict(decay=0.5)),
    "scale_by_adam": (
        o.scale_by_adam,
        {},
        dict(b1=0.9, b2=0.99, eps=1e-8, eps_root=1e-8),
        dict(b1=0.5, b2=0.8, eps=1e-3, eps_root=1e-4),
    ),
    "scale_by_trust_ratio": (
        o.scale_by_trust_ratio,
        {},
        dict(min_norm=0.1, trust_coefficient=0.5, eps=1e-6),
        dict(min_norm=5.0, trust_coefficient=0.8, eps=1e-3),
    ),
    "clip_by_block_rms": (o.clip_by_block_rms, {}, dict(threshold=1.0), dict(threshold=0.3)),
    "scale_by_param_block_rms": (
        o.scale_by_param_block_rms,
        {},
        dict(min_scale=1e-3),
        dict(min_scale=5.0),
    ),
    "scale_by_factored_rms": (
        o.scale_by_factored_rms,
        {"min_dim_size_to_factor": 2},
        dict(decay_rate=0.8, epsilon=1e-30),
        dict(decay_rate=0.6, epsilon=1e-10),
    ),
    "scale_by_rms": (
        o.scale_by_rms,
        {},
        dict(decay=0.9, eps=1e-8, initial_scale=0.1),
        dict(decay=0.5, eps=1e-3, initial_scale=0.5),
    ),
    "schedule_free": (
        o.schedule_free,
        {"base_optimizer": o.sgd(0.1)},
        dict(lr=0.1, b1=0.9, weight_lr_power=2.0),
        dict(lr=0.2, b1=0.8, weight_lr_power=1.0),
    ),
}


def _case(name):
    case = CASES[name]
    return (*case, SHAPES) if len(case) == 4 else case


def _problem(xp, shapes, dtype):
    rng = np.random.default_rng(0)
    mk = {k: rng.standard_normal(s) for k, s in shapes.items()}
    c = {k: rng.uniform(0.5, 2.0, s) for k, s in shapes.items()}
    t = {k: rng.standard_normal(s) for k, s in shapes.items()}

    def cast(tree):
        return {k: xp.asarray(np.asarray(v, dtype=dtype)) for k, v in tree.items()}

    return cast(mk), cast(c), cast(t)


def _grads(params, c, t):
    return {k: params[k] * c[k] - t[k] for k in params}


def _run(make_opt, xp, shapes, dtype, change_state=None, rebuild=None):
    params, c, t = _problem(xp, shapes, dtype)
    opt = make_opt()
    state = opt.init(params)
    for i in range(STEPS):
        if i == AT:
            if change_state is not None:
                state = change_state(state)
            if rebuild is not None:
                opt = rebuild()
        updates, state = opt.update(_grads(params, c, t), state, params)
        params = o.apply_updates(params, updates, inplace=False)
    return params, state


@pytest.mark.parametrize("name", sorted(CASES))
def test_injected_change_equals_building_anew(inject_xp, name):
    """Every numeric hyperparameter injected and changed at step 2 equals the optimizer
    built anew with the new values then (state carried over); float32 stays float32."""
    _check_anew(inject_xp, name)


# eager JAX dispatches op by op (up to 12 s a case): the rules are the same code on
# every backend, so JAX runs one case of each kind the optax test below does not cover
JAX_EAGER = ["adam", "rmsprop_centered", "asgd", "schedule_free"]


@pytest.mark.parametrize("name", JAX_EAGER)
def test_injected_change_equals_building_anew_jax(jax_xp, name):
    """The same on eager JAX (float32, x64 on: float64 injected values)."""
    _check_anew(jax_xp, name)


def _check_anew(xp, name):
    factory, static, inj, change, shapes = _case(name)
    dtype = np.float32
    opt = o.inject_hyperparams(factory, static_args=tuple(static))(**static, **inj)
    got, state = _run(
        lambda: opt, xp, shapes, dtype, change_state=lambda s: s.with_hyperparams(**change)
    )
    assert set(state.hyperparams) == set(inj)
    ref, _ = _run(
        lambda: factory(**static, **inj),
        xp,
        shapes,
        dtype,
        rebuild=lambda: factory(**static, **{**inj, **change}),
    )
    for k in got:
        assert got[k].dtype == ref[k].dtype, (k, got[k].dtype)
        np.testing.assert_allclose(to_numpy(got[k]), to_numpy(ref[k]), rtol=2e-6, atol=1e-6)


# -- torch.optim with param_groups[0][name] changed at the same step ---------------------

TORCH = {
    "sgd": "SGD",
    "sgd_nesterov": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "nadam": "NAdam",
    "radam": "RAdam",
    "rmsprop": "RMSprop",
    "rmsprop_centered": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "adamax": "Adamax",
    "rprop": "Rprop",
    "asgd": "ASGD",
    "adafactor_torch": "Adafactor",
    "muon": "Muon",
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_injected_change_equals_torch_param_groups(name):
    """NumPy float64, injected values changed at step 2 == torch.optim with the
    param group's values changed at step 2 (torch 2.13, CPU)."""
    torch = pytest.importorskip("torch")
    factory, static, inj, change, shapes = _case(name)
    import numpy as xp

    from test_optim_torch import torch_float64_scalars
    from test_optim_torch_more import _muon_in_float64

    opt = o.inject_hyperparams(factory, static_args=tuple(static))(**static, **inj)
    got, _ = _run(
        lambda: opt, xp, shapes, np.float64, change_state=lambda s: s.with_hyperparams(**change)
    )
    params, c, t = _problem(xp, shapes, np.float64)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    kw = {**static, **inj}
    if name == "muon":
        kw["adjust_lr_fn"] = None
    tc = getattr(torch.optim, TORCH[name])
    topt = tc(list(tp.values()), **kw)
    tcs = {k: torch.tensor(v) for k, v in c.items()}
    tts = {k: torch.tensor(v) for k, v in t.items()}
    with torch_float64_scalars(), _muon_in_float64():
        for i in range(STEPS):
            if i == AT:
                for k, v in change.items():
                    topt.param_groups[0][k] = v
            topt.zero_grad()
            for k, p in tp.items():
                p.grad = (p * tcs[k] - tts[k]).detach()
            topt.step()
    for k in got:
        ref = tp[k].detach().numpy()
        np.testing.assert_allclose(got[k], ref, rtol=1e-10, atol=1e-12, err_msg=k)


@pytest.mark.parametrize(
    ("start", "later", "dampening", "nesterov"),
    [(0.0, 0.0, 0.0, False), (0.0, 0.9, 0.0, False), (0.9, 0.0, 0.0, False), (0.9, 0.5, 0.0, True)],
)
def test_injected_sgd_momentum_from_zero_equals_torch(start, later, dampening, nesterov):
    """``inject_hyperparams(sgd)(momentum=0.0)`` steps (it once raised at its first
    step: its state had no buffer, its array rule read one), and a momentum turned
    on or off mid-run == torch.optim.SGD with the param group's momentum changed.
    Not covered, a known difference: momentum turned on mid-run with a nonzero
    dampening (torch's first buffer is the gradient, agrad's 0 * momentum + (1 -
    dampening) * g)."""
    torch = pytest.importorskip("torch")
    import numpy as xp

    static = {"nesterov": nesterov} if nesterov else {}
    kw = {"lr": 0.1, "momentum": start, "dampening": dampening}
    opt = o.inject_hyperparams(o.sgd, static_args=tuple(static))(**static, **kw)
    got, _ = _run(
        lambda: opt,
        xp,
        SHAPES,
        np.float64,
        change_state=lambda s: s.with_hyperparams(momentum=later),
    )
    params, c, t = _problem(xp, SHAPES, np.float64)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    topt = torch.optim.SGD(list(tp.values()), **static, **kw)
    for i in range(STEPS):
        if i == AT:
            topt.param_groups[0]["momentum"] = later
        topt.zero_grad()
        for k, p in tp.items():
            p.grad = (p * torch.tensor(c[k]) - torch.tensor(t[k])).detach()
        topt.step()
    for k in got:
        np.testing.assert_allclose(
            got[k], tp[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k
        )


def test_injected_on_dask_equals_building_anew(xp):
    """One optimizer with several injected values on every backend, Dask included."""
    if "dask" not in xp.__name__:
        pytest.skip("the other backends run every constructor above")
    factory, static, inj, change, shapes = _case("adamw")
    opt = o.inject_hyperparams(factory)(**inj)
    got, _ = _run(
        lambda: opt, xp, shapes, np.float64, change_state=lambda s: s.with_hyperparams(**change)
    )
    ref, _ = _run(
        lambda: factory(**inj), xp, shapes, np.float64, rebuild=lambda: factory(**{**inj, **change})
    )
    for k in got:
        np.testing.assert_allclose(to_numpy(got[k]), to_numpy(ref[k]), rtol=1e-12)


# -- optax.inject_hyperparams of optax's own optimizer, both under jax.jit -------------

OPTAX = {  # agrad case -> (optax factory path, optax static args); lr is learning_rate
    "lion": ("lion", ()),
    "lamb": ("lamb", ()),
    "lars": ("lars", ()),
    "adafactor": ("adafactor", None),
    "adabelief": ("adabelief", ()),
    "adan": ("adan", ()),
    "yogi": ("yogi", ()),
    "novograd": ("novograd", ()),
    "sign_sgd": ("sign_sgd", ()),
    "signum": ("signum", ()),
    "schedule_free_adamw": ("contrib.schedule_free_adamw", ()),
    "clip_by_global_norm": ("clip_by_global_norm", ()),
    "clip": ("clip", ()),
    "add_decayed_weights": ("add_decayed_weights", ()),
    "scale_values": ("scale", ()),
    "trace": ("trace", ("nesterov",)),
    "scale_by_adam": ("scale_by_adam", ()),
    "scale_by_trust_ratio": ("scale_by_trust_ratio", ()),
    "clip_by_block_rms": ("clip_by_block_rms", ()),
    "scale_by_param_block_rms": ("scale_by_param_block_rms", ()),
    # optax.inject_hyperparams fails on these two (decay_rate reaches a callable as a
    # tracer): the reference is optax's optimizer built anew with the new values
    "scale_by_factored_rms": ("scale_by_factored_rms", None),
    "scale_by_rms": ("scale_by_rms", ()),
}


FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
assert sorted(OPTAX) == sorted(_OPTAX_NAMES)


def _optax_kw(kw):
    return {("learning_rate" if k == "lr" else k): v for k, v in kw.items()}


@pytest.mark.parametrize("name", sorted(OPTAX))
def test_injected_change_under_jit_equals_optax_inject_hyperparams(name):
    """JAX float32 (x64 off), jitted steps: hyperparameters changed in the state at step 2
    equal ``optax.inject_hyperparams`` of optax's optimizer changed the same way."""
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    import functools
    import operator

    factory, static, inj, change, shapes = _case(name)
    path, optax_static = OPTAX[name]
    optax_factory = functools.reduce(getattr, path.split("."), optax)
    with jax.enable_x64(False):
        jnp = jax.numpy
        params0, c, t = _problem(jnp, shapes, np.float32)
        ours = o.inject_hyperparams(factory, static_args=tuple(static))(**static, **inj)

        def run(tx, change_state, tx_after=None):
            def make(tx):
                def step(params, state):
                    updates, state = tx.update(_grads(params, c, t), state, params)
                    return jax.tree.map(operator.add, params, updates), state

                # XLA's cheaper passes: compiling is most of this test's time
                return jax.jit(step, compiler_options=FAST)

            step = make(tx)
            params, state = params0, tx.init(params0)
            for i in range(STEPS):
                if i == AT:
                    state = change_state(state)
                    if tx_after is not None:
                        step = make(tx_after)
                params, state = step(params, state)
            return params, state

        got, state = run(ours, lambda s: s.with_hyperparams(**change))
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state.hyperparams))

        def optax_change(state):
            hp = dict(state.hyperparams)
            for k, v in _optax_kw(change).items():
                hp[k] = jnp.asarray(v, dtype=hp[k].dtype)
            return state._replace(hyperparams=hp)

        if optax_static is None:
            before = optax_factory(**_optax_kw(static), **_optax_kw(inj))
            after = optax_factory(**_optax_kw(static), **_optax_kw({**inj, **change}))
            ref, _ = run(before, lambda s: s, after)
        else:
            theirs = optax.inject_hyperparams(optax_factory, static_args=optax_static)(
                **_optax_kw(static), **_optax_kw(inj)
            )
            ref, _ = run(theirs, optax_change)
    for k in got:
        assert got[k].dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=2e-5, atol=1e-6)


def test_injected_state_saves_and_loads_with_tuples(tmp_path):
    """Injected values (a tuple included) are state: saved, loaded, and used after loading."""
    import numpy as xp

    opt = o.inject_hyperparams(o.adam)(lr=0.1, betas=(0.9, 0.99), weight_decay=0.1)
    params, c, t = _problem(xp, SHAPES, np.float64)
    state = opt.init(params)
    params, state = opt.step(params, _grads(params, c, t), state, inplace=False)
    state = state.with_hyperparams(betas=(0.5, 0.8), weight_decay=0.3)
    o.save(state, tmp_path / "s.npz")
    loaded = o.load(tmp_path / "s.npz", like=params)
    assert isinstance(loaded.hyperparams["betas"], tuple)
    assert float(loaded.hyperparams["betas"][0]) == 0.5
    a, _ = opt.step(params, _grads(params, c, t), state, inplace=False)
    b, _ = opt.step(params, _grads(params, c, t), loaded, inplace=False)
    ref_opt = o.adam(0.1, betas=(0.5, 0.8), weight_decay=0.3)
    r, _ = ref_opt.step(params, _grads(params, c, t), state.inner_state, inplace=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        np.testing.assert_allclose(a[k], r[k], rtol=1e-14)


@pytest.mark.parametrize(
    ("factory", "kw", "name"),
    [
        (
            o.lookahead,
            dict(fast_optimizer=o.sgd(0.1), sync_period=2, slow_step_size=0.5),
            "sync_period",
        ),
        (o.adafactor, dict(lr=0.1, min_dim_size_to_factor=2), "min_dim_size_to_factor"),
        (o.muon, dict(lr=0.1, ns_steps=3), "ns_steps"),
    ],
)
def test_structural_hyperparameter_is_refused_and_says_static(factory, kw, name):
    with pytest.raises(TypeError, match=rf"{name} cannot be injected .*static_args=\('{name}',\)"):
        o.inject_hyperparams(factory)(**kw)


def test_injected_value_is_checked_by_value_and_shape():
    import numpy as xp

    opt = o.inject_hyperparams(o.adam)(lr=0.1, betas=(0.9, 0.99))
    params, c, t = _problem(xp, SHAPES, np.float64)
    state = opt.init(params)
    bad = state.with_hyperparams(betas=(1.5, 0.99))
    with pytest.raises(ValueError, match=r"adam: invalid betas\[0\]: 1.5 "):
        opt.update(_grads(params, c, t), bad, params)
    with pytest.raises(ValueError, match=r"invalid eps: an array of shape \(2,\)"):
        o.adam(0.1, eps=xp.asarray([1e-8, 1e-8]))
    with pytest.raises(KeyError, match="'eps' is not an injected hyperparameter"):
        state.with_hyperparams(eps=1e-3)


# -- the compiled route (NumPy and torch in place): injected values are inputs --------


def _route_compiled(opt, params, state, steps=2):
    """Whether the compiled route ran ``opt`` (one program compiled, none declined)."""
    from agrad.optim import fastpath

    for _ in range(steps):
        grads = {k: v * 1.5 - 0.5 for k, v in params.items()}
        params, state = opt.step(params, grads, state)
    programs = fastpath._programs(opt).values()
    return len(programs) == 1 and programs[0] is not fastpath._DECLINED and len(programs[0]) == 1


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(TORCH))
def test_compiled_route_takes_injected_values_as_inputs(monkeypatch, lib, name):
    """In place with the compiled route on == the generic path (route off), values
    changed at step 2; the route runs the injected optimizer wherever it runs the
    plain one, with one program (no value baked in: a change does not recompile)."""
    from agrad.optim import fastpath

    factory, static, inj, change, shapes = _case(name)
    if lib == "torch":
        torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    data = {k: rng.standard_normal(s) for k, s in shapes.items()}

    def fresh():
        return {k: (v.copy() if lib == "numpy" else torch.tensor(v)) for k, v in data.items()}

    outs = []
    for fast in (True, False):
        monkeypatch.setattr(fastpath, "enabled", fast)
        params = fresh()
        opt = o.inject_hyperparams(factory, static_args=tuple(static))(**static, **inj)
        state = opt.init(params)
        for i in range(STEPS):
            if i == AT:
                state = state.with_hyperparams(**change)
            grads = {k: v * 1.5 - 0.5 for k, v in params.items()}
            params, state = opt.step(params, grads, state)
        outs.append({k: to_numpy(v) for k, v in params.items()})
        if fast:
            programs = fastpath._programs(opt).values()
            taken = len(programs) == 1 and programs[0] is not fastpath._DECLINED
            taken = taken and len(programs[0]) == 1
    for k in outs[0]:
        np.testing.assert_allclose(outs[0][k], outs[1][k], rtol=1e-12, atol=1e-14, err_msg=k)
    monkeypatch.setattr(fastpath, "enabled", True)
    plain = factory(**static, **inj)
    params = fresh()
    assert taken == _route_compiled(plain, params, plain.init(params))
