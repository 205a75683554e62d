"""Adversarial input against the native fast paths (``agrad.optim.fastpath``).

One test per case of the reliability issue that lives in the fast paths. Each asserts
either the right number (against ``torch.optim`` or the generic path, reached with
``fastpath.enabled = False``) or that the step was declined or raised with nothing
modified: every parameter and state array compared before and after, and torch's
version counters. The generic path's own refusals are tested in test_adversarial.py.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import agrad.optim as optim
from agrad.optim import fastpath
from agrad.optim._overlap import VECTOR_SORT
from agrad.pytree import flatten_leaves

torch = pytest.importorskip("torch")

BIG = 3 * fastpath.CHUNK + 17  # several chunks, the last one short


# -- helpers --------------------------------------------------------------------------
def _values(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray | np.generic):
        return np.array(x)
    if x.layout != torch.strided:
        x = x.to_dense()
    return x.detach().cpu().float().numpy().copy()


def snapshot(*trees: Any) -> list[tuple[Any, Any, np.ndarray]]:
    """(leaf, torch version counter or None, values) for every array leaf of ``trees``."""
    out = []
    for tree in trees:
        for leaf in flatten_leaves(tree)[0]:
            if not hasattr(leaf, "shape"):
                continue
            version = None
            if isinstance(leaf, torch.Tensor) and not leaf.is_inference():
                version = leaf._version
            out.append((leaf, version, _values(leaf)))
    return out


def assert_unchanged(snap: list[tuple[Any, Any, np.ndarray]]) -> None:
    for leaf, version, values in snap:
        if version is not None:
            assert leaf._version == version, "a tensor's version counter moved"
        np.testing.assert_array_equal(_values(leaf), values)


def outcome(fn, *args) -> tuple[Any, ...]:
    """``("ok", leaves)`` or ``("raise", type)``: what ``fn(*args)`` did, to compare paths."""
    try:
        new_params, new_state = fn(*args)
    except Exception as e:
        return ("raise", type(e))
    leaves = flatten_leaves((new_params, new_state))[0]
    return ("ok", [_values(x) if hasattr(x, "shape") else x for x in leaves])


def assert_same_outcome(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    assert a[0] == b[0], (a[0], b[0])
    if a[0] == "raise":
        assert a[1] is b[1]
        return
    for x, y in zip(a[1], b[1], strict=True):
        np.testing.assert_array_equal(x, y)


def fresh(make) -> tuple[Any, Any]:
    """Two independent copies of ``make()``'s (params, grads) for fast and generic runs."""
    return make(), make()


@pytest.fixture
def plain_warnings():
    """Warnings that stay warnings (the project's pytest settings make them errors)."""
    with warnings.catch_warnings(record=True) as log:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        yield log


@pytest.fixture
def warnings_as_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _numpy_overflow_params(where: str) -> tuple[dict, dict]:
    """Params and grads whose Adam step overflows (g * g) only in one place."""
    p = {
        "s1": np.ones(5, np.float32),
        "s2": np.ones((3, 4), np.float32),
        "big": np.ones(BIG, np.float32),
        "fortran": np.asfortranarray(np.ones((300, 300), np.float32)),
    }
    g = {k: np.full(v.shape, 0.5, np.float32) for k, v in p.items()}
    g["fortran"] = np.asfortranarray(g["fortran"])
    if where == "gathered":
        g["s2"][2, 3] = 3e38
    elif where == "last_chunk":
        g["big"][-1] = 3e38
    else:
        g["fortran"][-1, -1] = 3e38
    return p, g


# -- NumPy: floating-point errors --------------------------------------------------------
@pytest.mark.parametrize("where", ["gathered", "last_chunk", "non_contiguous"])
def test_numpy_overflow_under_errstate_raise_writes_nothing(where):
    params, grads = _numpy_overflow_params(where)
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    before = snapshot(params, state)
    with np.errstate(over="raise"):
        assert fastpath.try_step(opt, params, grads, state) is None
        assert_unchanged(before)
        with pytest.raises(FloatingPointError):
            opt.step(params, grads, state)
    assert_unchanged(before)
    assert state.count == 0


def test_numpy_overflow_under_warnings_as_errors_writes_nothing(warnings_as_errors):
    params, grads = _numpy_overflow_params("last_chunk")
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    before = snapshot(params, state)
    assert fastpath.try_step(opt, params, grads, state) is None
    with pytest.raises(RuntimeWarning, match="overflow"):
        opt.step(params, grads, state)
    assert_unchanged(before)


def test_numpy_errstate_call_that_raises_writes_nothing():
    def hostile(kind, flag):
        raise KeyError(kind)

    params, grads = _numpy_overflow_params("last_chunk")
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    before = snapshot(params, state)
    with np.errstate(over="call", call=hostile):
        assert fastpath.try_step(opt, params, grads, state) is None
        with pytest.raises(KeyError):
            opt.step(params, grads, state)
    assert_unchanged(before)


def test_numpy_overflow_with_plain_warnings_is_applied_in_full(monkeypatch, plain_warnings):
    """Warnings that cannot raise: the fast path writes everything (infs included),
    bitwise as the generic path, and the overflow is reported as a warning."""
    p_fast, g_fast = _numpy_overflow_params("last_chunk")
    p_ref, g_ref = _numpy_overflow_params("last_chunk")
    opt = optim.adam(lr=0.1)
    s_fast, s_ref = opt.init(p_fast), opt.init(p_ref)
    got = fastpath.try_step(opt, p_fast, g_fast, s_fast)
    assert got is not None and got[1].count == 1
    assert any(issubclass(w.category, RuntimeWarning) for w in plain_warnings)
    monkeypatch.setattr(fastpath, "enabled", False)
    ref = opt.step(p_ref, g_ref, s_ref)
    assert not np.isfinite(s_fast.exp_avg_sq["big"][-1])
    assert_same_outcome(outcome(lambda: got), outcome(lambda: ref))


# -- NumPy: MemoryError for scratch --------------------------------------------------------
@pytest.mark.parametrize("strict", [True, False], ids=["dry-run", "direct"])
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_numpy_memory_error_for_scratch_writes_nothing(monkeypatch, strict, name):
    """A MemoryError injected at every allocation of the fast path in turn: each
    either leaves everything as it was or comes after the step has nothing left to
    allocate (then the step completes)."""

    def make():
        rng = np.random.default_rng(0)
        shapes = [(5,), (3, 4), (BIG,), (70, 1000)]
        ps = [rng.standard_normal(s) for s in shapes]
        ps[3] = np.asfortranarray(ps[3])  # non-contiguous, over CHUNK: whole-array scratch
        gs = [rng.standard_normal(s) for s in shapes]
        return ps, gs

    opt = optim.adam(lr=0.1) if name == "adam" else optim.sgd(lr=0.1, momentum=0.9)
    ref_p, ref_g = make()
    ref = fastpath.try_step(opt, ref_p, ref_g, opt.init(ref_p))
    assert ref is not None
    calls = {"n": 0, "fail_at": 0}
    originals = {f: getattr(np, f) for f in ("empty", "empty_like", "copy")}

    def failing(f):
        def alloc(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise MemoryError("injected")
            return originals[f](*args, **kwargs)

        return alloc

    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("error" if strict else "default")
        failures = 0
        for fail_at in range(1, 50):
            params, grads = make()
            state = opt.init(params)
            before = snapshot(params, state)
            fastpath._scratch_local.buffers = {}
            calls.update(n=0, fail_at=fail_at)
            with monkeypatch.context() as m:
                for f in originals:
                    m.setattr(np, f, failing(f))
                try:
                    got = fastpath.try_step(opt, params, grads, state)
                except MemoryError:
                    got = "MemoryError"
            if got == "MemoryError":
                failures += 1
                assert_unchanged(before)
                continue
            assert got is not None
            for a, b in zip(params, ref_p):
                np.testing.assert_array_equal(a, b)
            break
        else:
            pytest.fail("the step never completed")
    assert failures >= 4  # chunk scratch, gathered copies, whole-array scratch ...


# -- tampered state and hyperparameters -------------------------------------------------
# a count is an int >= 0 or a 0-d integer array holding one (np.int64(3) is one)
COUNTS = [2.0, True, -1, -2, None, "3", np.asarray(-1), np.ones(2, int), np.asarray(3.0)]


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("count", COUNTS, ids=repr)
def test_tampered_count_declines_with_nothing_written(library, count):
    def leaf(v):
        return np.full(BIG, v) if library == "numpy" else torch.full((BIG,), v)

    params = [leaf(1.0), leaf(2.0)]
    opt = optim.adam(lr=0.1)
    state = opt.init(params)._replace(count=count)
    before = snapshot(params, state)
    assert fastpath.try_step(opt, params, [leaf(1.0), leaf(1.0)], state) is None
    assert_unchanged(before)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("adam", "betas", (1.5, 0.999)),
        ("adam", "betas", (0.9, float("nan"))),
        ("adam", "eps", -1e-8),
        ("adam", "lr", float("nan")),
        ("adam", "lr", -0.1),
        ("adamw", "weight_decay", float("inf")),
        ("sgd", "momentum", -0.9),
        ("sgd", "lr", np.asarray(0.1)),
    ],
)
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_hyperparameter_out_of_range_declines(library, name, key, value):
    """Hyperparameters changed after the constructor checked them: the fast path
    takes nothing it cannot compute correctly."""
    params = [np.ones(BIG)] if library == "numpy" else [torch.ones(BIG)]
    opt = getattr(optim, name)(lr=0.1, **({"momentum": 0.9} if name == "sgd" else {}))
    state = opt.init(params)
    with pytest.raises(TypeError, match="fixed when it is built"):
        opt.hyperparams[key] = value
    dict.__setitem__(opt.hyperparams, key, value)  # forced past the guard, as a user could
    before = snapshot(params, state)
    grads = [np.ones(BIG)] if library == "numpy" else [torch.ones(BIG)]
    assert fastpath.try_step(opt, params, grads, state) is None
    assert_unchanged(before)


# -- aliasing and memory overlap ---------------------------------------------------------
def _numpy_alias_case(kind: str):
    """(params, grads, state transform) sharing memory the way ``kind`` says."""
    n = 3 * fastpath.SMALL
    base = np.ones(2 * n)
    grads = [np.full(n, 0.5), np.full(n, 0.25)]
    if kind == "two_full_views":
        base = np.ones(n)
        return [base[:], base[:]], grads, None
    if kind == "shifted_views":
        return [base[:n], base[1 : n + 1]], grads, None
    if kind == "interleaved_views":  # byte bounds overlap, elements do not: declined too
        return [base[0::2], base[1::2]], grads, None
    params = [np.ones(n), np.ones(n)]
    if kind == "same_array_twice":  # owns its memory: told apart by id
        return [params[0], params[0]], grads, None
    if kind == "grad_is_a_param":
        return params, [params[0], grads[1]], None
    if kind == "grad_views_a_param":
        return params, [params[1][::-1], grads[1]], None
    if kind == "state_views_a_param":
        return params, grads, lambda s: s._replace(exp_avg=[params[0][:], s.exp_avg[1]])
    if kind == "state_views_other_state":
        return params, grads, lambda s: s._replace(exp_avg_sq=[s.exp_avg[0][:], s.exp_avg_sq[1]])
    raise AssertionError(kind)


NUMPY_ALIASES = [
    "two_full_views",
    "shifted_views",
    "interleaved_views",
    "same_array_twice",
    "grad_is_a_param",
    "grad_views_a_param",
    "state_views_a_param",
    "state_views_other_state",
]


@pytest.mark.parametrize("kind", NUMPY_ALIASES)
def test_numpy_memory_overlap_declines(monkeypatch, kind):
    """Declined with nothing written; ``opt.step`` then does what the generic path does."""
    outcomes = []
    for fast in (True, False):
        params, grads, tamper = _numpy_alias_case(kind)
        opt = optim.adam(lr=0.1)
        state = opt.init([np.ones_like(p) for p in params])
        state = tamper(state) if tamper else state
        before = snapshot(params, state)
        if fast:
            assert fastpath.try_step(opt, params, grads, state) is None
            assert_unchanged(before)
        monkeypatch.setattr(fastpath, "enabled", fast)
        outcomes.append(outcome(opt.step, params, grads, state))
        if outcomes[-1][0] == "raise":
            assert_unchanged(before)
    assert_same_outcome(*outcomes)


def test_numpy_two_views_of_one_base_no_longer_end_apart(monkeypatch):
    """The issue's case: two ``base[:]`` views over 8192 elements ended at 0.8 on the
    fast path and 0.9 on the generic one; now both paths give one outcome."""
    results = []
    for fast in (True, False):
        monkeypatch.setattr(fastpath, "enabled", fast)
        base = np.ones(10_000)
        a, b = base[:], base[:]
        opt = optim.sgd(lr=0.1)
        results.append(
            (outcome(opt.step, [a, b], [np.ones(10_000)] * 2, opt.init([a, b])), base[0])
        )
    assert_same_outcome(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def test_numpy_disjoint_views_keep_the_fast_path(monkeypatch):
    """Views that do not overlap (halves of one buffer) are not refused."""

    def make():
        base = np.arange(4 * fastpath.SMALL, dtype=np.float64)
        return [base[: 2 * fastpath.SMALL], base[2 * fastpath.SMALL :]], base

    (params, _), (ref, _) = make(), make()
    grads = [np.full(2 * fastpath.SMALL, 0.5)] * 2
    opt = optim.adam(lr=0.1)
    assert fastpath.try_step(opt, params, grads, opt.init(params)) is not None
    monkeypatch.setattr(fastpath, "enabled", False)
    opt.step(ref, grads, opt.init(ref))
    for a, b in zip(params, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_many_distinct_arrays_keep_the_fast_path(library):
    """Hundreds of separate leaves (the vectorised overlap check) are accepted."""
    n = VECTOR_SORT + 50
    make = (lambda: np.ones(7)) if library == "numpy" else (lambda: torch.ones(7))
    params = [make() for _ in range(n)]
    opt = optim.adam(lr=0.1)
    got = fastpath.try_step(opt, params, [make() for _ in range(n)], opt.init(params))
    assert got is not None
    assert float(params[-1][0]) == pytest.approx(0.9)


def _torch_alias_case(kind: str):
    n = 1000
    grads = [torch.full((n,), 0.5), torch.full((n,), 0.25)]
    if kind == "two_full_views":
        base = torch.ones(n)
        return [base[:], base.view(n)], grads, None
    if kind == "shifted_views":
        base = torch.ones(n + 1)
        return [base[:n], base[1:]], grads, None
    if kind == "detach_shares_storage":
        p = torch.ones(n)
        return [p, p.detach()], grads, None
    if kind == "data_shares_storage":
        p = torch.ones(n)
        return [p, p.data], grads, None
    if kind == "numpy_buffer_twice":
        buf = np.ones(n, np.float32)
        return [torch.from_numpy(buf), torch.from_numpy(buf[:])], grads, None
    params = [torch.ones(n), torch.ones(n)]
    if kind == "grad_is_a_param":
        return params, [params[0], grads[1]], None
    if kind == "grad_detaches_a_param":
        return params, [params[1].detach(), grads[1]], None
    if kind == "state_is_a_param":
        return params, grads, lambda s: s._replace(exp_avg=[params[0], s.exp_avg[1]])
    if kind == "exp_avg_is_exp_avg_sq":
        return params, grads, lambda s: s._replace(exp_avg_sq=[s.exp_avg[0], s.exp_avg_sq[1]])
    raise AssertionError(kind)


TORCH_ALIASES = [
    "two_full_views",
    "shifted_views",
    "detach_shares_storage",
    "data_shares_storage",
    "numpy_buffer_twice",
    "grad_is_a_param",
    "grad_detaches_a_param",
    "state_is_a_param",
    "exp_avg_is_exp_avg_sq",
]


@pytest.mark.parametrize("kind", TORCH_ALIASES)
def test_torch_memory_overlap_declines(monkeypatch, kind):
    outcomes = []
    for fast in (True, False):
        params, grads, tamper = _torch_alias_case(kind)
        opt = optim.adam(lr=0.1)
        state = opt.init([torch.ones_like(p) for p in params])
        state = tamper(state) if tamper else state
        before = snapshot(params, state)
        if fast:
            assert fastpath.try_step(opt, params, grads, state) is None
            assert_unchanged(before)
        monkeypatch.setattr(fastpath, "enabled", fast)
        outcomes.append(outcome(opt.step, params, grads, state))
        if outcomes[-1][0] == "raise":
            assert_unchanged(before)
    assert_same_outcome(*outcomes)


# -- torch: what refuses writes, found before the first write ---------------------------
def _two_groups(last_param, last_grad):
    """A float64 group the old code wrote first, then the hostile leaf (float32)."""
    params = {"a": torch.ones(5, dtype=torch.float64), "z": last_param}
    grads = {"a": torch.ones(5, dtype=torch.float64), "z": last_grad}
    return params, grads


def _inference_param():
    with torch.inference_mode():
        p = torch.ones(4)
    return p, torch.ones(4)


def _sparse_grad():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    return emb.weight.detach(), emb.weight.grad


def _expanded_param():
    return torch.zeros(1).expand(4), torch.ones(4)


def _non_leaf_param():
    w = torch.ones(4, requires_grad=True)
    return w * 1.0, torch.ones(4)


HOSTILE = {
    "sparse_grad": _sparse_grad,
    "inference_param": _inference_param,
    "expanded_param": _expanded_param,
    "non_leaf_param": _non_leaf_param,
}


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_torch_refused_leaf_declines_before_any_write(monkeypatch, case, name):
    """The old fast path wrote the float64 group, then failed (sparse) or wrote what
    torch refuses (inference tensors, expanded views) in the float32 group."""
    outcomes = []
    for fast in (True, False):
        params, grads = _two_groups(*HOSTILE[case]())
        opt = getattr(optim, name)(lr=0.1, **({"momentum": 0.9} if name == "sgd" else {}))
        state = opt.init({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in params.items()})
        before = snapshot(params, state)
        if fast:
            assert fastpath.try_step(opt, params, grads, state) is None
            assert_unchanged(before)
        monkeypatch.setattr(fastpath, "enabled", fast)
        outcomes.append(outcome(opt.step, params, grads, state))
        if outcomes[-1][0] == "raise":
            assert_unchanged(before)
    if case != "non_leaf_param":
        assert outcomes[1][0] == "raise"  # the generic path refuses these
    assert_same_outcome(*outcomes)


def test_torch_meta_tensors_decline():
    def meta():
        return [torch.ones(3, device="meta")]

    opt = optim.adam(lr=0.1)
    state = opt.init([torch.ones(3)])._replace(exp_avg=meta(), exp_avg_sq=meta())
    assert fastpath.try_step(opt, meta(), meta(), state) is None


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", "float8_e5m2"])
def test_torch_float8_declines(dtype):
    dt = getattr(torch, dtype, None)
    if dt is None:
        pytest.skip(f"torch has no {dtype}")
    params = [torch.ones(4, dtype=torch.float32), torch.ones(4).to(dt)]
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    before = snapshot(params, state)
    grads = [torch.ones(4), torch.ones(4).to(dt)]
    assert fastpath.try_step(opt, params, grads, state) is None
    assert_unchanged(before)


def test_torch_layout_mismatch_declines_and_generic_is_right(monkeypatch):
    """A transposed parameter with a contiguous gradient: the fused CPU kernel walks
    memory in order and paired the wrong elements (a silently wrong step)."""
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    p = w0.clone().t()
    opt = optim.adam(lr=0.1)
    state = opt.init([p])
    before = snapshot([p], state)
    assert fastpath.try_step(opt, [p], [g], state) is None
    assert_unchanged(before)
    opt.step([p], [g], state)
    ref = w0.clone().t().requires_grad_(True)
    torch_opt = torch.optim.Adam([ref], lr=0.1, foreach=False)
    ref.grad = g.clone()
    torch_opt.step()
    np.testing.assert_allclose(p.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_torch_channels_last_everywhere_keeps_the_fast_path():
    gen = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    w0 = torch.randn(2, 3, 4, 5, generator=gen).to(memory_format=cl)
    grads = [torch.randn(2, 3, 4, 5, generator=gen).to(memory_format=cl) for _ in range(3)]
    p = w0.clone(memory_format=cl)
    opt = optim.adam(lr=0.1)
    state = opt.init([p])
    ref = w0.clone(memory_format=cl).requires_grad_(True)
    torch_opt = torch.optim.Adam([ref], lr=0.1, fused=True)
    for g in grads:
        got = fastpath.try_step(opt, [p], [g], state)
        assert got is not None
        state = got[1]
        ref.grad = g.clone(memory_format=cl)
        torch_opt.step()
    np.testing.assert_array_equal(p.numpy(), ref.detach().numpy())


# -- torch: stale autograd graphs ------------------------------------------------------
STALE_CONFIGS = [
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adamw", {"weight_decay": 0.1}),
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
]


@pytest.mark.parametrize(
    ("name", "kw"), STALE_CONFIGS, ids=[f"{n}-{kw}" for n, kw in STALE_CONFIGS]
)
def test_torch_stale_graph_raises_after_step(name, kw):
    """A graph that saved the parameter before the step refuses to back-propagate, as
    with torch.optim's default implementation (it gave 1 instead of 2 silently)."""
    w = torch.ones(3, requires_grad=True)
    y = (w * w).sum()
    opt = getattr(optim, name)(lr=0.1, **kw)
    state = opt.init([w])
    got = fastpath.try_step(opt, [w], [torch.ones(3)], state)
    assert got is not None
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    w_ref = torch.ones(3, requires_grad=True)
    y_ref = (w_ref * w_ref).sum()
    ref = torch.optim.Adam([w_ref], lr=0.1) if name != "sgd" else torch.optim.SGD([w_ref], lr=0.1)
    w_ref.grad = torch.ones(3)
    ref.step()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y_ref.backward()


def test_torch_stale_graph_on_state_raises():
    """State tensors are bumped too: a graph that saved ``exp_avg`` refuses as well."""
    w = torch.ones(3)
    opt = optim.adam(lr=0.1)
    state = opt.init([w])
    x = torch.ones(3, requires_grad=True)
    y = (x * state.exp_avg[0]).sum()
    assert fastpath.try_step(opt, [w], [torch.ones(3)], state) is not None
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.parametrize(
    ("name", "kw"), STALE_CONFIGS, ids=[f"{n}-{kw}" for n, kw in STALE_CONFIGS]
)
def test_torch_step_bumps_each_written_version_once(name, kw):
    params = {"a": torch.ones(3), "b": torch.ones(2, dtype=torch.float64)}
    grads = {"a": torch.ones(3), "b": torch.ones(2, dtype=torch.float64)}
    opt = getattr(optim, name)(lr=0.1, **kw)
    state = opt.init(params)
    written = [x for x in flatten_leaves((params, state))[0] if isinstance(x, torch.Tensor)]
    versions = [x._version for x in written]
    g_versions = [g._version for g in grads.values()]
    assert fastpath.try_step(opt, params, grads, state) is not None
    assert [x._version for x in written] == [v + 1 for v in versions]
    assert [g._version for g in grads.values()] == g_versions


# -- half precision ----------------------------------------------------------------------
HALF = ["float16", "bfloat16"]
HALF_CONFIGS = [
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "amsgrad": True}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
]


def _torch_reference(name, kw, params):
    kw = dict(kw)
    if name == "adamw":
        return torch.optim.AdamW(params, fused=True, **kw)
    if name == "adam":
        return torch.optim.Adam(params, fused=True, **kw)
    return torch.optim.SGD(params, fused=True, **kw)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("name", "kw"), HALF_CONFIGS, ids=[f"{n}-{kw}" for n, kw in HALF_CONFIGS])
def test_torch_half_precision_matches_torch_fused(dtype, name, kw):
    """float16/bfloat16: computed in float32, stored in the parameter's dtype, bitwise
    as torch.optim's fused kernels."""
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    w0 = [torch.randn(s, generator=gen).to(dt) for s in [(7,), (5, 3)]]
    params = [w.clone() for w in w0]
    ref = [w.clone().requires_grad_(True) for w in w0]
    opt = getattr(optim, name)(**kw)
    torch_opt = _torch_reference(name, kw, ref)
    state = opt.init(params)
    for _ in range(4):
        grads = [torch.randn(w.shape, generator=gen).to(dt) for w in w0]
        got = fastpath.try_step(opt, params, grads, state)
        assert got is not None
        state = got[1]
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        torch_opt.step()
    for p, r in zip(params, ref):
        assert p.dtype == dt
        torch.testing.assert_close(p, r.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_zero_gradient_stays_finite_on_every_path(monkeypatch, library, dtype):
    """Default eps 1e-8 rounds to 0 in float16: computed in half, a zero gradient gave
    [nan, -inf]; computed in float32, every path leaves the parameter unchanged."""
    if library == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    results = []
    for fast in (True, False):
        monkeypatch.setattr(fastpath, "enabled", fast)
        if library == "numpy":
            p, g = np.array([1.0, 2.0], dtype), np.zeros(2, dtype)
        else:
            p, g = torch.tensor([1.0, 2.0], dtype=getattr(torch, dtype)), None
            g = torch.zeros_like(p)
        opt = optim.adam(lr=0.1, eps=1e-8)
        state = opt.init([p])
        if library == "numpy" and fast:
            assert fastpath.try_step(opt, [p], [g], state) is None  # float16: generic path
        (new,), _ = opt.step([p], [g], state)
        assert new.dtype == p.dtype
        results.append(_values(new))
    for r in results:
        np.testing.assert_array_equal(r, [1.0, 2.0])


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(("name", "kw"), HALF_CONFIGS, ids=[f"{n}-{kw}" for n, kw in HALF_CONFIGS])
def test_torch_half_precision_fast_and_generic_agree(monkeypatch, dtype, name, kw):
    """Both paths compute in float32 and round once to the parameter's dtype: they agree
    to that dtype's rounding (one unit in the last place)."""
    dt = getattr(torch, dtype)
    results = []
    for fast in (True, False):
        monkeypatch.setattr(fastpath, "enabled", fast)
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen).to(dt) for s in [(7,), (5, 3)]]
        opt = getattr(optim, name)(**kw)
        state = opt.init(params)
        for _ in range(3):
            grads = [torch.randn(p.shape, generator=gen).to(dt) for p in params]
            params, state = opt.step(params, grads, state)
        results.append(params)
    eps = torch.finfo(dt).eps
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=2 * eps, atol=2 * eps)


def test_numpy_float16_is_left_to_the_generic_path():
    p = [np.ones(BIG, np.float16)]
    opt = optim.adam(lr=0.1)
    assert fastpath.try_step(opt, p, [np.ones(BIG, np.float16)], opt.init(p)) is None


# -- the foreach fallback (devices without fused kernels) -------------------------------
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_torch_foreach_fallback_declines_half_and_matches_in_float32(monkeypatch, name):
    monkeypatch.setattr(fastpath, "_FUSED_DEVICES", ())
    kw = {"momentum": 0.9} if name == "sgd" else {}
    half = [torch.ones(4, dtype=torch.float16)]
    opt = getattr(optim, name)(lr=0.1, **kw)
    state = opt.init(half)
    before = snapshot(half, state)
    assert fastpath.try_step(opt, half, [torch.ones(4, dtype=torch.float16)], state) is None
    assert_unchanged(before)
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(9, generator=gen)
    p, ref = [w0.clone()], w0.clone().requires_grad_(True)
    state = opt.init(p)
    torch_opt = (
        torch.optim.Adam([ref], lr=0.1, foreach=True)
        if name == "adam"
        else torch.optim.SGD([ref], lr=0.1, momentum=0.9, foreach=True)
    )
    for _ in range(3):
        g = torch.randn(9, generator=gen)
        versions = [x._version for x in flatten_leaves((p, state))[0] if hasattr(x, "shape")]
        got = fastpath.try_step(opt, p, [g], state)
        assert got is not None
        state = got[1]
        after = [x._version for x in flatten_leaves((p, state))[0] if hasattr(x, "shape")]
        assert all(a > b for a, b in zip(after, versions))
        ref.grad = g.clone()
        torch_opt.step()
    torch.testing.assert_close(p[0], ref.detach(), rtol=1e-6, atol=1e-7)


# -- the overlap check in a step (the check itself: tests/test_overlap.py) -------------
@pytest.mark.parametrize("n", [2, VECTOR_SORT + 2])
def test_torch_empty_tensors_keep_the_fast_path(n):
    """Empty tensors (all at address 0) write nothing and meet nothing."""
    params = [torch.ones(3)] + [torch.empty(0) for _ in range(n)]
    grads = [torch.ones(3)] + [torch.empty(0) for _ in range(n)]
    opt = optim.adam(lr=0.1)
    assert fastpath.try_step(opt, params, grads, opt.init(params)) is not None
    assert float(params[0][0]) == pytest.approx(0.9)


def test_warnings_filters_read_in_order():
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("always")
        assert not fastpath._warnings_raise()
        warnings.filterwarnings("error", message="overflow")  # conditional: conservative
        assert fastpath._warnings_raise()
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("error", DeprecationWarning)
        assert not fastpath._warnings_raise()
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", append=True)  # behind a catch-all ignore
        assert not fastpath._warnings_raise()
