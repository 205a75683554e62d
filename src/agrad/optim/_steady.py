"""The torch fast route's steady state: the same tensors as last step, checked in bulk.

Training calls ``step`` with the same parameter and state tensors every time. The
full check of :mod:`agrad.optim.fastpath` reads a dozen properties of every tensor
(device, layout, dtype, strides, inference mode, leaf status, addresses for the
overlap sort); a :class:`SteadyRecord` keeps what that check established, and
:func:`check` verifies in bulk that it still holds:

- the parameters and the state's arrays are the very objects of the recorded step,
  in containers of the same structure (identity, at C speed);
- one C++ pass of TorchDynamo's tensor guard (``torch._C._dynamo.guards.TensorGuards``,
  what ``torch.compile`` checks before it reuses a compiled graph) compares every
  written tensor and every gradient with the recorded step: exact Python type,
  dispatch keys (device type, layout, inference mode, the conjugate and negative
  bits), dtype, device index, ``requires_grad``, sizes and strides;
- the written tensors' data pointers are unchanged.

That is every property the full check depends on. Each way a tensor's metadata can
change (``resize_``, ``set_``, ``as_strided_``, ``t_``, assigning ``.data``,
``requires_grad_``) changes its sizes, strides, dtype, keys, ``requires_grad`` or data
pointer; leaf status follows from ``requires_grad``, since a leaf that requires grad
cannot become a non-leaf (an in-place op on it raises outside ``no_grad``) and a
tensor that does not require grad is a leaf; with the same addresses and sizes the
written tensors' memory overlaps as little as before. Version counters are not read:
an in-place change of values (``p.add_(...)``, ``m.zero_()``) is the user's to make
and leaves every check true. Gradients, often new tensors each step, are checked by
the guard each step; their overlap with the written tensors is checked again unless
they are the same tensors (by ``id``) at the same addresses as last step (an ``id``
reused by a new tensor at the same address overlaps exactly what the old one did),
against the written ranges kept sorted (:class:`~agrad.optim._overlap.WrittenRanges`).
A gradient that is last step's object at a new address (its storage replaced:
``resize_``, ``set_``) must have a storage that holds all its elements; a storage
shrunk under a written tensor changes its address, so the full check sees it. New
gradient tensors (``backward()``'s, each step) are not asked for their storage's
size: half a microsecond a tensor, and autograd makes them whole.

Where the guard is not available (a torch without TorchDynamo's guards), no record
is made and every step takes the full check. The record holds the parameter and
state tensors (which the caller holds anyway), never a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter, is_, itemgetter
from typing import Any

from agrad.optim._overlap import WrittenRanges
from agrad.optim._treeplan import TreePlan
from agrad.pytree import flatten_leaves

__all__ = ["SteadyRecord", "all_equal", "check", "counters_distinct", "make", "tensor_guard"]

_VERSION = attrgetter("_version")
_NBYTES = attrgetter("nbytes")


def tensor_guard(tensors: list[Any]) -> Callable[..., bool] | None:
    """``check(*tensors) -> bool``: whether tensors match these ones, in C++ (or ``None``).

    TorchDynamo's ``TensorGuards``: exact type, dispatch keys, dtype, device index,
    ``requires_grad``, sizes and strides, all static. ``None`` where this torch has
    no such guard or it refuses these tensors.
    """
    try:
        from torch._C._dynamo.guards import TensorGuards

        guard = TensorGuards(
            *tensors,
            dynamic_dims_sizes=[list(t.shape) for t in tensors],
            dynamic_dims_strides=[list(t.stride()) for t in tensors],
        )
        if not guard.check(*tensors):
            return None
    except (ImportError, AttributeError, TypeError, RuntimeError):
        return None
    return guard.check


def counters_distinct(torch: Any, tensors: list[Any]) -> bool:
    """Whether no two of ``tensors`` share an autograd version counter.

    Views of one base and ``detach()`` results share their source's counter, even
    where their memory is disjoint. Probed: every counter is bumped once, each must
    have moved by exactly one, then every counter is set back.
    """
    setter = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
    if setter is None:
        return False
    before = list(map(_VERSION, tensors))
    torch.autograd.graph.increment_version(tuple(tensors))
    after = list(map(_VERSION, tensors))
    setter(tuple(tensors), tuple(before))
    return after == [v + 1 for v in before]


_BLOCK = 512


def all_equal(get: Callable[[Any], Any], xs: list[Any], ref: list[Any]) -> bool:
    """``list(map(get, xs)) == ref``, a block at a time: at C speed, without a list of
    thousands of new Python ints at the step's peak of memory."""
    if len(xs) != len(ref):
        return False
    for i in range(0, len(xs), _BLOCK):
        if list(map(get, xs[i : i + _BLOCK])) != ref[i : i + _BLOCK]:
            return False
    return True


def _pick(idx: list[int]) -> Callable[[list], list]:
    """``xs -> [xs[i] for i in idx]`` at C speed."""
    if not idx:
        return lambda xs: []
    if len(idx) == 1:
        return lambda xs, i=idx[0]: [xs[i]]
    get = itemgetter(*idx)
    return lambda xs: list(get(xs))


class SteadyRecord:
    """What a torch step's full check established, for :func:`check` on the next steps.

    ``written``: the step's parameters then its state tensors; ``exact``: whether some
    of them share a version counter (then each step reads and sets the counters
    instead of bumping each tensor's once). ``host``: the host kernels' plan where they
    ran the recorded step.
    """

    __slots__ = (
        "arrays", "compiled", "exact", "g_ids", "g_ptrs", "guard", "host", "numbers", "p",
        "p_plan", "ranges", "s_arrays", "s_plan", "w_ptrs", "w_sizes", "written",
    )  # fmt: skip

    def __init__(self, compiled, params, p, g, s_leaves, s_def, written, guard, exact):
        import torch

        self.compiled = compiled
        self.p_plan = TreePlan(flatten_leaves(params)[1])
        self.s_plan = TreePlan(s_def)
        self.p = list(p)
        idx = [i for i, x in enumerate(s_leaves) if isinstance(x, torch.Tensor)]
        self.arrays = _pick(idx)
        self.s_arrays = self.arrays(s_leaves)
        arrays = set(idx)  # one set, not one per leaf (that was O(n^2): 27 ms on 2000 leaves)
        self.numbers = _pick([i for i in range(len(s_leaves)) if i not in arrays])
        self.written = written
        self.guard = guard
        self.exact = exact
        self.w_ptrs = list(map(torch.Tensor.data_ptr, written))
        self.w_sizes = list(map(_NBYTES, written))
        self.ranges = WrittenRanges(self.w_ptrs, self.w_sizes)
        self.g_ids = list(map(id, g))  # not the tensors: a step must not keep gradients alive
        self.g_ptrs = list(map(torch.Tensor.data_ptr, g))
        self.host = None


def make(torch, compiled, params, p, g, s_leaves, s_def, written) -> SteadyRecord | None:
    """A record of a checked step whose tensors were all contiguous, or ``None``."""
    guard = tensor_guard([*written, *g])
    if guard is None:
        return None
    exact = not counters_distinct(torch, written)
    return SteadyRecord(compiled, params, p, g, s_leaves, s_def, written, guard, exact)


def _fits(t: Any) -> bool:
    """Whether contiguous tensor ``t``'s storage holds all its elements."""
    return t.untyped_storage().nbytes() - t.storage_offset() * t.element_size() >= t.nbytes


def check(rec: SteadyRecord, params: Any, grads: Any, state: Any) -> tuple | None:
    """``(p, g, s_leaves, g_ptrs)`` of a step that passes the record's bulk checks, or
    ``None`` (the step takes the full check). ``g_ptrs`` is ``rec.g_ptrs`` itself where
    the gradients are last step's."""
    import torch

    p = rec.p_plan.leaves(params)
    if p is None or len(p) != len(rec.p) or not all(map(is_, p, rec.p)):
        return None
    g = rec.p_plan.leaves(grads)
    s_leaves = rec.s_plan.leaves(state)
    if g is None or s_leaves is None or not all(map(is_, rec.arrays(s_leaves), rec.s_arrays)):
        return None
    for x in rec.numbers(s_leaves):  # the state's Python numbers, as the full route checks them
        t = type(x)
        if not ((t is int and x >= 0) or (t is float and math.isfinite(x))):
            return None
    written, data_ptr = rec.written, torch.Tensor.data_ptr
    if not rec.guard(*written, *g) or not all_equal(data_ptr, written, rec.w_ptrs):
        return None
    same_ids = all_equal(id, g, rec.g_ids)
    if same_ids and all_equal(data_ptr, g, rec.g_ptrs):
        return p, g, s_leaves, rec.g_ptrs  # the same gradients as last step
    g_ptrs = list(map(data_ptr, g))
    if same_ids and not all(map(_fits, (x for x, a, b in zip(g, g_ptrs, rec.g_ptrs) if a != b))):
        return None  # a gradient's storage swapped under it and shrunk (resize_)
    if rec.ranges.meets(g_ptrs, rec.w_sizes[: len(g)]):
        return None
    return p, g, s_leaves, g_ptrs
