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
over ``p, g, m, v``. Every batch of a program is in one translation unit, compiled
once (disk cache).

**Reductions in the loops.** A sum or mean of a block's value (a norm's ``sum(x*x)``,
adafactor's row and column means of ``g*g``) over all its elements, its last axis or
its second-to-last axis is computed by the block's C loop as it produces the value
(:func:`~agrad.optim.program.c_codegen.host_rows_source`): no temporary, no second
pass. LARS and LAMB are then two batches and a batch of 0-d trust-ratio arithmetic
between them, with no NumPy or torch call. Sums over one row (a block's elements,
or each row) add in NumPy's pairwise order and column sums in NumPy's row order:
bitwise NumPy's; a sum over all elements of a block that walks rows (one reading a
broadcast factored moment) adds its rows' sums in ``double``: NumPy's to rounding.
On torch every fused sum agrees with torch's own to rounding (torch sums in another
order). Other reductions (over other axes, of inputs, ``max``...) run eagerly with
the backend's functions between batches; ``expand_dims`` is a view of its operand's
buffer, no step.

**Buffers.** A block output that is the step's new value of a parameter or state
array is written straight into it when no later stage (nor another block of the same
stage) reads that array's old value; other outputs read later go to scratch arrays
made once per plan (per thread) and kept. A 0-d value (a norm, a trust ratio, a bias
correction, a 0-d parameter) is passed to the kernels by value; an input of another
shape that broadcasts to the block's (a ``keepdims`` reduction, a factored moment) is
read in place through a table of row offsets made once per plan. Blocks with no C
form (an operation ``c_codegen`` lacks) run node by node with the backend's
functions, as the generic path does. New values not written in place are copied in
at the end.

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
import operator
import os
import sys
import threading
from operator import attrgetter, is_, itemgetter, methodcaller
from typing import Any

from agrad.optim._steady import all_equal
from agrad.optim.program import host_c
from agrad.optim.program.c_codegen import (
    CBlock,
    CInput,
    CReduction,
    UnsupportedOp,
    host_batch_source,
)
from agrad.optim.program.cblock import c_block, scalar_dtype
from agrad.optim.program.fusion import (
    Block,
    Eager,
    dtype_name,
    final_destinations,
    input_nodes,
    partition,
    run_node,
    sources_first,
)
from agrad.optim.program.ir import Program, pre_nodes

__all__ = [
    "HostPlan",
    "available",
    "block_kernel",
    "build",
    "compile_plan",
    "enabled",
    "fused_reductions",
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
#: Sums and means this process computed inside the host kernels' loops (a LARS step on
#: two parameters adds four: two norms each).
fused_reductions = 0

_KINDS = ("float32", "float64", "bool")
_C_CONTIGUOUS = attrgetter("flags.c_contiguous")
_DATA_PTR = methodcaller("data_ptr")
_TORCH_CONTIGUOUS = methodcaller("is_contiguous")
#: Eager operations the plan accepts: each returns a new array (no view of a buffer
#: that a kernel later writes in place).
_EAGER = frozenset({"sum", "mean", "max", "min", "prod", "all", "any", "asarray"})
#: Eager operations that are views of their operand's contiguous memory: no step, the
#: operand's buffer read with the node's shape.
_VIEWS = frozenset({"expand_dims"})
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
        "mode",
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
        self.mode = "plain"


class HostPlan:
    """The compiled form of one program (see the module): steps, buffers, kernels."""

    __slots__ = (
        "destinations",
        "final_copies",
        "lib",
        "library",
        "local",
        "n_reductions",
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
        self.n_reductions = 0  # sums and means computed in the kernels' loops
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
        if isinstance(step, Eager) and nodes[step.node].op not in _EAGER | _VIEWS:
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
    for i in reversed(range(len(nodes))):  # reading a view reads its operand's buffer
        if nodes[i].op in _VIEWS and nodes[i].args[0][0] == "n":
            readers.setdefault(nodes[i].args[0][1], []).extend(readers.get(i, ()))
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
    absorbed = _absorbed_reductions(program, steps)
    taken = {e for reds in absorbed.values() for e, _ in reds}
    for s, step in enumerate(steps):
        if isinstance(step, Eager):
            if step.node in taken:
                continue  # computed by the block producing its operand
            if nodes[step.node].op in _VIEWS:
                src = where[nodes[step.node].args[0][1]]
                where[step.node] = ("view", src, nodes[step.node].shape)
                continue
            where[step.node] = ("env", step.node)
            plan.steps.append(("eager", step.node))
            continue
        reds = absorbed.get(s, [])
        fused = _with_reductions(program, step, reds, taken)
        got = _c_form(program, plan, fused, types, inputs, readers, stage_by_step[s], s, reds)
        if got is None:
            for i in step.nodes:
                where[i] = ("env", i)
            plan.steps.append(("py", step))
            for e, _ in reds:  # run as they would have without the fusion
                where[e] = ("env", e)
                plan.steps.append(("eager", e))
            continue
        step = fused
        plan.n_reductions += len(reds)
        text, locs, scalar_refs = got
        key = (stage_by_step[s], text)
        batch = batches.get(key)
        if batch is None:
            name = "agrad_k" + hashlib.sha256(text.encode()).hexdigest()[:16]
            batch = batches[key] = _Batch(name, text)
            batch.mode = _mode(locs, reds)
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


def _reduction_kind(program: Program, e: int) -> str | None:
    """``"all"``, ``"rows"`` or ``"cols"``: what sum or mean node ``e`` reduces (its
    operand's elements, last axis, second-to-last axis), or ``None`` (another axis)."""
    n = program.nodes[e]
    shape = program.nodes[n.args[0][1]].shape
    axis = n.attr("axis")
    axes = range(len(shape)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    try:
        axes = {operator.index(a) % len(shape) for a in axes}
    except (TypeError, ZeroDivisionError):
        return None
    if {a for a in range(len(shape)) if shape[a] != 1} <= axes:
        return "all"  # (axes of length 1 aside: the block's elements, in memory order)
    if axes == {len(shape) - 1}:
        return "rows"
    if axes == {len(shape) - 2} and shape[-1] != 1:
        return "cols"  # (NumPy sums a column of width 1 pairwise: left to NumPy)
    return None


def _absorbed_reductions(program: Program, steps: list) -> dict[int, list[tuple[int, str]]]:
    """Step index of a block -> the sums and means of its values that its C loop
    computes (``(node, kind)``): float reductions of an array the block computes, of
    its shape, over all its elements, its last or its second-to-last axis."""
    nodes = program.nodes
    block_of = {i: s for s, step in enumerate(steps) if isinstance(step, Block) for i in step.nodes}
    out: dict[int, list[tuple[int, str]]] = {}
    for step in steps:
        if not isinstance(step, Eager):
            continue
        n = nodes[step.node]
        if n.op not in ("sum", "mean") or n.args[0][0] != "n":
            continue
        src = n.args[0][1]
        s = block_of.get(src)
        if s is None or nodes[src].shape != steps[s].shape or not steps[s].shape:
            continue
        if dtype_name(n.dtype) not in ("float32", "float64") or n.dtype != nodes[src].dtype:
            continue
        kind = _reduction_kind(program, step.node)
        if kind is not None:
            out.setdefault(s, []).append((step.node, kind))
    return out


def _with_reductions(program: Program, block: Block, reds: list, taken: set[int]) -> Block:
    """``block`` without the outputs only the reductions it absorbs read."""
    if not reds:
        return block
    final = final_destinations(program)
    inside = set(block.nodes)
    read_outside: set[int] = set()
    for i, n in enumerate(program.nodes):
        if i in inside or i in taken:
            continue
        read_outside.update(a[1] for a in n.args if a[0] == "n")
    outputs = tuple(o for o in block.outputs if o in final or o in read_outside)
    return block._replace(outputs=outputs)


def _mode(locs: list[tuple], reds: list) -> str:
    """How a batch's C function walks its blocks: ``"plain"`` (one loop), ``"flat"``
    (one row: sums over all elements only) or ``"rows"`` (row by row)."""
    if any(loc[0] == "off" for loc in locs) or any(kind != "all" for _, kind in reds):
        return "rows"
    return "flat" if reds else "plain"


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
    reds: list[tuple[int, str]] = (),  # type: ignore[assignment]
) -> tuple[str, list[tuple], list[tuple]] | None:
    """``(text, buffer locations, scalar refs)`` of ``block``, or ``None`` (no C form:
    run with the backend's functions). Records where its outputs go in ``plan.where``.

    ``reds``: the sums and means of its values it computes in its loop (see
    :func:`_absorbed_reductions`), written to scratch arrays of their nodes. An input of
    another shape that broadcasts to the block's (a ``keepdims`` reduction, a factored
    moment) is read in place through a table of row offsets."""
    nodes = program.nodes
    where = plan.where
    shape = block.shape
    block_types = tuple(types[r[1]] for r in block.inputs if r[0] == "s")
    cb = c_block(program, block, block_types)
    new_inputs = []
    scalar_refs = []
    array_refs = []
    off_locs = []
    for x, r in zip(cb.inputs, block.inputs):
        if r[0] == "s":
            new_inputs.append(x)
            scalar_refs.append(r)
            continue
        n = nodes[r[1]]
        if n.shape == () or shape == ():
            new_inputs.append(CInput(x.name, x.dtype, scalar=True))
            scalar_refs.append(r)
        elif x.dtype in _KINDS and n.shape == shape:
            new_inputs.append(x)
            array_refs.append(r)
        elif x.dtype in _KINDS and _broadcasts(n.shape, shape):
            kind = "elem" if n.shape[-1] == shape[-1] else "row"
            new_inputs.append(CInput(x.name, x.dtype, bcast=kind))
            array_refs.append(r)
            off_locs.append(("off", n.shape, shape))
        else:
            return None
    names = {("n", i): f"t{k}" for k, i in enumerate(block.nodes)}
    c_reds = [
        CReduction(f"r{k}", names[nodes[e].args[0]], kind, mean=nodes[e].op == "mean")
        for k, (e, kind) in enumerate(reds)
    ]
    cb = CBlock(new_inputs, cb.statements, cb.outputs, c_reds)
    locs: list[tuple] = [where[r[1]] for r in array_refs]
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
    red_locs = [("scratch", e) for e, _ in reds]
    slots_of: dict[tuple, int] = {}
    slots = []
    buffers: list[str] = []
    dtypes = [dtype_name(nodes[r[1]].dtype) for r in array_refs]
    dtypes += [dtype_name(nodes[o].dtype) for o in block.outputs]
    dtypes += [dtype_name(nodes[e].dtype) for e, _ in reds]
    dtypes += ["int64"] * len(off_locs)
    for loc, dtype in zip([*locs, *out_locs, *red_locs, *off_locs], dtypes):
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
    for e, _ in reds:
        where[e] = ("scratch", e)
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
    global runs, fused_reductions
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
        if kind == "off":
            return scratch[loc]
        return env[loc[1]]

    def value(loc: tuple) -> Any:  # not recursive: no reference cycle keeps env alive
        if loc[0] != "view":
            return stored(loc)
        src = loc[1]
        while src[0] == "view":
            src = src[1]
        return stored(src).reshape(loc[2])

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
    copies = [
        (value(where[node]), columns[column][leaf]) for node, (column, leaf) in plan.final_copies
    ]
    if len(copies) > 1:  # a leaf's old value copied to another leaf, before it is written
        copies = sources_first(copies, methodcaller("clone" if is_torch else "copy"))
    for src, dst in copies:
        if src is dst:
            continue
        if is_torch:
            dst.copy_(src)
        else:
            dst[...] = src
    runs += 1
    fused_reductions += plan.n_reductions
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
                    elif loc[0] == "off" and loc not in out:
                        out[loc] = xp.asarray(_row_offsets(*loc[1:]))
    return out


def _row_offsets(have: tuple, to: tuple) -> Any:
    """Per row of shape ``to`` (all axes but the last), the offset of its first element
    in a C-contiguous array of shape ``have`` broadcast to ``to`` (int64)."""
    np = sys.modules.get("numpy") or __import__("numpy")
    if to[-1] == 0:  # empty rows: never read
        return np.zeros(math.prod(to[:-1]), dtype=np.int64)
    index = np.arange(math.prod(have), dtype=np.int64).reshape(have)
    return np.array(np.broadcast_to(index, to)[..., 0], dtype=np.int64).reshape(-1)


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
            static = static and not {_root(loc)[0] for loc in locs} & {"env"}
    batch.getters = getters
    batch.static = static


def _root(loc: tuple) -> tuple:
    """The buffer a location reads: itself, or the operand's of a view."""
    while loc[0] == "view":
        loc = loc[1]
    return loc


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


def _sizes(shape: tuple, mode: str) -> tuple[int, ...]:
    """What a batch's C function is told of a block of ``shape``: its size (``"plain"``),
    or ``(N, R, L, m, ncol)`` (see :func:`~agrad.optim.program.c_codegen.host_rows_source`)."""
    size = math.prod(shape)
    if mode == "plain":
        return (size,)
    if mode == "flat":
        return (size, 1, size, 0, 0)
    rows = math.prod(shape[:-1])
    m = shape[-2] if len(shape) > 1 else 1
    return (size, rows, shape[-1], m, math.prod(shape[:-2]) * shape[-1])


def _call(batch: _Batch, ptrs: int, value: Any, where: dict, scalars: list, np: Any) -> None:
    """One C call running every block of ``batch`` (its pointer table is current)."""
    if batch.n is None:
        sizes = [x for b in batch.blocks for x in _sizes(b.shape, batch.mode)]
        batch.n = (ctypes.c_longlong * len(sizes))(*sizes)
    refs = batch.scalar_refs[:1] if batch.shared else batch.scalar_refs
    vals = [scalars[r[1]] if r[0] == "s" else float(value(where[r[1]])) for rs in refs for r in rs]
    sv = (ctypes.c_double * max(len(vals), 1))(*vals)
    ss = 0 if batch.shared else len(batch.scalar_refs[0])
    batch.fn(len(batch.blocks), batch.n, ptrs, sv, ss)


def block_kernel(
    program: Program, block: Block, types: tuple[str, ...], sums: tuple[int, ...] = ()
) -> Any | None:
    """``block`` compiled alone, for one chunk at a time (the Dask executor's chunk tasks).

    The C function is :func:`~agrad.optim.program.c_codegen.host_batch_source`'s entry
    point (called with ``nb = 1``, ``ss = 0``) over distinct buffers: first the block's
    array inputs (inputs of the block's shape), then its outputs, in order; its scalar
    values (host scalars, whose kinds are ``types``, and 0-d inputs), in
    ``block.inputs`` order, come in ``sv``. With ``sums`` (indices into
    ``block.outputs``), those outputs are not written: the sum of each over the chunk's
    elements is, into a one-element buffer each, after the other outputs (NumPy's
    pairwise sum: bitwise ``numpy.sum`` of the chunk), and the function takes
    :func:`~agrad.optim.program.c_codegen.host_rows_source`'s five sizes ``(N, 1, N,
    0, 0)``. ``None`` where the route does not apply: switched off, no compiler, a 0-d
    block, a dtype other than float32/float64/bool, an input of another shape, an
    operation with no C form, or a failed build.
    """
    if not available() or not block.shape:
        return None
    nodes = program.nodes
    if any(dtype_name(nodes[i].dtype) not in _KINDS for i in block.nodes):
        return None
    cb = c_block(program, block, types)
    new_inputs = []
    buffers = []
    for x, r in zip(cb.inputs, block.inputs):
        if r[0] == "s" or nodes[r[1]].shape == ():
            new_inputs.append(x if r[0] == "s" else CInput(x.name, x.dtype, scalar=True))
        elif nodes[r[1]].shape == block.shape and x.dtype in _KINDS:
            new_inputs.append(x)
            buffers.append(x.dtype)
        else:
            return None
    kept = [k for k in range(len(block.outputs)) if k not in sums]
    reds = [CReduction(f"r{k}", cb.outputs[k][1], "all") for k in sums]
    cb = CBlock(new_inputs, cb.statements, [cb.outputs[k] for k in kept], reds)
    buffers += [dtype_name(nodes[block.outputs[k]].dtype) for k in [*kept, *sums]]
    try:
        text = host_batch_source("KERNEL", cb, range(len(buffers)), buffers)
    except UnsupportedOp:
        return None
    name = "agrad_c" + hashlib.sha256(text.encode()).hexdigest()[:16]
    source = "#include <math.h>\n#include <stdbool.h>\n\n" + text.replace("KERNEL", name)
    try:
        fn = getattr(host_c.load_library(source), name)
    except (OSError, RuntimeError, AttributeError):
        return None
    fn.argtypes = _ARGTYPES
    fn.restype = None
    return fn
