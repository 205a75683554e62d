"""In-place optimizer steps on the fast route (torch and NumPy): every optimizer alike.

The namespace-generic update rules are the reference. :func:`try_step` takes over
:meth:`GradientTransformation.step` with ``inplace=True`` when, and only when, it can
produce the same result (to rounding) in fewer, cheaper operations. It knows no
optimizer by name: it records the step once as a program
(:mod:`agrad.optim.program`; per optimizer, tree structure, shapes, dtypes, devices
and kinds of the state's numbers, cached on the optimizer) and runs the program on an
executor:

- **compiled host kernels** (:mod:`agrad.optim.program.host_exec`), NumPy and torch
  CPU, float32 and float64, where a C compiler is found: the program's fused blocks as
  C loops over all leaves, one call per batch of blocks, in place; programs with
  reductions (LAMB, LARS, Adafactor, global norms) included. Tried first; where it
  declines, the executors below.
- **torch**: one of torch's fused kernels (``torch._fused_adam_`` /
  ``_fused_adamw_`` / ``_fused_sgd_`` / ``_fused_adagrad_``, the kernels of
  ``torch.optim.<X>(fused=True)``; float16 and bfloat16 are computed in float32 inside
  them) when the program *is* one of theirs (:mod:`agrad.optim.program.fused`), or
  else a multi-tensor program of ``torch._foreach_*`` calls, in place
  (:mod:`agrad.optim.program.torch_exec`), float32 and float64 only.
- **NumPy**: a generated kernel of ufuncs with ``out=``
  (:mod:`agrad.optim.program.numpy_exec`), run in place on cache-sized chunks of the
  large arrays and on one gathered buffer holding the small ones (a few whole-buffer
  operations instead of a dozen Python-level calls per array), bitwise the generic
  path.

A program the executors cannot run (a reduction, without the host kernels: LAMB's
trust ratio, LARS; a branch on an array's value; half precision on NumPy) returns ``None`` before anything
is written, and the caller runs the generic path, which computes every new value
before its first write and raises the proper error messages. Set :data:`enabled` to
``False`` to force the generic path.

**All or nothing.** The step count lives in the returned state, so a step that
raised after its first write would leave the arrays ahead of the count (the next step
would apply the wrong bias correction). The fast route therefore guarantees: *a step
either returns (every parameter and state array written, the new count returned) or
raises or declines with nothing written*, for every failure except those listed last.
It finds each failure it can before the first write, and makes the writes unable to
fail:

- *Declined before any write* (``None``; the generic path then runs, and raises its
  own message where the input is bad), both libraries: a state number that is not a
  Python ``int`` >= 0 or a finite ``float`` (a count that is a float, a bool, a 0-d
  array, a negative number); a public hyperparameter that is not a finite real Python
  number in range (betas in [0, 1), eps, lr, weight decay, momentum >= 0; an array);
  a schedule whose value is bad; any input the generic path's checks refuse; mixed
  libraries, array subclasses, devices, dtypes or shapes; read-only arrays; any
  memory shared between two written arrays (parameters and state) or between a
  gradient and a written array (two views of one base, ``detach()``, ``.data``, one
  buffer seen twice): address ranges are sorted and swept, O(n log n) (NumPy arrays
  that own their memory, as most do, are told apart by identity, their ids sorted in
  NumPy).
- *NumPy*: float16 (the generic path computes it in float32). Floating-point errors:
  when handling one could raise or call out during the writes (a
  :func:`numpy.seterr` mode ``raise``, ``call``, ``print`` or ``log``, or ``warn``
  while a warnings filter could turn ``RuntimeWarning`` into an exception, as
  ``pytest -W error`` does), the whole step is first computed into scratch with those
  kinds set to ``raise``; an error there declines, and the writes then run with those
  kinds ignored (the same operations on the same values raise nothing). All scratch
  (chunk buffers, the gathered copies of the small arrays, whole-array buffers for
  large non-contiguous ones) is allocated, and every small array's new value
  computed, before the first write: a ``MemoryError`` for scratch is raised with
  nothing written.
- *torch*: sparse or other non-strided layouts; meta tensors; dtypes other than
  float16, bfloat16, float32, float64 (float8 ...); half precision outside a fused
  kernel (the ``_foreach`` ops would compute in half precision); a tensor that is not
  contiguous unless every tensor of its parameter is dense with the same strides
  (``channels_last`` everywhere: the fused CPU kernels walk memory in order, and
  paired the wrong elements of a transposed parameter and a contiguous gradient);
  expanded or otherwise internally overlapping tensors; negative views (the kernels
  would read their memory unnegated); a storage freed by ``resize_(0)``;
  inference-mode tensors among the written ones; non-leaf tensors that require grad.
  Every written tensor's version counter moves by exactly one per step (read before
  and set after, or, where no two written tensors share a counter, incremented once
  after torch's fused kernels, which bump none), so an autograd graph that saved a
  parameter or a state tensor before the step raises "modified by an inplace
  operation" on backward, as with ``torch.optim``'s default (foreach) implementation.

*Steady state (torch).* The checks above run in full on a torch step's first call and
whenever anything changed; while the same parameter and state tensors come back in
containers of the same structure, :mod:`agrad.optim._steady` verifies in bulk that
none of them changed since (one C++ pass of TorchDynamo's tensor guard over every
tensor, and the written tensors' data pointers), which implies every per-tensor
check still holds, and checks the gradients' overlap only where they are new (see
:mod:`agrad.optim._steady` for why this cannot be fooled by in-place changes).

Not covered, as with any in-place optimizer (``torch.optim`` included): an
asynchronous exception between two writes (``KeyboardInterrupt``, an exception from
a signal handler), a ``MemoryError`` for the few small Python objects and buffers
made while writing (torch's ``_foreach`` temporaries included), a
``warnings.showwarning`` replaced by one that raises, and a device-side failure
inside a torch kernel (CUDA out of memory): these can leave a step partly applied.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable
from contextlib import nullcontext
from itertools import accumulate, chain, pairwise, repeat
from operator import attrgetter, eq, is_, itemgetter
from typing import Any

from agrad.optim import _steady
from agrad.optim._cache import LRUCache
from agrad.optim._overlap import disjoint as _disjoint
from agrad.optim._treeplan import TreePlan
from agrad.optim.numerics import is_scalar
from agrad.optim.program import fused as fused_kernels
from agrad.optim.program import host_exec, kernel_route, numpy_exec, torch_exec, variants
from agrad.optim.program.eager import as_number, run_nodes
from agrad.optim.program.ir import evaluate_scalars, lane_groups, pre_nodes
from agrad.optim.program.plan import plan_lane
from agrad.optim.program.recorder import NotRecordable, record
from agrad.pytree import flatten_leaves, unflatten

__all__ = ["try_step", "enabled"]

#: Set to ``False`` to force the generic path everywhere (used by tests and the bench).
enabled = True

# Arrays up to this many elements are gathered into one scratch buffer (NumPy).
SMALL = 8192
# Elements per chunk of the NumPy kernels (a 256x256 float32 matrix is one chunk).
CHUNK = 65536

# Per thread: dtype -> the CHUNK-sized scratch buffers of the NumPy kernels, kept
# between steps (fresh buffers every step cost page faults; see docs/benchmarks.md).
_scratch_local = threading.local()


def _scratch(dtype: Any, k: int = 2) -> list[Any]:
    """``k`` CHUNK-sized scratch buffers of ``dtype`` (this thread's, reused)."""
    import numpy as np

    cache = getattr(_scratch_local, "buffers", None)
    if cache is None:
        cache = _scratch_local.buffers = {}
    bufs = cache.get(dtype)
    if bufs is None or len(bufs) < k:
        have = [] if bufs is None else bufs
        bufs = cache[dtype] = have + [np.empty(CHUNK, dtype) for _ in range(k - len(have))]
    return bufs[:k]


# -- recognising the call ----------------------------------------------------------
def _leaves(tree: Any) -> tuple[list[Any], Any] | None:
    """The leaves of ``tree`` and a key describing its structure, fast for flat containers."""
    if isinstance(tree, list | tuple) and not hasattr(type(tree), "_fields"):
        leaves = list(tree)
        if len(set(map(type, leaves))) == 1 and _library(leaves[0]) is not None:
            return leaves, (type(tree), len(tree))
    elif type(tree) is dict:
        leaves = list(tree.values())
        if len(set(map(type, leaves))) == 1 and _library(leaves[0]) is not None:
            return leaves, (dict, tuple(tree))
    leaves, treedef = flatten_leaves(tree)
    return leaves, treedef


def _library(x: Any) -> str | None:
    t = type(x)
    np = sys.modules.get("numpy")
    if np is not None and t is np.ndarray:
        return "numpy"
    torch = sys.modules.get("torch")
    if torch is not None and t is torch.Tensor:
        return "torch"
    return None


_SHAPE = attrgetter("shape")
_DTYPE = attrgetter("dtype")
_WRITEABLE = attrgetter("flags.writeable")
_BASE = attrgetter("base")
_IS_CPU = attrgetter("is_cpu")
_DEVICE = attrgetter("device")
_IS_LEAF = attrgetter("is_leaf")
_REQUIRES_GRAD = attrgetter("requires_grad")
_SIZE = attrgetter("size")
_NDIM = attrgetter("ndim")
_NBYTES = attrgetter("nbytes")
_VERSION = attrgetter("_version")
_PLUS_ONE = (1).__add__


def _real(x: Any) -> bool:
    """A finite real Python number (not a bool, not an array)."""
    return is_scalar(x) and math.isfinite(x)


_NONNEGATIVE = ("eps", "weight_decay", "momentum", "lr_decay", "alpha")


def _hyper_ok(hp: dict[str, Any]) -> bool:
    """The public hyperparameters are finite real Python numbers in their ranges.

    They were checked by the constructor; one changed since (``opt.hyperparams[k] =``)
    or an array-valued one declines, whatever the optimizer.
    """
    for k, v in hp.items():
        if k == "lr" and callable(v):
            continue
        if k == "mask":  # decoupled decay on some leaves only: the generic path
            if v is not None:
                return False
            continue
        if hasattr(v, "shape"):
            return False
        if k == "betas":
            if type(v) not in (tuple, list) or not all(_real(b) and 0 <= b < 1 for b in v):
                return False
        elif type(v) in (int, float) and (
            not math.isfinite(v) or (v < 0 and (k in _NONNEGATIVE or k == "lr"))
        ):
            return False
    return True


class _Compiled:
    """A recorded program with what its executor needs, made once per program."""

    __slots__ = (
        "fused", "getters", "groups", "host", "laneless_writes", "new_numbers", "pre",
        "pre_used", "program", "runners", "xp",
    )  # fmt: skip

    def __init__(
        self, program: Any, groups: list[Any], runners: list[Any] | None, fused: Any, xp: Any
    ):
        self.program = program
        self.xp = xp
        self.pre = pre_nodes(program)
        self.pre_used = sorted(
            {a[1] for g in groups for i in g.program.nodes for a in program.nodes[i].args}
            & set(self.pre)
        )
        self.groups = groups
        self.runners = runners
        self.fused = fused
        self.getters = [_column_getters(group, program.n_params) for group in groups]
        self.host: dict[tuple, Any] = {}  # kinds of the host scalars -> host plan (or None)
        pre_set = set(self.pre)
        refs = list(enumerate(program.new_state))
        # (state leaf, laneless node): the leaf is written with the node's value
        self.laneless_writes = [
            (j, r[1]) for j, r in refs if r is not None and r[0] == "n" and r[1] in pre_set
        ]
        # (state leaf, reference): the leaf's new value is a number
        self.new_numbers = [(j, r) for j, r in refs if r is not None and r[0] != "n"]


_DECLINED = variants.DECLINED


def _programs(opt: Any) -> LRUCache:
    cache = getattr(opt, "_programs", None)
    if cache is None:
        cache = LRUCache(16)
        try:
            opt._programs = cache
        except AttributeError:
            return cache
    return cache


_LAST_P, _LAST_S = "param metadata", "state metadata"  # the cache's side records


def _metadata(arrays: list[Any], aux: dict, name: str) -> tuple[tuple, tuple]:
    """``(shapes, dtypes)`` of ``arrays`` as tuples: last step's tuples (``aux[name]``)
    where equal, compared one array at a time, so that a step over many small arrays
    keeps no shape tuple per array alive (NumPy makes a new one per ``.shape``)."""
    last = aux.get(name)
    if (
        last is not None
        and len(last[0]) == len(arrays)
        and all(map(eq, map(_SHAPE, arrays), last[0]))
        and all(map(eq, map(_DTYPE, arrays), last[1]))
    ):
        return last
    meta = aux[name] = (tuple(map(_SHAPE, arrays)), tuple(map(_DTYPE, arrays)))
    return meta


def _state_key(leaves: list[Any], cls: type, aux: dict) -> tuple | None:
    """Shapes and dtypes of the state's arrays (of type ``cls``), kinds of its other
    leaves; ``None`` (decline) for a negative or non-finite number or a foreign leaf."""
    types = list(map(type, leaves))
    arrays = [x for x, t in zip(leaves, types) if t is cls]
    others = []
    for x, t in zip(leaves, types):
        if t is cls:
            continue
        if t is int:
            if x < 0:
                return None
        elif t is float:
            if not math.isfinite(x):
                return None
        elif x is None or t in (str, bool):
            others.append(x)
        else:
            return None
    return tuple(types), *_metadata(arrays, aux, _LAST_S), tuple(others)


def try_step(opt: Any, params: Any, grads: Any, state: Any) -> tuple[Any, Any] | None:
    """Run ``opt.step(params, grads, state)`` in place on the fast route, or return ``None``.

    Any optimizer (a :class:`~agrad.optim.GradientTransformation`) on flat or nested
    pytrees of NumPy arrays or torch tensors of one library. The returned state has
    the new Python numbers (step counts) and the same, updated, arrays. ``None`` means
    nothing was written (see the module's notes for what declines).
    """
    if not enabled:
        return None
    cache = _programs(opt)
    steady = cache.aux.get(_STEADY)
    if steady is not None:
        out = _steady_step(steady, opt, params, grads, state)
        if out is not None:
            return out
    got = _inputs(opt, params, grads, state)
    if got is None:
        return kernel_route.try_step(opt, params, grads, state)  # CuPy, Dask
    lib, p, g, key, s_leaves, s_def = got
    got = variants.choose(
        cache,
        key,
        s_leaves,
        lambda compiled: compiled.program,
        lambda: _compile(opt, lib, params, p, g, state),
        lambda: variants.generic_checks_pass(opt, params, grads, state),
    )
    del key  # its per-array shape tuples are not needed while the step runs
    if got is None:
        return None
    chosen, scalars = got
    got = _per_step(chosen, s_leaves, scalars)
    if got is None:
        return None
    pre, numbers, writes = got
    ran = host_exec.enabled and _run_host(chosen, lib, p, g, s_leaves, scalars, pre, writes)
    if ran:
        if ran is not True:  # torch: later steps may take the steady check, on these kernels
            plan, written = ran
            _record_steady(cache, chosen, params, p, g, s_leaves, s_def, written, plan)
        return params, _unflatten_state(opt, s_def, _new_state(chosen, s_leaves, scalars))
    if chosen.runners is None and chosen.fused is None:
        return None  # a program only the host kernels run
    if lib == "numpy":
        if not _run_numpy(chosen, p, g, s_leaves, scalars, numbers, state, writes):
            return None
    else:
        steady = _run_torch(chosen, p, g, s_leaves, scalars, numbers, state, writes)
        if not steady:
            return None
        if steady is not True:  # every tensor contiguous: later steps may take the check below
            _record_steady(cache, chosen, params, p, g, s_leaves, s_def, steady[1])
    return params, _unflatten_state(opt, s_def, _new_state(chosen, s_leaves, scalars))


def _per_step(compiled: _Compiled, s_leaves: list, scalars: list) -> tuple[dict, dict, list] | None:
    """The step's laneless values (as the backend's values and as numbers), and the
    laneless state arrays to write."""
    try:  # the per-step scalars (a step count, bias corrections), before any write
        pre = run_nodes(compiled.program, compiled.pre, compiled.xp, s_leaves, scalars)
        numbers = {i: as_number(pre[i]) for i in compiled.pre_used}
    except Exception:  # the generic path raises its own message
        return None
    # laneless new state arrays (a step count) are written in place after the lanes
    writes = [
        (s_leaves[j], pre[node])
        for j, node in compiled.laneless_writes
        if pre[node] is not s_leaves[j]
    ]
    return pre, numbers, writes


def _new_state(compiled: _Compiled, s_leaves: list, scalars: list) -> list[Any]:
    """The new state's leaves: the same arrays (updated), the new Python numbers."""
    new = list(s_leaves)
    for j, ref in compiled.new_numbers:
        new[j] = scalars[ref[1]] if ref[0] == "s" else ref[1]
    return new


# -- the steady state: the same tensors as last step, checked in bulk (torch) -----------
_STEADY = "steady"  # the program cache's side record of the last torch step (_steady.py)


def _steady_step(rec: _steady.SteadyRecord, opt: Any, params: Any, grads: Any, state: Any) -> Any:
    """The step on :func:`agrad.optim._steady.check`'s bulk checks, or ``None`` (take the
    full check)."""
    import torch

    if not _hyper_ok(opt.hyperparams):
        return None
    got = _steady.check(rec, params, grads, state)
    if got is None:
        return None
    p, g, s_leaves, g_ptrs = got
    compiled = rec.compiled
    try:
        scalars = evaluate_scalars(compiled.program.scalars, s_leaves)
    except Exception:
        return None
    if not all(scalars[i] == v for i, v in compiled.program.guards):
        return None  # another variant of the program: the full route picks it
    got = _per_step(compiled, s_leaves, scalars)
    if got is None:
        return None
    pre, numbers, writes = got
    fused_first = compiled.fused is not None and host_exec.prefer_fused
    if (rec.host is None) != (fused_first or not host_exec.enabled):
        return None  # the choice between torch's kernels and the host kernels changed
    written = rec.written
    if rec.host is not None:  # the host kernels ran the recorded step: they run this one
        if not host_exec.enabled or compiled.host.get(tuple(map(type, scalars))) is not rec.host:
            return None
        versions = list(map(_VERSION, written)) if rec.exact else None
        with torch.no_grad():
            starts = rec.w_ptrs + g_ptrs
            if not host_exec.run(
                rec.host, compiled.xp, p, g, s_leaves, scalars, pre, written + g, starts
            ):
                return None
            for old, value in writes:
                old.copy_(value)
        _bump_versions(torch, written, writes, versions)
    else:
        groups = [_columns(compiled, k, p, g, s_leaves) for k in range(len(compiled.groups))]
        _torch_execute(torch, compiled, groups, written, scalars, numbers, state, writes, rec.exact)
    if g_ptrs is not rec.g_ptrs:  # new gradients: the next step compares with these
        rec.g_ids, rec.g_ptrs = list(map(id, g)), g_ptrs
    return params, rec.s_plan.build(_new_state(compiled, s_leaves, scalars))


def _inputs(opt: Any, params: Any, grads: Any, state: Any) -> tuple | None:
    """Leaves and cache key of one call, or ``None`` where the fast route cannot apply."""
    got = _leaves(params)
    if got is None:
        return None
    p, p_key = got
    if not p:
        return None
    lib = _library(p[0])
    if lib is None:
        return None
    got = _leaves(grads)
    if got is None or got[1] != p_key:
        return None
    g = got[0]
    cls = type(p[0])
    if set(map(type, p)) != {cls} or set(map(type, g)) != {cls}:
        return None  # one library, no subclasses (NumPy's matrix, nn.Parameter ...)
    aux = _programs(opt).aux
    shapes, dtypes = _metadata(p, aux, _LAST_P)
    if not (all(map(eq, map(_SHAPE, g), shapes)) and all(map(eq, map(_DTYPE, g), dtypes))):
        return None
    if not _hyper_ok(opt.hyperparams):
        return None
    s_leaves, s_def = _state_leaves(opt, state)
    s_key = _state_key(s_leaves, cls, aux)
    if s_key is None:
        return None
    arrays = [x for x in s_leaves if type(x) is cls]
    if lib == "numpy":
        kinds = set(dtypes)
        if not all(d.kind == "f" and d.itemsize >= 4 for d in kinds):
            return None
        if not all(map(_WRITEABLE, chain(p, arrays))):
            return None
        device = None
    else:
        device = _torch_device(p, g, arrays, set(dtypes))
        if device is None:
            return None
    key = (p_key, shapes, dtypes, s_def, s_key, device)
    return lib, p, g, key, s_leaves, s_def


_STATE_PLAN = "state plan"  # the program cache's side record: the last state's TreePlan


def _state_leaves(opt: Any, state: Any) -> tuple[list[Any], Any]:
    """``flatten_leaves(state)``, by the last state's :class:`TreePlan` where it fits.

    The plan's treedef is then the same object every step, whose hash is cached, so the
    cache key costs no walk over the structure.
    """
    cache = _programs(opt)
    plan = cache.aux.get(_STATE_PLAN)
    if plan is not None:
        leaves = plan.leaves(state)
        if leaves is not None:
            return leaves, plan.treedef
    leaves, treedef = flatten_leaves(state)
    cache.aux[_STATE_PLAN] = TreePlan(treedef)
    return leaves, treedef


def _unflatten_state(opt: Any, s_def: Any, leaves: list[Any]) -> Any:
    plan = _programs(opt).aux.get(_STATE_PLAN)
    if plan is not None and plan.treedef is s_def:
        return plan.build(leaves)
    return unflatten(s_def, leaves)


def _torch_device(p: list, g: list, arrays: list, kinds: set) -> Any:
    import torch

    if not kinds <= {torch.float32, torch.float64, torch.float16, torch.bfloat16}:
        return None
    flat = list(chain(p, g, arrays))
    device = flat[0].device
    if device.type == "meta" or set(map(_DEVICE, flat)) != {device}:
        return None
    return device


def _compile(opt: Any, lib: str, params: Any, p: list, g: list, state: Any) -> Any:
    """Record the step and prepare its executor; ``None`` where it cannot run fast."""
    xp = _namespace(lib)
    treedef = flatten_leaves(params)[1]
    try:
        program = record(opt, xp, p, g, treedef, state)
    except NotRecordable:
        return None
    groups = lane_groups(program)
    if groups is None:
        if not host_exec.available():
            return None
        return _Compiled(program, [], None, None, xp)  # the host kernels' route only
    fused = None
    if lib == "torch":
        fused = fused_kernels.recognise(program, opt, xp, p, g, treedef, state)
    ops = numpy_exec.SUPPORTED if lib == "numpy" else torch_exec.SUPPORTED
    compile_fn = numpy_exec.compile_lane if lib == "numpy" else torch_exec.compile_group
    runners: list[Any] | None = []
    for group in groups:
        nodes = [program.nodes[i] for i in group.program.nodes]
        if any(n.op not in ops and n.op != "input" for n in nodes) or any(
            n.dtype != group.dtype for n in nodes
        ):
            runners = None
            break
        runner = compile_fn(plan_lane(program, group.program))
        if runner is None:
            runners = None
            break
        runners.append(runner)
    if runners is None and fused is None and not host_exec.available():
        return None
    return _Compiled(program, groups, runners, fused, xp)


def _namespace(lib: str) -> Any:
    import array_api_compat

    if lib == "numpy":
        import array_api_compat.numpy as xp
    else:
        import array_api_compat.torch as xp
    del array_api_compat
    return xp


def _column_getters(group: Any, n_params: int) -> list[tuple[str, Callable[[list], Any] | None]]:
    """Per column of ``group``: which tree it reads and a getter of its lanes' leaves."""
    out = []
    every = list(range(n_params))
    for c in range(len(group.program.columns)):
        kind = group.program.columns[c][0]
        idx = [lane.columns[c][1] for lane in group.lanes]
        if kind != "state" and idx == every:
            out.append((kind, None))  # the whole list, as it is
        elif len(idx) == 1:
            out.append((kind, lambda xs, i=idx[0]: [xs[i]]))
        else:
            out.append((kind, itemgetter(*idx)))
    return out


def _columns(compiled: _Compiled, k: int, p: list, g: list, s_leaves: list) -> list[list[Any]]:
    """Group ``k``'s columns: per column position, the list of its leaves over the lanes."""
    pick = {"param": p, "grad": g, "state": s_leaves}
    return [
        pick[kind] if get is None else list(get(pick[kind])) for kind, get in compiled.getters[k]
    ]


def _run_host(compiled: _Compiled, lib, p, g, s_leaves, scalars, pre, writes) -> Any:
    """The step on compiled host kernels (:mod:`agrad.optim.program.host_exec`); ``False``
    with nothing written where that route does not apply (then the other executors).

    On torch a step that ran returns ``(plan, written)``, what
    :mod:`agrad.optim._steady` needs to check the next step in bulk; on NumPy ``True``.
    """
    if lib == "torch" and compiled.fused is not None and host_exec.prefer_fused:
        return False
    types = tuple(map(type, scalars))
    plan = compiled.host.get(types, _DECLINED)
    if plan is _DECLINED:
        plan = host_exec.build(compiled.program, lib, scalars) if host_exec.available() else None
        if plan is not None:
            try:
                host_exec.compile_plan(plan)
            except (OSError, RuntimeError, AttributeError):
                plan = None  # no compiler, or it failed: the other executors, from now on
        compiled.host[types] = plan
    if plan is None:
        return False
    written = list(p) + [x for x in s_leaves if type(x) is type(p[0])]
    if lib == "numpy":
        np = sys.modules["numpy"]
        if _risky_fp_kinds(np):
            return False  # the kernels raise no floating-point errors: the checked route
        if not _numpy_disjoint(written, g):
            return False
        if not host_exec.run(plan, compiled.xp, p, g, s_leaves, scalars, pre, written + g):
            return False
        for old, value in writes:
            old[...] = value
        return True
    import torch

    flat = written + list(g)
    if p[0].device.type != "cpu" or not {x.dtype for x in p} <= {torch.float32, torch.float64}:
        return False
    if not all(map(torch.Tensor.is_contiguous, flat)):
        return False  # the kernels walk memory in order: the other executors
    starts: list[int] = []
    if not _torch_memory_ok(torch, list, written, list(g), starts):
        return False
    versions = list(map(_PLUS_ONE, map(_VERSION, written)))
    with torch.no_grad():
        if not host_exec.run(plan, compiled.xp, p, g, s_leaves, scalars, pre, flat, starts):
            return False
        for old, value in writes:
            old.copy_(value)
    _set_versions(torch, written, versions)
    return plan, written


def _run_numpy(compiled: _Compiled, p, g, s_leaves, scalars, pre, state, writes) -> bool:
    jobs = []
    for k, bind in enumerate(compiled.runners):
        cols = _columns(compiled, k, p, g, s_leaves)
        n_temps = bind.n_temps
        jobs.append((bind(scalars, pre), cols, n_temps))
    written = list(p) + [x for x in s_leaves if hasattr(x, "shape")]
    if not _numpy_run(jobs, written, g):
        return False
    for old, value in writes:
        old[...] = value
    return True


def _run_torch(compiled: _Compiled, p, g, s_leaves, scalars, pre, state, writes) -> Any:
    """Check the step's tensors (:func:`_torch_memory_ok`) and run it; ``False`` declines.

    Returns ``(groups, written)`` where every tensor is contiguous (what
    :mod:`agrad.optim._steady` needs to check the next step in bulk), else ``True``.
    """
    import torch

    dtypes = set(map(_DTYPE, p))
    half = bool(dtypes & {torch.float16, torch.bfloat16})
    use_fused = compiled.fused is not None and p[0].device.type in _FUSED_DEVICES
    if not use_fused and (half or compiled.runners is None):
        return False
    written = list(p) + [x for x in s_leaves if isinstance(x, torch.Tensor)]
    groups = [_columns(compiled, k, p, g, s_leaves) for k in range(len(compiled.groups))]

    def lanes() -> list[tuple]:
        return [ts for cols in groups for ts in zip(*cols)]

    contiguous = _torch_memory_ok(torch, lanes, written, list(g))
    if not contiguous:
        return False
    _torch_execute(torch, compiled, groups, written, scalars, pre, state, writes)
    return (groups, written) if contiguous == "contiguous" else True


def _torch_execute(torch, compiled, groups, written, scalars, pre, state, writes, exact=True):
    """Run the checked step: every written tensor's version ends one past where it began.

    ``exact=False`` (the written tensors' counters are known to be distinct): torch's
    fused kernels, which bump no counter, run, then each counter is bumped once,
    without reading them. Otherwise (the ``_foreach`` programs bump a counter once per
    op) the counters are read before and set after.
    """
    fused = compiled.fused is not None and written[0].device.type in _FUSED_DEVICES
    versions = None if fused and not exact else list(map(_VERSION, written))
    with torch.no_grad():
        if fused:
            compiled.fused(groups, int(state.count))
        else:
            for cols, run in zip(groups, compiled.runners):
                run(cols, scalars, pre)
        for old, value in writes:
            old.copy_(value)
    _bump_versions(torch, written, writes, versions)


def _bump_versions(torch: Any, written: list, writes: list, versions: list | None) -> None:
    """One bump per step of every written tensor's version counter, as ``torch.optim``'s.

    ``versions``: the counters before the step (then they are set to one past); ``None``
    where no two written tensors share a counter and only ``writes``' ``copy_`` has
    bumped any (then every other one is bumped once).
    """
    if versions is not None:
        _set_versions(torch, written, list(map(_PLUS_ONE, versions)))
        return
    _increment_versions(torch, written)
    if writes:  # their copy_ bumped them already: set back by one
        targets = [old for old, _ in writes]
        _set_versions(torch, targets, [t._version - 1 for t in targets])


_SEEN = "steady candidate"  # the cache's side record: the last full torch step's parameters


def _record_steady(cache, compiled, params, p, g, s_leaves, s_def, written, host=None) -> None:
    """Keep what this checked torch step established for the next steps' bulk check.

    Made only where the last full step had the very same parameter objects: a record
    costs a few passes over the tensors (TorchDynamo's guard is built in Python), and
    a caller that passes new tensors every step (``p.detach()``) would pay them every
    step for a check that never applies.
    """
    import torch

    seen = cache.aux.get(_SEEN)
    cache.aux[_SEEN] = list(p)
    if seen is None or len(seen) != len(p) or not all(map(is_, seen, p)):
        cache.aux.pop(_STEADY, None)
        return
    rec = _steady.make(torch, compiled, params, p, g, s_leaves, s_def, written)
    if rec is None:
        cache.aux.pop(_STEADY, None)
        return
    rec.host = host
    cache.aux[_STEADY] = rec


def _set_versions(torch: Any, tensors: list[Any], versions: list[int]) -> None:
    """Set the tensors' autograd version counters (one bump per step, as torch.optim)."""
    setter = getattr(torch._C._autograd, "_unsafe_set_version_counter", None)
    if setter is None:  # an older torch: a bump for the tensors the kernels left alone
        _increment_versions(torch, [t for t, v in zip(tensors, versions) if t._version < v])
        return
    setter(tuple(tensors), tuple(versions))


# -- memory: overlap between written arrays --------------------------------------------
def _numpy_roots(xs: list[Any]) -> list[int | None]:
    """``id`` of the array owning each array's memory (``None`` where not an ndarray)."""
    np = sys.modules["numpy"]
    out: list[int | None] = []
    for x in xs:
        b = x.base
        while b is not None and isinstance(b, np.ndarray):
            x, b = b, b.base
        out.append(id(x) if b is None else None)
    return out


def _numpy_disjoint(written: list[Any], grads: list[Any]) -> bool:
    """No two written arrays share memory, nor a gradient and a written array.

    Arrays that own their memory (``base`` is ``None``) share none with each other, so
    distinct such arrays need nothing more (:func:`_ids_apart`); otherwise the owning
    base arrays are compared, and where two coincide, or one is not an ndarray, the
    arrays' byte bounds (``np.byte_bounds``, sorted).
    """
    np = sys.modules["numpy"]
    if all(map(is_, map(_BASE, chain(written, grads)), repeat(None))) and _ids_apart(
        np, written, grads
    ):
        return True
    w_set, g_set = set(_numpy_roots(written)), set(_numpy_roots(grads))
    if len(w_set) == len(written) and None not in w_set | g_set and w_set.isdisjoint(g_set):
        return True
    utils = getattr(np.lib, "array_utils", None)
    byte_bounds = utils.byte_bounds if utils is not None else np.byte_bounds
    bounds = [byte_bounds(x) for x in written + grads]
    return _disjoint([lo for lo, _ in bounds], [hi - lo for lo, hi in bounds], len(written))


def _ids_apart(np: Any, written: list[Any], grads: list[Any]) -> bool:
    """Whether the written arrays are distinct objects and no gradient is one of them.

    The ``id`` s go through NumPy buffers, sorted and searched: a set of thousands of
    Python ints would be the largest allocation of a step over many small arrays.
    """
    n = len(written)
    w = np.fromiter(map(id, written), np.uintp, n)
    w.sort()
    if n > 1 and not (w[1:] != w[:-1]).all():
        return False
    g = np.fromiter(map(id, grads), np.uintp, len(grads))
    i = np.searchsorted(w, g)
    np.minimum(i, n - 1, out=i)
    return not (w[i] == g).any()


def _torch_dense(x: Any) -> bool:
    """Whether ``x`` is strided, dense and without internal overlap, in any dim order."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz != 1):
        if size == 0:
            return True
        if stride != expected:
            return False
        expected *= size
    return True


def _torch_memory_ok(
    torch: Any,
    lanes: Callable[[], list[tuple]],
    written: list[Any],
    grads: list[Any],
    starts_out: list[int] | None = None,
) -> bool | str:
    """Layout, writability and overlap of the tensors of one step, before any write.

    ``lanes()`` gives, per parameter, the tuple of its tensors (parameter, gradient,
    state: asked only where some tensor is not contiguous); ``written`` the written tensors (parameters, state), ``grads`` the read
    ones. Every tensor must be contiguous, or every tensor of its parameter dense with
    one set of strides; written tensors must not be inference tensors or non-leaves
    that require grad; no tensor may be a negative view (``torch._neg_view``, the
    imaginary part of a conjugate view: the kernels read memory as it is); no written
    tensor may share memory with another tensor of the step. ``"contiguous"`` (true) where every tensor is contiguous.
    """
    flat = written + grads
    tensor = torch.Tensor
    result: bool | str = "contiguous"
    try:
        if not all(map(tensor.is_contiguous, flat)):
            result = True
            for ts in lanes():
                if all(t.is_contiguous() for t in ts):
                    continue
                stride = ts[0].stride()
                if any(t.stride() != stride for t in ts) or not _torch_dense(ts[0]):
                    return False
            if not all(_torch_dense(t) for t in flat):
                return False
        if any(map(tensor.is_inference, written)) or any(map(tensor.is_neg, flat)):
            return False  # a negative view: the kernels would read its memory unnegated
        if any(map(_REQUIRES_GRAD, written)) and not all(map(_IS_LEAF, written)):
            return False
        starts = list(map(tensor.data_ptr, flat))
    except (RuntimeError, NotImplementedError, TypeError):
        return False  # sparse, mkldnn, nested ... layouts (no strides, no data pointer)
    sizes = list(map(_NBYTES, flat))
    if 0 in starts and any(s == 0 and n for s, n in zip(starts, sizes)):
        return False  # a storage freed (``resize_(0)``): the generic path says so
    for t, n in zip(flat, sizes):  # dense: its elements span its nbytes from its start
        if n and t.untyped_storage().nbytes() - t.storage_offset() * t.element_size() < n:
            return False  # a storage shrunk after the tensor was made: the generic path says so
    if starts_out is not None:
        starts_out += starts  # the host kernels' pointer tables reuse them
    return _disjoint(starts, sizes, len(written)) and result


def _increment_versions(torch: Any, tensors: list[Any]) -> None:
    """Bump every tensor's autograd version counter once, as an in-place op would."""
    try:
        torch.autograd.graph.increment_version(tuple(tensors))  # a tuple converts faster
    except TypeError:  # torch < 2.5 takes one tensor at a time
        for t in tensors:
            torch.autograd.graph.increment_version(t)


_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _risky_fp_kinds(np: Any) -> list[str]:
    """The floating-point error kinds whose handling could raise or call out.

    Modes ``raise``, ``call``, ``print`` and ``log``; ``warn`` too when a warning could
    become an exception (:func:`_warnings_raise`).
    """
    out = []
    strict = None
    for kind, mode in np.geterr().items():
        if mode == "ignore":
            continue
        if mode == "warn":
            if strict is None:
                strict = _warnings_raise()
            if not strict:
                continue
        out.append(kind)
    return out


def _warnings_raise() -> bool:
    """Whether the warnings filters could turn NumPy's ``RuntimeWarning`` into an error.

    Filters are read in order, as :mod:`warnings` does: an ``error`` filter whose
    category covers ``RuntimeWarning`` says yes whatever its message or module pattern
    (conservatively); an unconditional filter of another action says no; with no
    match, :data:`warnings.defaultaction` decides.
    """
    import warnings

    for action, message, category, module, lineno in warnings.filters:
        if not issubclass(RuntimeWarning, category):
            continue
        if action == "error":
            return True
        if message is None and module is None and not lineno:
            return False
    return warnings.defaultaction == "error"


def _numpy_run(jobs: list[tuple[Any, list[list[Any]], int]], written: list, grads: list) -> bool:
    """Apply each job's ``kernel(*columns, *temps)`` to its lanes, all or nothing.

    A job is ``(kernel, columns, n_temps)``: ``columns[c]`` lists column ``c``'s
    arrays over the job's lanes (column 1 holds the gradients, which are only read).
    Three phases. (1) Check: memory overlap, floating-point error handling. (2)
    Prepare, writing only scratch: allocate every buffer, gather the small arrays and
    run the kernels on the gathered copies; where an error kind could raise (see
    :func:`_risky_fp_kinds`), run them with that kind set to ``raise``, and dry-run the
    large arrays on chunk copies the same way; a floating-point error declines
    (``False``). (3) Write: copy the gathered results back and run the kernels in
    place on the large arrays, with the risky kinds ignored (phase 2 showed that none
    occurs: the same operations on the same values).
    """
    import numpy as np

    if not _numpy_disjoint(written, grads):
        return False
    risky = _risky_fp_kinds(np)
    try:
        with np.errstate(**dict.fromkeys(risky, "raise")) if risky else nullcontext():
            plans = [
                (kernel, k, plan)
                for kernel, cols, k in jobs
                for plan in _numpy_prepare(np, kernel, cols, k, risky)
            ]
    except FloatingPointError:
        return False
    with np.errstate(**dict.fromkeys(risky, "ignore")) if risky else nullcontext():
        for kernel, k, (gathered, large) in plans:
            if gathered is not None:
                _numpy_scatter(*gathered)
            for arrays, scratch in large:
                if scratch is None:  # C-contiguous, over CHUNK elements
                    temps = _scratch(arrays[0].dtype, k)
                    _chunked(kernel, [a.reshape(-1) for a in arrays], temps)
                else:
                    kernel(*arrays, *scratch)
    return True


def _numpy_prepare(np, kernel, cols, k, risky):
    """Phase 2 of :func:`_numpy_run` for one job: ``[(gathered, large)]`` per dtype."""
    params = cols[0]
    sizes = list(map(_SIZE, params))
    kinds = set(map(_DTYPE, params))
    if len(kinds) == 1:
        by_dtype = {next(iter(kinds)): None}  # None: every index
    else:
        by_dtype = {}
        for i, x in enumerate(params):
            by_dtype.setdefault(x.dtype, []).append(i)
    plans = []
    for dtype, idx in by_dtype.items():
        temps = _scratch(dtype, k)
        every = range(len(params)) if idx is None else idx
        small = [i for i in every if sizes[i] <= SMALL]
        gathered = None
        if len(small) > 1:
            large = [i for i in every if sizes[i] > SMALL]
            if len(small) == len(params):
                small = None  # every index: the columns as they are
            gathered = _numpy_gathered(np, kernel, small, cols, sizes, dtype, temps)
        else:
            large = every
        views: dict[tuple[int, ...], tuple[Any, ...]] = {}  # scratch views by shape
        todo = []
        for arrays in zip(*([col[i] for i in large] for col in cols)):
            n = arrays[0].size
            if n <= CHUNK:
                shape = arrays[0].shape
                scratch = views.get(shape)
                if scratch is None:
                    scratch = views[shape] = tuple(t[:n].reshape(shape) for t in temps)
            elif all(a.flags.c_contiguous for a in arrays):
                scratch = None
            else:
                scratch = tuple(np.empty_like(arrays[0]) for _ in range(k))
            todo.append((arrays, scratch))
        if risky and todo:
            with np.errstate(**{e: "raise" if e in risky else "ignore" for e in np.geterr()}):
                _numpy_dry_run(np, kernel, todo, dtype, temps)
        plans.append((gathered, todo))
    return plans


def _numpy_dry_run(np, kernel, todo, dtype, temps) -> None:
    """Run ``kernel`` on copies of the written arrays (chunk by chunk where contiguous)."""
    k = len(temps)
    copies = _scratch(dtype, k + len(todo[0][0]) - 1)[k:] if todo else []
    for arrays, scratch in todo:
        p, g, *bufs = arrays
        n = p.size
        if n <= CHUNK:
            cs = [c[:n].reshape(p.shape) for c in copies]
            for c, a in zip(cs, (p, *bufs)):
                np.copyto(c, a)
            kernel(cs[0], g, *cs[1:], *scratch)
        elif scratch is None:
            flats = [a.reshape(-1) for a in arrays]
            for s in range(0, n, CHUNK):
                e = min(s + CHUNK, n)
                cs = [c[: e - s] for c in copies]
                for c, a in zip(cs, (flats[0], *flats[2:])):
                    np.copyto(c, a[s:e])
                kernel(cs[0], flats[1][s:e], *cs[1:], *(t[: e - s] for t in temps))
        else:
            kernel(np.copy(p), g, *map(np.copy, bufs), *scratch)


def _chunked(kernel, flats: list[Any], temps: list[Any]) -> None:
    n = flats[0].size
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        kernel(*(a[s:e] for a in flats), *(t[: e - s] for t in temps))


def _numpy_gathered(np, kernel, idx, cols, sizes, dtype, temps):
    """Gather small arrays into flat buffers and run the kernel on them (scratch only).

    ``idx`` lists the arrays' indices (``None``: all of them). Returns what
    :func:`_numpy_scatter` needs to copy the results back.
    """
    offsets = list(accumulate(sizes if idx is None else [sizes[i] for i in idx], initial=0))
    flats = []
    for col in cols:
        flat = np.empty(offsets[-1], dtype)
        np.concatenate(col if idx is None else [col[i] for i in idx], axis=None, out=flat)
        flats.append(flat)
    _chunked(kernel, flats, temps)
    return idx, cols, flats, list(pairwise(offsets))


def _numpy_scatter(idx, cols, flats, pairs) -> None:
    """Copy the gathered results back into the written arrays (not the gradients)."""
    for j, (col, flat) in enumerate(zip(cols, flats)):
        if j == 1:
            continue
        dsts = col if idx is None else [col[i] for i in idx]
        if j == 0:
            vectors = all(map((1).__eq__, map(_NDIM, dsts)))
        for dst, (a, b) in zip(dsts, pairs):
            dst[...] = flat[a:b] if vectors else flat[a:b].reshape(dst.shape)
