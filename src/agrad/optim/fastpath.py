"""Native fast paths for in-place optimizer steps (torch and NumPy).

The namespace-generic update rules in :mod:`agrad.optim.torch_family` are the
reference. This module takes over :meth:`GradientTransformation.step` with
``inplace=True`` when, and only when, it can produce the same result (to rounding)
in fewer, cheaper operations:

- **torch**: the ``torch._fused_adam_`` / ``torch._fused_adamw_`` /
  ``torch._fused_sgd_`` kernels (one pass over memory per step, the same kernels as
  ``torch.optim.Adam(fused=True)``; float16 and bfloat16 are computed in float32
  inside them and stored in the parameter's dtype), with ``torch._foreach_*`` for
  float32/float64 on devices that have no fused kernel.
- **NumPy**: in-place ufuncs with ``out=`` on cache-sized chunks (about seven
  streams through memory instead of some thirty with temporaries), and small arrays
  gathered into one flat scratch buffer so many tiny parameters cost a few
  whole-buffer operations instead of a dozen Python-level calls each.

Whatever the fast path does not recognise returns ``None`` before anything is
written, and the caller runs the generic path, which computes every new value before
its first write and raises the proper error messages. Set :data:`enabled` to
``False`` to force the generic path. The public entry points are :func:`try_step`
(what ``step`` calls) and the two kernels :func:`adam_step_inplace` and
:func:`sgd_step_inplace`, usable on their own: they make the memory, layout and
floating-point checks below themselves and return ``False``, touching nothing, where
those fail (types, shapes, dtypes, the count and the hyperparameters are the
caller's to check, as :func:`try_step` does).

**All or nothing.** The step count lives in the returned state, so a step that
raised after its first write would leave the arrays ahead of the count (the next step
would apply the wrong bias correction). Each fast path therefore guarantees: *a step
either returns (every parameter and state array written, the new count returned) or
raises or declines with nothing written*, for every failure except those listed last.
It finds each failure it can before the first write, and makes the writes unable to
fail:

- *Declined before any write* (``None``; the generic path then runs, and raises its
  own message where the input is bad), both libraries: a step count that is not a
  Python ``int`` >= 0 (a float, a bool, a 0-d array, a negative number); a learning
  rate (a schedule's value included) or other hyperparameter that is not a finite
  real Python number in range (betas in [0, 1), eps, lr, weight decay, momentum
  >= 0); mixed libraries, array subclasses, devices, dtypes or shapes; read-only
  arrays; any memory shared between two written arrays (parameters and state) or
  between a gradient and a written array (two views of one base, ``detach()``,
  ``.data``, one buffer seen twice): address ranges are sorted and swept, O(n log n)
  (NumPy arrays that own their memory, as most do, are told apart by identity, O(n)).
- *NumPy*: float16 (the generic path computes it in float32); AMSGrad, ``maximize``,
  coupled weight decay. Floating-point errors: when handling one could raise or call
  out during the writes (a :func:`numpy.seterr` mode ``raise``, ``call``, ``print``
  or ``log``, or ``warn`` while a warnings filter could turn ``RuntimeWarning`` into
  an exception, as ``pytest -W error`` does), the whole step is first computed into
  scratch with those kinds set to ``raise``; an error there declines, and the writes
  then run with those kinds ignored (the same operations on the same values raise
  nothing). All scratch (chunk buffers, the gathered copies of the small arrays,
  whole-array buffers for large non-contiguous ones) is allocated, and every small
  array's new value computed, before the first write: a ``MemoryError`` for scratch
  is raised with nothing written.
- *torch*: sparse or other non-strided layouts; meta tensors; dtypes other than
  float16, bfloat16, float32, float64 (float8 ...); a tensor that is not contiguous
  unless every tensor of its parameter is dense with the same strides
  (``channels_last`` everywhere: the fused CPU kernels walk memory in order, and
  paired the wrong elements of a transposed parameter and a contiguous gradient);
  expanded or otherwise internally overlapping tensors; inference-mode tensors
  among the written ones (the fused kernels would write them although torch refuses
  in-place writes to them outside inference mode); non-leaf tensors that require
  grad; float16/bfloat16 on a device without fused kernels (the ``_foreach`` ops would
  compute in half precision). After the checks, every written tensor's version
  counter is bumped once per step, before the kernels run, so an autograd graph that
  saved a parameter or a state tensor before the step raises "modified by an inplace
  operation" on backward, as with ``torch.optim``'s default (foreach) implementation.
  float16/bfloat16 are computed in float32 inside the fused kernels and stored in the
  parameter's dtype, bitwise as ``torch.optim``'s fused kernels.

Not covered, as with any in-place optimizer (``torch.optim`` included): an
asynchronous exception between two writes (``KeyboardInterrupt``, an exception from
a signal handler), a ``MemoryError`` for the few small Python objects and ufunc
buffers made while writing, a ``warnings.showwarning`` replaced by one that raises,
and a device-side failure inside a torch kernel (CUDA out of memory): these can leave
a step partly applied.
"""

from __future__ import annotations

import math
import sys
import threading
from contextlib import nullcontext
from itertools import accumulate, chain, pairwise, repeat
from operator import attrgetter, is_
from typing import Any

from agrad.optim.numerics import count_value, is_count, is_scalar, resolve
from agrad.pytree import flatten_leaves

__all__ = ["adam_step_inplace", "sgd_step_inplace", "try_step", "enabled"]

#: Set to ``False`` to force the generic path everywhere (used by tests and the bench).
enabled = True

# Arrays up to this many elements are gathered into one scratch buffer (NumPy).
SMALL = 8192
# Elements per chunk of the NumPy kernels (a 256x256 float32 matrix is one chunk).
CHUNK = 65536
# Above this many arrays the overlap check sorts with NumPy instead of Python.
_VECTOR_SORT = 256

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


def _numpy_lists_ok(lists: list[list[Any]], flat: list[Any], kinds: set[Any]) -> bool:
    """32- or 64-bit float dtypes, writable parameters and state."""
    if not all(d.kind == "f" and d.itemsize >= 4 for d in kinds):
        return False
    return all(all(map(_WRITEABLE, xs)) for j, xs in enumerate(lists) if j != 1)


def _torch_lists_ok(lists: list[list[Any]], flat: list[Any], kinds: set[Any]) -> bool:
    """One device, dtypes the kernels cover."""
    import torch

    if not kinds <= {torch.float32, torch.float64, torch.float16, torch.bfloat16}:
        return False
    device = flat[0].device
    if device.type == "cpu":
        return all(map(_IS_CPU, flat))
    return device.type != "meta" and set(map(_DEVICE, flat)) == {device}


def _gather(params: Any, grads: Any, buffers: list[Any]) -> tuple[str, list[list[Any]]] | None:
    """``(library, [params, grads, *buffers])`` as lists of raw arrays, or ``None``.

    Accepts only arrays of one library (and device), equal shapes across the lists,
    one dtype per parameter across the lists, and writable parameters and buffers.
    Memory (overlap, layout) is checked by the kernels.
    """
    got = _leaves(params)
    if got is None:
        return None
    p, key = got
    if not p:
        return None
    lib = _library(p[0])
    if lib is None:
        return None
    lists = [p]
    for tree in (grads, *buffers):
        got = _leaves(tree)
        if got is None or got[1] != key:
            return None
        lists.append(got[0])
    flat = list(chain.from_iterable(lists))
    if set(map(type, flat)) != {type(p[0])}:
        return None  # one library, no subclasses (NumPy's matrix, nn.Parameter ...)
    n, k = len(p), len(lists)
    shapes = list(map(_SHAPE, flat))
    if shapes != shapes[:n] * k:
        return None
    dtypes = list(map(_DTYPE, flat))
    if dtypes != dtypes[:n] * k:
        return None
    ok = _numpy_lists_ok if lib == "numpy" else _torch_lists_ok
    return (lib, lists) if ok(lists, flat, set(dtypes[:n])) else None


def _real(x: Any) -> bool:
    """A finite real Python number (not a bool, not an array)."""
    return is_scalar(x) and math.isfinite(x)


def _hyper_ok(name: str, hp: dict[str, Any]) -> bool:
    """The constants the kernels take: finite real Python numbers in their ranges."""
    wd = hp.get("weight_decay", 0.0)
    if not (_real(wd) and wd >= 0) or hp.get("mask") is not None:  # masked decay: generic
        return False
    if name == "sgd":
        m, d = hp.get("momentum", 0.0), hp.get("dampening", 0.0)
        return _real(m) and m >= 0 and _real(d)
    betas, eps = hp.get("betas"), hp.get("eps")
    if type(betas) not in (tuple, list) or len(betas) != 2:
        return False
    return all(_real(b) and 0 <= b < 1 for b in betas) and _real(eps) and eps >= 0


def _same_library(count: Any, params: Any) -> bool:
    """Whether the count array belongs to the parameters' library (NumPy or torch)."""
    leaf = flatten_leaves(params)[0][:1]
    mod = type(leaf[0]).__module__.split(".")[0] if leaf else ""
    return type(count).__module__.split(".")[0] == mod


def _bumped(count: Any, t: int) -> Any:
    """The new count: an int stays an int; a 0-d array is written in place (as the
    generic path writes every state array), or replaced where it is read-only."""
    if type(count) is int:
        return t
    if type(count).__module__.startswith("torch"):
        if count.is_inference() or count._is_view():
            return count + 1
        return count.fill_(t)
    if getattr(count, "flags", None) is not None and count.flags.writeable:
        count[...] = t
        return count
    import numpy as np

    return np.asarray(t, dtype=count.dtype)


def try_step(opt: Any, params: Any, grads: Any, state: Any) -> tuple[Any, Any] | None:
    """Run ``opt.step(params, grads, state)`` in place on a fast path, or return ``None``.

    Handles ``adam``/``adamw`` (torch: every variant; NumPy: without AMSGrad and
    ``maximize``) and ``sgd`` (torch: every variant; NumPy: without weight decay and
    ``maximize``) on flat or nested pytrees of NumPy arrays or torch tensors of one
    library. The returned state has ``count + 1`` and the same, updated, arrays.
    ``None`` means nothing was written (see the module's notes for what declines).
    """
    if not enabled:
        return None
    name = opt.name
    if name not in ("adam", "adamw", "sgd"):
        return None
    hp = opt.hyperparams
    count = getattr(state, "count", None)
    known = count_value(count) if is_count(count) else None
    if known is None or known < 0:  # not a count, or not known here: the generic path
        return None
    if type(count) is not int and not _same_library(count, params):
        return None
    count = known
    if not _hyper_ok(name, hp):
        return None
    try:
        lr = resolve(hp.get("lr"), count)
    except Exception:  # a schedule's bad value: the generic path raises its own message
        return None
    if not (_real(lr) and lr >= 0):
        return None
    t = count + 1
    if name in ("adam", "adamw") and type(state).__name__ == "AdamState":
        amsgrad = bool(hp["amsgrad"])
        bufs = [state.exp_avg, state.exp_avg_sq] + ([state.max_exp_avg_sq] if amsgrad else [])
        got = _gather(params, grads, bufs)
        if got is None:
            return None
        lib, lists = got
        beta1, beta2 = hp["betas"]
        done = adam_step_inplace(
            lib,
            *lists[:4],
            lists[4] if amsgrad else None,
            step=t,
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=hp["eps"],
            weight_decay=hp["weight_decay"],
            decoupled=bool(hp["decoupled_weight_decay"]),
            maximize=bool(hp["maximize"]),
        )
        return (params, state._replace(count=_bumped(state.count, t))) if done else None
    if name == "sgd" and type(state).__name__ == "SGDState":
        momentum = hp["momentum"]
        bufs = [state.momentum_buffer] if momentum != 0 else []
        got = _gather(params, grads, bufs)
        if got is None:
            return None
        lib, lists = got
        done = sgd_step_inplace(
            lib,
            lists[0],
            lists[1],
            lists[2] if momentum != 0 else None,
            first_step=t == 1,
            lr=lr,
            momentum=momentum,
            dampening=hp["dampening"],
            nesterov=bool(hp["nesterov"]),
            weight_decay=hp["weight_decay"],
            maximize=bool(hp["maximize"]),
        )
        return (params, state._replace(count=_bumped(state.count, t))) if done else None
    return None


# -- memory: overlap between written arrays --------------------------------------------
def _disjoint(starts: list[int], sizes: list[int], n_written: int, tile: int = 1) -> bool:
    """Whether the byte ranges ``[start, start + size)`` overlap nowhere that matters.

    ``sizes`` is given once for every ``len(starts) // tile`` ranges (``tile`` lists of
    arrays with the same shapes and dtypes). The first ``n_written`` ranges are
    written, the others only read: a written range may meet no other range, two read
    ones may; empty ones meet nothing (nothing is read or written there). Sorted by
    start, O(n log n); NumPy sorts long lists when it is loaded.
    """
    n = len(starts)
    np = sys.modules.get("numpy")
    if n > _VECTOR_SORT and np is not None:
        try:
            st = np.array(starts, dtype=np.int64)
            en = st + np.tile(np.array(sizes, dtype=np.int64), tile)
        except OverflowError:  # an address over 2**63: the loop below
            return _disjoint_loop(starts, sizes * tile, n_written)
        order = np.argsort(st, kind="stable")
        st, en = st[order], en[order]
        if (st[1:] >= en[:-1]).all():
            return True  # sorted, each range ends before the next begins: none meet
        keep = en > st  # empty ranges meet nothing
        w = (order < n_written)[keep]
        st, en = st[keep], en[keep]
        prev_any = np.maximum.accumulate(en)[:-1]
        prev_w = np.maximum.accumulate(np.where(w, en, 0))[:-1]
        return not np.where(w[1:], st[1:] < prev_any, st[1:] < prev_w).any()
    return _disjoint_loop(starts, sizes * tile, n_written)


def _disjoint_loop(starts: list[int], sizes: list[int], n_written: int) -> bool:
    """:func:`_disjoint` in Python: one sweep over the ranges sorted by start."""
    max_any = max_w = 0
    for i in sorted(range(len(starts)), key=starts.__getitem__):
        s = starts[i]
        e = s + sizes[i]
        if e <= s:
            continue  # an empty range meets nothing
        if i < n_written:
            if s < max_any:
                return False
            max_w = max(max_w, e)
        elif s < max_w:
            return False
        max_any = max(max_any, e)
    return True


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
    distinct such arrays need nothing more (O(n)); otherwise the owning base arrays
    are compared, and where two coincide, or one is not an ndarray, the arrays' byte
    bounds (``np.byte_bounds``, sorted).
    """
    w_ids = set(map(id, written))
    if (
        all(map(is_, map(_BASE, chain(written, grads)), repeat(None)))
        and len(w_ids) == len(written)
        and w_ids.isdisjoint(map(id, grads))
    ):
        return True
    w_set, g_set = set(_numpy_roots(written)), set(_numpy_roots(grads))
    if len(w_set) == len(written) and None not in w_set | g_set and w_set.isdisjoint(g_set):
        return True
    np = sys.modules["numpy"]
    utils = getattr(np.lib, "array_utils", None)
    byte_bounds = utils.byte_bounds if utils is not None else np.byte_bounds
    bounds = [byte_bounds(x) for x in written + grads]
    return _disjoint([lo for lo, _ in bounds], [hi - lo for lo, hi in bounds], len(written))


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


def _torch_memory_ok(torch: Any, lists: list[list[Any]], written: list[Any]) -> bool:
    """Layout, writability and overlap of the tensors of one step, before any write.

    ``lists`` holds the written lists (params, state buffers) first, then the
    gradients; ``written`` is the written lists, concatenated. Every tensor must be
    contiguous, or every tensor of its parameter dense with one set of strides;
    written tensors must not be inference tensors or non-leaves that require grad; no
    written tensor may share memory with another tensor of the step.
    """
    flat = written + lists[-1]
    tensor = torch.Tensor
    try:
        if not all(map(tensor.is_contiguous, flat)):
            for ts in zip(*lists):
                if all(t.is_contiguous() for t in ts):
                    continue
                stride = ts[0].stride()
                if any(t.stride() != stride for t in ts) or not _torch_dense(ts[0]):
                    return False
        if any(map(tensor.is_inference, written)):
            return False
        if any(map(_REQUIRES_GRAD, written)) and not all(map(_IS_LEAF, written)):
            return False
        starts = list(map(tensor.data_ptr, flat))
    except (RuntimeError, NotImplementedError, TypeError):
        return False  # sparse, mkldnn, nested ... layouts (no strides, no data pointer)
    return _disjoint(starts, list(map(_NBYTES, lists[0])), len(written), tile=len(lists))


def _increment_versions(torch: Any, tensors: list[Any]) -> None:
    """Bump every tensor's autograd version counter once, as an in-place op would."""
    try:
        torch.autograd.graph.increment_version(tuple(tensors))  # a tuple converts faster
    except TypeError:  # torch < 2.5 takes one tensor at a time
        for t in tensors:
            torch.autograd.graph.increment_version(t)


# -- Adam ----------------------------------------------------------------------------
def adam_step_inplace(
    library: str,
    params: list[Any],
    grads: list[Any],
    exp_avgs: list[Any],
    exp_avg_sqs: list[Any],
    max_exp_avg_sqs: list[Any] | None = None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
    maximize: bool = False,
) -> bool:
    """One Adam step written into ``params``, ``exp_avgs``, ``exp_avg_sqs``; ``True`` if done.

    .. math::
        m \\leftarrow m + (1-\\beta_1)(g - m),\\quad
        v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
        \\theta \\leftarrow \\theta - \\frac{\\gamma}{1-\\beta_1^t}
            \\frac{m}{\\sqrt{v}/\\sqrt{1-\\beta_2^t} + \\epsilon}

    with decoupled (``decoupled=True``: :math:`\\theta \\leftarrow \\theta(1-\\gamma\\lambda)`
    first) or coupled (:math:`g \\leftarrow g + \\lambda\\theta`) weight decay. Inputs
    are lists of arrays of one library (``"numpy"`` or ``"torch"``) with equal shapes
    and one dtype per parameter (checked by the caller). Returns ``False``, touching
    nothing, for a combination this library's kernel does not cover or for memory it
    refuses (overlap, layout: see the module's notes).
    """
    if library == "torch":
        return _torch_adam(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, beta1, beta2, eps,
            weight_decay, decoupled, maximize,
        )  # fmt: skip
    if library == "numpy":
        if max_exp_avg_sqs is not None or maximize or (weight_decay != 0 and not decoupled):
            return False
        return _numpy_adam(
            params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay
        )
    return False


_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _torch_plan(torch: Any, params: list[Any], grads: list[Any], bufs: list[list[Any]]):
    """``(fused, groups)`` where the step may run, ``None`` where it must not.

    ``groups`` are lists of indices of one dtype (all of them when there is one
    dtype). Every check is made here, before any write; the written tensors'
    version counters are bumped last, when nothing can refuse any more.
    """
    fused = params[0].device.type in _FUSED_DEVICES
    dtypes = list(map(_DTYPE, params))
    kinds = set(dtypes)
    if not fused and kinds & {torch.float16, torch.bfloat16}:
        return None  # the foreach ops would compute in half precision
    written = list(chain(params, *bufs))
    if not _torch_memory_ok(torch, [params, *bufs, grads], written):
        return None
    if len(kinds) == 1:
        groups = [None]
    else:
        by: dict[Any, list[int]] = {}
        for i, d in enumerate(dtypes):
            by.setdefault(d, []).append(i)
        groups = list(by.values())
    _increment_versions(torch, written)
    return fused, groups


def _pick(xs: list[Any] | None, idx: list[int] | None) -> list[Any]:
    if xs is None:
        return []
    return xs if idx is None else [xs[i] for i in idx]


def _torch_adam(params, grads, ms, vs, vmax, step, lr, b1, b2, eps, wd, decoupled, maximize):
    import torch

    bufs = [ms, vs] + ([vmax] if vmax is not None else [])
    plan = _torch_plan(torch, params, grads, bufs)
    if plan is None:
        return False
    fused, groups = plan
    with torch.no_grad():
        for idx in groups:
            p, g, m, v, mx = (_pick(xs, idx) for xs in (params, grads, ms, vs, vmax))
            if fused:
                steps = [torch.tensor(float(step), device=p[0].device)] * len(p)
                kernel = torch._fused_adamw_ if (decoupled and wd != 0) else torch._fused_adam_
                kernel(
                    p, g, m, v, mx, steps, lr=lr, beta1=b1, beta2=b2, weight_decay=wd, eps=eps,
                    amsgrad=vmax is not None, maximize=maximize,
                )  # fmt: skip
            else:
                _torch_adam_foreach(p, g, m, v, mx, step, lr, b1, b2, eps, wd, decoupled, maximize)
    return True


def _torch_adam_foreach(p, g, m, v, mx, step, lr, b1, b2, eps, wd, decoupled, maximize):
    import torch

    if maximize:
        g = torch._foreach_neg(g)
    if wd != 0:
        if decoupled:
            torch._foreach_mul_(p, 1 - lr * wd)
        else:
            g = torch._foreach_add(g, p, alpha=wd)
    torch._foreach_lerp_(m, g, 1 - b1)
    torch._foreach_mul_(v, b2)
    torch._foreach_addcmul_(v, g, g, 1 - b2)
    if mx:
        torch._foreach_maximum_(mx, v)
    denom = torch._foreach_sqrt(mx if mx else v)
    torch._foreach_div_(denom, math.sqrt(1 - b2**step))
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(p, m, denom, -lr / (1 - b1**step))


def _numpy_adam(params, grads, ms, vs, step, lr, b1, b2, eps, wd) -> bool:
    """Chunked, in-place NumPy Adam in exactly the generic path's order of operations."""
    import numpy as np

    bc2_sqrt = (1 - b2**step) ** 0.5
    neg_step_size = -(lr / (1 - b1**step))
    decay = 1 - lr * wd
    if not all(map(_real, (bc2_sqrt, neg_step_size, decay))):
        return False

    def kernel(p, g, m, v, t1, t2):
        np.subtract(g, m, out=t1)
        if 1 - b1 < 0.5:
            t1 *= 1 - b1
            m += t1
        else:  # torch.lerp's other branch: b - (b - a)(1 - w)
            t1 *= 1.0 - (1 - b1)
            np.subtract(g, t1, out=m)
        v *= b2
        np.multiply(g, 1 - b2, out=t1)
        t1 *= g
        v += t1
        np.sqrt(v, out=t1)
        t1 /= bc2_sqrt
        t1 += eps
        np.multiply(m, neg_step_size, out=t2)
        np.divide(t2, t1, out=t1)
        if wd != 0:
            # the generic path's update is (p * decay + step) - p, then added to p: the
            # same three roundings here keep the two paths bitwise equal
            np.multiply(p, decay, out=t2)
            t2 += t1
            t2 -= p
            p += t2
        else:
            p += t1

    return _numpy_run(kernel, params, grads, [ms, vs])


# -- the NumPy executor: check, allocate and compute into scratch, then write ---------
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


def _numpy_run(kernel, params: list[Any], grads: list[Any], bufs: list[list[Any]]) -> bool:
    """Apply ``kernel(p, g, *bufs, t1, t2)`` to every parameter, all or nothing.

    Three phases. (1) Check: memory overlap, floating-point error handling. (2)
    Prepare, writing only scratch: allocate every buffer, gather the small arrays and
    run the kernel on the gathered copies; where an error kind could raise (see
    :func:`_risky_fp_kinds`), run it with that kind set to ``raise``, and dry-run the
    large arrays on chunk copies the same way; a floating-point error declines
    (``False``). (3) Write: copy the gathered results back and run the kernel in
    place on the large arrays, with the risky kinds ignored (phase 2 showed that none
    occurs: the same operations on the same values).
    """
    import numpy as np

    if not _numpy_disjoint(params + [x for b in bufs for x in b], grads):
        return False
    risky = _risky_fp_kinds(np)
    try:
        with np.errstate(**dict.fromkeys(risky, "raise")) if risky else nullcontext():
            plans = _numpy_prepare(np, kernel, params, grads, bufs, risky)
    except FloatingPointError:
        return False
    with np.errstate(**dict.fromkeys(risky, "ignore")) if risky else nullcontext():
        for gathered, large in plans:
            if gathered is not None:
                _numpy_scatter(*gathered)
            for arrays, scratch in large:
                if scratch is None:  # C-contiguous, over CHUNK elements
                    _chunked(kernel, [a.reshape(-1) for a in arrays], *_scratch(arrays[0].dtype))
                else:
                    kernel(*arrays, *scratch)
    return True


def _numpy_prepare(np, kernel, params, grads, bufs, risky):
    """Phase 2 of :func:`_numpy_run`: ``[(gathered, large)]`` per dtype, only scratch written."""
    cols = [params, grads, *bufs]
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
        t1, t2 = _scratch(dtype)
        every = range(len(params)) if idx is None else idx
        small = [i for i in every if sizes[i] <= SMALL]
        gathered = None
        if len(small) > 1:
            large = [i for i in every if sizes[i] > SMALL]
            if len(small) == len(params):
                small = None  # every index: the columns as they are
            gathered = _numpy_gathered(np, kernel, small, cols, sizes, dtype, t1, t2)
        else:
            large = every
        views: dict[tuple[int, ...], tuple[Any, Any]] = {}  # scratch views by shape
        todo = []
        for arrays in zip(*([col[i] for i in large] for col in cols)):
            n = arrays[0].size
            if n <= CHUNK:
                shape = arrays[0].shape
                scratch = views.get(shape)
                if scratch is None:
                    scratch = views[shape] = (t1[:n].reshape(shape), t2[:n].reshape(shape))
            elif all(a.flags.c_contiguous for a in arrays):
                scratch = None
            else:
                scratch = (np.empty_like(arrays[0]), np.empty_like(arrays[0]))
            todo.append((arrays, scratch))
        if risky and todo:
            with np.errstate(**{k: "raise" if k in risky else "ignore" for k in np.geterr()}):
                _numpy_dry_run(np, kernel, todo, dtype, t1, t2)
        plans.append((gathered, todo))
    return plans


def _numpy_dry_run(np, kernel, todo, dtype, t1, t2) -> None:
    """Run ``kernel`` on copies of the written arrays (chunk by chunk where contiguous)."""
    copies = _scratch(dtype, 2 + len(todo[0][0]) - 1)[2:] if todo else []
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
                kernel(cs[0], flats[1][s:e], *cs[1:], t1[: e - s], t2[: e - s])
        else:
            kernel(np.copy(p), g, *map(np.copy, bufs), *scratch)


def _chunked(kernel, flats: list[Any], t1: Any, t2: Any) -> None:
    n = flats[0].size
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        kernel(*(a[s:e] for a in flats), t1[: e - s], t2[: e - s])


def _numpy_gathered(np, kernel, idx, cols, sizes, dtype, t1, t2):
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
    _chunked(kernel, flats, t1, t2)
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


# -- SGD -----------------------------------------------------------------------------
def sgd_step_inplace(
    library: str,
    params: list[Any],
    grads: list[Any],
    momentum_buffers: list[Any] | None,
    *,
    first_step: bool,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    maximize: bool = False,
) -> bool:
    """One SGD step written into ``params`` (and ``momentum_buffers``); ``True`` if done.

    .. math::
        b \\leftarrow g \\text{ (first step) or } \\mu b + (1-\\tau) g,\\quad
        d = g + \\mu b \\text{ (Nesterov) or } b,\\quad \\theta \\leftarrow \\theta - \\gamma d

    (:math:`d = g` without momentum; coupled weight decay :math:`g \\leftarrow g +
    \\lambda\\theta` on torch). Returns ``False``, touching nothing, for a combination
    this library's kernel does not cover or for memory it refuses.
    """
    if library == "torch":
        import torch

        bufs = [momentum_buffers] if momentum_buffers is not None else []
        plan = _torch_plan(torch, params, grads, bufs)
        if plan is None:
            return False
        fused, groups = plan
        with torch.no_grad():
            for idx in groups:
                p, g, b = (_pick(xs, idx) for xs in (params, grads, momentum_buffers))
                if fused:
                    torch._fused_sgd_(
                        p, g, b, weight_decay=weight_decay, momentum=momentum, lr=lr,
                        dampening=dampening, nesterov=nesterov, maximize=maximize,
                        is_first_step=first_step,
                    )  # fmt: skip
                else:
                    _torch_sgd_foreach(
                        p, g, b, first_step, lr, momentum, dampening, nesterov, weight_decay,
                        maximize,
                    )  # fmt: skip
        return True
    if library == "numpy":
        if weight_decay != 0 or maximize:
            return False
        return _numpy_sgd(
            params, grads, momentum_buffers, first_step, lr, momentum, dampening, nesterov
        )
    return False


def _torch_sgd_foreach(p, g, b, first, lr, momentum, dampening, nesterov, wd, maximize):
    import torch

    if maximize:
        g = torch._foreach_neg(g)
    if wd != 0:
        g = torch._foreach_add(g, p, alpha=wd)
    if momentum != 0:
        if first:
            torch._foreach_copy_(b, g)
        else:
            torch._foreach_mul_(b, momentum)
            torch._foreach_add_(b, g, alpha=1 - dampening)
        g = torch._foreach_add(g, b, alpha=momentum) if nesterov else b
    torch._foreach_add_(p, g, alpha=-lr)


def _numpy_sgd(params, grads, bufs, first, lr, momentum, dampening, nesterov) -> bool:
    """In-place NumPy SGD in the generic path's order of operations."""
    import numpy as np

    def plain(p, g, t1, t2):
        np.multiply(g, -lr, out=t1)
        p += t1

    def with_momentum(p, g, b, t1, t2):
        if first:
            np.copyto(b, g)
        else:
            b *= momentum
            if dampening == 0:  # g * 1.0 is g: skip the multiply
                b += g
            else:
                np.multiply(g, 1 - dampening, out=t1)
                b += t1
        if nesterov:
            np.multiply(b, momentum, out=t1)
            np.add(g, t1, out=t1)
            t1 *= -lr
        else:
            np.multiply(b, -lr, out=t1)
        p += t1

    if momentum == 0:
        return _numpy_run(plain, params, grads, [])
    return _numpy_run(with_momentum, params, grads, [bufs])
