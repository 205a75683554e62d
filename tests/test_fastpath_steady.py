"""The fast route's steady-state check (torch) cannot be fooled by tensors changed in place.

After a torch step, ``agrad.optim.fastpath`` remembers the step's tensors and checks
the next step in bulk (identity, version counters, data pointers, shapes, dtypes,
contiguity) instead of one check per tensor and property. Each case here runs a few
steps, then changes a tensor between steps the way a user can (resize, transpose,
``set_`` to shared storage, ``.data =``, ``requires_grad_``, an in-place bump, new
gradient tensors) and asserts either that the step declines with nothing written or
that it runs and equals the generic path (``fastpath.enabled = False``) on a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import agrad.optim as optim
from agrad.optim import fastpath
from agrad.pytree import flatten_leaves

torch = pytest.importorskip("torch")

OPTIMIZERS = {
    "adam (fused kernel)": lambda: optim.adam(lr=0.1),
    "rmsprop (foreach)": lambda: optim.rmsprop(lr=0.1, momentum=0.5),
}


def _setup(make: Callable[[], Any]) -> tuple[Any, list, list, Any]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 8, generator=gen, dtype=torch.float64) for _ in range(4)]
    grads = [torch.randn(8, 8, generator=gen, dtype=torch.float64) for _ in range(4)]
    opt = make()
    state = opt.init(params)
    for _ in range(3):  # the steady record is made by the first fast step
        out = fastpath.try_step(opt, params, grads, state)
        assert out is not None
        state = out[1]
    assert opt._programs.aux.get(fastpath._STEADY) is not None
    return opt, params, grads, state


def _clone(tree: Any) -> Any:
    from agrad.pytree import unflatten

    leaves, treedef = flatten_leaves(tree)
    return unflatten(treedef, [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves])


def _values(x: Any) -> np.ndarray | None:
    """The tensor's values (``None`` where its storage was freed)."""
    if x.numel() and not x.data_ptr():
        return None
    return x.detach().resolve_neg().numpy().copy()


def _snapshot(*trees: Any) -> list[tuple[Any, int, np.ndarray | None]]:
    return [
        (x, x._version, _values(x))
        for tree in trees
        for x in flatten_leaves(tree)[0]
        if isinstance(x, torch.Tensor)
    ]


def _assert_unchanged(snap: list) -> None:
    for x, version, values in snap:
        assert x._version == version
        if values is None:
            assert _values(x) is None
        else:
            np.testing.assert_array_equal(_values(x), values)


# -- changes after which the step must decline, writing nothing -------------------------
def _resize_param(p, g, s):
    p[0].resize_(4, 4)


def _transpose_param(p, g, s):
    p[1].t_()


def _set_to_shared_storage(p, g, s):
    p[2].set_(p[3])


def _data_transposed_view(p, g, s):
    p[0].data = p[0].data.t()  # same pointer, shape and version: only the strides differ


def _data_reshaped_view(p, g, s):
    p[1].data = p[1].data.view(64)  # same pointer and version, another shape


def _data_other_dtype(p, g, s):
    p[2].data = p[2].data.view(torch.int64)  # same pointer, shape and version


def _grad_made_non_contiguous(p, g, s):
    g[0].t_()


def _grad_data_reshaped(p, g, s):
    g[3].data = g[3].data.view(64)


def _grad_is_a_param(p, g, s):
    g[1] = p[1]


def _grad_views_state(p, g, s):
    g[2] = flatten_leaves(s)[0][-1].detach()


def _state_array_replaced(p, g, s):
    arrays = [x for x in flatten_leaves(s)[0] if isinstance(x, torch.Tensor) and x.ndim]
    arrays[0].set_(p[0])  # a state tensor now shares the parameter's memory


def _non_leaf_param(p, g, s):
    w = torch.ones(8, 8, dtype=torch.float64, requires_grad=True)
    p[3].mul_(w)  # p[3] now has a grad_fn: a non-leaf that requires grad


def _inference_grad(p, g, s):
    with torch.inference_mode():
        g[0] = g[0].clone()
    g[0] = g[0].t()


def _data_shares_another_param(p, g, s):
    p[0].data = p[1].data  # same shape, dtype, strides and version: only the pointer moves


def _grad_data_is_a_param(p, g, s):
    g[0].data = p[0].data  # the same gradient object, now over a parameter's memory


def _data_negative_view(p, g, s):
    p[0].data = torch._neg_view(p[0].data)  # same pointer, shape, strides: the neg bit


def _grad_negative_view(p, g, s):
    g[1] = torch._neg_view(g[1].clone())  # the kernels would read it unnegated


def _storage_freed(p, g, s):
    p[1].untyped_storage().resize_(0)  # torch raises on it: mid-step, in the kernel


def _grad_storage_shrunk(p, g, s):
    storage = g[1].untyped_storage()
    storage.resize_(storage.nbytes() // 2)  # torch does not check: it reads past the end


DECLINES = [
    _resize_param,
    _transpose_param,
    _set_to_shared_storage,
    _data_transposed_view,
    _data_reshaped_view,
    _data_other_dtype,
    _grad_made_non_contiguous,
    _grad_data_reshaped,
    _grad_is_a_param,
    _grad_views_state,
    _state_array_replaced,
    _non_leaf_param,
    _inference_grad,
    _data_shares_another_param,
    _grad_data_is_a_param,
    _data_negative_view,
    _grad_negative_view,
    _storage_freed,
    _grad_storage_shrunk,
]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("change", DECLINES, ids=lambda f: f.__name__[1:])
def test_changed_tensor_declines_with_nothing_written(name, change):
    opt, params, grads, state = _setup(OPTIMIZERS[name])
    change(params, grads, state)
    before = _snapshot(params, state)
    assert fastpath.try_step(opt, params, grads, state) is None
    _assert_unchanged(before)


@pytest.mark.parametrize("which", ["param", "grad", "state"])
def test_a_shrunk_storage_is_refused_before_anything_is_written(which):
    """A tensor whose storage was resized smaller after it was made (torch's own
    operations would read and write past its end): the step raises, naming it, and
    writes nothing (the other tensors keep their values)."""
    opt, params, grads, state = _setup(OPTIMIZERS["adam (fused kernel)"])
    arrays = [x for x in flatten_leaves(state)[0] if isinstance(x, torch.Tensor) and x.ndim]
    shrunk = {"param": params[2], "grad": grads[2], "state": arrays[-1]}[which]
    others = [x for x in [*params, *arrays] if x is not shrunk]
    before = _snapshot(others)
    storage = shrunk.untyped_storage()
    storage.resize_(storage.nbytes() // 2)
    where = {"param": r"params\[2\]", "grad": r"grads\[2\]", "state": r"exp_avg_sq\[3\]"}[which]
    with pytest.raises(TypeError, match=where + " cannot be used: its storage holds 256 bytes"):
        opt.step(params, grads, state)
    _assert_unchanged(before)


# -- changes after which the step runs and is right -------------------------------------
def _flip_requires_grad(p, g, s):
    p[0].requires_grad_(True)


def _user_bumps_version(p, g, s):
    p[1].add_(0.5)
    torch.autograd.graph.increment_version(p[2])


def _new_gradient_tensors(p, g, s):
    for i in range(len(g)):
        g[i] = g[i] * 2.0


def _gradient_written_in_place(p, g, s):
    g[0].mul_(-1.0)


def _state_written_in_place(p, g, s):
    arrays = [x for x in flatten_leaves(s)[0] if isinstance(x, torch.Tensor)]
    arrays[-1].mul_(0.5)


def _state_data_swapped(p, g, s):
    a, b = [x for x in flatten_leaves(s)[0] if isinstance(x, torch.Tensor) and x.ndim][:2]
    a.data, b.data = b.data, a.data  # same metadata, the pointers exchanged


def _params_swapped_in_list(p, g, s):
    p[0], p[1] = p[1], p[0]


def _state_requires_grad(p, g, s):
    next(x for x in flatten_leaves(s)[0] if isinstance(x, torch.Tensor) and x.ndim).requires_grad_()


RUNS = [
    _flip_requires_grad,
    _user_bumps_version,
    _new_gradient_tensors,
    _gradient_written_in_place,
    _state_written_in_place,
    _state_data_swapped,
    _params_swapped_in_list,
    _state_requires_grad,
]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("change", RUNS, ids=lambda f: f.__name__[1:])
def test_changed_tensor_runs_and_equals_the_generic_path(monkeypatch, name, change):
    opt, params, grads, state = _setup(OPTIMIZERS[name])
    change(params, grads, state)
    twin_p, twin_g, twin_s = (
        [x.detach().clone() for x in params],
        [x.clone() for x in grads],
        _clone(state),
    )
    for _ in range(2):  # the full check, then the steady one again
        out = fastpath.try_step(opt, params, grads, state)
        assert out is not None
        state = out[1]
    monkeypatch.setattr(fastpath, "enabled", False)
    ref = optim.adam(lr=0.1) if name.startswith("adam") else optim.rmsprop(lr=0.1, momentum=0.5)
    for _ in range(2):
        with torch.no_grad():
            twin_p, twin_s = ref.step(twin_p, twin_g, twin_s)
    for got, want in zip(params, twin_p):
        np.testing.assert_allclose(got.detach().numpy(), want.numpy(), rtol=1e-12, atol=1e-14)
    got_s = [x for x in flatten_leaves(state)[0] if isinstance(x, torch.Tensor)]
    want_s = [x for x in flatten_leaves(twin_s)[0] if isinstance(x, torch.Tensor)]
    for got, want in zip(got_s, want_s):
        np.testing.assert_allclose(
            got.detach().numpy(), want.detach().numpy(), rtol=1e-12, atol=1e-14
        )


def test_steady_steps_bump_each_written_version_once():
    opt, params, grads, state = _setup(OPTIMIZERS["adam (fused kernel)"])
    written = [*params, *(x for x in flatten_leaves(state)[0] if isinstance(x, torch.Tensor))]
    before = [x._version for x in written]
    for _ in range(3):
        state = fastpath.try_step(opt, params, grads, state)[1]
    assert [x._version for x in written] == [v + 3 for v in before]
    assert [x._version for x in grads] == [0] * len(grads)


def test_steady_record_keeps_no_gradient_alive():
    import gc
    import weakref

    opt, params, grads, state = _setup(OPTIMIZERS["rmsprop (foreach)"])
    new = [g.clone() for g in grads]
    state = fastpath.try_step(opt, params, new, state)[1]
    ref = weakref.ref(new[0])
    del new
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_steady_steps_take_the_bulk_check(monkeypatch, name):
    """With the full route's input check broken, the steady steps still run."""
    opt, params, grads, state = _setup(OPTIMIZERS[name])

    def no_full_check(*args):
        raise AssertionError("the full check ran")

    monkeypatch.setattr(fastpath, "_inputs", no_full_check)
    for _ in range(3):
        out = fastpath.try_step(opt, params, [g.clone() for g in grads], state)
        assert out is not None
        state = out[1]


@pytest.mark.parametrize("fused", [True, False], ids=["fused kernel", "foreach"])
def test_views_of_one_buffer_move_the_shared_counter_by_one(monkeypatch, fused):
    """Parameters and state that are views of one buffer share one version counter:
    every step, full or steady, moves it by exactly one."""
    if not fused:
        from agrad.optim.program import host_exec

        monkeypatch.setattr(host_exec, "enabled", False)
    flat = torch.zeros(4 * 16, dtype=torch.float64)
    params = list(flat.split(16))
    grads = [torch.full((16,), 0.5, dtype=torch.float64) for _ in params]
    opt = optim.adam(lr=0.1) if fused else optim.rmsprop(lr=0.1)
    state = opt.init(params)
    for step in range(1, 5):
        state = fastpath.try_step(opt, params, grads, state)[1]
        assert [p._version for p in params] == [step] * len(params)
        assert flat._version == step
    assert opt._programs.aux.get(fastpath._STEADY).exact


def test_without_the_tensor_guard_every_step_takes_the_full_check(monkeypatch):
    from agrad.optim import _steady

    monkeypatch.setattr(_steady, "tensor_guard", lambda tensors: None)
    opt, params, grads = optim.adam(lr=0.1), [torch.ones(3)], [torch.ones(3)]
    state = opt.init(params)
    for _ in range(3):
        state = fastpath.try_step(opt, params, grads, state)[1]
    assert opt._programs.aux.get(fastpath._STEADY) is None
    ref = torch.ones(3, requires_grad=True)
    ref.grad = torch.ones(3)
    torch_opt = torch.optim.Adam([ref], lr=0.1, fused=True)
    for _ in range(3):
        torch_opt.step()
    torch.testing.assert_close(params[0], ref.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_fused_sgd_steps_equal_torch_fused_sgd(momentum):
    """Full step, then steady ones (same and new gradients): bitwise torch.optim.SGD(fused=True)."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(7, 5), (5,), (3, 4, 2)] * 4
    params = [torch.randn(s, generator=gen) for s in shapes]
    refs = [p.clone().requires_grad_() for p in params]
    opt = optim.sgd(lr=0.05, momentum=momentum)
    torch_opt = torch.optim.SGD(refs, lr=0.05, momentum=momentum, fused=True)
    state = opt.init(params)
    grads = [torch.randn(s, generator=gen) for s in shapes]
    for step in range(6):
        if step % 2:
            grads = [torch.randn(s, generator=gen) for s in shapes]
        out = fastpath.try_step(opt, params, grads, state)
        assert out is not None
        state = out[1]
        for r, g in zip(refs, grads):
            r.grad = g.clone()
        torch_opt.step()
        for p, r in zip(params, refs):
            torch.testing.assert_close(p, r.detach(), rtol=0, atol=0)
    assert opt._programs.aux.get(fastpath._STEADY) is not None
