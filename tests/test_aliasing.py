"""User rules whose outputs alias their inputs or each other, on every route.

A rule may return, as a new value, another input (the gradient, the parameters' or a
state leaf's old value) or one value twice (two state leaves, the update and a state
leaf). The reference computes every new value from the OLD values of everything, as if
nothing were written until the end (generic steps on array-api-strict, not in place):
each route (the generic path in place, NumPy's and torch's executors and host kernels,
Dask eager and lazy, CuPy's kernels through host-compiled stand-ins) must give the same
values, bit for bit (float64, one order of operations everywhere).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest

import agrad
import agrad.optim as ao
from agrad.optim import fastpath
from agrad.optim.program import host_exec, kernel_route
from agrad.pytree import tree_map
from program_cases import leaves, reference, state_arrays
from test_program_cupy import host_cupy  # noqa: F401  (a fixture)

torch = pytest.importorskip("torch")
da = pytest.importorskip("dask.array")


class Pair(NamedTuple):
    a: Any
    b: Any


def _rule(name: str, update: Any) -> Any:
    """A factory of a user rule with state ``Pair(a, b)`` (zeros and ones at init) whose
    ``update(g, a, b, p)`` (lists of leaves) returns the updates and the new ``Pair``."""

    def init(params):
        xp = lambda p: agrad.array_namespace(p)  # noqa: E731
        return Pair([xp(p).zeros_like(p) for p in params], [xp(p).ones_like(p) for p in params])

    def step(grads, state, params):
        return update(list(grads), list(state.a), list(state.b), list(params))

    return lambda: ao.GradientTransformation(name, init, step, {})


def _each(f: Any, *trees: list) -> list:
    return [f(*xs) for xs in zip(*trees)]


#: name -> update(g, a, b, p): (updates, Pair(new a, new b))
PATTERNS: dict[str, Any] = {
    # two state leaves receive the same new value
    "same-new-value": lambda g, a, b, p: (
        _each(lambda a, g: -0.1 * (0.9 * a + g), a, g),
        Pair(*[_each(lambda a, g: 0.9 * a + g, a, g)] * 2),
    ),
    # two state leaves swap their old values
    "swap": lambda g, a, b, p: (_each(lambda g, a, b: -0.1 * (g + a - b), g, a, b), Pair(b, a)),
    # ... and one of them updated as it moves
    "rotate": lambda g, a, b, p: (
        _each(lambda g, a, b: -0.1 * (g + a - b), g, a, b),
        Pair(_each(lambda b, g: b + g, b, g), a),
    ),
    # a state leaf receives another's old value while that one is updated (both orders)
    "a-takes-old-b": lambda g, a, b, p: (
        _each(lambda g, b: -0.1 * g * b, g, b),
        Pair(b, _each(lambda b, g: 0.5 * b + g, b, g)),
    ),
    "b-takes-old-a": lambda g, a, b, p: (
        _each(lambda g, a: -0.1 * (g + a), g, a),
        Pair(_each(lambda a, g: 0.5 * a + g, a, g), a),
    ),
    # one leaf returned unchanged, its old value also given to the other
    "a-kept-and-copied": lambda g, a, b, p: (
        _each(lambda g, b: -0.1 * g * b, g, b),
        Pair(a, a),
    ),
    "b-kept-and-copied": lambda g, a, b, p: (
        _each(lambda g, a: -0.1 * (g + a), g, a),
        Pair(b, b),
    ),
    # the update is the gradient itself, or a state leaf's old value, or the parameters'
    "update-is-gradient": lambda g, a, b, p: (g, Pair(_each(lambda a, g: a + g, a, g), b)),
    "update-is-old-state": lambda g, a, b, p: (
        a,
        Pair(_each(lambda a, g: 0.5 * a + g, a, g), b),
    ),
    "update-is-swapped-state": lambda g, a, b, p: (b, Pair(b, a)),
    "update-is-parameters": lambda g, a, b, p: (p, Pair(_each(lambda a, g: a + g, a, g), b)),
    # the gradient as update and as new state
    "gradient-everywhere": lambda g, a, b, p: (g, Pair(g, g)),
    # a new state value is the update itself
    "state-is-update": lambda g, a, b, p: (
        _each(lambda g, a: -0.1 * (g + a), g, a),
        Pair(_each(lambda g, a: -0.1 * (g + a), g, a), b),
    ),
    "state-is-the-update-object": lambda g, a, b, p: (lambda u: (u, Pair(u, b)))(
        _each(lambda g, a: -0.1 * (g + a), g, a)
    ),
    # a parameter's new value that reads a state leaf receiving its old value
    "parameter-through-state": lambda g, a, b, p: (
        _each(lambda a, p, g: (a - p) - 0.1 * g, a, p, g),
        Pair(p, _each(lambda b, g: b + g, b, g)),
    ),
    # the parameter and a state leaf exchange values (the update moves p to a's old value
    # up to rounding); the other state leaf takes the gradient
    "parameter-state-exchange": lambda g, a, b, p: (
        _each(lambda a, p: a - p, a, p),
        Pair(p, g),
    ),
    # across leaves: the state of leaf 0 is leaf 1's (and the reverse)
    "across-leaves-params": lambda g, a, b, p: (
        _each(lambda g, b: -0.1 * g * b, g, b),
        Pair(p[::-1], b),
    ),
    "across-leaves-state": lambda g, a, b, p: (
        _each(lambda g, a, b: -0.1 * (g + a - b), g, a, b),
        Pair(b[::-1], _each(lambda a, g: a + g, a[::-1], g)),
    ),
    "across-leaves-gradient": lambda g, a, b, p: (g[::-1], Pair(g[::-1], b)),
    # views of an input: a reshape to its own shape, a full index, an astype without copy
    "state-is-a-view-of-parameters": lambda g, a, b, p: (
        _each(lambda a, p, g: (a - p) - 0.1 * g, a, p, g),
        Pair(_each(lambda p: agrad.array_namespace(p).reshape(p, p.shape), p), b),
    ),
    "state-is-an-index-of-parameters": lambda g, a, b, p: (
        _each(lambda a, p, g: (a - p) - 0.1 * g, a, p, g),
        Pair(_each(lambda p: p[...], p), b),
    ),
    "state-is-parameters-astype": lambda g, a, b, p: (
        _each(lambda a, p, g: (a - p) - 0.1 * g, a, p, g),
        Pair(_each(lambda p: agrad.array_namespace(p).astype(p, p.dtype, copy=False), p), b),
    ),
    "swap-through-views": lambda g, a, b, p: (
        _each(lambda g, a, b: -0.1 * (g + a - b), g, a, b),
        Pair(_each(lambda b: b[...], b), _each(lambda a: a[...], a)),
    ),
}

#: Every rule above, and chains in which a rule's incoming updates (another
#: transform's output) or the parameters are returned as its state
FACTORIES: dict[str, Any] = {name: _rule(name, f) for name, f in PATTERNS.items()}
FACTORIES |= {
    "chain-stores-incoming": lambda: ao.chain(
        ao.trace(0.9), _rule("keep", lambda g, a, b, p: (g, Pair(g, p)))(), ao.scale_values(-0.1)
    ),
    "chain-both-store-parameters": lambda: ao.chain(
        FACTORIES["parameter-through-state"](), FACTORIES["parameter-state-exchange"]()
    ),
    "chain-stores-outgoing": lambda: ao.chain(
        FACTORIES["state-is-the-update-object"](), ao.scale_values(2.0), ao.trace(0.5)
    ),
    "chain-swap-after-decay": lambda: ao.chain(
        ao.add_decayed_weights(0.01), FACTORIES["swap"](), FACTORIES["update-is-gradient"]()
    ),
}

#: Two parameters alike (the across-leaves rules swap leaves): small (NumPy's executor
#: gathers them into one buffer), over ``fastpath.CHUNK`` (run chunk by chunk), 0-d;
#: with their Dask chunks.
SHAPES = {"small": ([(4, 3)] * 2, (2, 3)), "large": ([(70000,)] * 2, 30000), "0-d": ([()] * 2, ())}


def _expected(name: str, shapes: str) -> tuple[list, list]:
    params, grads = leaves(SHAPES[shapes][0], np.float64, 5)
    want = reference(FACTORIES[name], params, grads)
    return params, grads, [(p, state_arrays(s)) for p, s in want]


#: Programs reading another parameter's leaves: NumPy's and torch's executors decline
#: them (run per parameter), the generic path runs them.
ACROSS_LEAVES = frozenset(name for name in PATTERNS if name.startswith("across-leaves"))
#: Rules returning views (reshape, indexing): no route records them, the generic path
#: runs them (on Dask too); ``astype`` is recorded, only the executors decline it.
VIEWS = frozenset(
    {"state-is-a-view-of-parameters", "state-is-an-index-of-parameters", "swap-through-views"}
)


def _compare(got: list, want: list, rounding: bool = False) -> None:
    """Bit for bit, or to rounding (torch's fused multiply-adds)."""
    same = (
        (lambda x, y, err_msg: np.testing.assert_allclose(x, y, 1e-14, 1e-15, err_msg=err_msg))
        if rounding
        else np.testing.assert_array_equal
    )
    assert len(got) == len(want)
    for k, ((gp, gs), (wp, ws)) in enumerate(zip(got, want)):
        for x, y in zip(gp, wp):
            same(x, y, err_msg=f"parameters, step {k + 1}")
        assert len(gs) == len(ws)
        for i, (x, y) in enumerate(zip(gs, ws)):
            same(x, y, err_msg=f"state leaf {i}, step {k + 1}")


def _snapshot(p: list, s: Any) -> tuple[list, list]:
    return [np.array(np.asarray(x)) for x in p], [np.array(x) for x in state_arrays(s)]


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shapes", sorted(SHAPES))
@pytest.mark.parametrize("lib", ["numpy", "torch", "array_api_strict"])
def test_generic_path_in_place(name, shapes, lib, monkeypatch):
    """The generic path writing in place reads every old value first: a new value that
    is a written array's view (a reshape, ``p[...]``) too; it was copied only where it
    was the very object, so a view got the value written just before (array-api-strict:
    its arrays' memory was not looked at, so views were missed there too)."""
    import array_api_strict

    monkeypatch.setattr(fastpath, "enabled", False)
    params, grads, want = _expected(name, shapes)
    to = {"numpy": np.asarray, "torch": torch.asarray}.get(lib, array_api_strict.asarray)
    opt = FACTORIES[name]()
    p = [to(x.copy()) for x in params]
    s = opt.init(p)
    got = []
    for g in grads:
        p, s = opt.step(p, [to(x.copy()) for x in g], s)
        got.append(_snapshot(p, s))
    _compare(got, want)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shapes", sorted(SHAPES))
@pytest.mark.parametrize("host", [True, False], ids=["host-kernels", "executors"])
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_fast_route(name, shapes, lib, host, monkeypatch):
    """NumPy's and torch's fast route (host kernels, or the executors): every step taken
    (the executors decline rules reading across leaves: the generic path runs them), the
    reference's values; torch's executors to rounding (``addcmul`` may fuse a
    multiply-add). The executors used to make their final copies in one fixed order,
    so a column's old value was read after another copy wrote it: two state leaves
    swapping values got the same one, and a state leaf receiving the parameter's old
    value (the parameter's new value computed into that leaf's column) got the new."""
    monkeypatch.setattr(host_exec, "enabled", host)
    params, grads, want = _expected(name, shapes)
    to = np.asarray if lib == "numpy" else torch.asarray
    opt = FACTORIES[name]()
    p = [to(x.copy()) for x in params]
    s = opt.init(p)
    got = []
    runs = host_exec.runs
    for g in grads:
        with np.errstate(all="ignore"):  # NumPy's host kernels run where no fp error raises
            out = fastpath.try_step(opt, p, [to(x.copy()) for x in g], s)
            if out is None:
                declines = VIEWS if host else VIEWS | ACROSS_LEAVES | {"state-is-parameters-astype"}
                assert name in declines
                out = opt.step(p, [to(x.copy()) for x in g], s)
        p, s = out
        got.append(_snapshot(p, s))
    if host and host_exec.available() and name not in VIEWS:
        assert host_exec.runs > runs
    _compare(got, want, rounding=lib == "torch" and not host)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shapes", sorted(SHAPES))
def test_numpy_executor_where_errors_raise(name, shapes):
    """NumPy's executor where a floating-point error raises (pytest's warnings are
    errors): no host kernels; the kernels run first on copies (gathered, chunk copies),
    then in place: the reference's values."""
    params, grads, want = _expected(name, shapes)
    opt = FACTORIES[name]()
    p = [x.copy() for x in params]
    s = opt.init(p)
    got = []
    runs = host_exec.runs
    for g in grads:
        out = fastpath.try_step(opt, p, [x.copy() for x in g], s)
        if out is None:
            assert name in VIEWS | ACROSS_LEAVES | {"state-is-parameters-astype"}
            out = opt.step(p, [x.copy() for x in g], s)
        p, s = out
        got.append(_snapshot(p, s))
    assert host_exec.runs == runs
    _compare(got, want)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shapes", sorted(SHAPES))
@pytest.mark.parametrize("together", [True, False], ids=["persist-together", "persist-each"])
@pytest.mark.parametrize("eager", [True, False], ids=["eager", "lazy"])
def test_dask(name, shapes, eager, together, monkeypatch):
    """Dask's kernel route, on persisted arrays: eager (run when called) or lazy; the
    results persisted leaf by leaf, or all in one ``dask.persist`` call (which hands
    back one object for one name). Two leaves given one value (``State(m, m)``, the
    gradient twice, the parameters as the state of two transforms) used to be rebound
    to one name: persisted together they became one array, and the next step declined
    and the generic path refused to write it twice."""
    import dask

    from agrad.optim.program import dask_exec

    monkeypatch.setattr(dask_exec, "eager", eager)
    params, grads, want = _expected(name, shapes)
    opt = FACTORIES[name]()
    persist = lambda x: dask.persist(x, scheduler="sync")[0]  # noqa: E731
    p = [persist(da.from_array(x.copy(), chunks=SHAPES[shapes][1])) for x in params]
    s = tree_map(persist, opt.init(p))
    got = []
    for g in grads:
        g = [persist(da.from_array(x, chunks=SHAPES[shapes][1])) for x in g]
        out = kernel_route.try_step(opt, p, g, s)
        if out is None:
            assert name in VIEWS
            out = opt.step(p, g, s)
        if together:
            p, s = dask.persist(list(out[0]), out[1], scheduler="sync")
        else:
            p, s = [persist(x) for x in out[0]], tree_map(persist, out[1])
        got.append(_snapshot(p, s))
    _compare(got, want)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("shapes", sorted(SHAPES))
def test_cupy_kernels(name, shapes, host_cupy):  # noqa: F811
    """CuPy's route, its kernels compiled for the host, on NumPy arrays."""
    params, grads, want = _expected(name, shapes)
    opt = FACTORIES[name]()
    p = [x.copy() for x in params]
    s = opt.init(p)
    got = []
    for g in grads:
        out = kernel_route.try_step(opt, p, [x.copy() for x in g], s)
        if out is None:
            assert name in VIEWS
            out = opt.step(p, [x.copy() for x in g], s)
        s = out[1]
        got.append(_snapshot(p, s))
    _compare(got, want)


@pytest.mark.parametrize(
    "name",
    [
        "parameter-through-state",
        "parameter-state-exchange",
        "state-is-a-view-of-parameters",
        "update-is-parameters",
        "chain-both-store-parameters",
    ],
)
@pytest.mark.parametrize("route", ["generic", "host-kernels", "executors"])
def test_numpy_variables(name, route, monkeypatch):
    """Parameters held by :class:`agrad.Variable` s (their arrays written): the rule
    sees the arrays, so a new state that is one (or a view of one) is compared with
    the Variables' arrays before the writes; the reference's values."""
    monkeypatch.setattr(fastpath, "enabled", route != "generic")
    monkeypatch.setattr(host_exec, "enabled", route == "host-kernels")
    params, grads, want = _expected(name, "small")
    opt = FACTORIES[name]()
    p = [agrad.Variable(x.copy()) for x in params]
    s = opt.init(p)
    got = []
    for g in grads:
        with np.errstate(all="ignore"):
            p, s = opt.step(p, [x.copy() for x in g], s)
        got.append(_snapshot([x.value for x in p], s))
    _compare(got, want)


@pytest.mark.parametrize("name", sorted(set(FACTORIES) - VIEWS))
def test_dask_eager_steps_in_a_row(name):
    """Eager Dask steps, one after another on what the last returned (no persist between
    them): from the third step on, the chunks are the route's own and a block may write
    over the chunks of the values it replaces; never over a chunk another leaf still
    holds (two leaves of one value, a leaf's old value moved to another). Six steps,
    the reference's values after each."""
    params, _ = leaves(SHAPES["small"][0], np.float64, 5)
    rng = np.random.default_rng(6)
    grads = [[rng.standard_normal(x.shape) for x in params] for _ in range(6)]
    want = [(p, state_arrays(s)) for p, s in reference(FACTORIES[name], params, grads)]
    opt = FACTORIES[name]()
    p = [da.from_array(x.copy(), chunks=(2, 3)).persist() for x in params]
    s = opt.init(p)
    got = []
    for g in grads:
        out = kernel_route.try_step(
            opt, p, [da.from_array(x, chunks=(2, 3)).persist() for x in g], s
        )
        assert out is not None
        p, s = out
        got.append(_snapshot(p, s))
    _compare(got, want)
