"""Native fast paths for in-place optimizer steps (torch and NumPy).

The namespace-generic update rules in :mod:`agrad.optim.torch_family` are the
reference. This module takes over :meth:`GradientTransformation.step` with
``inplace=True`` when, and only when, it can produce the same result (to rounding)
in fewer, cheaper operations:

- **torch**: the ``torch._fused_adam_`` / ``torch._fused_adamw_`` /
  ``torch._fused_sgd_`` kernels (one pass over memory per step, the same kernels as
  ``torch.optim.Adam(fused=True)``), with ``torch._foreach_*`` where no fused kernel
  exists for the device or dtype.
- **NumPy**: in-place ufuncs with ``out=`` on cache-sized chunks (about seven
  streams through memory instead of some thirty with temporaries), and small arrays
  gathered into one flat scratch buffer so many tiny parameters cost a few
  whole-buffer operations instead of a dozen Python-level calls each.

Everything is checked before anything is written; whatever the fast path does not
recognise (mixed libraries or devices, float16 on NumPy, read-only, traced or
agrad-variable leaves, a write the adapter refuses, array-valued learning rates,
AMSGrad or ``maximize`` on NumPy, ...) returns ``None`` and the caller runs the
generic path, which raises the proper error messages. Set :data:`enabled` to
``False`` to force the generic path. The public entry
points are :func:`try_step` (what ``step`` calls) and the two kernels
:func:`adam_step_inplace` and :func:`sgd_step_inplace`, usable on their own.
"""

from __future__ import annotations

import math
import sys
import threading
from itertools import pairwise
from operator import attrgetter
from typing import Any

from agrad.optim.numerics import is_scalar, resolve
from agrad.pytree import flatten_leaves

__all__ = ["adam_step_inplace", "sgd_step_inplace", "try_step", "enabled"]

#: Set to ``False`` to force the generic path everywhere (used by tests and the bench).
enabled = True

# Arrays up to this many elements are gathered into one scratch buffer (NumPy).
SMALL = 8192
# Elements per chunk of the NumPy kernels (a 256x256 float32 matrix is one chunk).
CHUNK = 65536

# Per thread: dtype -> the two CHUNK-sized scratch buffers of the NumPy kernels, kept
# between steps (fresh 256 KiB buffers every step cost page faults: ~8% of an SGD step).
_scratch_local = threading.local()


def _scratch(dtype: Any) -> tuple[Any, Any]:
    import numpy as np

    cache = getattr(_scratch_local, "buffers", None)
    if cache is None:
        cache = _scratch_local.buffers = {}
    bufs = cache.get(dtype)
    if bufs is None:
        bufs = cache[dtype] = (np.empty(CHUNK, dtype), np.empty(CHUNK, dtype))
    return bufs


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


def _numpy_ok(xs: list[Any], dtype: Any, writable: bool) -> bool:
    if len(set(map(type, xs))) != 1 or set(map(_DTYPE, xs)) != {dtype}:
        return False
    return not writable or all(map(_WRITEABLE, xs))


def _torch_ok(xs: list[Any], dtype: Any, writable: bool) -> bool:
    t, device = type(xs[0]), xs[0].device
    if not all(type(x) is t and x.dtype == dtype and x.device == device for x in xs):
        return False
    return not writable or not any(x.requires_grad and not x.is_leaf for x in xs)


def _float_dtype(lib: str, dtype: Any) -> bool:
    if lib == "numpy":
        return dtype.kind == "f" and dtype.itemsize >= 4
    return bool(dtype.is_floating_point)


def _gather(params: Any, grads: Any, buffers: list[Any]) -> tuple[str, list[list[Any]]] | None:
    """``(library, [params, grads, *buffers])`` as lists of raw arrays, or ``None``.

    Accepts only arrays of one library, equal shapes across the lists, one dtype (and
    device) per parameter across the lists, writable parameters and buffers, and no
    parameter given twice.
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
    shapes = list(map(_SHAPE, p))
    if any(list(map(_SHAPE, xs)) != shapes for xs in lists[1:]):
        return None
    dtypes = set(map(_DTYPE, p))
    if not all(_float_dtype(lib, d) for d in dtypes):
        return None
    ok = _numpy_ok if lib == "numpy" else _torch_ok
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if not all(ok(xs, dtype, writable=j != 1) for j, xs in enumerate(lists)):
            return None
    else:
        for i, x in enumerate(p):
            if not all(ok([xs[i]], x.dtype, writable=j != 1) for j, xs in enumerate(lists)):
                return None
    written = [x for j, xs in enumerate(lists) if j != 1 for x in xs]
    if len(set(map(id, written))) != len(written):
        return None
    return lib, lists


def _float(x: Any) -> float | None:
    return float(x) if is_scalar(x) else None


def try_step(opt: Any, params: Any, grads: Any, state: Any) -> tuple[Any, Any] | None:
    """Run ``opt.step(params, grads, state)`` in place on a fast path, or return ``None``.

    Handles ``adam``/``adamw`` (torch: every variant; NumPy: without AMSGrad and
    ``maximize``) and ``sgd`` (torch: every variant; NumPy: without weight decay and
    ``maximize``) on flat or nested pytrees of NumPy arrays or torch tensors of one
    library. The returned state has ``count + 1`` and the same, updated, arrays.
    """
    if not enabled:
        return None
    name = opt.name
    hp = opt.hyperparams
    count = getattr(state, "count", None)
    if not isinstance(count, int) or isinstance(count, bool):
        return None
    lr = _float(resolve(hp.get("lr"), count))
    if lr is None:
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
        return (params, state._replace(count=t)) if done else None
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
        return (params, state._replace(count=t)) if done else None
    return None


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
    are lists of arrays of one library (``"numpy"`` or ``"torch"``) with equal shapes,
    already checked by the caller. Returns ``False``, touching nothing, for a
    combination this library's kernel does not cover.
    """
    if library == "torch":
        return _torch_adam(
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, step, lr, beta1, beta2, eps,
            weight_decay, decoupled, maximize,
        )  # fmt: skip
    if library == "numpy":
        if max_exp_avg_sqs is not None or maximize or (weight_decay != 0 and not decoupled):
            return False
        _numpy_adam(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay)
        return True
    return False


def _torch_adam(params, grads, ms, vs, vmax, step, lr, b1, b2, eps, wd, decoupled, maximize):
    import torch

    groups = _torch_groups(params)
    with torch.no_grad():
        for idx, fused in groups:
            p = [params[i] for i in idx]
            g = [grads[i] for i in idx]
            m = [ms[i] for i in idx]
            v = [vs[i] for i in idx]
            mx = [vmax[i] for i in idx] if vmax is not None else []
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


def _torch_groups(params: list[Any]) -> list[tuple[list[int], bool]]:
    """Indices grouped by (device, dtype), each with whether a fused kernel applies."""
    import torch

    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(params):
        groups.setdefault((x.device, x.dtype), []).append(i)
    fused_dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    return [
        (idx, dtype in fused_dtypes and device.type in ("cpu", "cuda", "mps", "xpu"))
        for (device, dtype), idx in groups.items()
    ]


def _numpy_adam(params, grads, ms, vs, step, lr, b1, b2, eps, wd):
    """Chunked, in-place NumPy Adam in exactly the generic path's order of operations."""
    import numpy as np

    bc2_sqrt = (1 - b2**step) ** 0.5
    neg_step_size = -(lr / (1 - b1**step))
    decay = 1 - lr * wd

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

    _numpy_run(kernel, params, grads, [ms, vs])


def _numpy_run(kernel, params: list[Any], grads: list[Any], bufs: list[list[Any]]) -> None:
    """Apply ``kernel(p, g, *bufs, t1, t2)`` to every parameter, on chunks or gathered."""
    import numpy as np

    by_dtype: dict[Any, list[int]] = {}
    for i, x in enumerate(params):
        by_dtype.setdefault(x.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        sizes = [params[i].size for i in idx]
        small = [i for i, n in zip(idx, sizes) if n <= SMALL]
        large = [i for i, n in zip(idx, sizes) if n > SMALL]
        t1, t2 = _scratch(dtype)
        if len(small) > 1:
            _numpy_gathered(kernel, small, params, grads, bufs, dtype, t1, t2)
        else:
            large = idx
        scratch_views: dict[tuple[int, ...], tuple[Any, Any]] = {}  # by shape
        columns = [[col[i] for i in large] for col in (params, grads, *bufs)]
        for arrays in zip(*columns):
            n = arrays[0].size
            if n <= CHUNK:
                shape = arrays[0].shape
                views = scratch_views.get(shape)
                if views is None:
                    views = scratch_views[shape] = (t1[:n].reshape(shape), t2[:n].reshape(shape))
                kernel(*arrays, *views)
            elif all(a.flags.c_contiguous for a in arrays):
                _chunked(kernel, [a.reshape(-1) for a in arrays], t1, t2)
            else:
                kernel(*arrays, np.empty_like(arrays[0]), np.empty_like(arrays[0]))


def _chunked(kernel, flats: list[Any], t1: Any, t2: Any) -> None:
    n = flats[0].size
    for s in range(0, n, CHUNK):
        e = min(s + CHUNK, n)
        kernel(*(a[s:e] for a in flats), t1[: e - s], t2[: e - s])


def _numpy_gathered(kernel, idx, params, grads, bufs, dtype, t1, t2) -> None:
    """Gather small arrays into flat buffers, run the kernel once, copy the results back."""
    import numpy as np

    offsets = [0]
    for i in idx:
        offsets.append(offsets[-1] + params[i].size)
    total = offsets[-1]
    cols = [params, grads, *bufs]
    flats = []
    for col in cols:
        flat = np.empty(total, dtype)
        np.concatenate([col[i] for i in idx], axis=None, out=flat)
        flats.append(flat)
    _chunked(kernel, flats, t1, t2)
    pairs = list(pairwise(offsets))
    vectors = all(params[i].ndim == 1 for i in idx)
    for j, (col, flat) in enumerate(zip(cols, flats)):
        if j == 1:
            continue
        for i, (a, b) in zip(idx, pairs):
            dst = col[i]
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
    this library's kernel does not cover.
    """
    if library == "torch":
        import torch

        with torch.no_grad():
            for idx, fused in _torch_groups(params):
                p = [params[i] for i in idx]
                g = [grads[i] for i in idx]
                b = [momentum_buffers[i] for i in idx] if momentum_buffers is not None else []
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
        _numpy_sgd(params, grads, momentum_buffers, first_step, lr, momentum, dampening, nesterov)
        return True
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


def _numpy_sgd(params, grads, bufs, first, lr, momentum, dampening, nesterov):
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
        _numpy_run(plain, params, grads, [])
    else:
        _numpy_run(with_momentum, params, grads, [bufs])
