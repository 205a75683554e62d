"""The fast route of ``step`` for CuPy and Dask arrays: a recorded program on their executors.

:func:`try_step` is what :func:`agrad.optim.fastpath.try_step` hands a call whose
leaves are CuPy or Dask arrays. It knows no optimizer by name: the step is recorded
once as a :class:`~agrad.optim.program.ir.Program` (per optimizer, tree structure,
shapes, dtypes and kinds of the state's numbers, cached on the optimizer beside the
NumPy and torch programs; one variant per outcome of the program's guards), then run:

- **CuPy** (:class:`~agrad.optim.program.cupy_exec.CupyExecutor`): one generated
  ``ElementwiseKernel`` per fused block, in place. Every kernel is compiled (a warm-up
  launch on one element) before the first write, so a kernel that does not compile
  declines with nothing written.
- **Dask** (:class:`~agrad.optim.program.dask_exec.DaskExecutor`): one task per chunk
  per block. As on the generic path (whose in-place write is Dask's
  ``dst[...] = new``), the parameter and state arrays given are rebound to the new
  graphs and returned; nothing is computed until the caller persists or computes,
  except where every input is persisted and Dask's default threaded scheduler applies:
  then the tasks run when ``step`` is called and the arrays are rebound to the chunks
  made (already persisted).

Parameters may be :class:`agrad.Variable` s holding such arrays (the demo trains
that way): their value arrays are written, as the generic path writes them.

Declined (``None``, nothing written; the generic path then runs and raises its own
messages): leaves of mixed types or of other libraries; gradients whose shapes or
dtypes differ from the parameters'; dtypes other than float32 and float64; inputs the
generic path's checks refuse (checked once per cache key); a rule that cannot be
recorded; a schedule whose value fails; one array object written twice (two
state leaves that are the same array); on CuPy, written arrays that are not
C-contiguous or share memory with each other or with a gradient (in-place kernels
would read what they write), or that sit on different devices.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from agrad.autograd.variable import Variable
from agrad.optim._cache import LRUCache
from agrad.optim.program import variants
from agrad.optim.program.cupy_exec import CupyExecutor
from agrad.optim.program.dask_exec import DaskExecutor
from agrad.optim.program.ir import Program
from agrad.optim.program.recorder import NotRecordable, record
from agrad.pytree import flatten_leaves, unflatten

__all__ = ["dask_enabled", "enabled", "executor_for", "library", "routed", "try_step"]

#: Set to ``False`` to send CuPy and Dask steps down the generic path.
enabled = True
#: Set to ``False`` to send Dask steps (only) down the generic path.
dask_enabled = True

_FLOATS = ("float32", "float64")
_executors: dict[str, Any] = {}


def library(x: Any) -> str | None:
    """``"cupy"`` for a ``cupy.ndarray``, ``"dask"`` for a ``dask.array.Array`` (or an
    :class:`agrad.Variable` holding one), else None."""
    if type(x) is Variable:
        x = x.value
    t = type(x)
    cp = sys.modules.get("cupy")
    if cp is not None and t is cp.ndarray:
        return "cupy"
    da = sys.modules.get("dask.array")
    if da is not None and t is da.Array:
        return "dask"
    return None


def routed(tree: Any) -> bool:
    """Whether ``tree``'s first leaf is a CuPy or Dask array (cheap: no flattening)."""
    for _ in range(8):
        if type(tree) is dict:
            if not tree:
                return False
            tree = next(iter(tree.values()))
        elif isinstance(tree, list | tuple):
            if not tree:
                return False
            tree = tree[0]
        else:
            break
    return library(tree) is not None


def executor_for(lib: str) -> Any:
    """The process's executor for ``lib`` (``"cupy"`` or ``"dask"``), made on first use."""
    ex = _executors.get(lib)
    if ex is None:
        ex = _executors[lib] = CupyExecutor() if lib == "cupy" else DaskExecutor()
    return ex


def _namespace(lib: str) -> Any:
    if lib == "cupy":
        import array_api_compat.cupy as xp
    else:
        import array_api_compat.dask.array as xp
    return xp


_DTYPE_NAMES: dict[Any, str] = {}


def _dtype_name(x: Any) -> str:
    import numpy as np

    dtype = x.dtype
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        pass
    except TypeError:  # not hashable
        return np.dtype(dtype).name
    name = np.dtype(dtype).name
    if len(_DTYPE_NAMES) < 256:
        _DTYPE_NAMES[dtype] = name
    return name


def _state_key(leaves: list[Any], cls: type) -> tuple | None:
    out: list[Any] = []
    for x in leaves:
        t = type(x)
        if t is int:
            if x < 0:
                return None
            out.append(int)
        elif t is float:
            if not math.isfinite(x):
                return None
            out.append(float)
        elif t is cls:
            out.append((tuple(x.shape), _dtype_name(x)))
        elif x is None or t in (str, bool):
            out.append((t, x))
        else:
            return None
    return tuple(out)


def _cache(opt: Any) -> Any:
    """The optimizer's program cache (a fresh one, not kept, for objects without one)."""
    cache = getattr(opt, "_programs", None)
    return LRUCache(variants.MAX_VARIANTS) if cache is None else cache


def _key(opt: Any, params: Any, grads: Any, state: Any) -> tuple | None:
    p, treedef = flatten_leaves(params)
    g, g_def = flatten_leaves(grads)
    if not p or g_def != treedef:
        return None
    boxed = [type(x) is Variable for x in p]
    if any(boxed):
        if not all(boxed):
            return None
        p = [x.value for x in p]  # written through the Variable: its value array, in place
    lib = library(p[0])
    if lib is None:
        return None
    cls = type(p[0])
    if any(type(x) is not cls for x in (*p, *g)):
        return None
    shapes = tuple(tuple(x.shape) for x in p)
    dtypes = tuple(_dtype_name(x) for x in p)
    if tuple(tuple(x.shape) for x in g) != shapes or tuple(_dtype_name(x) for x in g) != dtypes:
        return None
    if not set(dtypes) <= set(_FLOATS) or any(d is None or d != d for s in shapes for d in s):
        return None
    s_leaves, s_def = flatten_leaves(state)
    s_key = _state_key(s_leaves, cls)
    if s_key is None:
        return None
    devices = None
    if lib == "cupy":
        devices = tuple({str(x.device) for x in p} | {str(x.device) for x in g})
        if len(devices) != 1:
            return None
    key = ("kernel-route", lib, treedef, shapes, dtypes, s_def, s_key, devices)
    return lib, p, g, treedef, s_leaves, s_def, key


def _address(x: Any) -> int:
    data = getattr(x, "data", None)
    ptr = getattr(data, "ptr", None)
    if ptr is not None:
        return int(ptr)
    return int(x.__array_interface__["data"][0])  # the host stand-in of the tests


def _cupy_memory_ok(written: list[Any], grads: list[Any]) -> bool:
    """Written arrays C-contiguous and disjoint from each other and from the gradients."""
    spans = []
    for k, x in enumerate(written + grads):
        if k < len(written) and not x.flags.c_contiguous:
            return False
        start = _address(x)
        spans.append((start, start + max(int(x.nbytes), 1), k < len(written)))
    spans.sort()
    reach, reach_written = -1, False
    for start, end, is_written in spans:
        if start < reach and (is_written or reach_written):
            return False
        if end > reach:
            reach, reach_written = end, is_written
        elif is_written:
            reach_written = True
    return True


def _record(opt: Any, lib: str, params: Any, p: list, g: list, state: Any) -> Program | None:
    try:
        return record(opt, _namespace(lib), p, g, flatten_leaves(params)[1], state)
    except NotRecordable:
        return None


def try_step(opt: Any, params: Any, grads: Any, state: Any) -> tuple[Any, Any] | None:
    """``opt.step(params, grads, state)`` on the CuPy or Dask executor, or ``None``.

    The new values are written into ``params`` and the state's arrays (CuPy: by the
    kernels; Dask: the arrays are rebound to the new graphs, or to the chunks made where
    the step ran when called), which are returned
    with the state's new numbers. ``None``: nothing was written (see the module for
    what declines).
    """
    if not enabled or not routed(params):
        return None
    got = _key(opt, params, grads, state)
    if got is None:
        return None
    lib, p, g, _, s_leaves, s_def, key = got
    if lib == "dask" and not dask_enabled:
        return None
    cache = _cache(opt)
    numbers = [x if type(x) in (int, float) else None for x in s_leaves]
    got = variants.choose(
        cache,
        key,
        numbers,
        lambda program: program,
        lambda: _record(opt, lib, params, p, g, state),
        lambda: variants.generic_checks_pass(opt, params, grads, state),
    )
    if got is None:
        return None
    program, scalars = got
    ex = executor_for(lib)
    written = [*p, *(x for x in s_leaves if type(x) is type(p[0]))]
    if lib == "cupy":
        if not _cupy_memory_ok(written, g) or not ex.prepare(program, scalars):
            return None
    elif len({id(x) for x in written}) != len(written):
        return None  # one array in two places: the generic path names them
    ex.run(program, p, g, s_leaves, scalars)  # CuPy: written in place; Dask: rebound
    new_s = list(s_leaves)
    for j, ref in enumerate(program.new_state):
        if ref is not None and ref[0] != "n":
            new_s[j] = scalars[ref[1]] if ref[0] == "s" else ref[1]
    return params, unflatten(s_def, new_s)
