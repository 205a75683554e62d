"""TorchOptimizer's steady step: the same views and state each step, never a stale one.

After a full step, :class:`agrad.optim.TorchOptimizer` keeps each group's detached
parameter views, state leaves and containers, so that the next steps pass
``opt.step`` the very same objects and agrad's torch fast route takes its bulk steady
check (:mod:`agrad.optim._steady`). Each hostile case here trains a few steps until
the steady path is in use, then changes something behind the cached views the way a
user can (``p.data = ...``, ``set_``, ``resize_``, a freed storage, ``requires_grad_``,
``load_state_dict``, ``add_param_group``, new options, new or missing gradients, a new
parameter order, replaced state entries) and compares every weight and state tensor,
bitwise, with the same script run with the cache off (every step the full path, as
before the cache existed), and, where torch.optim has the same optimizer, with
torch.optim to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import agrad.optim  # noqa: E402
from agrad.optim import TorchOptimizer, fastpath  # noqa: E402
from agrad.optim import torch_frontend as tf  # noqa: E402

STEPS = 10
CHANGE_AT = 5  # the hostile change comes before this step (the steady path is in use)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)


OPTS: dict[str, tuple[Callable[..., Any], type, dict[str, Any]]] = {
    "sgd": (agrad.optim.sgd, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "adam": (agrad.optim.adam, torch.optim.Adam, {"lr": 0.01}),
}


def _train(
    name: str,
    change: Callable[[torch.nn.Module, Any], None] | None,
    *,
    reference: bool = False,
    steady: bool = True,
    set_to_none: bool = True,
    before_backward: bool = False,
) -> tuple[list[torch.Tensor], list[Any], Any]:
    """Train; ``change(model, opt)`` runs before step CHANGE_AT (after ``backward`` unless
    ``before_backward``). Returns the weights, every state value and the optimizer."""
    factory, cls, options = OPTS[name]
    model = _model()
    x, y = _data()
    opt = (
        cls(model.parameters(), **options)
        if reference
        else TorchOptimizer(model.parameters(), factory, **options)
    )
    for i in range(STEPS):
        opt.zero_grad(set_to_none=set_to_none)
        if i == CHANGE_AT and change is not None and before_backward:
            change(model, opt)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        if i == CHANGE_AT and change is not None:
            if not reference and steady:
                assert opt._steady, "the steady path is not in use before the change"
            if not before_backward:
                change(model, opt)
        opt.step()
    weights = [p.detach().clone() for p in model.parameters()]
    state = [
        v.clone() if isinstance(v, torch.Tensor) else v
        for p in model.parameters()
        for _, v in sorted(opt.state.get(p, {}).items())
    ]
    return weights, state, opt


def _cache_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tf._SteadyGroup, "make", classmethod(lambda cls, *args: None))


def _same(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape
            assert torch.equal(x, y), (x, y)
        else:
            assert x == y


def _compare(monkeypatch, name, change, torch_too=True, **kw) -> Any:
    """The cached run equals the cache-off run bitwise (and torch.optim to rounding)."""
    w, s, opt = _train(name, change, **kw)
    with monkeypatch.context() as m:
        _cache_off(m)
        w0, s0, _ = _train(name, change, steady=False, **kw)
    _same(w, w0)
    _same(s, s0)
    if torch_too:
        wt, _, _ = _train(name, change, reference=True, **kw)
        for a, b in zip(w, wt):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    return opt


# -- the steady path is taken ---------------------------------------------------------
@pytest.mark.parametrize("name", list(OPTS))
def test_a_training_loop_takes_the_steady_checks(monkeypatch, name):
    """From the third step on, neither TorchOptimizer's per-parameter checks nor the fast
    route's full input check run: both steady checks are taken."""
    factory, _, options = OPTS[name]
    model = _model()
    x, y = _data()
    opt = TorchOptimizer(model.parameters(), factory, **options)
    calls = {"plan": 0, "inputs": 0}
    plan, inputs = TorchOptimizer._plan, fastpath._inputs

    def count_plan(*args):
        calls["plan"] += 1
        return plan(*args)

    def count_inputs(*args):
        calls["inputs"] += 1
        return inputs(*args)

    monkeypatch.setattr(TorchOptimizer, "_plan", count_plan)
    monkeypatch.setattr(fastpath, "_inputs", count_inputs)
    for i in range(8):
        if i == 3:
            calls.update(plan=0, inputs=0)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert calls == {"plan": 0, "inputs": 0}


def test_the_steady_path_matches_the_full_path_and_torch(monkeypatch):
    for name in OPTS:
        _compare(monkeypatch, name, None)
        _compare(monkeypatch, name, None, set_to_none=False)  # the same gradient tensors


# -- the parameter changed behind its cached view -------------------------------------
def _first(model):
    return model[0].weight


PARAM_CHANGES = {
    "data = other tensor": lambda m, o: setattr(_first(m), "data", _first(m).data.clone() * 0.5),
    "data = view of itself": lambda m, o: setattr(
        _first(m), "data", _first(m).data.view(-1).view(8, 5)
    ),
    "data = transposed copy": lambda m, o: setattr(
        _first(m), "data", _first(m).data.t().contiguous().t()
    ),
    "set_ to other storage": lambda m, o: _set(_first(m), _first(m).detach().clone() + 1.0),
    "resize_ up and back": lambda m, o: _resize(_first(m)),
    "storage resized bigger": lambda m, o: _resize_storage(_first(m)),
    "storage freed and restored": lambda m, o: _free_and_restore(_first(m)),
    "requires_grad_(False)": lambda m, o: _first(m).requires_grad_(False),
    "values changed in place": lambda m, o: _first(m).data.mul_(0.5),
}


def _set(p: torch.Tensor, other: torch.Tensor) -> None:
    with torch.no_grad():
        p.set_(other)


def _resize(p: torch.Tensor) -> None:
    """``resize_`` on the parameter itself (autograd refuses it while it requires grad)."""
    keep = p.detach().clone()
    p.requires_grad_(False)
    p.resize_(4096)  # a bigger storage: reallocated
    p.resize_(keep.shape)
    p.copy_(keep)
    p.requires_grad_(True)


def _resize_storage(p: torch.Tensor) -> None:
    """The storage (shared by the parameter and its views) reallocated bigger."""
    keep = p.detach().clone()
    p.data.resize_(4096)
    with torch.no_grad():
        p.copy_(keep)


def _free_and_restore(p: torch.Tensor) -> None:
    """FSDP's pattern: the storage freed, then given memory again and refilled."""
    keep = p.detach().clone()
    storage = p.untyped_storage()
    size = storage.nbytes()
    storage.resize_(0)
    junk = torch.empty(size // 4)  # a chance for the freed block to be reused
    storage.resize_(size)
    with torch.no_grad():
        p.copy_(keep)
    del junk


def _freed_and_address_reused(model: torch.nn.Module, opt: Any) -> None:
    """The storage freed, then a new tensor at its address: forced by writing the new
    address into the record (the allocator may or may not reuse it by itself)."""
    p = _first(model)
    p.untyped_storage().resize_(0)  # the cached view's memory is gone with it
    p.data = torch.linspace(-1.0, 1.0, 40).view(8, 5)
    rec = getattr(opt, "_steady", {}).get(0)
    if rec is not None:
        k = next(i for i, q in enumerate(rec.params) if q is p)
        rec.ptrs[k] = p.data_ptr()


PARAM_CHANGES["storage freed, its address reused"] = _freed_and_address_reused


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("change", list(PARAM_CHANGES))
def test_a_parameter_changed_behind_its_view(monkeypatch, name, change):
    _compare(monkeypatch, name, PARAM_CHANGES[change])


@pytest.mark.parametrize("steady", [True, False])
def test_a_parameter_reinterpreted_as_another_dtype_is_refused(monkeypatch, steady):
    """The same memory and shape as int32: refused as the full path refuses it."""
    if not steady:
        _cache_off(monkeypatch)
    model = _model()
    x, y = _data()
    opt = TorchOptimizer(model.parameters(), agrad.optim.sgd, lr=0.1, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    assert bool(opt._steady) == steady
    p = model[0].weight
    p.requires_grad_(False)  # autograd allows no integer data otherwise
    p.data = p.data.view(torch.int32)
    before = [q.detach().clone() for q in model.parameters()]
    with pytest.raises(ValueError, match="its gradient has shape"):
        opt.step()
    _same([q.detach() for q in model.parameters()], before)


def test_a_parameter_replaced_writes_the_new_tensor_not_the_old_one():
    model = _model()
    x, y = _data()
    opt = TorchOptimizer(model.parameters(), agrad.optim.sgd, lr=0.1, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    p = model[0].weight
    old = p.data
    before = old.clone()
    p.data = old.clone()
    opt.step()
    assert torch.equal(old, before)  # the old tensor, still held by the old view: untouched
    assert not torch.equal(p.data, before)


# -- the optimizer changed ------------------------------------------------------------
def _load_state(model, opt):
    """Another optimizer's state (two steps further), loaded."""
    x, y = _data()
    other = type(opt)(model.parameters(), opt._factory, **opt._options)
    for _ in range(2):
        other.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        other.step()
    opt.load_state_dict(other.state_dict())


def _add_group(model, opt):
    extra = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6))
    model.register_parameter("extra", extra)
    opt.add_param_group({"params": [extra]})
    extra.grad = torch.linspace(0.5, 1.5, 6)


def _options(model, opt):
    for g in opt.param_groups:
        g["lr"] *= 0.5
        if "momentum" in g:
            g["momentum"] = 0.5


OPT_CHANGES = {
    "load_state_dict": _load_state,
    "add_param_group": _add_group,
    "lr and momentum changed": _options,
}


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("change", list(OPT_CHANGES))
def test_the_optimizer_changed(monkeypatch, name, change):
    torch_too = change != "load_state_dict"  # loads the wrapper's own state
    _compare(monkeypatch, name, OPT_CHANGES[change], torch_too=torch_too)


def test_options_changed_every_step_take_effect_every_step(monkeypatch):
    def lr_each_step(model, opt):
        opt.param_groups[0]["lr"] = 0.2

    _compare(monkeypatch, "sgd", lr_each_step)
    model = _model()
    x, y = _data()
    opt = TorchOptimizer(model.parameters(), agrad.optim.sgd, lr=0.0)
    for i in range(6):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        before = model[0].weight.detach().clone()
        opt.param_groups[0]["lr"] = 0.0 if i % 2 else 0.1
        opt.step()
        assert torch.equal(model[0].weight, before) == bool(i % 2)


# -- the gradients changed ------------------------------------------------------------
def _grad_none(model, opt):
    model[2].bias.grad = None


def _grad_none_first(model, opt):
    model[0].weight.grad = None


def _grad_new(model, opt):
    for p in model.parameters():
        p.grad = p.grad.clone()


def _grad_strided(model, opt):
    g = model[0].weight.grad
    model[0].weight.grad = g.t().contiguous().t()  # the same shape, other strides


GRAD_CHANGES = {
    "a gradient None": _grad_none,
    "the first gradient None": _grad_none_first,
    "new gradient tensors": _grad_new,
    "a transposed gradient": _grad_strided,
}


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("change", list(GRAD_CHANGES))
def test_the_gradients_changed(monkeypatch, name, change):
    _compare(monkeypatch, name, GRAD_CHANGES[change])


def test_zero_grad_set_to_none_and_not(monkeypatch):
    for name in OPTS:
        _compare(monkeypatch, name, None, set_to_none=True)
        _compare(monkeypatch, name, None, set_to_none=False)


def test_a_sparse_gradient_is_still_refused_before_anything_is_written():
    model = _model()
    x, y = _data()
    opt = TorchOptimizer(model.parameters(), agrad.optim.sgd, lr=0.1, momentum=0.9)
    for _ in range(4):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    model[2].bias.grad = model[2].bias.grad.to_sparse()
    with pytest.raises(TypeError, match="sparse gradient"):
        opt.step()
    _same([p.detach() for p in model.parameters()], before)


# -- the order and the state changed --------------------------------------------------
def _reorder(model, opt):
    opt.param_groups[0]["params"].reverse()


def _replace_state(model, opt):
    p = model[0].weight
    name = "momentum_buffer" if "momentum_buffer" in opt.state[p] else "exp_avg"
    opt.state[p][name] = opt.state[p][name].clone() * 2.0


def _step_behind_autograd(model, opt):
    opt.state[model[0].weight]["step"].data.fill_(1.0)  # no version bump: values are read


def _state_dtype(model, opt):
    p = model[2].weight
    name = "momentum_buffer" if "momentum_buffer" in opt.state[p] else "exp_avg"
    opt.state[p][name].data = opt.state[p][name].data.double()


def _state_emptied(model, opt):
    opt.state[model[2].bias].clear()


STATE_CHANGES = {
    "a new parameter order": _reorder,
    "a state tensor replaced": _replace_state,
    "a step count changed behind autograd": _step_behind_autograd,
    "a state tensor of another dtype": _state_dtype,
    "a parameter's state emptied": _state_emptied,
}


@pytest.mark.parametrize("name", list(OPTS))
@pytest.mark.parametrize("change", list(STATE_CHANGES))
def test_the_order_or_state_changed(monkeypatch, name, change):
    _compare(monkeypatch, name, STATE_CHANGES[change], torch_too=False)


def test_a_state_dict_saved_on_the_steady_path_loads_into_torch_optim():
    w, _, opt = _train("adam", None)
    model = _model()
    ref = torch.optim.Adam(model.parameters(), lr=0.01)
    ref.load_state_dict(opt.state_dict())
    assert all(v["step"].item() == STEPS for v in ref.state_dict()["state"].values())


# -- every optimizer: the steady path equals the full path ----------------------------
EVERY = {
    "adam": {"lr": 1e-2},
    "adamw": {"lr": 1e-2},
    "sgd": {"lr": 1e-2, "momentum": 0.9, "nesterov": True},
    "rmsprop": {"lr": 1e-2, "momentum": 0.5, "centered": True},
    "adagrad": {"lr": 1e-2},
    "adamax": {"lr": 1e-2},
    "adadelta": {"lr": 1.0},
    "nadam": {"lr": 1e-2},
    "radam": {"lr": 1e-2},
    "rprop": {"lr": 1e-2},
    "asgd": {"lr": 1e-2},
    "lion": {"lr": 1e-3},
    "lamb": {"lr": 1e-2},
    "lars": {"lr": 1e-2},
    "adafactor": {"lr": 1e-2},
}


def _every(name: str, sched: bool) -> list[torch.Tensor]:
    model = _model()
    x, y = _data()
    opt = TorchOptimizer(model.parameters(), getattr(agrad.optim, name), **EVERY[name])
    lr = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5) if sched else None
    for _ in range(12):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        if lr is not None:
            lr.step()
    return [p.detach().clone() for p in model.parameters()] + [
        v for p in model.parameters() for _, v in sorted(opt.state[p].items())
    ]


@pytest.mark.parametrize("sched", [False, True])
@pytest.mark.parametrize("name", list(EVERY))
def test_every_optimizer_steady_equals_full_path(monkeypatch, name, sched):
    got = _every(name, sched)
    _cache_off(monkeypatch)
    _same(got, _every(name, sched))


# -- several groups, shared memory ----------------------------------------------------
def _groups_run(make_params: Callable[[], list[list[torch.Tensor]]], lrs: list[float]) -> list:
    groups = make_params()
    opt = TorchOptimizer(
        [{"params": ps, "lr": lr} for ps, lr in zip(groups, lrs)],
        agrad.optim.sgd,
        lr=0.1,
        momentum=0.9,
    )
    g = torch.Generator().manual_seed(3)
    flat = [p for ps in groups for p in ps]
    for i in range(8):
        for p in flat:
            p.grad = torch.randn(p.shape, generator=g)
        if i == 4:
            flat[1].grad = None  # one step without it
        opt.step()
    return [p.detach().clone() for p in flat] + [
        v for p in flat for _, v in sorted(opt.state[p].items())
    ]


def _separate() -> list[list[torch.Tensor]]:
    torch.manual_seed(0)
    return [[torch.nn.Parameter(torch.randn(3, 4)) for _ in range(3)] for _ in range(3)]


def _one_buffer() -> list[list[torch.Tensor]]:
    """Parameters over one storage (a packed model): disjoint slices of one buffer."""
    torch.manual_seed(0)
    buf = torch.randn(9 * 12)
    return [
        [torch.nn.Parameter(buf[12 * (3 * k + j) :][:12].view(3, 4)) for j in range(3)]
        for k in range(3)
    ]


@pytest.mark.parametrize("make", [_separate, _one_buffer])
@pytest.mark.parametrize("lrs", [[0.1, 0.05, 0.01], [0.1, 0.1, 0.1]])  # the same optimizer
def test_several_groups_steady_equals_full_path(monkeypatch, make, lrs):
    got = _groups_run(make, lrs)
    _cache_off(monkeypatch)
    _same(got, _groups_run(make, lrs))


def test_groups_with_the_same_options_each_take_the_steady_checks(monkeypatch):
    """Two groups with the same options share one optimizer object on the full path; their
    steady steps each run a copy of their own, so that the fast route's steady record (one
    per optimizer object) is not replaced by the other group's every step."""
    groups = _separate()
    opt = TorchOptimizer([{"params": ps} for ps in groups], agrad.optim.adam, lr=0.01)
    calls = [0]
    inputs = fastpath._inputs

    def count_inputs(*args):
        calls[0] += 1
        return inputs(*args)

    monkeypatch.setattr(fastpath, "_inputs", count_inputs)
    g = torch.Generator().manual_seed(3)
    for i in range(8):
        if i == 4:
            calls[0] = 0
        for p in (p for ps in groups for p in ps):
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    assert calls[0] == 0
    assert len({id(r.opt) for r in opt._steady.values()}) == len(groups)


@pytest.mark.parametrize("name", list(OPTS))
def test_a_parameter_whose_storage_shrank_is_refused(name):
    """A parameter whose storage was resized smaller during training (torch.optim would
    write past its end): the step raises, naming it, and writes no other parameter."""
    factory, _, options = OPTS[name]
    model = _model()
    x, y = _data()
    opt = agrad.optim.TorchOptimizer(model.parameters(), factory, **options)
    for _ in range(4):  # steady steps
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    others = [p.detach().clone() for p in model.parameters()][1:]
    storage = _first(model).untyped_storage()
    storage.resize_(storage.nbytes() // 2)
    with pytest.raises(TypeError, match="storage holds 80 bytes but its elements reach byte 160"):
        opt.step()
    for p, before in zip(list(model.parameters())[1:], others):
        assert torch.equal(p.detach(), before)
