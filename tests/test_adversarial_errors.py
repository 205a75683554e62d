"""Unclear errors of the reliability issue, made clear: one test per case.

A damaged state file (empty, truncated, tampered, nested absurdly deep) gives a
``ValueError`` naming the file, and the key path in the state where a part is wrong; a
pytree nested past ``agrad.pytree.MAX_DEPTH`` gives a ``ValueError`` naming the limit
and the start of the key path; a Dask array of unknown chunk sizes is named as such,
with its key path; an optimizer's cache of state templates keeps a bounded number of
entries (``agrad.optim._cache.LRUCache``). Each test also checks that nothing was
modified (parameters, state, the file). Aliasing, partial writes, stale graphs, half
precision and hyperparameter forms are in test_adversarial.py.
"""

from __future__ import annotations

import copy
import json
import pickle
import threading

import numpy as np
import pytest

import agrad
from agrad import optim
from agrad import pytree as pt
from agrad.optim._cache import LRUCache
from agrad.optim.serialization import _FORMAT, _META
from test_bad_input_matrix import assert_unchanged, record_inputs

LIMIT = pt.MAX_DEPTH


def _params():
    return {"w": np.arange(12.0).reshape(3, 4), "b": np.ones(4)}


def _saved(tmp_path, name="s.npz"):
    """An adam state of ``_params()`` saved at ``tmp_path / name``: (path, its bytes)."""
    path = tmp_path / name
    opt = optim.adam(lr=0.1)
    params = _params()
    optim.save(opt.step(params, params, opt.init(params))[1], path)
    return path, path.read_bytes()


def _meta_and_arrays(path):
    with np.load(path) as z:
        return json.loads(str(z[_META])), {k: z[k] for k in z.files if k != _META}


def _write(path, meta, arrays, text=None):
    text = json.dumps(meta) if text is None else text
    np.savez(path, **{_META: np.array(text)}, **arrays)
    return path


def _load_refused(path, match, like=None):
    """``load`` raises a ValueError naming the file; ``like`` and the file are untouched."""
    like = _params() if like is None else like
    before, data = record_inputs(like), path.read_bytes()
    with pytest.raises(ValueError, match=match) as info:
        optim.load(path, like=like)
    assert repr(str(path)) in str(info.value)
    assert_unchanged(before)
    assert path.read_bytes() == data
    return str(info.value)


def _chain(depth, leaf):
    """A pytree ``depth`` containers deep: ``{'a': [{'a': [... leaf ...]}]}``."""
    tree = leaf
    for i in range(depth):
        tree = [tree] if i % 2 else {"a": tree}
    return tree


def _innermost(tree):
    while isinstance(tree, (dict, list)):
        tree = tree["a"] if isinstance(tree, dict) else tree[0]
    return tree


# -- damaged state files ----------------------------------------------------------------
@pytest.mark.parametrize("keep", [0.5, 0.9, 22, 1], ids=["half", "most", "22B", "1B"])
def test_load_of_a_truncated_file_names_the_file(tmp_path, keep):
    path, data = _saved(tmp_path)
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    path.write_bytes(data[:n])
    _load_refused(path, r"is not a state written by agrad\.optim\.save.*truncated or damaged")


def test_load_of_an_empty_file_names_the_file(tmp_path):
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    _load_refused(path, r"is empty, not a state written by agrad\.optim\.save")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00" * 64, "truncated or damaged"),  # neither npz, npy nor a pickle
        (pickle.dumps({"count": 1}), "truncated or damaged: ValueError"),  # pickle refused
        ("npy", "holds one array, not an .npz archive"),
        ("json", "is damaged: its state description is not valid JSON"),
        ("number", "is damaged: its state description is not a string"),
        ("format", "unsupported state format 'other/9'"),
    ],
    ids=["garbage", "pickle", "npy", "bad-json", "meta-not-str", "format"],
)
def test_load_of_another_kind_of_file_names_the_file(tmp_path, content, match):
    path = tmp_path / "x.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "npy":
        with open(path, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        saved, _ = _saved(tmp_path, "good.npz")
        meta, arrays = _meta_and_arrays(saved)
        if content == "json":
            _write(path, meta, arrays, text=json.dumps(meta)[:-5])
        elif content == "number":
            np.savez(path, **{_META: np.arange(3)}, **arrays)
        else:
            _write(path, {**meta, "format": "other/9"}, arrays)
    _load_refused(path, match)


def test_load_of_a_bad_array_index_names_the_key_path(tmp_path):
    saved, _ = _saved(tmp_path)
    meta, arrays = _meta_and_arrays(saved)
    node = meta["state"]["c"][1]["c"][0]  # exp_avg['w'] (AdamState: count, exp_avg, ...)
    assert node == {"t": "array", "i": node["i"]}
    node["i"] = 99
    path = _write(tmp_path / "bad.npz", meta, arrays)
    _load_refused(
        path,
        r"is damaged at state\.exp_avg\['w'\]: it refers to array 99, which the file does "
        r"not hold \(it holds 5 arrays\)",  # 4 buffers and the step count
    )


def test_load_of_one_array_at_two_key_paths_is_refused(tmp_path):
    """A tampered file must not give a state whose exp_avg is its exp_avg_sq."""
    saved, _ = _saved(tmp_path)
    meta, arrays = _meta_and_arrays(saved)
    exp_avg, exp_avg_sq = meta["state"]["c"][1], meta["state"]["c"][2]
    exp_avg_sq["c"][0] = dict(exp_avg["c"][0])
    path = _write(tmp_path / "alias.npz", meta, arrays)
    _load_refused(
        path, r"at state\.exp_avg_sq\['w'\]: array \d+ is used here and at state\.exp_avg\['w'\]"
    )


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda s: s["c"][1].update(t="blob"), r"at state\.exp_avg: unknown node 'blob'"),
        (lambda s: s["c"][1]["keys"].pop(), r"at state\.exp_avg: a dict node whose keys"),
        (lambda s: s["c"][1].pop("c"), r"at state\.exp_avg: a dict node without its list"),
        (
            lambda s: s["c"].__setitem__(0, {"t": "int", "v": "1"}),
            r"at state\.count: an 'int' node holds '1'",
        ),
        (lambda s: s.update(cls="os:system"), r"at state: it holds a state record 'os:system'"),
        (lambda s: s["c"].__setitem__(3, 7), r"at state\.max_exp_avg_sq: a node of no kind: 7"),
    ],
    ids=["kind", "keys", "children", "scalar", "record", "not-an-object"],
)
def test_load_of_a_tampered_node_names_its_key_path(tmp_path, tamper, match):
    saved, _ = _saved(tmp_path)
    meta, arrays = _meta_and_arrays(saved)
    tamper(meta["state"])
    path = _write(tmp_path / "t.npz", meta, arrays)
    _load_refused(path, match)


def test_load_of_an_array_that_is_not_numbers_names_its_key_path(tmp_path):
    saved, _ = _saved(tmp_path)
    meta, arrays = _meta_and_arrays(saved)
    arrays["a0"] = np.array(["x", "y"])
    path = _write(tmp_path / "s.npz", meta, arrays)
    _load_refused(path, r"at state\.count: array 0 has dtype <U1, not numbers")


@pytest.mark.parametrize("nodes", [LIMIT + 1, 200, 500, 50_000])
def test_load_of_a_state_nested_too_deep_names_the_limit(tmp_path, nodes):
    """JSON nested 2 * nodes deep: refused quickly (no RecursionError, no quadratic walk)."""
    saved, _ = _saved(tmp_path)
    meta, arrays = _meta_and_arrays(saved)
    deep = '{"t": "list", "c": [' * nodes + '{"t": "int", "v": 1}' + "]}" * nodes
    state = json.dumps(meta["state"])
    text = f'{{"format": "{_FORMAT}", "state": {{"t": "tuple", "c": [{deep}, {state}]}}}}'
    path = _write(tmp_path / "deep.npz", None, arrays, text=text)
    msg = _load_refused(path, rf"limit of {LIMIT} levels \(agrad\.pytree\.MAX_DEPTH\)")
    if nodes < 400:  # within what JSON itself parses: the key path where it goes too deep
        assert "begins at state[0][0][0][0]" in msg


def test_load_of_a_deep_state_within_the_limit_round_trips(tmp_path):
    state = {"deep": _chain(LIMIT - 2, np.ones(2)), "count": 3}
    optim.save(state, tmp_path / "s.npz")
    loaded = optim.load(tmp_path / "s.npz", like=np.zeros(2))
    assert pt.flatten_leaves(loaded)[1] == pt.flatten_leaves(state)[1]


def test_load_matches_like_given_in_another_key_order(tmp_path):
    """Found on the way: leaves were paired with like's by position, not by key."""
    opt = optim.adam(lr=0.1)
    params = _params()
    _, state = opt.step(params, params, opt.init(params))
    optim.save(state, tmp_path / "s.npz")
    like = {"b": np.zeros(4, np.float32), "w": np.zeros((3, 4), np.float32)}
    loaded = optim.load(tmp_path / "s.npz", like=like)
    for k in ("w", "b"):
        np.testing.assert_array_equal(loaded.exp_avg[k], state.exp_avg[k].astype(np.float32))
        assert loaded.exp_avg[k].dtype == np.float32


def test_save_of_a_state_nested_too_deep_is_refused_before_writing(tmp_path):
    path, data = _saved(tmp_path)
    state = {"x": _chain(LIMIT + 5, np.ones(2))}
    with pytest.raises(ValueError, match=rf"limit of {LIMIT} levels.*state\['x'\]\['a'\]\[0\]"):
        optim.save(state, path)
    assert path.read_bytes() == data


# -- pytrees nested too deep ------------------------------------------------------------
@pytest.mark.parametrize(
    "walk",
    [
        lambda t: pt.flatten(t),
        lambda t: pt.flatten_leaves(t),
        lambda t: pt.tree_map(lambda x: x, t),
        lambda t: pt.leaves_like(t, t),
        lambda t: pt.check_same_structure(t, t, names=("ws", "dcdws")),
    ],
    ids=["flatten", "flatten_leaves", "tree_map", "leaves_like", "check_same_structure"],
)
@pytest.mark.parametrize("depth", [LIMIT + 1, 3000, 100_000])
def test_a_pytree_nested_too_deep_names_the_limit_and_the_key_path(walk, depth):
    tree = _chain(depth, np.ones(2))
    match = (
        rf"nests containers deeper than agrad's limit of {LIMIT} levels "
        rf"\(agrad\.pytree\.MAX_DEPTH\): one more begins at key path "
        rf"(\['a'\]\[0\]|\[0\]\['a'\]){{4}}\.\.\. \({LIMIT} keys down\)"
    )
    with pytest.raises(ValueError, match=match):
        walk(tree)


def test_an_optimizer_step_on_params_nested_too_deep_is_refused_with_nothing_modified():
    w, g = np.ones(3), np.full(3, 0.5)
    params, grads = _chain(3000, w), _chain(3000, g)
    opt = optim.sgd(lr=0.1, momentum=0.9)
    for call in (
        lambda: opt.init(params),
        lambda: opt.step(params, grads, {}),
        lambda: agrad.gradient_descent_update(params, grads, 0.1),
    ):
        with pytest.raises(ValueError, match=rf"limit of {LIMIT} levels"):
            call()
        assert _innermost(params) is w and _innermost(grads) is g
        np.testing.assert_array_equal(w, 1.0)
        np.testing.assert_array_equal(g, 0.5)


def test_a_pytree_at_the_limit_works_everywhere():
    """Every walk, including PyTreeDef's ==, hash and repr, at MAX_DEPTH levels."""
    tree, other = _chain(LIMIT, np.ones(2)), _chain(LIMIT, np.zeros(2))
    leaves, treedef, paths = pt.flatten(tree)
    assert len(paths[0]) > 3 * LIMIT
    assert pt.flatten_leaves(pt.unflatten(treedef, leaves))[1] == treedef
    assert treedef == pt.flatten_leaves(other)[1]
    assert hash(treedef) == hash(pt.flatten_leaves(other)[1])
    assert repr(treedef).count("list(") == LIMIT // 2
    assert treedef.num_leaves == 1
    pt.check_same_structure(tree, other, names=("a", "b"))
    assert pt.leaves_like(other, tree)[0] is pt.flatten_leaves(other)[0][0]
    mapped = pt.tree_map(lambda x, y: x + y, tree, other)
    np.testing.assert_array_equal(pt.flatten_leaves(mapped)[0][0], np.ones(2))


def test_treedef_repr_visits_each_node_once(monkeypatch):
    """It visited each dict's children twice: exponential in the depth of nested dicts."""
    treedef = pt.flatten_leaves(_chain(40, np.ones(2)))[1]
    calls = []
    original = pt.PyTreeDef.__repr__

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(pt.PyTreeDef, "__repr__", counting)
    repr(treedef)
    assert len(calls) == 41  # 40 containers and the leaf


# -- Dask arrays of unknown chunk sizes -------------------------------------------------
@pytest.mark.backend_dask
@pytest.mark.parametrize(
    "call",
    [
        lambda w, g: agrad.gradient_descent_update(w, g, 0.1),
        lambda w, g: optim.sgd(0.1).step({"w": w}, {"w": g}, optim.sgd(0.1).init({"w": w})),
        lambda w, g: optim.adam(0.1).step({"w": w}, {"w": g}, optim.adam(0.1).init({"w": w})),
    ],
    ids=["gradient_descent_update", "sgd.step", "adam.step"],
)
def test_a_dask_array_of_unknown_chunk_sizes_is_named(call):
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.arange(6.0) - 2.0, chunks=3)
    w = x[x > 0]  # boolean indexing: chunk sizes unknown, shape (nan,)
    g = w * 0.5
    before = record_inputs([w, g])
    match = (
        r"(ws at <root>|params at \['w'\]) has unknown chunk sizes \(shape \(nan,\)\).*"
        r"call x\.compute_chunk_sizes\(\)"
    )
    with pytest.raises(ValueError, match=match):
        call(w, g)
    assert_unchanged(before)
    # the advice works: with sizes known, the same call goes through
    w.compute_chunk_sizes()
    g.compute_chunk_sizes()
    call(w, g)


def test_unknown_sizes_are_told_apart_from_known_ones():
    from agrad.optim.validation import has_unknown_size

    assert not has_unknown_size((3, 4))
    assert not has_unknown_size(())
    assert has_unknown_size((3, float("nan")))
    assert has_unknown_size((None, 4))


# -- bounded caches ---------------------------------------------------------------------
def test_lru_cache_keeps_the_most_recently_used_entries():
    cache = LRUCache(3)
    for k in "abc":
        cache[k] = k.upper()
    assert cache["a"] == "A"  # a is now the most recent
    cache["d"] = "D"  # evicts b, the least recently used
    assert "b" not in cache and len(cache) == 3
    assert [k for k in "acd" if k in cache] == ["a", "c", "d"]
    assert cache.get("b") is None and cache.get("b", 0) == 0
    with pytest.raises(KeyError):
        cache["b"]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="maxsize must be a positive int"):
            LRUCache(bad)


def test_lru_cache_returns_a_value_just_stored_even_after_another_thread_evicted_it():
    """The pattern ``if k not in c: c[k] = v`` then ``return c[k]`` stays correct."""
    cache = LRUCache(2)
    cache["mine"] = 1

    def evict():
        for i in range(10):
            cache[i] = i

    t = threading.Thread(target=evict)
    t.start()
    t.join()
    assert "mine" not in cache and len(cache) == 2
    assert cache["mine"] == 1  # this thread's last store
    with pytest.raises(KeyError):
        cache[0]  # evicted, and not this thread's last store


def test_lru_cache_copies_and_pickles_empty():
    cache = LRUCache(4)
    cache["k"] = 1
    for clone in (copy.copy(cache), copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        assert isinstance(clone, LRUCache) and clone.maxsize == 4 and len(clone) == 0


def test_an_optimizer_fed_many_shapes_keeps_a_bounded_template_cache_with_lru():
    """With the LRU in the optimizer's slot, 100 distinct shapes keep 8 templates and
    every step still checks its state (a wrong state is still refused)."""
    opt = optim.adam(lr=0.1)
    opt._templates = LRUCache(8)
    for n in range(1, 101):
        params = {"w": np.ones(n)}
        state = opt.init(params)
        opt.step(params, params, state)
    assert len(opt._templates) == 8
    params = {"w": np.ones(1)}  # evicted long ago
    with pytest.raises(ValueError, match="state does not belong"):
        opt.step(params, params, opt.init({"w": np.ones(2)}))


def test_an_optimizer_fed_many_shapes_keeps_a_bounded_template_cache():
    opt = optim.adam(lr=0.1)
    assert isinstance(opt._templates, LRUCache)
    for n in range(1, 301):
        params = {"w": np.ones(n)}
        opt.step(params, params, opt.init(params))
    assert len(opt._templates) < 300


def test_an_interrupted_save_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    opt = optim.adam(lr=0.1)
    state = opt.init({"w": np.ones(3)})
    optim.save(state, path)
    before = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optim.save(state, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]  # no partial file left
