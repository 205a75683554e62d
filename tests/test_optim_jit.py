"""Every optimizer, transform and schedule of agrad.optim under ``jax.jit`` and ``jax.lax.scan``.

Each case runs eagerly (``opt.step`` on NumPy arrays: the same rule, one call per
step; JAX op by op would compile every operation), as one jitted step (grad + update)
and as ``lax.scan`` over all steps; the three must agree to rounding (XLA fuses
differently, and without x64 JAX computes the bias corrections in float32). Float32 with x64 off
(the JAX default: int32 counts, float32 scalars) and float64 with x64 on.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from agrad import optim

jax = pytest.importorskip("jax")
jnp = jax.numpy

SHAPES = {"b": (5,), "s": (), "w": (6, 5)}
STEPS = 5
MASK = {"b": False, "s": True, "w": True}
LABELS = {"b": "b", "s": "a", "w": "a"}
SCHED = optim.warmup_cosine(0.05, 2, 20)


def _cases():
    o = optim
    return {
        # torch family: every option that changes the rule's code path
        "sgd": lambda: o.sgd(0.05),
        "sgd_momentum": lambda: o.sgd(0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
        "sgd_nesterov": lambda: o.sgd(SCHED, momentum=0.9, nesterov=True, maximize=True),
        "adam": lambda: o.adam(0.01),
        "adam_amsgrad": lambda: o.adam(SCHED, amsgrad=True, weight_decay=0.1, maximize=True),
        "adamw": lambda: o.adamw(0.01, weight_decay=0.1),
        "nadam": lambda: o.nadam(0.01, weight_decay=0.01),
        "nadam_decoupled": lambda: o.nadam(SCHED, weight_decay=0.01, decoupled_weight_decay=True),
        "radam": lambda: o.radam(0.01, weight_decay=0.01),
        "radam_decoupled": lambda: o.radam(SCHED, weight_decay=0.1, decoupled_weight_decay=True),
        "rmsprop": lambda: o.rmsprop(0.01),
        "rmsprop_full": lambda: o.rmsprop(0.01, momentum=0.5, centered=True, weight_decay=0.01),
        "adagrad": lambda: o.adagrad(0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        "adadelta": lambda: o.adadelta(1.0, weight_decay=0.01),
        "adamax": lambda: o.adamax(SCHED, weight_decay=0.01),
        # optax family
        "lion": lambda: o.lion(SCHED, weight_decay=0.1, mask=MASK),
        "lamb": lambda: o.lamb(0.01, weight_decay=0.1, mask=MASK),
        "lars": lambda: o.lars(0.05, weight_decay=0.01, nesterov=True),
        "adafactor": lambda: o.adafactor(min_dim_size_to_factor=4, momentum=0.9),
        "adafactor_lr": lambda: o.adafactor(SCHED, weight_decay_rate=0.01),
        "scale_by_lion": lambda: o.chain(o.scale_by_lion(0.8, 0.95), o.scale_values(-0.01)),
        "scale_by_adam": lambda: o.chain(o.scale_by_adam(eps_root=1e-8), o.scale_values(-0.01)),
        "scale_by_factored_rms": lambda: o.chain(
            o.scale_by_factored_rms(min_dim_size_to_factor=4), o.scale_values(-0.01)
        ),
        # the rest of torch.optim and more of optax (optim/torch_more.py, optax_more.py)
        "adamw_mask": lambda: o.adamw(0.01, weight_decay=0.1, mask=MASK),
        "rprop": lambda: o.rprop(0.01, maximize=True),
        "asgd": lambda: o.asgd(0.02, lambd=0.01, t0=2.0, weight_decay=0.01),
        "adafactor_torch": lambda: o.adafactor_torch(SCHED, weight_decay=0.01),
        "muon": lambda: o.partition(
            {"m": o.muon(0.02), "o": o.adam(0.01)}, {"b": "o", "s": "o", "w": "m"}
        ),
        "adabelief": lambda: o.adabelief(SCHED, nesterov=True),
        "adan": lambda: o.adan(0.01, weight_decay=0.1, mask=MASK),
        "yogi": lambda: o.yogi(0.01),
        "novograd": lambda: o.novograd(0.01, weight_decay=0.01),
        "sign_sgd": lambda: o.sign_sgd(0.01),
        "signum": lambda: o.signum(SCHED),
        "lookahead": lambda: o.lookahead(o.adam(0.01), 2, 0.5, reset_state=True),
        "schedule_free_adamw": lambda: o.schedule_free_adamw(0.01, warmup_steps=2),
        "schedule_free": lambda: o.schedule_free(
            o.chain(o.scale_by_rms(0.99, bias_correction=True), o.scale_by_learning_rate(0.01)),
            0.01,
        ),
        "more_scalers": lambda: o.chain(
            o.scale_by_belief(),
            o.scale_by_adan(),
            o.scale_by_yogi(),
            o.scale_by_novograd(),
            o.scale_by_sign(),
            o.scale_values(-0.01),
        ),
        # transforms, alone and chained
        "clip_by_global_norm+adam": lambda: o.chain(o.clip_by_global_norm(0.5), o.adam(0.01)),
        "clip+trace": lambda: o.chain(
            o.clip(0.3), o.trace(0.9, nesterov=True), o.scale_values(-0.1)
        ),
        "schedule": lambda: o.chain(o.scale_by_learning_rate(SCHED), o.scale_by_schedule(SCHED)),
        "add_decayed_weights": lambda: o.chain(
            o.add_decayed_weights(0.1, MASK), o.scale_by_learning_rate(0.05)
        ),
        "block_rms": lambda: o.chain(
            o.clip_by_block_rms(0.5), o.scale_by_param_block_rms(), o.scale_values(-0.1)
        ),
        "trust_ratio": lambda: o.chain(o.scale_by_trust_ratio(), o.scale_by_learning_rate(0.01)),
        "ema_params": lambda: o.chain(o.adam(0.01), o.ema_params(0.9)),
        "multi_steps": lambda: o.multi_steps(o.adam(0.01), 3),
        "apply_if_finite": lambda: o.apply_if_finite(o.sgd(0.05, momentum=0.9), 2),
        "masked": lambda: o.masked(o.adam(0.01), MASK),
        "partition": lambda: o.partition({"a": o.adam(0.01), "b": o.sgd(0.1)}, LABELS),
        "inject_hyperparams": lambda: o.inject_hyperparams(
            o.nadam, static_args=("momentum_decay",)
        )(lr=0.01, momentum_decay=0.01),
    }


CASES = _cases()


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    p0 = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    c = {k: rng.uniform(0.5, 2.0, s).astype(dtype) for k, s in SHAPES.items()}
    targets = {k: rng.standard_normal((STEPS, *s)).astype(dtype) for k, s in SHAPES.items()}
    return p0, c, targets


def _grads(params, c, target):
    return {k: c[k] * params[k] - target[k] for k in params}


# compiled with XLA's cheaper optimization passes: compiling is most of these tests' time
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _setup(dtype):
    p0, c, targets = _problem(dtype)
    return p0, {k: jnp.asarray(v) for k, v in c.items()}, targets


def _step(opt, c):
    def step(params, state, target):
        grads = _grads(params, c, target)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates, inplace=False), state

    return step


def _eager(opt, p0, c, targets):
    """The reference: the same rule stepped eagerly on NumPy arrays, one call per step."""
    params = {k: v.copy() for k, v in p0.items()}
    c = {k: np.asarray(v) for k, v in c.items()}
    state = opt.init(params)
    for t in range(STEPS):
        grads = _grads(params, c, {k: v[t] for k, v in targets.items()})
        params, state = opt.step(params, grads, state, inplace=False)
    return params, state


def _assert_close(a, b, rtol, what):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), what
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim:  # per-step scalars are float32 in JAX without x64, float64 in NumPy
            assert x.dtype == y.dtype, f"{what}: {x.dtype} != {y.dtype}"
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol, err_msg=what)


def _check_moved_and_counted(name, p0, params, state, dtype):
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == dtype
    moved = max(float(np.max(np.abs(np.asarray(params[k]) - p0[k]))) for k in SHAPES)
    assert moved > 0, f"{name}: the parameters did not move"
    counts = [x for x in jax.tree.leaves(state) if x.ndim == 0 and x.dtype == jnp.int32]
    assert counts or name in STATELESS, f"{name}: no 0-d int32 count in the state"


@pytest.mark.parametrize("name", list(CASES))
def test_scan_equals_eager_float32(name):
    """Every case as one jitted ``lax.scan`` over the steps (x64 off: the JAX default)."""
    with jax.enable_x64(False):
        p0, c, targets = _setup(np.float32)
        opt = CASES[name]()
        step = _step(opt, c)

        def run(params, state, targets):
            return jax.lax.scan(lambda carry, x: (step(*carry, x), None), (params, state), targets)[
                0
            ]

        params = {k: jnp.asarray(v) for k, v in p0.items()}
        state = opt.init(params)
        targets_j = {k: jnp.asarray(v) for k, v in targets.items()}
        compiled = jax.jit(run).lower(params, state, targets_j).compile(compiler_options=FAST)
        s_p, s_s = compiled(params, state, targets_j)
        e_p, e_s = _eager(opt, p0, c, targets)
    _assert_close(s_p, e_p, 2e-5, f"{name}: scan vs eager params")
    _assert_close(s_s, e_s, 2e-5, f"{name}: scan vs eager state")
    _check_moved_and_counted(name, p0, s_p, s_s, np.float32)


FLOAT64 = [  # every torch-family rule once (its richest options) and the array-branch transforms
    "sgd_nesterov",
    "adam_amsgrad",
    "adamw",
    "nadam_decoupled",
    "radam_decoupled",
    "rmsprop_full",
    "adagrad",
    "adadelta",
    "adamax",
    "adafactor",
    "multi_steps",
    "apply_if_finite",
    "ema_params",
]


@pytest.mark.parametrize("name", FLOAT64)
def test_jit_step_equals_eager_float64(name):
    """One jitted step (grad + update) called per step, x64 on: equal to eager to 1e-12."""
    with jax.enable_x64(True):
        p0, c, targets = _setup(np.float64)
        opt = CASES[name]()
        params = {k: jnp.asarray(v) for k, v in p0.items()}
        state = opt.init(params)
        at = [{k: jnp.asarray(v[t]) for k, v in targets.items()} for t in range(STEPS)]
        compiled = jax.jit(_step(opt, c)).lower(params, state, at[0]).compile(compiler_options=FAST)
        for t in range(STEPS):
            params, state = compiled(params, state, at[t])
        e_p, e_s = _eager(opt, p0, c, targets)
    _assert_close(params, e_p, 1e-12, f"{name}: jit vs eager params")
    _assert_close(state, e_s, 1e-12, f"{name}: jit vs eager state")
    _check_moved_and_counted(name, p0, params, state, np.float64)


STATELESS = {
    "lars",
    "sign_sgd",
    "sgd",
    "clip+trace",
    "add_decayed_weights",
    "block_rms",
    "trust_ratio",
    "masked_sgd",
    "masked",
    "partition",
}


def test_counts_are_0d_int32_arrays_on_every_backend(xp):
    """Every count an optimizer keeps is a 0-d int32 array of the parameters' library."""
    from agrad.pytree import flatten_leaves

    params = {k: xp.asarray(np.ones(shape)) for k, shape in SHAPES.items()}
    grads = {k: xp.asarray(np.full(shape, 0.5)) for k, shape in SHAPES.items()}
    for name in ("adam", "sgd_momentum", "nadam", "lion", "adafactor", "multi_steps"):
        opt = CASES[name]()
        state = opt.init(params)
        for _ in range(2):
            _, state = opt.update(grads, state, params)
        counts = [
            x for x in flatten_leaves(state)[0] if hasattr(x, "dtype") and tuple(x.shape) == ()
        ]
        ints = [x for x in counts if x.dtype == xp.int32]
        assert ints, f"{name}: no 0-d int32 count in {state!r}"
        for x in ints:
            assert type(x) is type(params["w"]), name


def test_every_optimizer_is_covered():
    """Each public constructor returning a GradientTransformation appears in CASES."""
    covered = " ".join(CASES) + " " + " ".join(inspect.getsource(f) for f in (_cases,))
    not_constructors = {
        "apply_updates",
        "chain",
        "find_state",
        "global_norm",
        "load",
        "save",
        "state_types",  # the record classes for torch.load(weights_only=True)
        "pack",
        "lbfgs",  # closure-driven, decides on the host each evaluation: not jittable
        "sparse_adam",  # refused
        "schedule_free_eval_params",  # not a constructor
        "to_optax",  # the optax bridge runs on JAX only: tests/test_optim_optax_bridge.py
        "from_optax",
    }
    for name in optim.__all__:
        obj = getattr(optim, name)
        if name in not_constructors or not callable(obj) or isinstance(obj, type):
            continue
        if name in optim.schedules.__all__ or not inspect.isfunction(obj):
            continue
        assert f"o.{name}(" in covered, (
            f"agrad.optim.{name} has no jit case in tests/test_optim_jit.py"
        )


SCHEDULES = {
    "constant": optim.constant(0.1),
    "constant_lr": optim.constant_lr(0.1, 0.5, 7),
    "step_lr": optim.step_lr(0.1, 10, 0.5),
    "multistep_lr": optim.multistep_lr(0.1, [5, 20, 50], 0.3),
    "exponential_lr": optim.exponential_lr(0.1, 0.99),
    "cosine_annealing_lr": optim.cosine_annealing_lr(0.1, 50, 0.01),
    "warm_restarts": optim.cosine_annealing_warm_restarts(0.1, 7, 1, 0.001),
    "warm_restarts_mult": optim.cosine_annealing_warm_restarts(0.1, 3, 2, 0.001),
    "linear_lr": optim.linear_lr(0.1, 0.2, 0.9, 30),
    "polynomial_lr": optim.polynomial_lr(0.1, 40, 2.0),
    "one_cycle_lr": optim.one_cycle_lr(0.1, 120),
    "one_cycle_lr_3": optim.one_cycle_lr(0.1, 120, three_phase=True, anneal_strategy="linear"),
    "warmup_cosine": optim.warmup_cosine(0.1, 10, 120),
    "join": optim.join([optim.constant(0.05), optim.exponential_lr(0.1, 0.9)], [30]),
}


def test_every_schedule_is_covered():
    names = {
        "constant",
        "constant_lr",
        "step_lr",
        "multistep_lr",
        "exponential_lr",
        "cosine_annealing_lr",
        "cosine_annealing_warm_restarts",
        "linear_lr",
        "polynomial_lr",
        "one_cycle_lr",
        "warmup_cosine",
        "join",
    }
    assert set(optim.schedules.__all__) - {"Schedule"} == names


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_under_jit_equals_python(name, x64):
    """A schedule of a traced int32 count (jit, and vmap over counts) equals its Python value."""
    sched = SCHEDULES[name]
    counts = np.arange(120)
    ref = np.array([sched(int(c)) for c in counts], dtype=np.float64)
    with jax.enable_x64(x64):
        got = np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(counts, dtype=jnp.int32)))
        one = float(jax.jit(sched)(jnp.asarray(17, dtype=jnp.int32)))
    tol = 1e-12 if x64 else 2e-6
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * 0.1)
    np.testing.assert_allclose(one, ref[17], rtol=tol)
