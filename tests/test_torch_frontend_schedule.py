"""TorchOptimizer under torch's lr schedulers, against torch.optim (the reference).

A group whose options change step after step switches to an ``inject_hyperparams``
optimizer built once (``torch_frontend._Scheduled``); these tests check that nothing
visible changes: weights and state equal torch.optim's (to rounding: float32 1e-6,
float64 1e-12 relative), state dicts cross both ways mid-schedule, the state dict's
keys are the plain path's, and the switched group compiles no program per step.

"To rounding" is relative to each tensor's largest magnitude, not elementwise: an
element near a cancellation (a momentum buffer crossing 0) has a larger relative error
after 24 steps in both the plain path and the switched one. In float32 neither is
bitwise torch.optim's in general (both within 3e-7 of each tensor's magnitude here).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, NamedTuple

import pytest

torch = pytest.importorskip("torch")

import agrad  # noqa: E402
import agrad.optim  # noqa: E402
from agrad.optim import TorchOptimizer, fastpath  # noqa: E402
from agrad.optim import torch_frontend as tf  # noqa: E402
from agrad.pytree import tree_map  # noqa: E402

CASES = {
    "adam": ("Adam", "adam", dict(lr=1e-2, weight_decay=1e-2)),
    "adamw": ("AdamW", "adamw", dict(lr=1e-2, weight_decay=0.1)),
    "sgd": ("SGD", "sgd", dict(lr=1e-2)),
    "sgd-momentum": ("SGD", "sgd", dict(lr=1e-2, momentum=0.9, dampening=0.1)),
    "sgd-nesterov": ("SGD", "sgd", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    "rmsprop": ("RMSprop", "rmsprop", dict(lr=1e-2, alpha=0.9)),
    "rmsprop-centered-momentum": (
        "RMSprop",
        "rmsprop",
        dict(lr=1e-3, centered=True, momentum=0.5, weight_decay=1e-2),
    ),
    "adagrad": ("Adagrad", "adagrad", dict(lr=1e-2, lr_decay=1e-2)),
    "nadam": ("NAdam", "nadam", dict(lr=1e-2)),
    "radam": ("RAdam", "radam", dict(lr=1e-2, weight_decay=1e-2)),
    "adamax": ("Adamax", "adamax", dict(lr=1e-2)),
}
# schedulers that change the options every step: the group switches
PER_STEP = ("cosine", "onecycle", "linear")
SCHEDULES = (*PER_STEP, "step", "plateau")
STEPS = 24


def _scheduler(kind: str, opt: Any) -> Any:
    """A torch lr scheduler of ``kind`` on ``opt``."""
    sched = torch.optim.lr_scheduler
    if kind == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=10, eta_min=1e-4)
    if kind == "onecycle":  # also cycles betas / momentum, where the optimizer has them
        g = opt.param_groups[0]
        cycle = "betas" in g or g.get("momentum", 0) > 0
        return sched.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 5, cycle_momentum=cycle)
    if kind == "linear":
        return sched.LinearLR(opt, start_factor=0.1, total_iters=STEPS)
    if kind == "step":
        return sched.StepLR(opt, step_size=3, gamma=0.7)
    if kind == "plateau":
        return sched.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    raise AssertionError(kind)


def _advance(sched: Any, i: int) -> None:
    """One scheduler step (a loss that never improves for ReduceLROnPlateau)."""
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(float(i))
    else:
        sched.step()


def _params(dtype: torch.dtype, seed: int = 0) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (4,), (2, 3, 2)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _clone(ps: list[Any]) -> list[Any]:
    return [p.detach().clone().requires_grad_() for p in ps]


def _grads(ps_lists: list[list[Any]], gen: Any) -> None:
    """The same random gradient for the same parameter in each list."""
    for ps in zip(*ps_lists):
        g = torch.randn(ps[0].shape, generator=gen, dtype=ps[0].dtype)
        for p in ps:
            p.grad = g.clone()


def _pair(case: str, dtype: torch.dtype, kind: str) -> tuple:
    """(agrad wrapper, its scheduler, torch.optim, its scheduler) on equal parameters."""
    cls, name, kw = CASES[case]
    a_ps = _params(dtype)
    t_ps = _clone(a_ps)
    a = TorchOptimizer(a_ps, getattr(agrad.optim, name), **kw)
    t = getattr(torch.optim, cls)(t_ps, **kw)
    return a, _scheduler(kind, a), t, _scheduler(kind, t)


def _tols(case: str, dtype: torch.dtype) -> float:
    """The largest difference allowed, relative to a tensor's largest magnitude."""
    if dtype == torch.float32:
        return 1e-6
    if case == "nadam":  # torch keeps mu_product in float32 (the default dtype) for float64 too
        return 1e-6
    return 1e-12


def _close(x: Any, y: Any, rel: float, dtypes: bool = True) -> None:
    assert x.shape == y.shape and (x.dtype == y.dtype or not dtypes)
    x = x.to(y.dtype)
    err = (x - y).abs().max().item() if x.numel() else 0.0
    scale = y.abs().max().item() if y.numel() else 0.0
    assert err <= rel * scale, (err, scale)


def _params_of(opt: Any) -> list[Any]:
    return [p for g in opt.param_groups for p in g["params"]]


def _same_as_torch(a: Any, t: Any, rel: float, dtypes: bool = True) -> None:
    """Weights, state dict entries and group options of ``a`` equal torch's ``t``'s."""
    for x, y in zip(_params_of(a), _params_of(t)):
        _close(x.detach(), y.detach(), rel)
    sa, st = a.state_dict(), t.state_dict()
    assert sa["state"].keys() == st["state"].keys()
    for i, entries in st["state"].items():
        assert sa["state"][i].keys() == entries.keys(), (sa["state"][i].keys(), entries.keys())
        for k, v in entries.items():
            w = sa["state"][i][k]
            if isinstance(v, torch.Tensor):
                _close(w, v, rel, dtypes)
            else:
                assert w == pytest.approx(v), k
    for ga, gt in zip(sa["param_groups"], st["param_groups"]):
        assert ga["lr"] == pytest.approx(gt["lr"], rel=1e-12)


def _run(a, sa, t, st, steps: int, gen: Any, start: int = 0) -> None:
    for i in range(start, start + steps):
        _grads([_params_of(a), _params_of(t)], gen)
        a.step()
        t.step()
        _advance(sa, i)
        _advance(st, i)


@pytest.fixture
def compiles(monkeypatch) -> list[int]:
    """One entry per program the fast route compiles during the test."""
    made: list[int] = []
    real = fastpath._compile

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fastpath, "_compile", counting)
    return made


def _switched(opt: Any) -> bool:
    return any(w.opt is not None for w in opt._watch.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("case", list(CASES))
def test_a_schedule_matches_torch(case, kind, dtype):
    a, sa, t, st = _pair(case, dtype, kind)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS // 4):
        _run(a, sa, t, st, 4, gen)
        _same_as_torch(a, t, _tols(case, dtype))
    if kind in PER_STEP:
        assert _switched(a)  # the fast form was taken


@pytest.mark.parametrize("kind", ["cosine", "onecycle"])
@pytest.mark.parametrize("case", ["adam", "sgd-nesterov", "rmsprop", "nadam", "adagrad"])
def test_state_dicts_cross_mid_schedule(case, kind):
    """Mid-schedule, agrad's state dict loaded into torch.optim and torch's into agrad
    continue as torch.optim continuing."""
    dtype = torch.float64
    cls, name, kw = CASES[case]
    a, sa, t, st = _pair(case, dtype, kind)
    gen = torch.Generator().manual_seed(2)
    _run(a, sa, t, st, 10, gen)
    assert _switched(a)
    # agrad -> torch, and torch -> agrad, each on copies of the current weights; as a
    # training script resumes: optimizer and scheduler made, then both state dicts loaded
    # (deep copies, as torch.save/torch.load make: no tensor shared with the source)
    t2_ps, a2_ps = _clone(_params_of(a)), _clone(_params_of(t))
    t2 = getattr(torch.optim, cls)(t2_ps, **kw)
    st2 = _scheduler(kind, t2)
    t2.load_state_dict(copy.deepcopy(a.state_dict()))
    st2.load_state_dict(sa.state_dict())
    a2 = TorchOptimizer(a2_ps, getattr(agrad.optim, name), **kw)
    sa2 = _scheduler(kind, a2)
    a2.load_state_dict(copy.deepcopy(t.state_dict()))
    sa2.load_state_dict(st.state_dict())
    for i in range(10, 20):
        _grads([_params_of(x) for x in (a, t, a2, t2)], gen)
        for opt, sched in ((a, sa), (t, st), (a2, sa2), (t2, st2)):
            opt.step()
            _advance(sched, i)
    tols = _tols(case, dtype)
    _same_as_torch(a, t, tols)
    _same_as_torch(a2, t, tols)
    _same_as_torch(t2, t, tols, dtypes=False)  # torch.optim loads NAdam's mu_product as float64
    assert _switched(a2)


@pytest.mark.parametrize("case", list(CASES))
def test_the_switched_state_dict_has_the_plain_keys(case):
    """The same state dict entries, types and dtypes with a constant lr (plain path) and
    under a per-step schedule (switched)."""
    cls, name, kw = CASES[case]
    gen = torch.Generator().manual_seed(3)
    plain = TorchOptimizer(_params(torch.float32), getattr(agrad.optim, name), **kw)
    sched_opt = TorchOptimizer(_params(torch.float32), getattr(agrad.optim, name), **kw)
    sched = _scheduler("cosine", sched_opt)
    for _ in range(6):
        _grads([_params_of(plain), _params_of(sched_opt)], gen)
        plain.step()
        sched_opt.step()
        sched.step()
    assert _switched(sched_opt) and not _switched(plain)
    a, b = plain.state_dict(), sched_opt.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert list(a["state"][i]) == list(b["state"][i])
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            assert type(w) is type(v)
            if isinstance(v, torch.Tensor):
                assert (w.dtype, w.shape) == (v.dtype, v.shape)
    scheduler_keys = {"initial_lr"}
    assert [sorted(g) for g in a["param_groups"]] == [
        sorted(set(g) - scheduler_keys) for g in b["param_groups"]
    ]
    assert [sorted(s) for s in sched_opt.state.values()] == [
        sorted(s) for s in plain.state.values()
    ]


@pytest.mark.parametrize("case", ["adam", "sgd-momentum", "nadam"])
def test_no_compile_per_step_after_the_switch(compiles, case):
    """After the switch, a new lr is data: the fast route compiles nothing more."""
    a, sa, _, _ = _pair(case, torch.float32, "onecycle")
    gen = torch.Generator().manual_seed(4)
    for i in range(20):
        if i == 5:
            assert _switched(a)
            assert compiles  # the counter sees the fast route's compiles
            compiles.clear()
        _grads([_params_of(a)], gen)
        a.step()
        sa.step()
    assert compiles == []


@pytest.mark.parametrize("case", ["adam", "sgd-momentum", "adamw"])
def test_the_switched_group_takes_the_steady_checks(monkeypatch, case):
    """After the switch, neither TorchOptimizer's per-parameter checks nor the fast
    route's full input check run: a new lr is a value, as in a constant-lr loop."""
    calls = {"plan": 0, "inputs": 0}
    plan, inputs = TorchOptimizer._plan, fastpath._inputs

    def count_plan(*args: Any) -> Any:
        calls["plan"] += 1
        return plan(*args)

    def count_inputs(*args: Any) -> Any:
        calls["inputs"] += 1
        return inputs(*args)

    monkeypatch.setattr(TorchOptimizer, "_plan", count_plan)
    monkeypatch.setattr(fastpath, "_inputs", count_inputs)
    a, sa, _, _ = _pair(case, torch.float32, "cosine")
    gen = torch.Generator().manual_seed(8)
    grads = [torch.randn(p.shape, generator=gen) for p in _params_of(a)]
    for i in range(12):
        if i == 6:
            assert _switched(a)
            calls.update(plan=0, inputs=0)
        for p, g in zip(_params_of(a), grads):  # in place, as backward() accumulates
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        a.step()
        sa.step()
    assert calls == {"plan": 0, "inputs": 0}


def test_constant_again_goes_back_to_the_plain_optimizer():
    """A warmup, then a constant lr: back to the plain optimizer, still torch's result."""
    a, sa, t, st = _pair("adam", torch.float64, "linear")
    gen = torch.Generator().manual_seed(5)
    _run(a, sa, t, st, STEPS, gen)
    assert _switched(a)
    _run(a, sa, t, st, tf._CONSTANT_AFTER + 5, gen, start=STEPS)
    assert not _switched(a)
    _same_as_torch(a, t, _tols("adam", torch.float64))


def test_a_flag_changed_mid_schedule_rebuilds():
    """A boolean option (maximize) flipped while switched: a new optimizer of the new
    options, as torch.optim does it."""
    a, sa, t, st = _pair("adam", torch.float64, "cosine")
    gen = torch.Generator().manual_seed(6)
    _run(a, sa, t, st, 6, gen)
    before = a._watch[0].opt
    for opt in (a, t):
        opt.param_groups[0]["maximize"] = True
    _run(a, sa, t, st, 6, gen, start=6)
    assert _switched(a) and a._watch[0].opt is not before
    _same_as_torch(a, t, _tols("adam", torch.float64))


def test_groups_with_their_own_schedules():
    """Two groups, one scheduled per step, one constant: each as torch's."""
    ps = _params(torch.float32)
    qs = _clone(ps)
    groups = lambda xs: [{"params": xs[:2]}, {"params": xs[2:], "lr": 0.05}]  # noqa: E731
    a = TorchOptimizer(groups(ps), agrad.optim.adam, lr=1e-2)
    t = torch.optim.Adam(groups(qs), lr=1e-2)
    lam = [lambda i: 0.9**i, lambda i: 1.0]
    sa = torch.optim.lr_scheduler.LambdaLR(a, lam)
    st = torch.optim.lr_scheduler.LambdaLR(t, lam)
    gen = torch.Generator().manual_seed(7)
    _run(a, sa, t, st, 12, gen)
    assert a._watch[0].opt is not None and a._watch[1].opt is None
    _same_as_torch(a, t, _tols("adam", torch.float32))


def test_an_option_that_changes_the_state_keeps_the_plain_rebuild():
    """SGD's momentum moved to 0 (the plain optimizer keeps no buffer, the injected one
    would): the group is not switched, and still steps as torch.optim.SGD."""
    a, sa, t, st = _pair("sgd-momentum", torch.float64, "cosine")
    gen = torch.Generator().manual_seed(9)
    for i in range(12):
        momentum = 0.9 if i == 0 else 0.0
        for opt in (a, t):
            opt.param_groups[0]["momentum"] = momentum
        _run(a, sa, t, st, 1, gen, start=i)
    assert not _switched(a) and a._watch[0].refused is not None
    _same_as_torch(a, t, _tols("sgd", torch.float64))


# -- a custom factory (docs/custom-optimizer.md) under a per-step scheduler --------------
class MomentumState(NamedTuple):
    momentum: Any


def momentum_sgd(lr: float, beta: float = 0.9, *, python_lr: bool = False) -> Any:
    """A user's rule, written as docs/custom-optimizer.md shows: ``m = beta m + g``,
    ``u = -lr m``. ``python_lr``: it refuses an ``lr`` that is not a Python number (a
    rule that needs its options as numbers)."""

    def init(params: Any) -> MomentumState:
        return MomentumState(tree_map(lambda p: agrad.array_namespace(p).zeros_like(p), params))

    def update(grads: Any, state: MomentumState, params: Any = None) -> Any:
        if python_lr and not isinstance(lr, (int, float)):  # only when it steps
            raise TypeError(f"momentum_sgd needs lr as a number, got {type(lr).__name__}")
        m = tree_map(lambda m, g: beta * m + g, state.momentum, grads)
        return tree_map(lambda m: -lr * m, m), MomentumState(m)

    hyper = {"lr": lr, "beta": beta}
    return agrad.optim.GradientTransformation(
        "momentum_sgd", init, update, hyper, needs_params=False
    )


def _custom_run(factory: Any, dtype: Any, steps: int = 14) -> tuple[list[Any], Any]:
    """``TorchOptimizer(params, factory, lr=...)`` under ``CosineAnnealingLR`` for
    ``steps`` steps; the parameters after, and the optimizer."""
    gen = torch.Generator().manual_seed(11)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in _SHAPES]
    opt = TorchOptimizer(params, factory, lr=0.0137)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        opt.step()
        sched.step()
    return [p.detach().clone() for p in params], opt


def _custom_reference(dtype: Any, steps: int = 14) -> list[Any]:
    """The same steps as agrad steps of a new ``momentum_sgd(lr=<the scheduled lr>)``
    each, on the generic path (fast route off): what TorchOptimizer did before the
    switch existed."""
    gen = torch.Generator().manual_seed(11)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in _SHAPES]
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0137)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(dummy, T_max=20)
    state = None
    saved = fastpath.enabled
    fastpath.enabled = False
    try:
        for _ in range(steps):
            grads = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in params]
            opt = momentum_sgd(lr=dummy.param_groups[0]["lr"])
            state = opt.init(params) if state is None else state
            params, state = opt.step(params, grads, state)
            dummy.step()
            sched.step()
    finally:
        fastpath.enabled = saved
    return params


_SHAPES = [(5, 3), (7,), (64, 33)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_a_custom_factory_under_a_per_step_schedule_is_built_once(compiles, dtype):
    """A user's factory with an lr scheduled per step switches to ``inject_hyperparams``
    of it, as the built-ins do: built once, no program compiled per step (it was one
    optimizer and one compile per step, about 60x a constant lr's step), its steps on
    the fast route; bit for bit the plain rebuild-per-lr steps (a 0-d float64 lr meets
    a float32 tensor as a float32 value, as the Python number does)."""
    got, opt = _custom_run(momentum_sgd, dtype)
    assert _switched(opt)
    assert len(opt._built) <= 3 and len(compiles) <= 4, (len(opt._built), len(compiles))
    for x, y in zip(got, _custom_reference(dtype)):
        assert torch.equal(x, y)


def test_a_custom_factory_that_needs_numbers_keeps_rebuilding():
    """A factory whose rule refuses its options as 0-d tensors when it steps: the
    switched step fails before anything is written, and the group goes on with the
    plain optimizer of each lr (the same results as never switching)."""
    factory = functools.partial(momentum_sgd, python_lr=True)
    got, opt = _custom_run(factory, torch.float64)
    assert not _switched(opt)
    for x, y in zip(got, _custom_reference(torch.float64)):
        assert torch.equal(x, y)
