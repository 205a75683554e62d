"""The host-kernel executor: a NumPy or torch CPU step as compiled C loops over all leaves.

Optional: it needs a C compiler at run time (:mod:`agrad.optim.program.host_c`), and
where there is none, compilation fails, ``AGRAD_HOST_KERNELS=0`` is set or
:data:`enabled` is ``False``, :mod:`agrad.optim.fastpath` runs its other executors
exactly as without it.

**Plan** (:func:`build`, once per recorded program and kinds of its host scalars).
:func:`~agrad.optim.program.fusion.partition` splits the program into fused
elementwise blocks and eager nodes (reductions), the laneless per-step scalars (step
count, bias corrections: :func:`~agrad.optim.program.ir.pre_nodes`, computed by the
fast path before anything is written) being given values. Within one stage, blocks
whose C text is the same (the same work on parameters of any shape) form a *batch*:
one C function (:func:`~agrad.optim.program.c_codegen.host_batch_source`) that loops
over the batch's blocks, each a loop over its elements, reading each element's inputs
once and writing its outputs once. Adam on 1000 parameters is one call and one pass
over ``p, g, m, v``; LAMB is two batches with the norms (NumPy's or torch's own
reductions, so they are bitwise theirs) and a batch of 0-d trust-ratio arithmetic
between them. Every batch of a program is in one translation unit, compiled once
(disk cache).

**Buffers.** A block output that is the step's new value of a parameter or state
array is written straight into it when no later stage (nor another block of the same
stage) reads that array's old value; other outputs read later go to scratch arrays
made once per plan (per thread) and kept. A 0-d value (a norm, a trust ratio, a bias
correction, a 0-d parameter) is passed to the kernels by value; an input of another
shape that broadcasts to the block's (a ``keepdims`` reduction) is read from a
contiguous broadcast copy made at the step. Blocks with no C form (an operation
``c_codegen`` lacks) run node by node with the backend's functions, as the generic
path does. New values not written in place are copied in at the end.

**Per step** the pointer tables (one table of data pointers per batch, slot-major)
are rebuilt only when other array objects come (NumPy: by identity; torch: by data
pointers, which ``.data =`` can change); scalar values are packed into one
``double`` array per batch (shared by its blocks where they read the same scalars).
Scratch and tables are per thread: the kernels release the GIL, and one optimizer
may step different parameters in several threads at once.

**Numerics.** Each block's statements are the generic path's operations, in its
order and dtypes (float32 stays float32; hyperparameters as exact literals), built
without contraction or fast math: ``+ - * / sqrt`` and comparisons are bitwise the
generic path's (NumPy's and torch's CPU kernels round them the same way);
``exp``, ``log``, ``pow``, ``tanh`` come from the C library and agree to an ulp or two.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import sys
import threading
from operator import attrgetter, is_, itemgetter, methodcaller
from typing import Any

from agrad.optim._steady import all_equal
from agrad.optim.program import host_c
from agrad.optim.program.c_codegen import CBlock, CInput, UnsupportedOp, host_batch_source
from agrad.optim.program.cblock import c_block, scalar_dtype
from agrad.optim.program.fusion import (
    Block,
    Eager,
    dtype_name,
    final_destinations,
    input_nodes,
    partition,
    run_node,
)
from agrad.optim.program.ir import Program, pre_nodes

__all__ = [
    "HostPlan",
    "available",
    "build",
    "compile_plan",
    "enabled",
    "prefer_fused",
    "run",
    "runs",
]

#: Set to ``False`` (or the environment variable ``AGRAD_HOST_KERNELS=0``) to run
#: NumPy and torch steps on the executors that need no compiler.
enabled = os.environ.get("AGRAD_HOST_KERNELS", "1").strip() not in ("0", "false", "no", "off")
#: On torch, run a program torch has a fused kernel for (Adam, AdamW, SGD, Adagrad) with
#: that kernel rather than the host kernels (measured faster: docs/benchmarks.md).
prefer_fused = True
#: Steps this process ran on host kernels (what the tests check the route with).
runs = 0

_KINDS = ("float32", "float64", "bool")
_C_CONTIGUOUS = attrgetter("flags.c_contiguous")
_DATA_PTR = methodcaller("data_ptr")
_TORCH_CONTIGUOUS = methodcaller("is_contiguous")
#: Eager operations the plan accepts: each returns a new array (no view of a buffer
#: that a kernel later writes in place).
_EAGER = frozenset({"sum", "mean", "max", "min", "prod", "all", "any", "asarray"})
_ARGTYPES = [
    ctypes.c_longlong,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_longlong,
]


def available() -> bool:
    """Whether the route is switched on and a host C compiler is found."""
    return enabled and host_c.find_c_compiler() is not None


class _Batch:
    """Blocks of one stage with one C text: one call of function ``name`` per step."""

    __slots__ = (
        "blocks",
        "fn",
        "getters",
        "n",
        "name",
        "scalar_refs",
        "shared",
        "slot_locs",
        "static",
        "text",
    )

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self.blocks: list[Block] = []
        self.slot_locs: list[list[tuple]] = []  # per block: the location of each buffer
        self.scalar_refs: list[tuple] = []  # per block: refs of its scalar inputs
        self.fn: Any = None
        self.n: Any = None
        self.shared = True
        self.getters: list[tuple] | None = None
        self.static = True


class HostPlan:
    """The compiled form of one program (see the module): steps, buffers, kernels."""

    __slots__ = (
        "destinations",
        "final_copies",
        "lib",
        "library",
        "local",
        "program",
        "steps",
        "where",
    )

    def __init__(self, program: Program, lib: str):
        self.program = program
        self.lib = lib
        self.steps: list[tuple[str, Any]] = []  # ("eager", node) | ("py", block) | ("c", batch)
        self.final_copies: list[tuple[int, tuple[str, int]]] = []
        self.destinations = final_destinations(program)
        self.where: dict[
            int, tuple
        ] = {}  # node -> ("leaf", column, k) | ("scratch", i) | ("env", i)
        self.library: Any = None
        # per thread: scratch arrays (node -> array), pointer tables (batch -> entry), and
        # the (arrays, pointers) the static tables point at
        self.local = threading.local()


def build(program: Program, lib: str, scalars: list[Any]) -> HostPlan | None:
    """The plan of ``program`` for ``lib`` (``"numpy"`` or ``"torch"``) and the kinds of
    these host scalars, or ``None`` where the route does not apply (an eager operation
    outside :data:`_EAGER`, a dtype other than float32/float64/bool). Nothing is
    compiled here (see :func:`compile_plan`)."""
    nodes = program.nodes
    pre = frozenset(pre_nodes(program))
    for i, n in enumerate(nodes):
        if n.op == "input" or i in pre:
            continue
        if dtype_name(n.dtype) not in _KINDS:
            return None
    steps = partition(program, pre)
    for step in steps:
        if isinstance(step, Eager) and nodes[step.node].op not in _EAGER:
            return None
    stage_by_step = _stages_of(program, steps)
    # node -> (stage, step) of every step reading it; a final value is read at the end
    readers: dict[int, list[tuple[int, int]]] = {}
    for s, step in enumerate(steps):
        members = (step.node,) if isinstance(step, Eager) else step.nodes
        for i in members:
            for a in nodes[i].args:
                if a[0] == "n":
                    readers.setdefault(a[1], []).append((stage_by_step[s], s))
    plan = HostPlan(program, lib)
    for node in plan.destinations:
        readers.setdefault(node, []).append((1 << 30, -1))
    inputs = input_nodes(program)
    where = plan.where
    for (column, leaf), i in inputs.items():
        where[i] = ("leaf", column, leaf)
    for i in pre:
        where[i] = ("env", i)
    types = tuple(scalar_dtype(v) for v in scalars)
    batches: dict[tuple[int, str], _Batch] = {}
    for s, step in enumerate(steps):
        if isinstance(step, Eager):
            where[step.node] = ("env", step.node)
            plan.steps.append(("eager", step.node))
            continue
        got = _c_form(program, plan, step, types, inputs, readers, stage_by_step[s], s)
        if got is None:
            for i in step.nodes:
                where[i] = ("env", i)
            plan.steps.append(("py", step))
            continue
        text, locs, scalar_refs = got
        key = (stage_by_step[s], text)
        batch = batches.get(key)
        if batch is None:
            name = "agrad_k" + hashlib.sha256(text.encode()).hexdigest()[:16]
            batch = batches[key] = _Batch(name, text)
            plan.steps.append(("c", batch))
        batch.blocks.append(step)
        batch.slot_locs.append(locs)
        if batch.scalar_refs and batch.scalar_refs[0] != scalar_refs:
            batch.shared = False
        batch.scalar_refs.append(scalar_refs)
    for node, dests in plan.destinations.items():
        if node in pre:
            continue  # laneless new state (a step count): the fast path writes it
        for dest in dests:
            if where.get(node) != ("leaf", *dest):
                plan.final_copies.append((node, dest))
    return plan


def _stages_of(program: Program, steps: list) -> list[int]:
    """The stage of every step (an eager node's: one past the stages it reads)."""
    stage_of_node: dict[int, int] = {}
    out = []
    for step in steps:
        if isinstance(step, Block):
            for i in step.nodes:
                stage_of_node[i] = step.stage
            out.append(step.stage)
            continue
        s = 0
        for a in program.nodes[step.node].args:
            if a[0] == "n" and a[1] in stage_of_node:
                s = max(s, stage_of_node[a[1]] + 1)
        stage_of_node[step.node] = s
        out.append(s)
    return out


def _c_form(
    program: Program,
    plan: HostPlan,
    block: Block,
    types: tuple[str, ...],
    inputs: dict[tuple[str, int], int],
    readers: dict[int, list[tuple[int, int]]],
    stage: int,
    s: int,
) -> tuple[str, list[tuple], list[tuple]] | None:
    """``(text, buffer locations, scalar refs)`` of ``block``, or ``None`` (no C form:
    run with the backend's functions). Records where its outputs go in ``plan.where``."""
    nodes = program.nodes
    where = plan.where
    shape = block.shape
    block_types = tuple(types[r[1]] for r in block.inputs if r[0] == "s")
    cb = c_block(program, block, block_types)
    new_inputs = []
    scalar_refs = []
    array_refs = []
    for x, r in zip(cb.inputs, block.inputs):
        if r[0] == "s":
            new_inputs.append(x)
            scalar_refs.append(r)
            continue
        n = nodes[r[1]]
        if n.shape == () or shape == ():
            new_inputs.append(CInput(x.name, x.dtype, scalar=True))
            scalar_refs.append(r)
        elif x.dtype in _KINDS and _broadcasts(n.shape, shape):
            new_inputs.append(x)
            array_refs.append(r)
        else:
            return None
    cb = CBlock(new_inputs, cb.statements, cb.outputs)
    # an input of another shape (a keepdims reduction's result) is broadcast to
    # the block's shape, into a contiguous copy, at every step
    locs: list[tuple] = [
        where[r[1]] if nodes[r[1]].shape == shape else ("bcast", r[1], shape) for r in array_refs
    ]
    out_locs: list[tuple] = []
    for o in block.outputs:
        loc: tuple = ("scratch", o)
        for dest in plan.destinations.get(o, ()):
            src = inputs.get(dest)
            if src is None or dtype_name(nodes[o].dtype) != dtype_name(nodes[src].dtype):
                continue
            if ("leaf", *dest) in out_locs:
                continue
            if all(r_stage < stage or r_step == s for r_stage, r_step in readers.get(src, ())):
                loc = ("leaf", *dest)
                break
        out_locs.append(loc)
    slots_of: dict[tuple, int] = {}
    slots = []
    buffers: list[str] = []
    dtypes = [dtype_name(nodes[r[1]].dtype) for r in array_refs]
    dtypes += [dtype_name(nodes[o].dtype) for o in block.outputs]
    for loc, dtype in zip([*locs, *out_locs], dtypes):
        if loc not in slots_of:
            slots_of[loc] = len(buffers)
            buffers.append(dtype)
        slots.append(slots_of[loc])
    try:
        text = host_batch_source("KERNEL", cb, slots, buffers)
    except UnsupportedOp:
        return None
    for o, loc in zip(block.outputs, out_locs):
        where[o] = loc
    return text, sorted(slots_of, key=slots_of.__getitem__), scalar_refs


def _broadcasts(have: tuple, to: tuple) -> bool:
    """Whether an array of shape ``have`` broadcasts to shape ``to``."""
    if len(have) > len(to):
        return False
    return all(a in (b, 1) for a, b in zip(reversed(have), reversed(to)))


def compile_plan(plan: HostPlan) -> None:
    """Compile (or load from the disk cache) every batch's function of ``plan``; raises
    where the compiler is missing or fails."""
    if plan.library is not None:
        return
    parts = ["#include <math.h>\n#include <stdbool.h>\n"]
    seen = set()
    for kind, batch in plan.steps:
        if kind == "c" and batch.name not in seen:
            seen.add(batch.name)
            parts.append(batch.text.replace("KERNEL", batch.name))
    library = host_c.load_library("\n".join(parts))
    for kind, batch in plan.steps:
        if kind == "c":
            fn = getattr(library, batch.name)
            fn.argtypes = _ARGTYPES
            fn.restype = None
            batch.fn = fn
    plan.library = library


def run(
    plan: HostPlan,
    xp: Any,
    params: list[Any],
    grads: list[Any],
    state_leaves: list[Any],
    scalars: list[Any],
    pre: dict[int, Any],
    arrays: list[Any] | None = None,
    pointers: list[int] | None = None,
) -> bool:
    """One step of ``plan``, in place: every parameter and state array written; ``False``
    with nothing written where an array is not C-contiguous.

    The caller (:mod:`agrad.optim.fastpath`) checked before: one library and device,
    arrays of the recorded shapes and dtypes, no memory shared between a written
    array and any other, floating-point error handling that cannot raise.
    ``arrays`` (every array of the step) and ``pointers`` (torch: their data pointers,
    which the caller's checks computed) let a step with the same arrays as the last
    one reuse the pointer tables without looking at each array again.
    """
    global runs
    program = plan.program
    is_torch = plan.lib == "torch"
    np = sys.modules["numpy"]
    columns = {"param": params, "grad": grads, "state": state_leaves}
    env: dict[int, Any] = dict(pre)
    ctx = plan.local  # this thread's scratch and pointer tables (threads share the plan)
    if getattr(ctx, "scratch", None) is None:
        ctx.scratch, ctx.stamp, ctx.tables = _make_scratch(plan, xp), None, {}
    scratch, tables = ctx.scratch, ctx.tables
    where = plan.where

    def stored(loc: tuple) -> Any:
        kind = loc[0]
        if kind == "leaf":
            return columns[loc[1]][loc[2]]
        if kind == "scratch":
            return scratch[loc[1]]
        return env[loc[1]]

    def value(loc: tuple) -> Any:  # not recursive: no reference cycle keeps env alive
        if loc[0] != "bcast":
            return stored(loc)
        x = stored(where[loc[1]])
        if is_torch:
            return x.expand(loc[2]).contiguous()
        return np.ascontiguousarray(np.broadcast_to(x, loc[2]))

    batches = [item for kind, item in plan.steps if kind == "c"]
    stamp = ctx.stamp
    # torch: the arrays by id and address, never held (a step must not keep gradients
    # alive; an id reused at the same address is a tensor over the same memory)
    same = (
        arrays is not None
        and stamp is not None
        and len(stamp[0]) == len(arrays)
        and (all_equal(id, arrays, stamp[0]) if is_torch else all(map(is_, arrays, stamp[0])))
        and stamp[1] == pointers
    )
    if not same:
        ctx.stamp = None
        for batch in batches:  # before any write: the arrays' tables, their layout checked
            if batch.getters is None:
                _slot_getters(batch)
            if batch.static and not _table(
                tables, batch, _objects(batch, columns, scratch, value), is_torch, np, True
            ):
                return False
        if arrays is not None:
            ctx.stamp = (list(map(id, arrays)) if is_torch else list(arrays), pointers)
    for kind, item in plan.steps:
        if kind == "c":
            if not item.static:
                _table(tables, item, _objects(item, columns, scratch, value), is_torch, np, False)
            _call(item, tables[item][3], value, where, scalars, np)
            continue
        members = (item,) if kind == "eager" else item.nodes
        inside = set(members)
        args = {
            a[1]: value(where[a[1]])
            for i in members
            for a in program.nodes[i].args
            if a[0] == "n" and a[1] not in inside
        }
        for i in members:
            args[i] = env[i] = run_node(xp, program, i, args, scalars)
    for node, (column, leaf) in plan.final_copies:
        src = value(where[node])
        dst = columns[column][leaf]
        if src is dst:
            continue
        if is_torch:
            dst.copy_(src)
        else:
            dst[...] = src
    runs += 1
    return True


def _make_scratch(plan: HostPlan, xp: Any) -> dict[int, Any]:
    nodes = plan.program.nodes
    out: dict[int, Any] = {}
    for kind, batch in plan.steps:
        if kind == "c":
            for locs in batch.slot_locs:
                for loc in locs:
                    if loc[0] == "scratch" and loc[1] not in out:
                        n = nodes[loc[1]]
                        out[loc[1]] = xp.empty(n.shape, dtype=n.dtype)
    return out


def _slot_getters(batch: _Batch) -> None:
    """Per buffer position: how to fetch the objects of all the batch's blocks at once."""
    getters: list[tuple] = []
    static = True
    for k in range(len(batch.slot_locs[0])):
        locs = [locs[k] for locs in batch.slot_locs]
        kinds = {loc[0] for loc in locs}
        if kinds == {"leaf"} and len({loc[1] for loc in locs}) == 1:
            idx = [loc[2] for loc in locs]
            get = itemgetter(*idx) if len(idx) > 1 else (lambda xs, i=idx[0]: (xs[i],))
            getters.append(("leaf", locs[0][1], get))
        elif kinds == {"scratch"}:
            getters.append(("fixed", tuple(loc[1] for loc in locs)))
        else:
            getters.append(("any", tuple(locs)))
            static = static and not kinds & {"env", "bcast"}
    batch.getters = getters
    batch.static = static


def _objects(batch: _Batch, columns: dict, scratch: dict, value: Any) -> list[Any]:
    """The buffers of every block of ``batch``, slot-major (``ptrs[k * nb + b]``)."""
    objs: list[Any] = []
    for g in batch.getters:
        if g[0] == "leaf":
            objs += g[2](columns[g[1]])
        elif g[0] == "fixed":
            objs += [scratch[i] for i in g[1]]
        else:
            objs += map(value, g[1])
    return objs


def _table(
    tables: dict, batch: _Batch, objs: list[Any], is_torch: bool, np: Any, strict: bool
) -> bool:
    """Point ``batch`` at ``objs`` in ``tables`` (``[table, key, kept objects, address]``,
    rebuilt only when they changed). ``strict``: a buffer that is not C-contiguous
    declines (``False``) instead of being copied (it is a parameter or state array:
    copying would not write it)."""
    entry = tables.get(batch)
    if entry is None:
        entry = tables[batch] = [None, None, None, 0]
    if is_torch:
        key = list(map(_DATA_PTR, objs))
        if key == entry[1]:
            return True
        if not all(map(_TORCH_CONTIGUOUS, objs)):
            if strict:
                return False
            objs = [t.contiguous() for t in objs]  # an eager result, only read
            key = list(map(_DATA_PTR, objs))
        elif strict:
            objs = None  # the step's own leaves, keyed by address: never held (gradients)
        addresses = key
    else:
        old = entry[1]
        if old is not None and len(old) == len(objs) and all(map(is_, objs, old)):
            return True
        if not all(map(_C_CONTIGUOUS, objs)):
            if strict:
                return False
            objs = [np.ascontiguousarray(x) for x in objs]
        key = objs
        addresses = [x.ctypes.data for x in objs]
    table = np.array(addresses, dtype=np.uint64)
    entry[:] = [table, key, objs, table.ctypes.data]
    return True


def _call(batch: _Batch, ptrs: int, value: Any, where: dict, scalars: list, np: Any) -> None:
    """One C call running every block of ``batch`` (its pointer table is current)."""
    if batch.n is None:
        sizes = [math.prod(b.shape) for b in batch.blocks]
        batch.n = (ctypes.c_longlong * len(sizes))(*sizes)
    refs = batch.scalar_refs[:1] if batch.shared else batch.scalar_refs
    vals = [scalars[r[1]] if r[0] == "s" else float(value(where[r[1]])) for rs in refs for r in rs]
    sv = (ctypes.c_double * max(len(vals), 1))(*vals)
    ss = 0 if batch.shared else len(batch.scalar_refs[0])
    batch.fn(len(batch.blocks), batch.n, ptrs, sv, ss)
