"""The fast route of ``opt.step`` (recorded programs run by the torch and NumPy
executors) agrees with the generic, namespace-generic path: the reference.

NumPy: bitwise, for every optimizer the executor runs (the same ufuncs on the same
operands in the same order). torch: bitwise where the multi-tensor program keeps the
generic order of operations; to rounding where it fuses ``addcmul``/``lerp`` (as
torch.optim's foreach code does) or runs one of torch's fused kernels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import agrad
import agrad.optim as optim
from agrad.bench.optimizer_rows import adabelief
from agrad.optim import fastpath
from agrad.optim.program import fused as fused_kernels
from agrad.optim.program import host_exec
from agrad.optim.program.ir import lane_groups
from agrad.optim.program.recorder import NotRecordable, record
from agrad.pytree import flatten_leaves, tree_map
from program_cases import inputs_as_state

torch = pytest.importorskip("torch")

# small (gathered), 0-d, over SMALL (not gathered), over CHUNK (two chunks)
SHAPES = [(3,), (5, 4), (), (7,), (2, 3, 4), (9000,), (70000,)]


#: Compiled host kernels are available (a C compiler): LAMB then takes the fast route.
HOST = host_exec.available()


def _make(name: str, kw: dict):
    if name == "adabelief":
        return adabelief(**kw)
    if name == "chain-clip-adam":
        return optim.chain(optim.clip(0.5), optim.adam(lr=0.01))
    if name == "chain-wd-trace-lr":
        return optim.chain(
            optim.add_decayed_weights(0.01), optim.trace(0.9), optim.scale_by_learning_rate(0.1)
        )
    if name == "adam-schedule":
        return optim.adam(lr=optim.linear_lr(0.01, start_factor=0.5, total_iters=3))
    return getattr(optim, name)(**kw)


#: (name, kwargs, taken by NumPy, taken by torch)
CONFIGS = [
    ("adam", {}, True, True),
    ("adam", {"betas": (0.3, 0.9)}, True, True),  # lerp's other branch
    ("adam", {"weight_decay": 0.1}, True, True),
    ("adam", {"amsgrad": True}, True, True),
    ("adam", {"maximize": True}, True, True),
    ("adamw", {"weight_decay": 0.3, "lr": 0.05}, True, True),
    ("sgd", {"lr": 0.1}, True, True),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}, True, True),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, True, True),
    ("sgd", {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01}, True, True),
    ("nadam", {"lr": 0.01}, True, True),
    ("nadam", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, True, True),
    ("radam", {"lr": 0.01}, True, True),
    ("rmsprop", {"lr": 0.01}, True, True),
    ("rmsprop", {"lr": 0.01, "momentum": 0.9, "centered": True}, True, True),
    ("adagrad", {"lr": 0.01, "lr_decay": 0.01}, True, True),
    ("adamax", {"lr": 0.01}, True, True),
    ("adadelta", {"lr": 1.0, "weight_decay": 0.01}, True, True),
    ("lion", {"lr": 0.001}, True, True),
    ("adabelief", {}, True, True),
    ("chain-clip-adam", {}, True, True),
    ("chain-wd-trace-lr", {}, True, True),
    ("adam-schedule", {}, True, True),
    # a per-leaf norm: the host kernels only (on NumPy not under this suite's
    # warnings-as-errors filter, where they decline: see tests/test_host_exec.py)
    ("lamb", {"lr": 0.01}, False, HOST),
]
IDS = [f"{c[0]}-{c[1]}" for c in CONFIGS]


def _arrays(library: str, dtype: str, seed: int, shapes=None) -> list:
    if shapes is None:  # chunks are NumPy's business: torch gets the small shapes
        shapes = SHAPES if library == "numpy" else SHAPES[:-1]
    rng = np.random.default_rng(seed)
    out = [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shapes]
    if library == "torch":
        return [torch.from_numpy(x.copy()) for x in out]
    return out


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().numpy() if x.dtype == torch.bfloat16 else x.detach().numpy()
    return np.asarray(x)


def _run(monkeypatch, opt, params, make_grads, fast: bool, steps: int = 3):
    """``steps`` in-place steps; the leaves after, and whether every step was fast."""
    state = opt.init(params)
    monkeypatch.setattr(fastpath, "enabled", fast)
    all_fast = True
    for k in range(steps):
        grads = make_grads(k + 1)
        before = [_np(g).copy() for g in flatten_leaves(grads)[0]]
        handled = fastpath.try_step(opt, params, grads, state) if fast else None
        if handled is None:
            all_fast = False
            params, state = opt.step(params, grads, state)
        else:
            params, state = handled
        for b, g in zip(before, flatten_leaves(grads)[0]):
            np.testing.assert_array_equal(_np(g), b)  # gradients are never modified
    return [
        _np(x) if hasattr(x, "shape") else x for x in flatten_leaves((params, state))[0]
    ], all_fast


def _compare(got: list, ref: list, exact: bool, dtype: str) -> None:
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        if not isinstance(a, np.ndarray):
            assert a == b
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        if exact:
            np.testing.assert_array_equal(a, b)
        elif dtype == "float64":
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
        else:
            tol = {"float32": 2e-5, "bfloat16": 6e-2}[
                dtype
            ]  # bfloat16: a few units in the last place
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("name", "kw", "on_numpy", "on_torch"), CONFIGS, ids=IDS)
def test_executor_matches_generic(monkeypatch, library, dtype, name, kw, on_numpy, on_torch):
    """Every optimizer, transform chain and user rule takes the same route."""
    results = []
    for fast in (False, True):
        params = _arrays(library, dtype, 0)
        out, all_fast = _run(
            monkeypatch, _make(name, kw), params, lambda k: _arrays(library, dtype, k), fast
        )
        results.append(out)
    assert all_fast == (on_numpy if library == "numpy" else on_torch)
    _compare(results[1], results[0], exact=library == "numpy", dtype=dtype)


TORCH_BITWISE = ["lion", "chain-wd-trace-lr"]


@pytest.mark.parametrize("name", TORCH_BITWISE)
def test_torch_programs_without_fusions_are_bitwise(monkeypatch, name):
    """Programs with no lerp/addcmul pattern keep the generic order: bitwise on torch."""
    kw = dict(next(c[1] for c in CONFIGS if c[0] == name))
    results = []
    for fast in (False, True):
        params = _arrays("torch", "float32", 0)
        out, all_fast = _run(
            monkeypatch, _make(name, kw), params, lambda k: _arrays("torch", "float32", k), fast
        )
        results.append(out)
    assert all_fast
    _compare(results[1], results[0], exact=True, dtype="float32")


@pytest.mark.parametrize(("name", "kw"), [("adam", {}), ("adagrad", {})])
def test_bfloat16_on_torch_uses_fused_kernels(monkeypatch, name, kw):
    results = []
    for fast in (False, True):
        params = _arrays("torch", "float32", 0)
        params = [p.to(torch.bfloat16) for p in params]
        out, all_fast = _run(
            monkeypatch,
            _make(name, dict(kw, lr=0.01)),
            params,
            lambda k: [g.to(torch.bfloat16) for g in _arrays("torch", "float32", k)],
            fast,
        )
        results.append(out)
    assert all_fast
    _compare(results[1], results[0], exact=False, dtype="bfloat16")


def test_bfloat16_without_a_fused_kernel_is_left_to_the_generic_path():
    p = [torch.ones(5, dtype=torch.bfloat16)]
    opt = optim.rmsprop(lr=0.01)
    assert fastpath.try_step(opt, p, [torch.ones(5, dtype=torch.bfloat16)], opt.init(p)) is None


def _tree(draw, leaves: list) -> Any:
    """A random container structure over ``leaves``: list, dict, nested."""
    kind = draw(st.sampled_from(["list", "dict", "nested", "tuple"]))
    if kind == "list":
        return list(leaves)
    if kind == "tuple":
        return tuple(leaves)
    if kind == "dict":
        return {f"k{i}": x for i, x in enumerate(leaves)}
    half = len(leaves) // 2
    return {"a": list(leaves[:half]), "b": {"c": tuple(leaves[half:])}}


@st.composite
def _cases(draw):
    library = draw(st.sampled_from(["numpy", "torch"]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    n = draw(st.integers(1, 6))
    shapes = [tuple(draw(st.lists(st.integers(0, 9), min_size=0, max_size=3))) for _ in range(n)]
    if draw(st.booleans()):
        shapes[0] = (fastpath.SMALL + draw(st.integers(1, 3000)),)
    name, kw, on_numpy, on_torch = draw(st.sampled_from(CONFIGS))
    return library, dtype, shapes, name, kw, draw(st.integers(0, 2**16)), _tree


@settings(max_examples=25, deadline=None)
@given(case=_cases(), data=st.data())
def test_random_trees_shapes_and_dtypes(case, data):
    library, dtype, shapes, name, kw, seed, tree = case
    structure = tree(data.draw, list(range(len(shapes))))
    leaves_of = flatten_leaves(structure)[1]

    def arrays(k: int) -> Any:
        from agrad.pytree import unflatten

        return unflatten(leaves_of, _arrays(library, dtype, seed + k, shapes))

    results = []
    for fast in (False, True):
        fastpath.enabled = fast
        try:
            opt = _make(name, kw)
            params = arrays(0)
            state = opt.init(params)
            for k in range(3):
                params, state = opt.step(params, arrays(k + 1), state)
        finally:
            fastpath.enabled = True
        results.append(
            [_np(x) if hasattr(x, "shape") else x for x in flatten_leaves((params, state))[0]]
        )
    _compare(results[1], results[0], exact=library == "numpy", dtype=dtype)


# -- the program: recorded once, count and schedules are inputs -----------------------
def _program(opt, params):
    import array_api_compat.numpy as xp

    leaves, treedef = flatten_leaves(params)
    return record(opt, xp, leaves, leaves, treedef, opt.init(params))


def test_count_is_a_program_input_not_a_constant():
    """One recording serves every step: the count is an input (a 0-d array of the state,
    or a Python number), and bias corrections are computed from it at every step."""
    from agrad.optim.program.ir import pre_nodes

    opt = optim.adam(lr=0.01)
    params = [np.ones(3), np.ones((2, 2))]
    prog = _program(opt, params)
    assert prog.guards == ()
    pre = [prog.nodes[i] for i in pre_nodes(prog)]
    host_inputs = [s for s in prog.scalars if s.op == "input"]
    assert host_inputs or any(n.op == "input" for n in pre)  # the count
    assert any(n.op == "pow" for n in pre) or any(s.op == "pow" for s in prog.scalars)
    state = opt.init(params)
    for _ in range(5):
        params, state = opt.step(params, [np.ones(3), np.ones((2, 2))], state)
    (variants,) = opt._programs.values()
    assert len(variants) == 1  # recorded once for five steps
    assert int(state.count) == 5


class _CountState(NamedTuple):
    count: int


def test_python_branch_on_a_python_count_is_a_guard():
    """A user rule that branches on a Python int count: one guarded program per branch."""

    def update(grads, state, params=None):
        scale = 1.0 if state.count == 0 else 0.5  # a Python branch on the count
        return tree_map(lambda g: g * -scale, grads), _CountState(state.count + 1)

    opt = optim.GradientTransformation(
        "halving", lambda p: _CountState(0), update, needs_params=False
    )
    params = [np.ones(4)]
    prog = _program(opt, params)
    assert len(prog.guards) == 1
    state = opt.init(params)
    for _ in range(3):
        params, state = opt.step(params, [np.ones(4)], state)
    (variants,) = opt._programs.values()
    assert len(variants) == 2  # the first step and every later one
    assert state.count == 3
    np.testing.assert_array_equal(params[0], 1 - 1.0 - 0.5 - 0.5)


def test_schedules_are_recomputed_every_step(monkeypatch):
    results = []
    for fast in (False, True):
        monkeypatch.setattr(fastpath, "enabled", fast)
        opt = optim.adam(lr=optim.linear_lr(0.01, start_factor=0.5, total_iters=3))
        params = [np.ones(3)]
        state = opt.init(params)
        for _ in range(5):
            params, state = opt.step(params, [np.full(3, 0.5)], state)
        results.append(params[0].copy())
    np.testing.assert_array_equal(results[1], results[0])


def test_branch_on_an_array_value_is_not_recordable():
    def update(grads, state, params=None):
        xp = agrad.array_namespace(grads)
        if float(xp.sum(grads)) > 0:
            return grads * -0.1, state
        return grads * 0.0, state

    opt = optim.GradientTransformation("odd", lambda p: (), update, needs_params=False)
    with pytest.raises(NotRecordable):
        _program(opt, np.ones(3))
    p = np.ones(3)
    assert fastpath.try_step(opt, p, np.ones(3), ()) is None
    q, _ = opt.step(p, np.ones(3), ())  # the generic path runs it
    np.testing.assert_allclose(q, 0.9)


def test_lanes_group_parameters_by_program():
    params = [np.ones(3), np.ones((2, 2)), np.ones(3, np.float32)]
    groups = lane_groups(_program(optim.adam(lr=0.01), params))
    assert sorted(len(g.lanes) for g in groups) == [1, 2]  # float64 and float32


# -- fused kernels: recognised from the program ---------------------------------------
def _torch_program(opt, params):
    import array_api_compat.torch as xp

    leaves, treedef = flatten_leaves(params)
    state = opt.init(params)
    prog = record(opt, xp, leaves, leaves, treedef, state)
    return fused_kernels.recognise(prog, opt, xp, leaves, leaves, treedef, state)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("adam", {}), ("adamw", {}), ("sgd", {"momentum": 0.9}), ("adagrad", {}), ("sgd", {})],
)
def test_fused_kernels_recognised(name, kw):
    assert _torch_program(getattr(optim, name)(lr=0.01, **kw), [torch.ones(3)]) is not None


def test_fused_recognition_reads_the_program_not_the_name():
    """A rule called "adam" that is not Adam is not; Adam called "mine" is."""
    real = optim.adam(lr=0.01)
    fake = optim.GradientTransformation(
        "adam", real.inner_init, lambda g, s, p: (tree_map(lambda x: x * -0.01, g), s),
        dict(real.hyperparams),
    )  # fmt: skip
    assert _torch_program(fake, [torch.ones(3)]) is None
    mine = optim.GradientTransformation(
        "mine", real.inner_init, real.inner_update, dict(real.hyperparams)
    )
    assert _torch_program(mine, [torch.ones(3)]) is not None
    assert _torch_program(optim.nadam(lr=0.01), [torch.ones(3)]) is None


# -- in place, objects kept, bad input --------------------------------------------------
def test_step_writes_in_place_and_keeps_objects():
    opt = optim.rmsprop(lr=0.1)
    params = [np.ones(4), np.ones((2, 3))]
    ids = [id(p) for p in params]
    state = opt.init(params)
    sq_ids = [id(m) for m in state.square_avg]
    new, state = opt.step(params, [np.ones(4), np.ones((2, 3))], state)
    assert [id(p) for p in new] == ids
    assert [id(m) for m in state.square_avg] == sq_ids
    assert state.count == 1


def test_unsupported_inputs_fall_back_to_generic():
    opt = optim.adam(lr=0.1)
    params = [agrad.variable(np.ones(3))]
    assert fastpath.try_step(opt, params, [np.ones(3)], opt.init(params)) is None
    arr = optim.adam(lr=np.asarray(0.1))
    p = [np.ones(3)]
    assert fastpath.try_step(arr, p, [np.ones(3)], arr.init(p)) is None
    assert fastpath.try_step(opt, [np.ones(3)], [torch.ones(3)], opt.init([np.ones(3)])) is None
    p = [np.ones(3)]
    with pytest.raises(ValueError, match="shape"):
        opt.step(p, [np.ones(4)], opt.init(p))
    # a wrong state is reported by the generic path, not run
    p = [np.ones(3)]
    bad = opt.init(p)._replace(exp_avg=[np.ones(4)])
    assert fastpath.try_step(opt, p, [np.ones(3)], bad) is None
    with pytest.raises(ValueError, match="shape"):
        opt.step(p, [np.ones(3)], bad)


def test_torch_leaf_requiring_grad_is_updated_under_no_grad():
    opt = optim.rmsprop(lr=0.1)
    p = torch.ones(3, requires_grad=True)
    state = opt.init([p])
    (q,), state = opt.step([p], [torch.ones(3)], state)
    assert q is p and p.requires_grad
    assert p.grad is None


def test_foreach_program_bumps_each_written_version_once():
    params = {"a": torch.ones(3), "b": torch.ones(2, dtype=torch.float64)}
    grads = {"a": torch.ones(3), "b": torch.ones(2, dtype=torch.float64)}
    opt = optim.nadam(lr=0.1)
    state = opt.init(params)
    written = [x for x in flatten_leaves((params, state))[0] if isinstance(x, torch.Tensor)]
    versions = [x._version for x in written]
    assert fastpath.try_step(opt, params, grads, state) is not None
    assert [x._version for x in written] == [v + 1 for v in versions]


@pytest.mark.parametrize("name", ["rmsprop", "adamax"])
def test_non_contiguous_numpy_arrays(monkeypatch, name):
    results = []
    for fast in (False, True):
        rng = np.random.default_rng(0)
        params = [np.asfortranarray(rng.standard_normal(s)) for s in [(400, 300), (50, 40)]]
        params.append(rng.standard_normal((40, 50))[::2, ::3])
        opt = getattr(optim, name)(lr=0.01)
        state = opt.init(params)
        monkeypatch.setattr(fastpath, "enabled", fast)
        for _ in range(3):
            grads = [np.asfortranarray(rng.standard_normal(p.shape)) for p in params]
            params, state = opt.step(params, grads, state)
        results.append(params)
    for r, g in zip(*results):
        np.testing.assert_array_equal(g, r)


# -- memory --------------------------------------------------------------------------
def test_numpy_step_memory_is_flat_and_small():
    """No growth per step; the peak extra memory of a step stays under one
    parameter-sized buffer (the chunked kernel's scratch is CHUNK elements)."""
    import tracemalloc

    params = [np.ones(300_000, np.float32) for _ in range(2)]
    grads = [np.full(300_000, 0.5, np.float32) for _ in range(2)]
    opt = optim.rmsprop(lr=0.01, momentum=0.9)
    state = opt.init(params)
    for _ in range(3):  # recording, scratch: made once
        params, state = opt.step(params, grads, state)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(20):
            params, state = opt.step(params, grads, state)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    param_bytes = sum(p.nbytes for p in params)
    assert current - base < 64 * 1024  # no growth
    assert peak - base < param_bytes


@pytest.mark.parametrize("host", [True, False], ids=["host-kernels", "executors"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_a_state_value_that_is_another_input_is_copied(lib, host, monkeypatch):
    """A state leaf whose new value is the gradient, or the parameter's old value, gets
    it on every executor. It was left as it was on NumPy's and torch's executors where
    the input's leaf index equalled the state leaf's (the check for "returned
    unchanged" compared the leaf index, not the column), and it got the parameter's
    new value on the host kernels and the generic path (copied after the parameter
    was written). Bit for bit the generic path, which now copies first."""
    monkeypatch.setattr(host_exec, "enabled", host)
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((4, 3)), rng.standard_normal(5)]
    grads = [[rng.standard_normal(x.shape) for x in arrays] for _ in range(3)]
    to = np.asarray if lib == "numpy" else torch.asarray

    def run(fast: bool) -> list[Any]:
        monkeypatch.setattr(fastpath, "enabled", fast)
        opt = inputs_as_state()
        p = [to(x.copy()) for x in arrays]
        s = opt.init(p)
        with np.errstate(all="ignore"):  # NumPy's host kernels run where no fp error raises
            for g in grads:
                p, s = opt.step(p, [to(x) for x in g], s)
        return [np.asarray(x) for x in [*p, *flatten_leaves(s)[0]]]

    runs = host_exec.runs
    got, want = run(True), run(False)
    assert (host_exec.runs > runs) == (host and HOST)
    np.testing.assert_array_equal(got[2], np.asarray(grads[-1][0]))  # last = the gradient
    for x, y in zip(got, want):
        np.testing.assert_array_equal(x, y)
