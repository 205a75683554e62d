"""The host-kernel route (``agrad.optim.program.host_exec``): NumPy and torch CPU steps
as compiled C batches, against the generic path (the fast route off) as reference.

- NumPy: **bitwise** for every case here but one kind of sum. Each kernel statement
  is the generic path's operation on the same operands in the same order and dtype,
  built without contraction or fast math, so ``+ - * / sqrt`` round as NumPy rounds
  them; the sums computed in the kernels add in NumPy's order, except a sum over all
  elements of a block that walks rows (adafactor_torch's ``rms(u)``), held to
  :data:`ROW_SUM_ULPS` float32 ulps (see "reductions inside the kernels"). The only operations that could differ
  are the C library's ``exp``/``log``/``pow``/``tanh`` (:data:`TRANSCENDENTAL`): cases
  using them are held to two float32 ulps instead (none differed when measured).
- torch: **to rounding**. torch's CPU kernels do not round every operation as IEEE
  arithmetic in program order does (a division by a scalar is a multiplication by its
  reciprocal), so float32 results differ in the last place for some rules.

The route is checked to be taken (``host_exec.runs``), to fall back to the other
executors, unchanged, without a compiler, when compiling fails or when switched off,
to keep no memory per step, and to find its compiled kernels on disk from a second
process. Skipped with a reason where the machine has no C compiler.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import agrad
import agrad.optim as ao
from agrad.bench.optimizer_rows import adabelief as bench_adabelief
from agrad.optim import fastpath
from agrad.optim.program import host_c, host_exec
from agrad.optim.program.ir import pre_nodes
from agrad.optim.program.recorder import record
from agrad.pytree import flatten_leaves, tree_map
from program_cases import CASES, TRANSCENDENTAL

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(host_c.find_c_compiler() is None, reason="no host C compiler")


def row_rms(lr: float = 0.01) -> ao.GradientTransformation:
    """A user's rule with a broadcast: each row of a matrix's gradient over its RMS
    (``mean(..., keepdims=True)``, shape ``(n, 1)``, read by an ``(n, m)`` block)."""

    def init(params):
        return ()

    def update(grads, state, params=None):
        def direction(g):
            if len(g.shape) < 2:
                return -lr * g
            xp = agrad.array_namespace(g)
            return -lr * g / (xp.sqrt(xp.mean(g * g, axis=-1, keepdims=True)) + 1e-8)

        return tree_map(direction, grads), state

    return ao.GradientTransformation("row_rms", init, update, {"lr": lr}, needs_params=False)


#: More rules: torch-family extras, optax-family ones, schedules and chains.
EXTRA = {
    "rprop": lambda: ao.rprop(lr=0.01),
    "asgd": lambda: ao.asgd(lr=0.01),
    "adafactor_torch": lambda: ao.adafactor_torch(lr=0.01),
    "sign_sgd": lambda: ao.sign_sgd(0.01),
    "signum": lambda: ao.signum(0.01),
    "adabelief-optax": lambda: ao.adabelief(1e-2),
    "yogi": lambda: ao.yogi(1e-2),
    "adam-schedule": lambda: ao.adam(lr=ao.linear_lr(0.01, start_factor=0.5, total_iters=2)),
    "chain-wd-clip-schedule": lambda: ao.chain(
        ao.clip_by_global_norm(0.5),
        ao.add_decayed_weights(0.01),
        ao.scale_by_adam(),
        ao.scale_by_learning_rate(ao.linear_lr(0.01, start_factor=0.5, total_iters=2)),
    ),
    "user-adabelief-bench": bench_adabelief,
    "user-row-rms": row_rms,
}
ALL = {**CASES, **EXTRA}
SHAPES = [(3, 4), (5,), (), (0,), (7, 3)]


def _leaves(lib: str, shapes, dtype, seed: int):
    rng = np.random.default_rng(seed)
    out = [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shapes]
    return [torch.from_numpy(x) for x in out] if lib == "torch" else out


def _np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _steps(monkeypatch, make, lib, shapes, dtype, route, tree=list, steps=3):
    """``steps`` in-place steps; the final leaves (as NumPy) and host steps taken.

    ``route``: ``"generic"`` (fast route off), ``"host"``, ``"off"`` (host kernels off).
    NumPy's floating-point warnings are left as warnings (the suite turns them into
    errors, and where they could raise, the route declines: see the last tests).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _steps_inner(monkeypatch, make, lib, shapes, dtype, route, tree, steps)


def _steps_inner(monkeypatch, make, lib, shapes, dtype, route, tree, steps):
    monkeypatch.setattr(fastpath, "enabled", route != "generic")
    monkeypatch.setattr(host_exec, "enabled", route == "host")
    monkeypatch.setattr(host_exec, "prefer_fused", False)
    params = tree(_leaves(lib, shapes, dtype, 0))
    opt = make()
    state = opt.init(params)
    before = host_exec.runs
    for k in range(steps):
        grads = tree(_leaves(lib, shapes, dtype, k + 1))
        params, state = opt.step(params, grads, state, inplace=True)
    leaves = flatten_leaves((params, state))[0]
    return [_np(x) if hasattr(x, "shape") else x for x in leaves], host_exec.runs - before


def _transcendental(make, lib, dtype) -> bool:
    """Whether a kernel of the rule calls the C library's exp/log/pow/tanh/sin/cos."""
    opt = make()
    p = _leaves(lib, [(2,)], dtype, 0)
    xp = __import__("array_api_compat." + lib, fromlist=["x"])
    program = record(opt, xp, p, p, flatten_leaves(p)[1], opt.init(p))
    pre = set(pre_nodes(program))  # per-step scalars: the backend computes them, not C
    return any(n.op in TRANSCENDENTAL for i, n in enumerate(program.nodes) if i not in pre)


def _compare(got, ref, lib, dtype, exact):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        if not isinstance(a, np.ndarray):
            assert a == b
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        if exact:
            np.testing.assert_array_equal(a, b)
        elif lib == "numpy":  # the C library's exp/log/pow: two float32 ulps
            np.testing.assert_allclose(a, b, rtol=2.5e-7, atol=1e-30)
        else:
            tol = 2e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_every_rule_takes_the_route_and_matches_generic(monkeypatch, name, lib):
    """Every optimizer, chain and user rule: the route is taken at every step, and the
    result is the generic path's (NumPy bitwise, torch to rounding)."""
    make = ALL[name]
    ref, _ = _steps(monkeypatch, make, lib, SHAPES, np.float32, "generic")
    got, runs = _steps(monkeypatch, make, lib, SHAPES, np.float32, "host")
    assert runs == 3
    if lib == "numpy" and name in ROW_WALKING_SUMS:  # see "reductions inside the kernels"
        _close_to_rounding(got, ref, [None] * len(ref), np.float32)
        return
    exact = lib == "numpy" and not _transcendental(make, lib, np.float32)
    _compare(got, ref, lib, np.float32, exact)


def _tree(draw, leaves):
    kind = draw(st.sampled_from(["list", "dict", "nested"]))
    if kind == "list":
        return lambda xs: list(xs)
    if kind == "dict":
        return lambda xs: {f"w{i}": x for i, x in enumerate(xs)}
    return lambda xs: {"a": list(xs[: len(xs) // 2]), "b": {"c": tuple(xs[len(xs) // 2 :])}}


@st.composite
def _cases(draw):
    shapes = draw(
        st.lists(
            st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4
        )
    )
    return {
        "name": draw(st.sampled_from(["adam", "lamb", "chain-clip-adam", "user-adabelief"])),
        "lib": draw(st.sampled_from(["numpy", "torch"])),
        "dtype": draw(st.sampled_from([np.float32, np.float64])),
        "shapes": shapes,
        "tree": _tree(draw, shapes),
    }


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_cases())
def test_random_trees_shapes_and_dtypes(monkeypatch, case):
    """Tree structures, shapes (0-d and empty included), float32 and float64."""
    make, lib, dtype = CASES[case["name"]], case["lib"], case["dtype"]
    args = (make, lib, case["shapes"], dtype)
    ref, _ = _steps(monkeypatch, *args, "generic", tree=case["tree"])
    got, runs = _steps(monkeypatch, *args, "host", tree=case["tree"])
    assert runs == 3
    _compare(got, ref, lib, dtype, lib == "numpy" and not _transcendental(make, lib, dtype))


@pytest.mark.parametrize("name", ["adam", "lamb"])
def test_fallbacks_give_the_same_result(monkeypatch, name):
    """Switched off, without a compiler, or with a compiler that fails: the other
    executors (or the generic path) run, with the same result and no host step."""
    make = CASES[name]
    ref, runs = _steps(monkeypatch, make, "numpy", SHAPES, np.float64, "host")
    assert runs == 3
    off, runs = _steps(monkeypatch, make, "numpy", SHAPES, np.float64, "off")
    assert runs == 0
    _compare(off, ref, "numpy", np.float64, True)
    monkeypatch.setattr(host_c, "find_c_compiler", lambda: None)
    none, runs = _steps(monkeypatch, make, "numpy", SHAPES, np.float64, "host")
    assert runs == 0
    _compare(none, ref, "numpy", np.float64, True)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("the host C compiler failed")

    monkeypatch.setattr(host_c, "load_library", broken)
    failed, runs = _steps(monkeypatch, make, "numpy", SHAPES, np.float64, "host")
    assert runs == 0
    _compare(failed, ref, "numpy", np.float64, True)


def test_torch_keeps_its_fused_kernel_where_preferred(monkeypatch):
    """Adam on torch runs torch's fused kernel while ``prefer_fused`` (the default)."""
    params = _leaves("torch", [(4, 3), (5,)], np.float32, 0)
    grads = _leaves("torch", [(4, 3), (5,)], np.float32, 1)
    opt = ao.adam(lr=0.01)
    state = opt.init(params)
    before = host_exec.runs
    monkeypatch.setattr(host_exec, "prefer_fused", True)
    params, state = opt.step(params, grads, state, inplace=True)
    assert host_exec.runs == before
    monkeypatch.setattr(host_exec, "prefer_fused", False)
    versions = [p._version for p in params]
    params, state = opt.step(params, grads, state, inplace=True)
    assert host_exec.runs == before + 1
    assert [p._version for p in params] == [v + 1 for v in versions]  # one bump per step


def test_declines_non_contiguous_and_shared_memory(monkeypatch):
    """Arrays the kernels cannot walk in order, or a gradient sharing a parameter's
    memory: no host step, and the generic path's result."""
    monkeypatch.setattr(host_exec, "prefer_fused", False)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((6, 8))
    params = [base[:, ::2].copy(order="F"), rng.standard_normal(5)]
    ref = [p.copy() for p in params]
    grads = [np.ones((6, 4), order="F"), np.ones(5)]
    opt, opt_ref = ao.rmsprop(lr=0.01), ao.rmsprop(lr=0.01)
    state, state_ref = opt.init(params), opt_ref.init(ref)
    before = host_exec.runs
    params, state = opt.step(params, grads, state, inplace=True)
    monkeypatch.setattr(fastpath, "enabled", False)
    ref, state_ref = opt_ref.step(ref, grads, state_ref, inplace=True)
    assert host_exec.runs == before
    for a, b in zip(params, ref):
        np.testing.assert_array_equal(a, b)
    monkeypatch.setattr(fastpath, "enabled", True)
    p = [np.ones(5)]
    opt = ao.adam(0.1)
    p, _ = opt.step(p, p, opt.init(p), inplace=True)  # the gradient is the parameter
    assert host_exec.runs == before
    np.testing.assert_allclose(p[0], 0.9)


def test_declines_where_floating_point_errors_could_raise(monkeypatch):
    """Where NumPy's error handling could raise (``seterr(all="raise")``, or warnings
    made errors, as this suite does), the kernels (which raise nothing) are not used:
    the checked NumPy executor runs, and raises before writing where it must."""
    monkeypatch.setattr(host_exec, "prefer_fused", False)
    p, g = [np.ones(4)], [np.ones(4)]
    opt = ao.adam(0.1)
    state = opt.init(p)
    before = host_exec.runs
    with np.errstate(all="raise"):
        p, state = opt.step(p, g, state, inplace=True)
    assert host_exec.runs == before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p, state = opt.step(p, g, state, inplace=True)
    assert host_exec.runs == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p, state = opt.step(p, g, state, inplace=True)
    assert host_exec.runs == before + 1


def test_no_memory_growth_and_no_temporaries():
    """No growth per step (no object left alive: counted after a collection) and no
    parameter-sized temporary (peak traced memory of a step: RMSprop allocates no
    array; LAMB's scratch is made once, on its first step)."""
    import gc
    import tracemalloc

    warnings.simplefilter("ignore", RuntimeWarning)  # pytest restores the filters
    params = [np.ones(300_000, np.float32) for _ in range(2)]
    grads = [np.full(300_000, 0.5, np.float32) for _ in range(2)]
    for make in (lambda: ao.rmsprop(lr=0.01, momentum=0.9), lambda: ao.lamb(1e-3)):
        opt = make()
        state = opt.init(params)
        for _ in range(3):
            params, state = opt.step(params, grads, state, inplace=True)
        before = host_exec.runs
        gc.collect()
        alive = len(gc.get_objects())
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for _ in range(20):
                params, state = opt.step(params, grads, state, inplace=True)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        gc.collect()
        assert host_exec.runs == before + 20
        assert len(gc.get_objects()) - alive < 10  # nothing kept per step
        assert peak - base < 64 * 1024  # far under one 1.2 MB parameter


_CHILD = textwrap.dedent(
    """
    import numpy as np, agrad.optim as ao
    from agrad.optim.program import host_c, host_exec
    p = [np.ones(7, np.float32), np.ones((2, 3), np.float32)]
    opt = ao.nadam(lr=0.01); s = opt.init(p)
    p, s = opt.step(p, [x * 0.5 for x in p], s, inplace=True)
    print(host_exec.enabled, host_exec.runs, host_c.builds, repr(float(p[0][0])))
    """
)


def _child(cache: str, **env: str) -> list[str]:
    full = {**os.environ, "XDG_CACHE_HOME": cache, **env}
    full["PYTHONPATH"] = os.pathsep.join([*sys.path])
    res = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=full, check=True
    )
    return res.stdout.split()


def test_disk_cache_survives_processes_and_env_switch(tmp_path):
    """A second process loads the kernels the first compiled (no compile); with
    ``AGRAD_HOST_KERNELS=0`` the route is off and the result is the same."""
    first = _child(str(tmp_path))
    second = _child(str(tmp_path))
    assert first[:2] == ["True", "1"] and int(first[2]) >= 1
    assert second[:3] == ["True", "1", "0"]
    assert list((tmp_path / "agrad" / "host-kernels").glob("*.so"))
    assert not list((tmp_path / "agrad" / "host-kernels").glob("*.c"))  # no leftovers
    off = _child(str(tmp_path / "other"), AGRAD_HOST_KERNELS="0")
    assert off[:3] == ["False", "0", "0"]
    assert off[3] == first[3] == second[3]


def test_threads_sharing_one_optimizer_keep_their_own_tables_and_scratch(monkeypatch):
    """One optimizer stepping different parameters in several threads at once (the
    kernels release the GIL): each thread's pointer tables and scratch are its own."""
    import threading

    monkeypatch.setattr(host_exec, "prefer_fused", False)
    warnings.simplefilter("ignore", RuntimeWarning)  # pytest restores the filters
    shapes = [(300, 40), (40,)] * 3
    opt = ao.lamb(1e-2)
    runs = [(_leaves("numpy", shapes, np.float32, 10 * k), k) for k in range(4)]
    expected = []
    monkeypatch.setattr(fastpath, "enabled", False)  # the generic path: the reference
    for params, _ in runs:
        ref, ref_opt = [p.copy() for p in params], ao.lamb(1e-2)
        state = ref_opt.init(ref)
        for s in range(5):
            ref, state = ref_opt.step(ref, _leaves("numpy", shapes, np.float32, s), state)
        expected.append(ref)
    monkeypatch.setattr(fastpath, "enabled", True)
    before = host_exec.runs
    errors = []

    def work(params, k):
        try:
            state = opt.init(params)
            for s in range(5):
                grads = _leaves("numpy", shapes, np.float32, s)
                params, state = opt.step(params, grads, state, inplace=True)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=r) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert host_exec.runs == before + 20
    for (params, _), ref in zip(runs, expected):
        for a, b in zip(params, ref):
            np.testing.assert_array_equal(a, b)


# -- reductions inside the kernels ----------------------------------------------------
#
# A sum or mean of a block's value (a norm, a factored moment) is computed in the C
# loop producing the value (``c_codegen.host_rows_source``). Over a block's elements
# on one row (LARS, LAMB: ``"all"``), over rows (``axis=-1``) and over columns
# (``axis=-2``) the order of the additions is NumPy's (pairwise per row, rows added in
# order for columns): **bitwise** ``numpy.sum``/``numpy.mean``. A sum over all the
# elements of a block that also walks rows (adafactor's ``rms(u)``, whose block reads
# the broadcast factored moments) adds the rows' pairwise sums in ``double``: NumPy's
# result to rounding, held here to :data:`ROW_SUM_ULPS` float32 ulps of the largest
# value, and no farther from a float64 reference than the generic path is.

ROW_SUM_ULPS = 8
#: Rules with a sum over all elements of a block that walks rows: NumPy's to rounding.
ROW_WALKING_SUMS = {"adafactor_torch"}
REDUCING = {
    "lars": lambda: ao.lars(0.1, weight_decay=1e-3),
    "lamb": lambda: ao.lamb(1e-3, weight_decay=1e-2),
    "adafactor": lambda: ao.adafactor(1e-2, min_dim_size_to_factor=2),
    "adafactor_torch": lambda: ao.adafactor_torch(lr=0.01),
}
#: Bitwise on NumPy: only sums in NumPy's order (every block one row, or rows/columns).
NUMPY_EXACT = set(REDUCING) - ROW_WALKING_SUMS - {"adafactor"}


def _close_to_rounding(got, ref, ref64, dtype):
    """``got`` within :data:`ROW_SUM_ULPS` ulps (of the largest value) of the generic
    path's ``ref``, and as close to the float64 reference as ``ref`` is, plus as much."""
    eps = float(np.finfo(dtype).eps)
    for a, b, c in zip(got, ref, ref64):
        if not isinstance(a, np.ndarray):
            assert a == b
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        keep = ~np.isnan(b)
        a, b, c = a[keep], b[keep], None if c is None else np.asarray(c)[keep]
        if a.size == 0:
            continue
        scale_ = max(float(np.max(np.abs(b))), np.finfo(dtype).tiny)
        assert float(np.max(np.abs(a - b))) <= ROW_SUM_ULPS * eps * scale_
        if c is not None:
            err_ref = float(np.max(np.abs(b.astype(np.float64) - c)))
            err_got = float(np.max(np.abs(a.astype(np.float64) - c)))
            assert err_got <= 2 * err_ref + ROW_SUM_ULPS * eps * scale_


def _float64_reference(monkeypatch, make, shapes, tree=list, steps=3):
    """The generic path on the same values in float64 (leaves of the same tree)."""
    monkeypatch.setattr(fastpath, "enabled", False)
    params = tree([x.astype(np.float64) for x in _leaves("numpy", shapes, np.float32, 0)])
    opt = make()
    state = opt.init(params)
    for k in range(steps):
        grads = tree([x.astype(np.float64) for x in _leaves("numpy", shapes, np.float32, k + 1)])
        params, state = opt.step(params, grads, state, inplace=True)
    return [
        np.asarray(x) if hasattr(x, "shape") else None for x in flatten_leaves((params, state))[0]
    ]


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("name", sorted(REDUCING))
def test_reductions_run_inside_the_kernels(monkeypatch, name, lib):
    """LARS's and LAMB's norms, adafactor's factored moments (rows and columns) and
    RMS values: no reduction left to NumPy or torch between the kernels, counted; the
    result is the generic path's (NumPy: bitwise where the order is NumPy's)."""
    make = REDUCING[name]
    shapes = [(40, 150), (130,), (2, 9, 140), ()]
    ref, _ = _steps(monkeypatch, make, lib, shapes, np.float32, "generic")
    before = host_exec.fused_reductions
    got, runs = _steps(monkeypatch, make, lib, shapes, np.float32, "host")
    assert runs == 3
    assert host_exec.fused_reductions - before >= 3 * 2 * 3  # >= two per array leaf per step
    p = _leaves("numpy", [(3, 4)], np.float32, 0)
    opt = make()
    xp = __import__("array_api_compat.numpy", fromlist=["x"])
    program = record(opt, xp, p, p, flatten_leaves(p)[1], opt.init(p))
    plan = host_exec.build(program, "numpy", [0])
    assert plan is not None
    assert [item for kind, item in plan.steps if kind in ("eager", "py")] == []
    if lib == "numpy" and name in NUMPY_EXACT:
        _compare(got, ref, lib, np.float32, exact=True)
    else:
        _close_to_rounding(got, ref, _float64_reference(monkeypatch, make, shapes), np.float32)


_SHAPES = st.sampled_from(
    [(), (1,), (6,), (0,), (140,), (1, 9), (9, 1), (0, 3), (3, 0), (5, 7), (3, 130), (2, 4, 5)]
)


@settings(
    max_examples=16,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(REDUCING)),
    lib=st.sampled_from(["numpy", "torch"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    shapes=st.lists(_SHAPES, min_size=1, max_size=4),
)
@example(name="adafactor_torch", lib="numpy", dtype=np.float32, shapes=[(3, 0), (0, 3), (9, 1)])
@example(name="adafactor", lib="torch", dtype=np.float64, shapes=[(1, 9), (2, 4, 5), ()])
@example(name="lars", lib="numpy", dtype=np.float32, shapes=[(3, 130), (0,), (140,)])
def test_reductions_random_shapes(monkeypatch, name, lib, dtype, shapes):
    """0-d, 1-d, empty, 1xN, Nx1 and 3-d leaves, float32 and float64: the route is
    taken and the result is the generic path's (bitwise or to the stated bound)."""
    make = REDUCING[name]
    if name == "adafactor_torch" and any(s == () for s in shapes) and len(shapes) == 1:
        shapes = [*shapes, (3,)]
    ref, _ = _steps(monkeypatch, make, lib, shapes, dtype, "generic")
    got, runs = _steps(monkeypatch, make, lib, shapes, dtype, "host")
    assert runs == 3
    if lib == "numpy" and name in NUMPY_EXACT:
        _compare(got, ref, lib, dtype, exact=True)
    else:
        _close_to_rounding(got, ref, [None] * len(ref), dtype)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from(
        [
            (1,),
            (7,),
            (8,),
            (129,),
            (1000,),
            (3, 130),
            (1, 300),
            (300, 1),
            (0, 4),
            (4, 0),
            (2, 5, 17),
        ]
    ),
    dtype=st.sampled_from(["float32", "float64"]),
    mean=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_rows_source_sums_as_numpy(shape, dtype, mean, seed):
    """The C sums of ``x*x`` over a block's rows and columns, and over all its elements
    on one row, are bitwise NumPy's (its pairwise order); over several rows, to
    rounding. A broadcast ``(..., m, 1)`` input is read through the row-offset table."""
    import ctypes

    from agrad.optim.program.c_codegen import (
        CBlock,
        CInput,
        CReduction,
        CStatement,
        host_batch_source,
    )

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((*shape[:-1], 1)).astype(dtype)
    # columns of width 1: NumPy sums them pairwise, and the plan leaves them to NumPy
    kinds = ["all", "rows"] + (["cols"] if len(shape) > 1 and shape[-1] != 1 else [])
    for kind in kinds:
        bcast = kind != "all"
        inputs = [CInput("a0", dtype)] + ([CInput("a1", dtype, bcast="row")] if bcast else [])
        stmts = [CStatement("t0", "multiply", ("a0", "a0"), dtype)]
        if bcast:
            stmts.append(CStatement("t1", "multiply", ("t0", "a1"), dtype))
        block = CBlock(inputs, stmts, [], [CReduction("r0", stmts[-1].target, kind, mean)])
        n_in = len(inputs)
        buffers = [dtype] * (n_in + 1) + (["int64"] if bcast else [])
        text = host_batch_source("KERNEL", block, list(range(len(buffers))), buffers)
        lib = host_c.load_library(
            "#include <math.h>\n#include <stdbool.h>\n" + text.replace("KERNEL", "k")
        )
        value = x * x * w if bcast else x * x
        axis = {"all": None, "rows": -1, "cols": -2}[kind]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expect = (np.mean if mean else np.sum)(value, axis=axis, keepdims=True)
        out = np.empty(expect.shape, dtype)
        bufs = [x] + ([w] if bcast else []) + [out]
        if bcast:
            bufs.append(np.arange(w.size, dtype=np.int64))
        table = np.array([b.ctypes.data for b in bufs], np.uint64)
        size, last = x.size, shape[-1]
        rows = size // last if last else int(np.prod(shape[:-1]))
        m = shape[-2] if len(shape) > 1 else 1
        dims = (
            (size, rows, last, m, int(np.prod(shape[:-2])) * last)
            if bcast
            else (size, 1, size, 0, 0)
        )
        fn = lib.k
        fn.argtypes = [
            ctypes.c_longlong,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_longlong,
        ]
        fn(1, (ctypes.c_longlong * 5)(*dims), table.ctypes.data, (ctypes.c_double * 1)(0.0), 0)
        np.testing.assert_array_equal(out, expect)


def test_expand_dims_is_recorded_and_read_in_place():
    """``expand_dims`` is a node of the axis-inserted shape (negative axes as the
    standard counts them; an axis out of range is not recordable), and the host plan
    reads it as a view of its operand: no step, no copy."""
    from agrad.optim.program.recorder import NotRecordable

    def with_axis(axis):
        def direction(g):
            xp = agrad.array_namespace(g)
            r = xp.mean(g * g, axis=-1)  # (m,)
            return -0.01 * g / xp.sqrt(xp.expand_dims(r, axis=axis) + 1e-8)

        def update(grads, state, params=None):
            return tree_map(direction, grads), state

        return ao.GradientTransformation("rows", lambda p: (), update, {}, needs_params=False)

    xp = __import__("array_api_compat.numpy", fromlist=["x"])
    p = [np.ones((3, 4), np.float32)]
    for axis in (1, -1):
        opt = with_axis(axis)
        program = record(opt, xp, p, p, flatten_leaves(p)[1], ())
        (node,) = [n for n in program.nodes if n.op == "expand_dims"]
        assert node.shape == (3, 1)
        plan = host_exec.build(program, "numpy", [])
        # the row means (in the loop), sqrt on (3, 1), the update: compiled, no view step
        assert [kind for kind, _ in plan.steps] == ["c", "c", "c"]
        assert plan.n_reductions == 1
    with pytest.raises(NotRecordable):
        record(with_axis(3), xp, p, p, flatten_leaves(p)[1], ())


def test_runtime_flags_keep_rounding_and_ask_avx2_only_where_the_cpu_has_it(monkeypatch):
    """The run-time flags never allow contraction or fast math (results stay those of
    NumPy and torch); AVX2 is asked for only on an x86-64 CPU that lists it."""
    import builtins
    import io
    import platform

    from agrad.optim.program import host_c

    flags = host_c.RUNTIME_CFLAGS
    assert "-ffp-contract=off" in flags and "-fno-fast-math" in flags
    assert not any(f in flags for f in ("-mfma", "-ffast-math", "-march=native", "-Ofast"))
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert host_c._vector_flags() == ()
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    real_open = builtins.open

    def cpuinfo(flags_line):
        def fake(path, *a, **k):
            if path == "/proc/cpuinfo":
                return io.StringIO(f"processor\t: 0\nflags\t\t: {flags_line}\n")
            return real_open(path, *a, **k)

        return fake

    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse sse2 avx avx2 fma"))
    assert host_c._vector_flags() == ("-mavx2",)
    monkeypatch.setattr(builtins, "open", cpuinfo("fpu sse sse2 avx"))
    assert host_c._vector_flags() == ()
