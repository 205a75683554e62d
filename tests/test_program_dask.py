"""The Dask executor: a step is one task per chunk per fused block, equal to the generic path.

``step`` on Dask arrays (the kernel route) against the generic path on array-api-strict
(the reference) for every optimizer, over shapes, chunkings (gradients chunked unlike
their parameters included) and dtypes; and the task graph of a step, counted.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import agrad.optim as ao
from agrad.optim.program import kernel_route
from agrad.pytree import flatten_leaves, tree_map, unflatten
from program_cases import CASES, inputs_as_state, leaves, reference, state_arrays

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

#: Cases whose rule the recorder cannot hold yet: the route declines, nothing made.
KNOWN_DECLINES: dict[str, str] = {}
#: Cases with reductions (norms): a fused block hands them its inputs' common chunking
#: (a gradient chunked unlike its parameter rechunks both), which sums in another order
#: than the generic path's ``p * p`` in the parameter's chunks: equal to rounding only.
REDUCING = {"lamb", "lars", "chain-clip-adam", "chain-decay-trust", "adafactor"}

SHAPES = st.lists(
    st.lists(st.integers(1, 6), min_size=0, max_size=2).map(tuple), min_size=1, max_size=3
)


def _chunkings(shapes, rng):
    return [tuple(int(rng.integers(1, d + 1)) for d in s) for s in shapes]


def _dask(arrays, chunkings):
    return [da.from_array(x, chunks=c) for x, c in zip(arrays, chunkings)]


def _step_layers(arrays):
    """Names of the graph layers a step made (the agrad block layers among them)."""
    names = set()
    for x in arrays:
        names |= set(x.__dask_graph__().layers)
    return names


def _concrete(arrays):
    """Whether every chunk of ``arrays`` is a value (no task: the step ran when called)."""
    for x in arrays:
        for v in dict(x.__dask_graph__()).values():
            if not isinstance(getattr(v, "value", v), np.ndarray):
                return False
    return True


@pytest.fixture
def lazy_steps():
    """Steps stay lazy (the graph path every scheduler gets), even on persisted inputs."""
    from agrad.optim.program import dask_exec

    saved = dask_exec.eager
    dask_exec.eager = False
    yield
    dask_exec.eager = saved


def _generic_dask(factory, params, grads):
    """Three generic steps on the same Dask arrays (the kernel route off); each step's
    values computed once and handed to the next step as new Dask arrays."""
    opt = factory()
    p, s = list(params), opt.init(list(params))
    out = []
    kernel_route.enabled = False
    try:
        for g in grads:
            p, s = opt.step(p, g, s)
            leaves, treedef = flatten_leaves(s)
            arrays = [i for i, x in enumerate(leaves) if hasattr(x, "dask")]
            p_np, s_np = dask.compute(p, [leaves[i] for i in arrays], scheduler="sync")
            out.append((p_np, s_np))
            p = [da.from_array(v, chunks=x.chunks) for v, x in zip(p_np, p)]
            for i, v in zip(arrays, s_np):
                leaves[i] = da.from_array(v, chunks=leaves[i].chunks)
            s = unflatten(treedef, leaves)
    finally:
        kernel_route.enabled = True
    return out


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "lazy"])
@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=2, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(shapes=SHAPES, dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 99))
def test_dask_step_matches_generic_path(case, eager, shapes, dtype, seed):
    """Bit for bit the generic path on the same Dask arrays (to rounding where a norm is
    summed over other chunks: ``REDUCING``); to rounding array-api-strict (a norm summed
    by chunks adds in another order than a whole-array sum). The first step reads
    unpersisted arrays (a graph); later ones read persisted arrays, and run when called
    (``eager``: the chunks made then, where gradients are chunked as their parameters)
    or stay a graph."""
    from agrad.optim.program import dask_exec

    saved = dask_exec.eager
    dask_exec.eager = eager
    try:
        _check_matches_generic_path(case, eager, shapes, dtype, seed)
    finally:
        dask_exec.eager = saved


def _check_matches_generic_path(case, eager, shapes, dtype, seed):
    params, grads = leaves(shapes, dtype, seed)
    expected = reference(CASES[case], params, grads)
    rng = np.random.default_rng(seed)
    p_chunks, g_chunks = _chunkings(shapes, rng), _chunkings(shapes, rng)
    gs = [_dask(g, g_chunks) for g in grads]
    opt = CASES[case]()
    p = _dask(params, p_chunks)
    s = opt.init(p)
    if case in KNOWN_DECLINES:
        assert kernel_route.try_step(opt, p, gs[0], s) is None
        return
    same = _generic_dask(CASES[case], _dask(params, p_chunks), gs)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    gs = [gs[0], *([x.persist() for x in g] for g in gs[1:])]
    for k, g in enumerate(gs):
        aligned = all(x.chunks == y.chunks for x, y in zip(p, g))
        p, s = opt.step(p, g, s)
        made = _concrete([*p, *_dask_leaves(s)])
        # persisted inputs chunked alike: run now (a norm on Dask's own reduction, or on
        # a 0-d array, leaves a graph: REDUCING cases may be either)
        if eager and k and aligned and case not in REDUCING:
            assert made, case
        elif not (eager and made):
            assert any(name.startswith("agrad-block") for name in _step_layers(p)), case
        p, s = _persist_each(p), tree_map(_persist_each, s)
        want_p, want_s = expected[k]
        for x, y, z in zip(p, want_p, same[k][0]):
            assert x.dtype == y.dtype and x.shape == y.shape
            _same(np.asarray(x), z, case, f"{case} step {k + 1}", rtol)
            np.testing.assert_allclose(np.asarray(x), y, rtol=rtol, atol=rtol)
        for x, y, z in zip(state_arrays(s), state_arrays(want_s), same[k][1]):
            _same(x, z, case, f"{case} state, step {k + 1}", rtol)
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol)


def _persist_each(x):
    """Persist leaf by leaf: one ``dask.persist`` call returns ONE object for collections
    with equal keys (adafactor's zero ``v_row`` and ``v_col`` of a 0-d parameter), which
    in-place steps then refuse as the same array written twice."""
    if isinstance(x, list):
        return [_persist_each(v) for v in x]
    return dask.persist(x, scheduler="sync")[0] if hasattr(x, "dask") else x


def _same(x, z, case, msg, rtol):
    if case in REDUCING:
        np.testing.assert_allclose(x, z, rtol=rtol, atol=rtol, err_msg=msg)
    else:
        np.testing.assert_array_equal(x, z, err_msg=msg)


def _keys(arrays):
    keys: set = set()
    for x in arrays:
        keys |= set(dict(x.__dask_graph__()))
    return keys


def _dask_leaves(tree):
    return [x for x in flatten_leaves(tree)[0] if hasattr(x, "dask")]


@pytest.mark.parametrize(
    ("case", "size"),
    # adam: 4 chunk tasks, a getitem per chunk for p, m, v (12) and the new 0-d count, a
    # data key (no task: the count was concrete, so the per-step values were computed
    # when the graph was made); nadam: also its mu product; rmsprop-centered: four
    # arrays handed out; adabelief: a Python count
    [("adam", 17), ("nadam", 18), ("rmsprop-centered", 21), ("user-adabelief", 16)],
)
def test_one_task_per_chunk_per_step(case, size, lazy_steps):
    """A step on a 4-chunk parameter: 4 tasks that compute (one per chunk) and one
    ``getitem`` per chunk per value handed out, however many operations the rule has; the
    per-step 0-d values (a step count, bias corrections) are computed when the graph is
    made (the count is persisted) and are literals of the chunk tasks, the new ones data
    keys. The generic path makes several tasks per operation."""
    opt = CASES[case]()
    rng = np.random.default_rng(0)
    p = da.from_array(rng.standard_normal((8, 8)), chunks=4).persist()
    g = da.from_array(rng.standard_normal((8, 8)), chunks=4).persist()
    s = opt.init([p])
    s = s._replace(
        **{f: [x.persist() for x in v] for f, v in s._asdict().items() if type(v) is list}
    )
    old = _keys([p, g, *_dask_leaves(s)])
    new_p, new_s = opt.step([p], [g], s)
    assert new_p[0] is p  # rebound in place, as the generic path's write does
    outs = [*new_p, *_dask_leaves(new_s)]
    full = [x for x in outs if x.ndim]
    zero_d = [x for x in outs if not x.ndim]
    new = _keys(outs) - old
    compute = [k for k in new if str(k[0]).startswith("agrad-block")]
    values = [k for k in new if str(k[0]).startswith("agrad-value")]
    assert len(compute) == 4 and all(len(k) == 3 for k in compute)  # one per chunk
    assert len(values) == len(zero_d)  # data, not tasks
    for x in zero_d:
        (value,) = dict(x.__dask_graph__()).values()
        assert isinstance(getattr(value, "value", value), np.ndarray)
    assert len(new) - len(compute) - len(values) == 4 * len(full)  # getitems
    assert len(new) == size
    tasks = new
    old = _keys([p, g, *_dask_leaves(new_s)])
    kernel_route.enabled = False
    try:
        gen_p, gen_s = opt.step([p], [g], new_s)
    finally:
        kernel_route.enabled = True
    assert len(_keys([*gen_p, *_dask_leaves(gen_s)]) - old) >= 3 * len(tasks)


def test_lamb_norms_run_as_sum_tasks_between_blocks():
    """LAMB: each per-leaf norm's sum is one task reading every chunk (not Dask's
    reduction graph); the elementwise work around them is one layer of chunk tasks per
    stage, and the result equals the reference."""
    opt = CASES["lamb"]()
    params, grads = leaves([(6, 4)], np.float32, 5)
    p = [da.from_array(params[0], chunks=(3, 2))]
    s = opt.init(p)
    p, s = opt.step(p, [da.from_array(grads[0][0], chunks=(2, 4))], s)
    layers = _step_layers(p)
    assert sum(n.startswith("agrad-block") for n in layers) >= 2  # before and after the norms
    sums = [n for n in layers if n.startswith("agrad-sum")]
    assert len(sums) == 2  # |p| and |update|
    assert all(len(p[0].dask.layers[n]) == 1 for n in sums)  # one task each
    want = reference(CASES["lamb"], params, grads[:1])[0][0]
    np.testing.assert_array_equal(np.asarray(p[0]), want[0])


def test_variables_holding_dask_arrays_take_the_route():
    """The demo's way: parameters are agrad Variables; their value arrays are rebound,
    and the result equals the generic path on NumPy."""
    import agrad

    params, grads = leaves([(6, 4), (4,)], np.float64, 7)
    opt = CASES["nadam"]()
    boxes = {k: agrad.variable(da.from_array(x, chunks=2)) for k, x in zip("wb", params)}
    s = opt.init({k: v.value for k, v in boxes.items()})
    ref_p = {k: x.copy() for k, x in zip("wb", params)}
    ref = CASES["nadam"]()
    ref_s = ref.init(ref_p)
    for g in grads:
        out, s = opt.step(boxes, {k: da.from_array(x, chunks=3) for k, x in zip("wb", g)}, s)
        assert out is boxes
        assert any(n.startswith("agrad-block") for n in _step_layers([boxes["w"].value]))
        ref_p, ref_s = ref.step(ref_p, dict(zip("wb", g)), ref_s, inplace=False)
    for k in "wb":
        np.testing.assert_array_equal(np.asarray(boxes[k].value), ref_p[k])


_GRAPH_CASES = {
    "apply_if_finite": lambda: ao.apply_if_finite(ao.adam(lr=1e-2), 3),
    "multi_steps": lambda: ao.multi_steps(ao.adam(lr=1e-2), 3),
    "schedule": lambda: ao.adam(lr=ao.warmup_cosine(1e-2, 3, 10)),
    "lamb": CASES["lamb"],
}


@pytest.mark.parametrize("case", sorted(_GRAPH_CASES))
@pytest.mark.parametrize("persist", [True, False], ids=["persisted", "lazy"])
def test_graph_per_step_does_not_grow(case, persist, lazy_steps):
    """Ten steps on the route: persisted after each step, every step's graph has the same
    size (and the result is the reference's, to rounding); never persisted, each step adds the same number of tasks (linear growth, as on
    the generic path; a 0-d input embedded as a literal once copied its whole graph under
    new keys at every step: exponential)."""
    opt = _GRAPH_CASES[case]()
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((8, 8))
    p = [da.from_array(p0.copy(), chunks=4).persist()]
    g = [da.from_array(rng.standard_normal((8, 8)), chunks=4).persist()]
    s = opt.init(p)
    sizes = []
    for _ in range(10):
        p, s = opt.step(p, g, s)
        assert any(n.startswith("agrad-block") for n in _step_layers(p)), case
        state, treedef = flatten_leaves(s)
        sizes.append(len(_keys([*p, *(x for x in state if hasattr(x, "dask"))])))
        if persist:
            p = [_persist_each(x) for x in p]
            s = unflatten(treedef, [_persist_each(x) for x in state])
    if persist:  # the first step also holds init's unpersisted 0-d arrays
        assert len(set(sizes[1:])) == 1, sizes
        g_np = [np.asarray(g[0])]
        want = reference(_GRAPH_CASES[case], [p0], [g_np] * 10)[-1][0][0]
        np.testing.assert_allclose(np.asarray(p[0]), want, rtol=1e-12, atol=1e-12)
    else:
        growth = [b - a for a, b in itertools.pairwise(sizes)]
        assert len(set(growth[1:])) == 1, sizes


def test_chunk_buffers_are_reused_only_once_nothing_holds_them():
    """The block tasks' output buffers come back once only the recycler holds them: a
    view, or an earlier step's persisted array, keeps its buffer from being overwritten."""
    from agrad.optim.program.dask_exec import _Recycler

    pool = _Recycler()
    a = pool.empty(np, (4, 3), np.float32)
    first = id(a)
    del a
    b = pool.empty(np, (4, 3), np.float32)
    assert id(b) == first  # nothing held it: reused
    view = b[1:]
    del b
    assert id(pool.empty(np, (4, 3), np.float32)) != first  # a view keeps it
    del view

    opt, ref = CASES["adam"](), CASES["adam"]
    params, grads = leaves([(8, 8)], np.float32, 3)
    p = [da.from_array(params[0], chunks=4)]
    s = opt.init(p)
    kept = []
    for g in grads:
        p, s = opt.step(p, [da.from_array(g[0], chunks=4)], s)
        p, s = [_persist_each(p[0])], tree_map(_persist_each, s)
        kept.append(da.Array(p[0].dask, p[0].name, p[0].chunks, meta=p[0]._meta))
    for x, (want, _) in zip(kept, reference(ref, params, grads)):
        np.testing.assert_allclose(np.asarray(x), want[0], rtol=1e-6, atol=1e-6)


# -- the chunk tasks on host C kernels --------------------------------------------------
_HOST_CASES = {
    "adam": CASES["adam"],
    "nadam": CASES["nadam"],
    "lamb": CASES["lamb"],
    "chain-schedule": lambda: ao.chain(
        ao.scale_by_adam(), ao.scale_by_learning_rate(ao.warmup_cosine(1e-2, 2, 10))
    ),
}


def _route_steps(factory, params, grads, chunks, host, eager=False):
    """Three kernel-route steps on persisted Dask arrays (the host kernels on or off):
    lazy, persisted after each under the threaded scheduler, or ``eager`` (each step
    runs when called); the parameters and state arrays after each step (NumPy), and how
    many chunks ran on host kernels at each step. ``chunks``: per parameter."""
    from agrad.optim.program import dask_exec, host_exec

    saved = host_exec.enabled, dask_exec.eager
    host_exec.enabled = host
    dask_exec.eager = eager
    runs = []
    try:
        opt = factory()
        p = [da.from_array(x.copy(), chunks=c).persist() for x, c in zip(params, chunks)]
        s = tree_map(_persist_each, opt.init(p))
        out = []
        for g in grads:
            gs = [da.from_array(x, chunks=c).persist() for x, c in zip(g, chunks)]
            before = dask_exec.host_chunk_runs
            p, s = opt.step(p, gs, s)
            if eager:
                assert _concrete([*p, *_dask_leaves(s)])
            else:
                assert any(name.startswith("agrad-block") for name in _step_layers(p))
                p, s = dask.persist(p, s, scheduler="threads")  # one run of each task
            runs.append(dask_exec.host_chunk_runs - before)
            out.append(([np.asarray(x) for x in p], state_arrays(s)))
    finally:
        host_exec.enabled, dask_exec.eager = saved
    return out, runs


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "lazy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(_HOST_CASES))
def test_chunk_tasks_run_host_kernels_bitwise(case, dtype, eager):
    """On NumPy chunks (C-contiguous, float32/float64) every lane block of a step is one
    host C call per chunk (counted), and the result is the ufunc chunk tasks' bit for
    bit, and the generic path's on the same Dask arrays and on array-api-strict (bit for
    bit; to rounding where a norm is summed by chunks: lamb)."""
    from agrad.optim.program import host_exec

    if not host_exec.available():
        pytest.skip("no host C compiler")
    factory = _HOST_CASES[case]
    params, grads = leaves([(8, 6), (6,)], dtype, 11)
    chunks = [(4, 6), 3]  # row blocks of C arrays: contiguous chunks, 2 per parameter
    host, runs = _route_steps(factory, params, grads, chunks, host=True, eager=eager)
    ufunc, no_runs = _route_steps(factory, params, grads, chunks, host=False, eager=eager)
    blocks = 2 if case == "lamb" else 1  # lamb: before and after its norms
    # a host call per chunk per lane block (steps 2 and 3; the first step reads init's
    # zeros, broadcast chunks that are not contiguous, where a block reads them)
    assert runs[1:] == [blocks * 4] * 2 and no_runs == [0, 0, 0], runs
    generic = _generic_dask(
        factory,
        [da.from_array(x, chunks=c) for x, c in zip(params, chunks)],
        [[da.from_array(x, chunks=c) for x, c in zip(g, chunks)] for g in grads],
    )
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    want = reference(factory, params, grads)
    for k in range(3):
        for x, y, z, w in zip(host[k][0], ufunc[k][0], generic[k][0], want[k][0]):
            np.testing.assert_array_equal(x, y)
            _same(x, z, case, f"{case} step {k + 1}", rtol)
            _same(x, w, case, f"{case} step {k + 1} (array-api-strict)", rtol)
        for x, y, z in zip(host[k][1], ufunc[k][1], generic[k][1]):
            np.testing.assert_array_equal(x, y)
            _same(x, z, case, f"{case} state, step {k + 1}", rtol)


def test_chunk_tasks_fall_back_without_host_kernels():
    """The ufunc chunk tasks run (no host call, the same values) where the route does not
    apply: chunks that are not C-contiguous (a column chunking of a C array), the host
    kernels switched off, float16 chunks of a float32 block (another dtype), or no
    kernel for the block (no compiler)."""
    from agrad.optim.program import dask_exec, host_exec

    factory = CASES["adam"]
    params, grads = leaves([(8, 8)], np.float32, 2)
    ref, runs = _route_steps(factory, params, grads, [(8, 4)], host=True)
    assert runs[0] == 0  # every chunk a strided view: not contiguous
    rows, _ = _route_steps(factory, params, grads, [(4, 8)], host=False)
    for (x, _), (y, _) in zip(ref, rows):
        np.testing.assert_array_equal(x, y)
    block = next(s for s in dask_exec.partition(_program(factory)) if s.shape)
    task = dask_exec.BlockTask(_program(factory), block)
    chunk = np.ones((4, 8), np.float32)
    nodes = task.program.nodes
    inputs = [
        0.5 if r[0] == "s" else chunk if nodes[r[1]].shape else np.asarray(0.5, nodes[r[1]].dtype)
        for r in block.inputs
    ]
    before = dask_exec.host_chunk_runs
    want = task(*inputs)
    # a worker process gets the task pickled, without its loaded kernels, and loads them
    again = pickle.loads(pickle.dumps(task))
    assert "_kernels" not in again.__dict__
    for x, y in zip(again(*inputs), want):
        np.testing.assert_array_equal(x, y)
    odd = [x.astype(np.float16) if isinstance(x, np.ndarray) else x for x in inputs]
    task(*odd)
    saved = host_exec.enabled
    host_exec.enabled = False
    try:
        off = task(*inputs)
    finally:
        host_exec.enabled = saved
    task.__dict__["_kernels"] = {k: None for k in task.__dict__.get("_kernels", {})}
    task.__dict__["_kernels"][tuple("float64" for r in block.inputs if r[0] == "s")] = None
    none = task(*inputs)
    assert dask_exec.host_chunk_runs - before == (2 if host_exec.available() else 0)
    for got in (off, none):
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)


def _program(factory):
    """The recorded program of ``factory``'s step on one 8x8 float32 Dask parameter."""
    import array_api_compat.dask.array as xp

    from agrad.optim.program.recorder import record

    opt = factory()
    p = [da.from_array(np.ones((8, 8), np.float32), chunks=4)]
    return record(opt, xp, p, p, flatten_leaves(p)[1], opt.init(p))


def test_lazy_count_makes_the_per_step_values_a_task(lazy_steps):
    """A count that is not yet computed (a lazy 0-d graph) cannot be read when the graph
    is built: the per-step values are then one 0-d task the chunk tasks read, and the
    step's values are the same bits as with a persisted count."""
    opt = CASES["adam"]()
    params, grads = leaves([(8, 8)], np.float32, 4)
    results = []
    for lazy in (False, True):
        p = [da.from_array(params[0].copy(), chunks=4).persist()]
        s = tree_map(_persist_each, opt.init(p))
        if lazy:
            s = s._replace(count=s.count + 0)  # a task: not concrete
        p, s = opt.step(p, [da.from_array(grads[0][0], chunks=4)], s)
        layers = {**p[0].dask.layers, **s.count.dask.layers}
        zero_d = [
            n for n, layer in layers.items() if n.startswith("agrad-block") and len(layer) == 1
        ]
        values = [n for n in layers if n.startswith("agrad-value")]
        assert (len(zero_d), len(values)) == ((1, 0) if lazy else (0, 1))
        p, s = dask.persist(p, s, scheduler="threads")
        results.append([np.asarray(p[0]), *state_arrays(s)])
    for x, y in zip(*results):
        np.testing.assert_array_equal(x, y)


# -- steps on persisted arrays run when called ------------------------------------------
_EAGER_CASES = ("adam", "sgd", "adamax", "nadam", "rmsprop-centered", "lamb", "lars")
_EAGER_CASES += ("chain-clip-adam",)


def _persisted(arrays, chunks):
    return [da.from_array(x.copy(), chunks=c).persist() for x, c in zip(arrays, chunks)]


def _numpy_steps(factory, params, grads):
    """agrad's own NumPy steps (in place) on copies: the parameters and state arrays after
    each step."""
    opt = factory()
    p = [x.copy() for x in params]
    s = opt.init(p)
    out = []
    for g in grads:
        p, s = opt.step(p, list(g), s)
        out.append(([x.copy() for x in p], [x.copy() for x in state_arrays(s)]))
    return out


@pytest.fixture(params=[True, False], ids=["threads", "one-thread"])
def pool_min(request):
    """Chunk tasks of eager steps on the thread pool (any chunk size), or in the caller."""
    from agrad.optim.program import dask_exec

    saved = dask_exec.POOL_MIN
    dask_exec.POOL_MIN = 0 if request.param else 1 << 62
    yield
    dask_exec.POOL_MIN = saved


@pytest.mark.parametrize("case", _EAGER_CASES)
def test_steps_on_persisted_arrays_run_when_called(case, pool_min):
    """Persisted parameters, state and gradients under Dask's default (threaded)
    scheduler: each step runs its chunk tasks when called (the host kernels counted then)
    and rebinds the arrays given to persisted chunks (no task left); the values are the
    generic path's on the same Dask arrays (bit for bit; to rounding where a norm is
    summed by chunks) and agrad's NumPy step's (to rounding), and the lazy route's bit
    for bit (a norm's partial sums taken as each chunk is made add up as the sum task's)."""
    from agrad.optim.program import dask_exec, host_exec

    factory = CASES[case]
    params, grads = leaves([(8, 6), (6,)], np.float64, 21)
    chunks = [(2, 6), 3]
    lazy, _ = _route_steps(factory, params, grads, chunks, host=True, eager=False)
    opt = factory()
    p = _persisted(params, chunks)
    s = tree_map(_persist_each, opt.init(p))
    first = p[0]
    generic = _generic_dask(
        factory, _persisted(params, chunks), [_persisted(g, chunks) for g in grads]
    )
    want = _numpy_steps(factory, params, grads)
    for k, g in enumerate(grads):
        before = dask_exec.host_chunk_runs
        new_p, s = opt.step(p, _persisted(g, chunks), s)
        assert new_p is p and p[0] is first  # rebound in place
        assert _concrete([*p, *_dask_leaves(s)]), case
        if host_exec.available() and k:  # the first step reads init's broadcast zeros
            assert dask_exec.host_chunk_runs > before
        got_p, got_s = [np.asarray(x) for x in p], state_arrays(s)
        for x, y in zip([*got_p, *got_s], [*lazy[k][0], *lazy[k][1]]):
            np.testing.assert_array_equal(x, y)
        for x, z, w in zip(got_p, generic[k][0], want[k][0]):
            _same(x, z, case, f"{case} step {k + 1}", 1e-12)
            np.testing.assert_allclose(x, w, rtol=1e-12, atol=1e-12)
        for x, z, w in zip(got_s, generic[k][1], want[k][1]):
            _same(x, z, case, f"{case} state, step {k + 1}", 1e-12)
            np.testing.assert_allclose(x, w, rtol=1e-12, atol=1e-12)


def _lazy_input(opt, p, g, s):
    return opt.step(p, [g[0] * 1.0], s)  # a task: not yet computed


@pytest.mark.parametrize(
    "why", ["sync-scheduler", "num-workers", "own-pool", "lazy-gradient", "switched-off"]
)
def test_steps_stay_graphs_where_they_must(why):
    """Where Dask would not run the step on its default threaded scheduler (another
    scheduler, a thread count or pool of the user's), where an input is not persisted, or
    with eager steps switched off, a step is a graph of the executor's chunk tasks, run
    when persisted; the values are agrad's NumPy step's."""
    from concurrent.futures import ThreadPoolExecutor

    from agrad.optim.program import dask_exec

    params, grads = leaves([(8, 6)], np.float64, 22)
    want = _numpy_steps(CASES["adam"], params, grads)
    opt = CASES["adam"]()
    p = _persisted(params, [(4, 6)])
    s = tree_map(_persist_each, opt.init(p))
    config = {
        "sync-scheduler": {"scheduler": "sync"},
        "num-workers": {"num_workers": 2},
        "own-pool": {"pool": ThreadPoolExecutor(1)},
    }.get(why, {})
    saved = dask_exec.eager
    dask_exec.eager = why != "switched-off"
    try:
        with dask.config.set(config):
            for k, g in enumerate(grads):
                gs = _persisted(g, [(4, 6)])
                if why == "lazy-gradient":
                    p, s = _lazy_input(opt, p, gs, s)
                else:
                    p, s = opt.step(p, gs, s)
                assert not _concrete(p)
                assert any(n.startswith("agrad-block") for n in _step_layers(p))
                p, s = _persist_each(p), tree_map(_persist_each, s)
                np.testing.assert_allclose(np.asarray(p[0]), want[k][0][0], rtol=1e-12)
                for x, w in zip(state_arrays(s), want[k][1]):
                    np.testing.assert_allclose(x, w, rtol=1e-12, atol=1e-12)
    finally:
        dask_exec.eager = saved
        if why == "own-pool":
            config["pool"].shutdown()


def test_a_distributed_client_keeps_steps_graphs():
    """With a ``distributed`` client as the default scheduler, a step on persisted arrays
    stays a graph (the client runs it), and equals agrad's NumPy step."""
    distributed = pytest.importorskip("distributed")

    params, grads = leaves([(8, 6)], np.float64, 23)
    want = _numpy_steps(CASES["adam"], params, grads[:1])
    opt = CASES["adam"]()
    p = _persisted(params, [(4, 6)])
    s = tree_map(_persist_each, opt.init(p))
    g = _persisted(grads[0], [(4, 6)])
    with distributed.Client(processes=False, n_workers=1, dashboard_address=None) as client:
        p, s = opt.step(p, g, s)
        assert not _concrete(p)
        got = client.compute(p, sync=True)
    np.testing.assert_allclose(np.asarray(got[0]), want[0][0][0], rtol=1e-12)


def test_a_failing_chunk_task_rebinds_nothing(pool_min, monkeypatch):
    """A chunk task that raises (here the third) makes the step raise once every task
    started has finished, and no array is rebound: the next step starts from the same
    values."""
    from agrad.optim.program import dask_exec

    params, grads = leaves([(8, 6)], np.float64, 24)
    opt = CASES["adam"]()
    p = _persisted(params, [(2, 6)])
    s = tree_map(_persist_each, opt.init(p))
    gs = [_persisted(g, [(2, 6)]) for g in grads]
    p, s = opt.step(p, gs[0], s)  # init's zeros read (broadcast): one plain step first
    names = [x.name for x in [*p, *_dask_leaves(s)]]
    calls = []
    real = dask_exec.BlockTask.__call__
    lock = __import__("threading").Lock()

    def failing(self, *inputs):
        with lock:
            calls.append(1)
            n = len(calls)
        if n == 3:
            raise RuntimeError("chunk task failed")
        return real(self, *inputs)

    monkeypatch.setattr(dask_exec.BlockTask, "__call__", failing)
    with pytest.raises(RuntimeError, match="chunk task failed"):
        opt.step(p, gs[1], s)
    assert len(calls) >= 3
    assert [x.name for x in [*p, *_dask_leaves(s)]] == names
    monkeypatch.setattr(dask_exec.BlockTask, "__call__", real)
    p, s = opt.step(p, gs[1], s)
    want = _numpy_steps(CASES["adam"], params, grads[:2])
    np.testing.assert_allclose(np.asarray(p[0]), want[1][0][0], rtol=1e-12)


def test_eager_steps_in_several_threads_at_once(pool_min):
    """Steps of separate optimizers from several threads at once (one pool of threads
    and one buffer recycler between them): each equals agrad's NumPy step."""
    from concurrent.futures import ThreadPoolExecutor

    def train(seed):
        params, grads = leaves([(16, 8)], np.float32, seed)
        opt = CASES["adam"]()
        p = _persisted(params, [(4, 8)])
        s = tree_map(_persist_each, opt.init(p))
        for g in grads:
            p, s = opt.step(p, _persisted(g, [(4, 8)]), s)
            p, s = _persist_each(p), tree_map(_persist_each, s)
        return np.asarray(p[0]), _numpy_steps(CASES["adam"], params, grads)[-1][0][0]

    with ThreadPoolExecutor(4) as ex:
        for got, want in ex.map(train, range(30, 38)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# -- eager steps that write over the old chunks ----------------------------------------
_DONATING_CASES = ("adam", "sgd", "nadam", "rmsprop-centered", "adamax", "lion")


def _steady(factory, shape=(8, 6), chunks=(2, 6), seed=40, steps=6):
    """Persisted arrays and a gradient per step; the optimizer, ``p``, ``s`` and the
    gradients (NumPy), after two plain steps (the chunks are then the route's own)."""
    params, _ = leaves([shape], np.float64, seed)
    rng = np.random.default_rng(seed)
    grads = [[rng.standard_normal(shape)] for _ in range(steps)]
    opt = factory()
    p = _persisted(params, [chunks])
    s = tree_map(_persist_each, opt.init(p))
    for g in grads[:2]:
        p, s = opt.step(p, _persisted(g, [chunks]), s)
    return opt, p, s, params, grads


def _chunk_ids(x):
    return [id(v) for v in x.dask.layers[x.name].mapping.values()]


@pytest.mark.parametrize("case", _DONATING_CASES)
def test_steady_steps_write_over_the_old_chunks(case, pool_min):
    """Once a leaf's chunks are the route's own and only the array being rebound holds
    them, a one-wave step writes each block's outputs over the chunks of the values
    they replace (the same buffers step after step, as NumPy's in-place step): counted,
    and equal bit for bit to agrad's in-place NumPy step (same kernels, same order)."""
    from agrad.optim.program import dask_exec, host_exec

    if not host_exec.available():
        pytest.skip("no C compiler: the chunk tasks run NumPy's ufuncs, nothing is donated")
    if not dask_exec._EXACT_REFCOUNTS:
        pytest.skip("this Python's sys.getrefcount is not exact: nothing is written over")
    factory = CASES[case]
    opt, p, s, params, grads = _steady(factory)
    ids = _chunk_ids(p[0])
    before = dask_exec.donated_chunks
    for g in grads[2:]:
        p, s = opt.step(p, _persisted(g, [(2, 6)]), s)
    assert dask_exec.donated_chunks > before
    assert _chunk_ids(p[0]) == ids  # the parameter's chunks written in place
    want = _numpy_steps(factory, params, grads)[-1]
    np.testing.assert_array_equal(np.asarray(p[0]), want[0][0])
    for x, w in zip(state_arrays(s), want[1]):
        np.testing.assert_array_equal(x, w)


def _hold_lazy(p):
    return p + 0.0


def _hold_graph(p):
    return da.Array(p.dask, p.name, p.chunks, meta=p._meta)


def _hold_chunk(p):
    return p.dask[(p.name, 1, 0)]


def _hold_view(p):
    return p.dask[(p.name, 2, 0)][1:]


_HOLDERS = {
    "lazy expression": _hold_lazy,
    "same graph": _hold_graph,
    "copy": lambda p: p.copy(),
    "one block": lambda p: p.blocks[1],
    "a chunk": _hold_chunk,
    "a view of a chunk": _hold_view,
    "a computed block": lambda p: p.blocks[3].compute(),
}


@pytest.mark.parametrize("holder", sorted(_HOLDERS))
def test_old_values_held_elsewhere_are_never_written(holder):
    """Anything that can still read the parameter's old value (a lazy expression, an
    array on its graph, a chunk, a view, a computed block) keeps its values through the
    steps: those chunks are not written over; the steps are still agrad's NumPy steps."""
    factory = CASES["adam"]
    opt, p, s, params, grads = _steady(factory)
    held = _HOLDERS[holder](p[0])
    snapshot = np.array(held, copy=True)
    for g in grads[2:]:
        p, s = opt.step(p, _persisted(g, [(2, 6)]), s)
        np.testing.assert_array_equal(np.asarray(held), snapshot, err_msg=holder)
    want = _numpy_steps(factory, params, grads)[-1]
    np.testing.assert_array_equal(np.asarray(p[0]), want[0][0])


def test_not_in_place_steps_keep_their_inputs():
    """``inplace=False`` on the route's own chunks: the arrays given keep their values
    (nothing written over), the new ones are the in-place steps'."""
    factory = CASES["adam"]
    opt, p, s, params, grads = _steady(factory)
    before = [np.asarray(x).copy() for x in [*p, *_dask_leaves(s)]]
    new_p, new_s = opt.step(p, _persisted(grads[2], [(2, 6)]), s, inplace=False)
    for x, y in zip([*p, *_dask_leaves(s)], before):
        np.testing.assert_array_equal(np.asarray(x), y)
    want = _numpy_steps(factory, params, grads[:3])[-1]
    np.testing.assert_array_equal(np.asarray(new_p[0]), want[0][0])


def test_one_graph_as_two_leaves_is_not_written_over():
    """Two Dask arrays of one graph (the same name) as two parameters: their chunks are
    the old value of both, so neither block writes over them; each leaf gets its step."""
    opt = ao.sgd(lr=0.1)
    x = _persisted([np.arange(12.0).reshape(4, 3)], [(2, 3)])[0]
    g = _persisted([np.ones((4, 3))], [(2, 3)])[0]
    p = [x]
    s = opt.init(p)
    for _ in range(3):  # the chunks are then the route's own
        p, s = opt.step(p, [g], s)
    p = [x, da.Array(x.dask, x.name, x.chunks, meta=x._meta)]
    s = opt.init(p)
    p, s = opt.step(p, [g, g], s)
    p, s = opt.step(p, [g, g], s)
    want = np.arange(12.0).reshape(4, 3) - 0.5
    np.testing.assert_allclose(np.asarray(p[0]), want, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(p[1]), want, rtol=1e-12)


def test_a_failing_donating_step_writes_nothing(pool_min, monkeypatch):
    """A block task that raises while the step is prepared (here the third), in a step
    that would write over the old chunks: the step raises, no array is rebound and no
    chunk is written (every C call comes after every task is prepared); the next step
    starts from the same values."""
    from agrad.optim.program import dask_exec

    factory = CASES["adam"]
    opt, p, s, params, grads = _steady(factory)
    names = [x.name for x in [*p, *_dask_leaves(s)]]
    before = [np.asarray(x).copy() for x in [*p, *_dask_leaves(s)]]
    calls = []
    real = dask_exec.BlockTask.prepare

    def failing(self, inputs, donated=frozenset()):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("no room for a chunk")
        return real(self, inputs, donated)

    monkeypatch.setattr(dask_exec.BlockTask, "prepare", failing)
    with pytest.raises(MemoryError, match="no room"):
        opt.step(p, _persisted(grads[2], [(2, 6)]), s)
    assert len(calls) == 3
    assert [x.name for x in [*p, *_dask_leaves(s)]] == names
    for x, y in zip([*p, *_dask_leaves(s)], before):
        np.testing.assert_array_equal(np.asarray(x), y)
    monkeypatch.setattr(dask_exec.BlockTask, "prepare", real)
    for g in grads[2:]:
        p, s = opt.step(p, _persisted(g, [(2, 6)]), s)
    want = _numpy_steps(factory, params, grads)[-1]
    np.testing.assert_array_equal(np.asarray(p[0]), want[0][0])


def _summed_and_read():
    """A user rule whose ``u * u`` is only summed (the C function sums it, never writes
    it) and whose ``u`` is summed and read by a later block too (written, and summed
    by NumPy)."""
    import agrad

    def init(params):
        return ()

    def update(grads, state, params=None):
        def one(g):
            xp = agrad.array_namespace(g)
            u = g * 2.0
            return u / (xp.sum(u * u) + 1.0) * -0.1 + 0.01 * xp.sum(u)

        return tree_map(one, grads), state

    return ao.GradientTransformation("summed-and-read", init, update, {}, needs_params=False)


@pytest.mark.parametrize("case", ["lamb", "lars", "chain-clip-adam", "summed-and-read"])
def test_sums_of_values_made_in_a_step_run_in_the_kernel(case, pool_min):
    """Eager steps whose norms sum a block's value only the sum reads: the block's C
    function sums each chunk as it makes it and never writes the value (counted); the
    results are the lazy route's bit for bit (NumPy's pairwise sum of each chunk, the
    chunks' sums added in order) and agrad's NumPy step's to rounding."""
    from agrad.optim.program import dask_exec, host_exec

    if not host_exec.available():
        pytest.skip("no C compiler: NumPy sums the chunks")
    factory = _summed_and_read if case == "summed-and-read" else CASES[case]
    params, grads = leaves([(8, 6), (6,)], np.float32, 50)
    chunks = [(2, 6), 3]
    lazy, _ = _route_steps(factory, params, grads, chunks, host=True, eager=False)
    want = _numpy_steps(factory, params, grads)
    opt = factory()
    p = _persisted(params, chunks)
    s = tree_map(_persist_each, opt.init(p))
    before = dask_exec.summed_in_kernel
    for k, g in enumerate(grads):
        p, s = opt.step(p, _persisted(g, chunks), s)
        for x, y in zip([*p, *state_arrays(s)], [*lazy[k][0], *lazy[k][1]]):
            np.testing.assert_array_equal(np.asarray(x), y, err_msg=f"{case} step {k + 1}")
        for x, w in zip(p, want[k][0]):
            np.testing.assert_allclose(np.asarray(x), w, rtol=2e-6, atol=2e-6)
    assert dask_exec.summed_in_kernel > before


@pytest.mark.parametrize("case", ["adam", "adafactor", "rmsprop-centered", "chain-clip-adam"])
def test_state_persisted_together_right_after_init(case):
    """``dask.persist(params, state)`` right after ``init`` (one call, as users write it):
    every state leaf is still its own array (equal zero moments are named apart at
    init), so in-place steps run, and equal agrad's NumPy steps."""
    factory = CASES[case]
    params, grads = leaves([(8, 6), (6,)], np.float64, 60)
    opt = factory()
    p = [da.from_array(x.copy(), chunks=c) for x, c in zip(params, [(2, 6), 3])]
    p, s = dask.persist(p, opt.init(p))
    arrays = _dask_leaves(s)
    assert len({id(x) for x in arrays}) == len(arrays)
    assert len({x.name for x in [*p, *arrays]}) == len(p) + len(arrays)
    for g in grads:
        p, s = opt.step(p, _persisted(g, [(2, 6), 3]), s)
    want = _numpy_steps(factory, params, grads)[-1]
    for x, w in zip(p, want[0]):
        np.testing.assert_allclose(np.asarray(x), w, rtol=1e-12, atol=1e-12)
    for x, w in zip(state_arrays(s), want[1]):
        np.testing.assert_allclose(x, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("route", [True, False], ids=["kernel-route", "generic"])
def test_two_optimizers_persisted_together_stay_apart(route, monkeypatch):
    """Two optimizers of one program (over the same parameters, then others), their
    states persisted in one ``dask.persist`` call, step after step: equal lazy arrays
    (the counts, the moments of the same parameters) would be one object there, and a
    step of one would rebind the other's state. Each state stays its own: a step of
    the first leaves the second as it was."""
    monkeypatch.setattr(kernel_route, "enabled", route)
    params, grads = leaves([(8, 6)], np.float64, 70)
    p1 = _persisted(params, [(2, 6)])
    p2 = _persisted([params[0] * 2.0], [(2, 6)])
    o1, o2 = CASES["adam"](), CASES["adam"]()
    s1, s2 = dask.persist(o1.init(p1), o2.init(p1))
    for g in grads[:2]:
        p1, s1 = o1.step(p1, _persisted(g, [(2, 6)]), s1)
        p2, s2 = o2.step(p2, _persisted(g, [(2, 6)]), s2)
        s1, s2 = dask.persist(s1, s2)
    assert not {id(x) for x in _dask_leaves(s1)} & {id(x) for x in _dask_leaves(s2)}
    before = state_arrays(s2)
    p1, s1 = o1.step(p1, _persisted(grads[2], [(2, 6)]), s1)
    for x, y in zip(state_arrays(s2), before):
        np.testing.assert_array_equal(x, y)
    assert int(np.asarray(s1.count)) == 3 and int(np.asarray(s2.count)) == 2


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "lazy"])
def test_the_parameters_old_values_as_new_state(eager, monkeypatch):
    """A rule whose new state is the parameters it was given and the gradient: the state
    gets the parameters' old values, not the new ones the same step rebinds them to
    (the rebinding used to read the parameter after it was rebound), and the gradient
    (the old ``last``, never read, is dropped); agrad's NumPy steps' values."""
    from agrad.optim.program import dask_exec

    monkeypatch.setattr(dask_exec, "eager", eager)
    params, grads = leaves([(8, 6)], np.float64, 81)
    opt = inputs_as_state()
    p = _persisted(params, [(2, 6)])
    s = tree_map(_persist_each, opt.init(p))
    for g in grads:
        p, s = opt.step(p, _persisted(g, [(2, 6)]), s)
        p, s = _persist_each(p), tree_map(_persist_each, s)
    want = _numpy_steps(inputs_as_state, params, grads)
    np.testing.assert_allclose(np.asarray(p[0]), want[-1][0][0], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(s.before[0]), want[-2][0][0], rtol=1e-12)
    for x, w in zip(state_arrays(s), want[-1][1]):
        np.testing.assert_allclose(x, w, rtol=1e-12)


def test_graph_building_ignores_floating_point_errors_on_metas(monkeypatch, lazy_steps):
    """Dask computes a reduction's result type on empty "meta" arrays, some of them
    uninitialised (a 0-d array's mean): memory that happens to hold a signalling NaN
    made NumPy warn "invalid value" there (an error in this suite, now and then). The
    graph is built with NumPy's errors ignored; here every ``np.empty`` holds one."""
    real_empty = np.empty

    def signalling_nans(shape, dtype=float, *args, **kwargs):
        out = real_empty(shape, dtype, *args, **kwargs)
        kind = np.dtype(dtype)
        if kind == np.float32:
            out.view(np.uint32)[...] = 0x7FA00000
        elif kind == np.float64:
            out.view(np.uint64)[...] = 0x7FF4000000000000
        return out

    params, grads = leaves([()], np.float32, 0)
    opt = CASES["adafactor"]()
    p = [da.from_array(params[0])]
    s = opt.init(p)
    monkeypatch.setattr(np, "empty", signalling_nans)
    for g in grads:  # filterwarnings = error: a warning would fail the step
        p, s = opt.step(p, [da.from_array(g[0])], s)
    monkeypatch.setattr(np, "empty", real_empty)
    want = reference(CASES["adafactor"], params, grads)[-1][0][0]
    np.testing.assert_allclose(np.asarray(p[0]), want, rtol=1e-6)
