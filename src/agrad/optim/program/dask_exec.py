"""The Dask executor: each fused elementwise block of a program is one task per chunk.

Dask arrays are immutable graphs, so a step makes new arrays. The generic path adds one
task per chunk for every operation of the rule (Adam: about fifteen); here each fused
:class:`~agrad.optim.program.fusion.Block` is one graph layer whose task computes the
whole block on one chunk of each input and returns all of the block's outputs as a
tuple; each output is then one ``getitem`` task per chunk. A step of Adam on an array
of ``c`` chunks is ``c`` compute tasks (plus ``3c`` to hand out ``p``, ``m``, ``v``),
whatever the rule's length.

The per-step values (a step count, bias corrections: ``ir.pre_nodes``) are computed
while the graph is built, with NumPy, where the state values they read are concrete
(a persisted 0-d count), and are literals of the chunk tasks (a new count is a data
key); otherwise they are one 0-d task. A whole-array ``sum`` (a norm) is one task over
the chunks of its operand; other eager nodes are Dask's own functions between blocks.

Inputs of a block are aligned by ``blockwise`` where they are not chunked alike (a
gradient chunked unlike its parameter is rechunked to match, as Dask does for
``p + g``); smaller operands broadcast by their trailing dimensions, 0-d ones and host
scalars go whole to every task. A task on NumPy chunks of the block's shape and dtypes,
C-contiguous, is one call of the block's host C kernel
(:func:`~agrad.optim.program.host_exec.block_kernel`; the GIL released, so chunks run
in parallel threads) writing into recycled output buffers; where there is no kernel
(no compiler, switched off, another dtype) or a chunk does not fit, the block runs
tile by tile (``TILE`` elements), each ufunc writing with ``out=`` into its output's
tile or a reused tile-sized scratch buffer; other chunks (CuPy) run one call of their
namespace per node.

**Eager steps.** Where every input chunk of the step's graph is concrete (persisted
arrays: a layer of chunks, no task), every task is one of this executor's (blocks and
sums, no Dask function between them) and Dask would run arrays on its default threaded
scheduler (no other scheduler configured, no ``distributed`` client, no ``pool`` or
``num_workers`` of the user's), :meth:`DaskExecutor.run` runs the chunk tasks when
called and rebinds the arrays to the chunks made, as ``persist`` would (one layer of
chunks each), without Dask's collection and scheduling machinery (about as long as the
step's kernels here). The tasks run wave by wave (a layer after the layers it reads),
each wave's tasks taken in turn by the calling thread and ``CPU_COUNT - 1`` helper
threads (chunks of ``POOL_MIN`` elements or more; smaller ones in the caller). A task
that raises makes the step raise, with nothing rebound. Otherwise (``eager = False``
too) the step stays a graph, run when the caller persists or computes.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import math
import operator
import string
import sys
import threading
from typing import Any, NamedTuple

from agrad.optim._cache import LRUCache
from agrad.optim.program import host_exec
from agrad.optim.program.cblock import scalar_dtype, scalar_types
from agrad.optim.program.eager import run_nodes
from agrad.optim.program.fusion import (
    Block,
    Eager,
    Step,
    dtype_name,
    final_destinations,
    input_nodes,
    is_pre,
    partition,
    run_node,
)
from agrad.optim.program.ir import Program, pre_nodes

__all__ = ["DaskExecutor", "BlockTask", "donated_chunks", "host_chunk_runs", "summed_in_kernel"]

_PLANS_KEPT = 64
#: Elements per tile of a NumPy chunk (256 KiB of float32: a few tiles fit in L2).
TILE = 1 << 16
_INPLACE_UFUNCS = frozenset(
    {"add", "subtract", "multiply", "divide", "maximum", "minimum", "sqrt", "negative", "abs"}
    | {"square", "exp", "log", "sign", "pow", "reciprocal", "expm1", "log1p", "tanh"}
    | {"greater", "greater_equal", "less", "less_equal", "equal", "not_equal"}
    | {"logical_and", "logical_or", "logical_not"}
)


class BlockTask:
    """The per-chunk function of one block: ``task(*inputs) -> output or tuple of outputs``.

    ``inputs`` are the chunks (and numbers) of ``block.inputs`` in order; the result is
    the block's outputs in ``block.outputs`` order (one array when there is one output).
    Picklable (a program and a block), so it runs under any Dask scheduler.
    """

    def __init__(self, program: Program, block: Block):
        from dask.base import tokenize

        # the nodes only: a program's host scalars may hold a schedule's function,
        # which the task need not carry to a worker (nor pickle)
        self.program = program._replace(scalars=(), guards=())
        self.block = block
        self.token = tokenize(block, [program.nodes[i] for i in block.nodes])
        last: dict[int, int] = {}
        for pos, i in enumerate(block.nodes):
            for a in program.nodes[i].args:
                if a[0] == "n":
                    last[a[1]] = pos
        #: ``(k, pos)``: output ``k`` may be written into input ``pos``'s chunk where the
        #: step donates that chunk (:func:`_donations`); set by the executor's plan
        self.donors: tuple[tuple[int, int], ...] = ()
        #: output index -> how many steps read it, where every reader is a sum over all
        #: of its elements (the eager path then has the C function sum it instead of
        #: writing it: see :func:`_summing`); set by the executor's plan
        self.summed: dict[int, int] = {}
        keep = set(block.outputs)
        self._dying = [
            tuple(
                j
                for j in {a[1] for a in program.nodes[i].args if a[0] == "n"}
                if last.get(j) == pos and j not in keep and j in set(block.nodes)
            )
            for pos, i in enumerate(block.nodes)
        ]

    @property
    def _ufuncs(self) -> list[Any]:
        """Per node of the block: the NumPy ufunc that writes it with ``out=`` (or None)."""
        got = self.__dict__.get("_ufunc_list")
        if got is None:
            got = [
                _ufunc(self.program.nodes[i].op)
                if self.program.nodes[i].op in _INPLACE_UFUNCS
                else None
                for i in self.block.nodes
            ]
            self.__dict__["_ufunc_list"] = got
        return got

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_ufunc_list", "_kernels")}

    def kernel(self, types: tuple[str, ...], sums: tuple[int, ...] = ()) -> Any:
        """The block's host C function for host scalars of kinds ``types`` (``sums``: the
        outputs it sums instead of writing; see
        :func:`~agrad.optim.program.host_exec.block_kernel`), built once (under a lock:
        chunk tasks run in threads); ``None`` where there is none."""
        kernels = self.__dict__.setdefault("_kernels", {})
        key = (types, sums)
        fn = kernels.get(key, _MISSING)
        if fn is _MISSING:
            with _BUILD_LOCK:
                fn = kernels.get(key, _MISSING)
                if fn is _MISSING:
                    fn = kernels[key] = host_exec.block_kernel(
                        self.program, self.block, types, sums
                    )
        return fn

    @property
    def _roles(self) -> tuple[list[tuple], list[str]]:
        """Per input: ``("s",)`` a host scalar, ``("z",)`` a 0-d value (both by value to
        the C function), or ``("a", dtype)`` a chunk of the block's shape (a buffer);
        and the dtype of each output (NumPy dtypes)."""
        got = self.__dict__.get("_role_list")
        if got is None:
            import numpy as np

            nodes = self.program.nodes
            got = [
                ("s",)
                if r[0] == "s"
                else ("z",)
                if nodes[r[1]].shape == ()
                else ("a", np.dtype(dtype_name(nodes[r[1]].dtype)))
                for r in self.block.inputs
            ]
            got = self.__dict__["_role_list"] = (
                got,
                [np.dtype(dtype_name(nodes[o].dtype)) for o in self.block.outputs],
            )
        return got

    def __repr__(self) -> str:
        return f"BlockTask({len(self.block.nodes)} nodes -> {len(self.block.outputs)})"

    def __call__(self, *inputs: Any) -> Any:
        got = self.prepare(inputs)
        if got is not None:
            outs, run = got
            run()
        else:
            np = sys.modules.get("numpy")
            shape = self._numpy_shape(np, inputs)
            outs = self._tiled(np, inputs, shape) if shape else self._whole(inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _numpy_shape(self, np: Any, inputs: tuple) -> tuple:
        """The chunks' shape where the array inputs are NumPy chunks of one shape,
        C-contiguous (and 0-d values, which NumPy may hand out as scalars); else ``()``."""
        if np is None or not self.block.shape:
            return ()
        arrays = [x for r, x in zip(self.block.inputs, inputs) if r[0] == "n"]
        if not arrays or not all(
            type(x) is np.ndarray or isinstance(x, np.generic) for x in arrays
        ):
            return ()
        shape = next((x.shape for x in arrays if x.ndim), ())
        if shape and all(
            x.ndim == 0 or (x.shape == shape and x.flags.c_contiguous) for x in arrays
        ):
            return shape
        return ()

    def prepare(
        self, inputs: tuple | list, donated: set[int] = frozenset(), sums: tuple[int, ...] = ()
    ) -> Any:
        """The block on one chunk of each input as one call of its host C function, not
        yet made: ``(outputs, run)``, where ``run()`` (which cannot raise) writes the
        outputs. An output goes into the chunk of the input it replaces (``donors``)
        where that chunk's ``id`` is in ``donated`` (taken from it), else into a
        recycled buffer; an output in ``sums`` (indices) is not written at all: it is
        the sum of its elements (a 0-d array, bitwise ``numpy.sum`` of the chunk).
        ``None`` where there is no C function or the chunks do not fit it
        (:meth:`_tiled` or :meth:`_whole` runs then); nothing is written either way
        until ``run``."""
        np = sys.modules.get("numpy")
        if np is None or not host_exec.enabled or not self.block.shape:
            return None
        roles, out_dtypes = self._roles
        ndarray = np.ndarray
        shape = None
        addresses = []
        values = []
        types = []
        for role, x in zip(roles, inputs):
            kind = role[0]
            if kind == "a":  # a chunk of the block's shape, C-contiguous
                if type(x) is not ndarray or x.dtype != role[1] or not x.flags.c_contiguous:
                    return None
                if shape is None:
                    shape = x.shape
                    if not shape:
                        return None
                elif x.shape != shape:
                    return None
                addresses.append(_address(x))
            elif kind == "z":  # 0-d: by value (NumPy may hand out a scalar)
                if not (type(x) is ndarray or isinstance(x, np.generic)) or x.ndim:
                    return None
                values.append(float(x))
            else:
                values.append(x)
                types.append(scalar_dtype(x))
        if shape is None:
            return None
        fn = self.kernel(tuple(types), sums)
        if fn is None:
            return None
        try:
            sv = (ctypes.c_double * max(len(values), 1))(*values)
        except TypeError:  # a host scalar that is not a number: the ufuncs say what
            return None
        outs: list[Any] = [None] * len(out_dtypes)
        for k, pos in self.donors if donated else ():
            if id(inputs[pos]) in donated:
                donated.discard(id(inputs[pos]))  # type: ignore[attr-defined]
                outs[k] = inputs[pos]  # this chunk's old value, read by this block only
        for k in sums:
            outs[k] = np.empty((), dtype=out_dtypes[k])
        outs = [
            _BUFFERS.empty(np, shape, dtype) if o is None else o
            for o, dtype in zip(outs, out_dtypes)
        ]
        addresses += [_address(o) for k, o in enumerate(outs) if k not in sums]
        addresses += [_address(outs[k]) for k in sums]
        size = _sizes(math.prod(shape), bool(sums))
        table = (ctypes.c_void_p * len(addresses))(*addresses)

        def run() -> None:
            fn(1, size, table, sv, 0)
            _count_host_chunk()

        return outs, run

    def _split(self, inputs: tuple) -> tuple[dict[int, Any], dict[int, Any]]:
        env: dict[int, Any] = {}
        scalars: dict[int, Any] = {}
        for r, x in zip(self.block.inputs, inputs):
            (env if r[0] == "n" else scalars)[r[1]] = x
        return env, scalars

    def _whole(self, inputs: tuple) -> list[Any]:
        """The block on whole chunks, one backend call per node (any chunk type)."""
        import array_api_compat

        env, scalars = self._split(inputs)
        arrays = list(env.values())
        if arrays:
            xp = array_api_compat.array_namespace(*arrays)
        else:
            import array_api_compat.numpy as xp
        for i, dying in zip(self.block.nodes, self._dying):
            env[i] = run_node(xp, self.program, i, env, scalars)  # type: ignore[arg-type]
            for j in dying:
                del env[j]
        np = sys.modules.get("numpy")
        outs = [env[o] for o in self.block.outputs]
        if np is not None:  # a chunk is an array: NumPy's 0-d results may be scalars
            outs = [np.asarray(x) if isinstance(x, np.generic) else x for x in outs]
        return outs

    def _tiled(self, np: Any, inputs: tuple, shape: tuple) -> list[Any]:
        """The block on NumPy chunks, tile by tile (``TILE`` elements): each ufunc writes
        with ``out=`` into a tile of the output it produces or into a tile-sized scratch
        buffer freed when its value dies, so a chunk costs its outputs and a few tiles of
        memory, and each tile stays in cache through the whole block. Same ufuncs on the
        same operands as :meth:`_whole`: the same bits."""
        import array_api_compat.numpy as xp

        nodes = self.program.nodes
        flat_in, scalars = self._split(inputs)
        flat_in = {j: (v.reshape(-1) if v.ndim else v) for j, v in flat_in.items()}
        outs = [_BUFFERS.empty(np, shape, nodes[o].dtype) for o in self.block.outputs]
        flat_out = {o: a.reshape(-1) for o, a in zip(self.block.outputs, outs)}
        size = outs[0].size if outs else 0
        pool = _scratch()  # this thread's tiles, kept from call to call (no page faults)
        for start in range(0, size, TILE):
            stop = min(start + TILE, size)
            env = {j: (v[start:stop] if v.ndim else v) for j, v in flat_in.items()}
            held: dict[int, Any] = {}
            for i, dying, fn in zip(self.block.nodes, self._dying, self._ufuncs):
                n = nodes[i]
                if fn is not None:
                    if i in flat_out:
                        out = flat_out[i][start:stop]
                    else:
                        dtype = np.dtype(n.dtype)
                        free = pool.get((dtype, TILE))
                        held[i] = free.pop() if free else np.empty(TILE, dtype)
                        out = held[i][: stop - start]
                    args = [
                        env[a[1]] if a[0] == "n" else (scalars[a[1]] if a[0] == "s" else a[1])
                        for a in n.args
                    ]
                    env[i] = fn(*args, out=out)
                else:
                    env[i] = run_node(xp, self.program, i, env, scalars)  # type: ignore[arg-type]
                    if i in flat_out:
                        flat_out[i][start:stop] = env[i]
                for j in dying:
                    del env[j]
                    buf = held.pop(j, None)
                    if buf is not None:
                        pool.setdefault((buf.dtype, buf.size), []).append(buf)
            for buf in held.values():
                pool.setdefault((buf.dtype, buf.size), []).append(buf)
        return outs


_SCRATCH = threading.local()
_MISSING = object()
_BUILD_LOCK = threading.Lock()
_COUNT_LOCK = threading.Lock()
#: Chunks this process ran with a block's host C function (what the tests check the
#: route with; the other chunk tasks run NumPy's ufuncs tile by tile).
host_chunk_runs = 0
#: Chunks eager steps wrote their new values over (the old value's chunk, which only
#: the array being rebound held: see :func:`_donations`).
donated_chunks = 0
#: Sums of a chunk that a block's C function took as it made the values (not written).
summed_in_kernel = 0


_CHAR = ctypes.c_char


def _address(x: Any) -> int:
    """The address of C-contiguous NumPy array ``x``'s first element (``x.ctypes.data``,
    read through the buffer protocol where it is writable: 3x quicker)."""
    try:
        return ctypes.addressof(_CHAR.from_buffer(x))
    except (TypeError, ValueError, BufferError):  # read-only, or no element
        return x.ctypes.data


_SIZES: dict[tuple[int, bool], Any] = {}


def _sizes(n: int, rows: bool) -> Any:
    """What a block's C function is told of a chunk of ``n`` elements: ``(n,)``, or
    ``(n, 1, n, 0, 0)`` where it sums outputs (one row). Made once per size and kept:
    the C functions only read it."""
    got = _SIZES.get((n, rows))
    if got is None:
        got = (ctypes.c_longlong * 5)(n, 1, n, 0, 0) if rows else (ctypes.c_longlong * 1)(n)
        if len(_SIZES) < 4096:
            _SIZES[(n, rows)] = got
    return got


def _count_host_chunk() -> None:
    global host_chunk_runs
    with _COUNT_LOCK:
        host_chunk_runs += 1


def _scratch() -> dict[Any, list[Any]]:
    """This thread's free scratch buffers, by ``(dtype, size)``."""
    pool = getattr(_SCRATCH, "pool", None)
    if pool is None:
        pool = _SCRATCH.pool = {}
    return pool


class _Recycler:
    """Chunk buffers made by block tasks, handed out again once nothing else holds them.

    A step's outputs are new chunks (Dask arrays are immutable), and the previous step's
    chunks die as the arrays are rebound: fresh multi-megabyte buffers would page-fault
    on every write (several milliseconds a step). A buffer whose only reference is this
    pool's (``sys.getrefcount``: no array, view, graph or memoryview holds it) is
    reused; at most ``KEEP`` are kept per shape and dtype, and no more than
    ``KEEP_BYTES`` of them (buffers nothing else holds are memory kept for reuse).
    """

    KEEP = 64
    KEEP_BYTES = 256 << 20
    _FREE_REFS = 2  # the pool's list and getrefcount's argument

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[tuple, list[Any]] = {}
        self._ids: set[int] = set()  # of the buffers in the pools

    def holds(self, buf: Any) -> bool:
        """Whether ``buf`` is one of the pools' buffers (a chunk a block made)."""
        return id(buf) in self._ids

    def empty(self, np: Any, shape: tuple, dtype: Any) -> Any:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``."""
        key = (shape, dtype if isinstance(dtype, np.dtype) else np.dtype(dtype))
        with self._lock:
            pool = self._pools.setdefault(key, [])
            for i in range(len(pool)):
                if sys.getrefcount(pool[i]) <= self._FREE_REFS:
                    buf = pool.pop(i)
                    pool.append(buf)  # the most recently handed out last
                    return buf
            buf = np.empty(shape, dtype=dtype)
            pool.append(buf)
            self._ids.add(id(buf))
            if len(pool) > max(1, min(self.KEEP, self.KEEP_BYTES // max(buf.nbytes, 1))):
                self._ids.discard(id(pool.pop(0)))
            return buf


_BUFFERS = _Recycler()


def _ufunc(op: str) -> Any:
    import numpy as np

    return {"abs": np.absolute, "pow": np.power}.get(op) or getattr(np, op, None)


class _Plan(NamedTuple):
    """What a program's steps need, made once per program (see :meth:`DaskExecutor._plan`)."""

    steps: list[Step]
    inputs: dict
    destinations: dict
    tasks: list[BlockTask | None]
    pre: list[int]  # the per-step value nodes
    pre_leaves: list[int]  # the state leaves they read
    pre_0d: bool  # all of them 0-d
    token: str  # the program's
    donor_leaves: tuple[tuple[str, int], ...]  # leaves whose old chunks a block may reuse


class _Out(NamedTuple):
    """Output ``k`` of a block whose chunk tasks are ``(name, *index)`` (``single``: the
    task's result is that output itself, not a tuple): not yet a Dask array."""

    name: str
    k: int
    single: bool
    chunks: tuple
    meta: Any

    @property
    def ndim(self) -> int:
        return len(self.chunks)


class _Graph:
    """The task graph of one step: the layers of its Dask inputs, one layer per block
    (its chunk tasks) and one per output handed out as an array (``getitem`` tasks)."""

    __slots__ = ("deps", "layers", "own", "sums")

    def __init__(self) -> None:
        self.layers: dict[str, Any] = {}
        self.deps: dict[str, Any] = {}
        #: the layers made here (chunk tasks), in the order made (each needs only those
        #: before it), with the elements of their largest chunk
        self.own: dict[str, int] = {}
        #: per sum layer over a block's output: the block's layer, the output's index
        #: (None: the task's result itself) and the block's chunk keys in chunk order
        self.sums: dict[str, tuple[str, int | None, list[tuple]]] = {}

    def absorb(self, x: Any) -> str | None:
        """Add Dask array ``x``'s graph; the name of its layer (None: no such layer)."""
        graph = x.dask
        if x.name not in self.layers:
            layers = getattr(graph, "layers", None)
            if layers is None:  # a plain dict graph
                return None
            for name, layer in layers.items():
                if name not in self.layers:
                    self.layers[name] = layer
                    self.deps[name] = graph.dependencies.get(name, set())
        return x.name if x.name in self.layers else None

    def add(self, name: str, tasks: dict, deps: set[str], size: int = 1) -> None:
        from dask.highlevelgraph import MaterializedLayer

        self.layers[name] = MaterializedLayer(tasks)
        self.deps[name] = deps
        self.own[name] = size

    def graph_of(self, name: str) -> Any:
        """The ``HighLevelGraph`` of layer ``name`` and the layers it needs."""
        from dask.highlevelgraph import HighLevelGraph

        seen = {name}
        todo = [name]
        while todo:
            for d in self.deps[todo.pop()]:
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return HighLevelGraph({n: self.layers[n] for n in seen}, {n: self.deps[n] for n in seen})


class DaskExecutor:
    """Runs programs on Dask arrays, one task per chunk per fused block (see the module)."""

    name = "dask"

    def __init__(self, xp: Any = None):
        self._xp = xp
        self._plans = LRUCache(_PLANS_KEPT)

    @property
    def xp(self) -> Any:
        if self._xp is None:
            import array_api_compat.dask.array

            self._xp = array_api_compat.dask.array
        return self._xp

    def _plan(self, program: Program) -> _Plan:
        got = self._plans.get(id(program))
        if got is None or got[0] is not program:
            from dask.base import tokenize

            steps = partition(program)
            tasks = [BlockTask(program, s) if isinstance(s, Block) else None for s in steps]
            pre = pre_nodes(program)
            destinations = final_destinations(program)
            inputs = input_nodes(program)
            plan = _Plan(
                steps,
                inputs,
                destinations,
                tasks,
                pre,
                [program.nodes[i].attr("leaf") for i in pre if program.nodes[i].op == "input"],
                all(program.nodes[i].shape == () for i in pre),
                tokenize(program.nodes),
                _donors(program, steps, tasks, inputs, destinations),
            )
            got = (program, plan)
            self._plans[id(program)] = got
        return got[1]

    def _values(
        self,
        program: Program,
        params: list[Any],
        grads: list[Any],
        state_leaves: list[Any],
        scalars: list[Any],
    ) -> tuple[dict[int, Any], dict, _Graph, str]:
        plan = self._plan(program)
        columns = {"param": params, "grad": grads, "state": state_leaves}
        env: dict[int, Any] = {i: columns[c][k] for (c, k), i in plan.inputs.items()}
        given = _eager_pre(program, plan, state_leaves, scalars)
        if given is not None:
            env.update(given)
        if host_exec.enabled:  # built here, before any chunk task runs
            for step, task in zip(plan.steps, plan.tasks):
                if task is not None and step.shape:
                    task.kernel(scalar_types(step, scalars))
        graph = _Graph()
        for step, task in zip(plan.steps, plan.tasks):
            if given is not None and is_pre(program, step):
                continue  # computed above: its values are literals of the tasks reading them
            if isinstance(step, Eager):
                got = _direct_sum(program, step.node, env, graph, plan.token)
                if got is not None:
                    env[step.node] = got
                    continue
                args = {
                    a[1]: _array(env[a[1]], graph, f"{plan.token}-{a[1]}")
                    for a in program.nodes[step.node].args
                    if a[0] == "n"
                }
                # Dask runs the node's functions on empty "meta" arrays to learn the
                # result's type, some of them uninitialised memory (a 0-d array's
                # mean): a floating-point warning there says nothing of the data
                with _meta_errors_ignored():
                    env[step.node] = run_node(self.xp, program, step.node, args, scalars)
                continue
            outs = _direct(program, step, task, env, scalars, graph)
            if outs is None:
                for r in step.inputs:
                    if r[0] == "n":
                        env[r[1]] = _array(env[r[1]], graph, f"{plan.token}-{r[1]}")
                outs = _blockwise(program, step, task, env, scalars)
            env.update(zip(step.outputs, outs))
        return env, plan.destinations, graph, plan.token

    def run(
        self,
        program: Program,
        params: list[Any],
        grads: list[Any],
        state_leaves: list[Any],
        scalars: list[Any],
    ) -> None:
        """One step: each parameter and state array written by the step is rebound to
        its new graph (what Dask's own ``dst[...] = new`` ends with, without its extra
        task per chunk), computed now where the inputs are persisted and Dask's default
        threaded scheduler applies (then rebound to the chunks made, as ``persist``
        makes them: see the module), else nothing is computed."""
        env, destinations, graph, token = self._values(
            program, params, grads, state_leaves, scalars
        )
        columns = {"param": params, "state": state_leaves, "grad": grads}
        if eager and _run_now(env, destinations, graph, token, columns, self._plan(program)):
            return
        # an input array that is also rebound (the parameters returned as new state) is
        # read as it is now, before any rebinding
        rebound = {id(columns[c][leaf]) for dests in destinations.values() for c, leaf in dests}
        new = {}
        for node, dests in destinations.items():
            value = env[node]
            made = isinstance(value, _Out) or _is_numpy(value)  # by this step
            if _is_numpy(value):
                value = _array(value, graph, _value_name(token, node, dests, columns))
            elif id(value) in rebound:
                value = _snapshot(value)
            new[node] = value, made
        for node, dests in destinations.items():
            _rebind_apart([columns[c][leaf] for c, leaf in dests], *new[node], graph)


#: Set to ``False`` to keep every step lazy (the chunk tasks then run when the caller
#: persists or computes), whatever the inputs and the scheduler.
eager = True
#: Elements per chunk from which an eager step's chunk tasks run on several threads
#: (smaller ones run one after the other: handing them to a thread costs more).
POOL_MIN = TILE
_POOL: Any = None
_POOL_LOCK = threading.Lock()


def _pool() -> Any:
    """The helper threads of eager steps: one fewer than Dask's default pool has threads
    (the caller's thread runs tasks too)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                from concurrent.futures import ThreadPoolExecutor

                from dask.system import CPU_COUNT

                _POOL = ThreadPoolExecutor(max(CPU_COUNT - 1, 1), thread_name_prefix="agrad-dask")
    return _POOL


def _meta_errors_ignored() -> Any:
    """NumPy's floating-point errors ignored (a context manager), while Dask builds a
    graph: what it computes then are metas, not data."""
    import numpy as np

    return np.errstate(all="ignore")


def _threaded_default() -> bool:
    """Whether Dask would run arrays on its default threaded scheduler here (no other
    scheduler configured, no distributed client, no pool or thread count of the user's)."""
    import dask
    import dask.array as da
    import dask.threaded
    from dask.base import get_scheduler

    if dask.config.get("pool", None) is not None or dask.config.get("num_workers", None):
        return False
    try:
        return get_scheduler(cls=da.Array) is dask.threaded.get
    except Exception:
        return False


def _concrete_layer(layer: Any, values: dict) -> bool:
    """Add the chunks of ``layer`` to ``values`` where it holds chunks only (a persisted
    array's layer); False where it holds a task."""
    from dask._task_spec import DataNode, GraphNode
    from dask.highlevelgraph import MaterializedLayer

    if type(layer) is not MaterializedLayer:
        return False
    for key, v in layer.mapping.items():
        if isinstance(v, DataNode):
            v = v.value
        elif isinstance(v, GraphNode | tuple | list | dict | str):
            return False  # a task (or what Dask may read as one)
        if not hasattr(v, "shape") or not hasattr(v, "dtype") or hasattr(v, "__dask_graph__"):
            return False  # not an array chunk (or a Dask collection as a value)
        values[key] = v
    return True


def _run_now(
    env: dict[int, Any],
    destinations: dict,
    graph: _Graph,
    token: str,
    columns: dict,
    plan: _Plan,
) -> bool:
    """Run the step's chunk tasks now and rebind its arrays to the chunks they made (what
    ``persist`` would make of them), where every input chunk is concrete (persisted),
    every task is one of this executor's and Dask would use its default threaded
    scheduler: each block's chunks on a pool of threads (the host C functions release
    the GIL), with none of Dask's scheduling. False (nothing run, nothing rebound)
    otherwise; where a task raises, nothing is rebound either."""
    from dask._task_spec import Task

    own = graph.own
    values: dict = {}
    for name, layer in graph.layers.items():
        if name not in own and not _concrete_layer(layer, values):
            return False
    for node in destinations:
        if not isinstance(env[node], _Out) and not _is_numpy(env[node]):
            return False
    if not _threaded_default():
        return False
    for name in graph.own:
        tasks = list(graph.layers[name].mapping.items())
        if not all(type(t) is Task for _, t in tasks):
            return False
    waves = _waves(*_fold_sums(graph), graph)
    for tasks, threads in waves[:-1]:
        values.update(_run_tasks(tasks, values, threads))
    if waves:  # nothing runs after the last wave: its blocks may write in place
        tasks, threads = waves[-1]
        donated = _donations(plan, columns, graph)
        done = _run_donating(tasks, values, donated, threads) if donated else None
        values.update(_run_tasks(tasks, values, threads) if done is None else done)
    for node, dests in destinations.items():
        value = env[node]
        if _is_numpy(value):
            for column, leaf in dests:  # a key of its own each (see _rebind_apart)
                name = _value_name(token, node, [(column, leaf)], columns)
                hlg, key, chunks, meta = _data_graph(value, name)
                _point(columns[column][leaf], meta, hlg, key, chunks)
            continue
        name = value.name if value.single else _out_name(value)
        got = {}
        for idx in _indices(value.chunks):
            chunk = values[(value.name, *idx)]
            got[idx] = chunk if value.single else chunk[value.k]
        for k, (column, leaf) in enumerate(dests):  # a name of its own each
            own = name if k == 0 else f"{name}-{k}"
            chunks = {(own, *idx): chunk for idx, chunk in got.items()}
            _rebind_concrete(columns[column][leaf], own, chunks, value)
    return True


def _donors(
    program: Program,
    steps: list[Step],
    tasks: list[BlockTask | None],
    inputs: dict[tuple[str, int], int],
    destinations: dict[int, list[tuple[str, int]]],
) -> tuple[tuple[str, int], ...]:
    """Set each block task's ``donors`` and return the leaves they may reuse: a block
    output that is the step's new value of a parameter or state leaf may be written
    over that leaf's old chunk where this block is the last step reading the old value
    and no leaf receives the old value itself, as the NumPy route writes in place
    (:func:`_run_donating` checks, when the block runs in a step's last wave, that no
    other task of that wave reads the chunk)."""
    readers: dict[int, set[int]] = {}
    for s, step in enumerate(steps):
        for i in (step.node,) if isinstance(step, Eager) else step.nodes:
            for a in program.nodes[i].args:
                if a[0] == "n":
                    readers.setdefault(a[1], set()).add(s)
    leaves = []
    for s, (step, task) in enumerate(zip(steps, tasks)):
        if task is None or not step.shape:
            continue
        pairs = []
        for k, o in enumerate(step.outputs):
            for column, leaf in destinations.get(o, ()):
                n = inputs.get((column, leaf))
                if n is None or n in destinations or ("n", n) not in step.inputs:
                    continue
                if max(readers[n]) != s:  # read by a later step
                    continue
                old, new = program.nodes[n], program.nodes[o]
                if old.shape != step.shape or dtype_name(old.dtype) != dtype_name(new.dtype):
                    continue
                pairs.append((k, step.inputs.index(("n", n))))
                leaves.append((column, leaf))
                break
        task.donors = tuple(pairs)
        task.summed = {}
        for k, o in enumerate(step.outputs):
            sums = [r for r in readers.get(o, ()) if r != s]
            if o not in destinations and sums and all(_whole_sum(program, steps[r]) for r in sums):
                task.summed[k] = len(sums)  # read by sums only (and inside this block)
    return tuple(leaves)


def _whole_sum(program: Program, step: Step) -> bool:
    """Whether ``step`` is a sum over all elements (what :func:`_direct_sum` runs)."""
    if not isinstance(step, Eager):
        return False
    n = program.nodes[step.node]
    return n.op == "sum" and dict(n.attrs) == {"axis": None, "keepdims": False}


#: Whether ``sys.getrefcount`` counts every reference the checks below expect: CPython
#: up to 3.13 with the GIL (3.14 may leave a local variable's reference uncounted, and
#: the free-threaded build counts differently): elsewhere no chunk is written over.
_EXACT_REFCOUNTS = (
    sys.implementation.name == "cpython"
    and sys.version_info < (3, 14)
    and getattr(sys, "_is_gil_enabled", lambda: True)()
)
#: References to a chunk of a leaf's old value while a step decides whether to donate
#: it: its graph layer's mapping, the step's ``values``, the pool's list and
#: ``sys.getrefcount``'s argument (see :func:`_donations`).
_CHUNK_REFS = 4
_LAYER_REFS = 3  # its graph's layers, the step's _Graph and getrefcount's argument
_MAPPING_REFS = 2  # its layer and getrefcount's argument


def _donations(plan: _Plan, columns: dict, graph: _Graph) -> set[int]:
    """The chunks (by ``id``) of the leaves' old values that this step may write over
    (``columns``: the step's arrays, which ``values`` has the chunks of): only where
    nothing but the array being rebound can reach them, by ``sys.getrefcount`` on each
    link (the array's graph, its one layer, the layer's mapping and every chunk, a pool
    buffer a previous step made). A graph another array holds (a lazy ``p + 1``,
    ``p.blocks[0]``, ``p.copy()``, an earlier ``inplace=False`` step's input), a chunk
    a view or a ``compute()`` result holds, or an array given as two leaves keeps its
    chunks, and the block writes new ones."""
    if not plan.donor_leaves or not _EXACT_REFCOUNTS:
        return set()
    np = sys.modules["numpy"]
    names: dict[str, int] = {}
    for arrays in columns.values():
        for x in arrays:
            name = getattr(x, "name", None)
            names[name] = names.get(name, 0) + 1
    donated: set[int] = set()
    for column, leaf in plan.donor_leaves:
        x = columns[column][leaf]
        name = getattr(x, "name", None)
        if names.get(name) != 1:
            continue
        hlg = x.dask
        # the array, ``hlg`` and getrefcount's argument: no other graph holds it
        if sys.getrefcount(hlg) != 3 or len(getattr(hlg, "layers", ())) != 1:
            continue
        layer = hlg.layers.get(name)
        if layer is None or graph.layers.get(name) is not layer:
            continue
        if sys.getrefcount(layer) != _LAYER_REFS + 1:  # + ``layer``
            continue
        mapping = getattr(layer, "mapping", None)
        if type(mapping) is not dict or sys.getrefcount(mapping) != _MAPPING_REFS + 1:
            continue
        chunks = []
        for v in mapping.values():
            if type(v) is not np.ndarray or not _BUFFERS.holds(v):
                break
            if sys.getrefcount(v) != _CHUNK_REFS + 1:  # + ``v``
                break
            chunks.append(id(v))
        else:
            donated.update(chunks)
    return donated


def _arguments(task: Any, values: dict) -> list[Any]:
    """The arguments Dask's ``Task.__call__`` would call ``task``'s function with."""
    from dask._task_spec import GraphNode, TaskRef

    def arg(a: Any) -> Any:
        if isinstance(a, TaskRef):
            return values[a.key]
        if isinstance(a, GraphNode):
            return a({k: values[k] for k in a.dependencies})
        return a

    return [arg(a) for a in task.args]


def _run_donating(
    tasks: list[tuple[Any, Any]], values: dict, donated: set[int], threads: bool
) -> dict | None:
    """The results of one wave of block tasks, some writing over the chunks in
    ``donated``: first every task's call is prepared (inputs read, outputs chosen and
    allocated: anything that can raise), then the C calls run (in this thread and the
    pool's, as :func:`_run_tasks`), which cannot raise; so a step that raises has
    written nothing. ``None`` (nothing run, nothing written) where a task is not a block
    task on NumPy chunks with a host C function: the caller runs the wave as usual."""
    global donated_chunks
    from dask._task_spec import Task

    resolved = []
    readers: dict[int, int] = {}
    for key, task in tasks:
        fn = getattr(task, "func", None)
        if type(task) is not Task or type(fn) is not BlockTask or task.kwargs:
            return None
        inputs = _arguments(task, values)
        for x in inputs:
            readers[id(x)] = readers.get(id(x), 0) + 1
        resolved.append((key, fn, inputs))
    # a chunk another task of the wave reads (or this one twice) is not written over
    donated.intersection_update(i for i, n in readers.items() if n == 1)
    offered = len(donated)
    prepared = []
    for key, fn, inputs in resolved:
        got = fn.prepare(inputs, donated)
        if got is None:
            return None
        prepared.append((key, got))
    calls = [(key, lambda _values, run=run: run()) for key, (_, run) in prepared]
    _run_tasks(calls, values, threads)
    donated_chunks += offered - len(donated)
    return {key: outs[0] if len(outs) == 1 else tuple(outs) for key, (outs, _) in prepared}


def _fold_sums(graph: _Graph) -> tuple[dict[str, list[tuple[Any, Any]]], set[str]]:
    """Per layer made here, its tasks as ``(key, fn(values))``; where a sum reads a
    block's output, each of the block's chunk tasks also sums its chunk of that output
    as soon as it is made (still in cache), and the sum's task adds those partial sums
    in chunk order: the operations of :func:`_sum_chunks`, the same bits, without
    reading every chunk again. Also the sums so folded (quick tasks)."""
    tasks = {name: list(graph.layers[name].mapping.items()) for name in graph.own}
    post: dict[tuple, list[tuple[dict, int, int | None]]] = {}
    for out, (block, k, keys) in graph.sums.items():
        if out not in tasks or block not in tasks:
            continue
        partials: dict[int, Any] = {}
        for pos, key in enumerate(keys):
            post.setdefault(key, []).append((partials, pos, k))
        tasks[out] = [((out,), _combine(partials, keys, k, tasks[out][0][1]))]
    folded = {out for out in graph.sums if out in tasks and graph.sums[out][0] in tasks}
    for name, items in tasks.items():
        tasks[name] = [(key, _summing(t, post[key]) if key in post else t) for key, t in items]
    return tasks, folded


def _summing(task: Any, posts: list[tuple[dict, int, int | None]]) -> Any:
    """``task`` that also puts its chunk's sum of each output in ``posts`` into the
    partials. Where every reader of those outputs is such a sum (``BlockTask.summed``),
    the block's C function sums them as it makes them and never writes them (the
    task's result holds each sum, 0-d, in their place); otherwise NumPy sums the chunks
    made."""
    from dask._task_spec import Task

    fn = getattr(task, "func", None)
    fused: tuple[int, ...] = ()
    if type(task) is Task and type(fn) is BlockTask and not task.kwargs:
        ks = [0 if k is None else k for _, _, k in posts]
        fused = tuple(sorted(k for k in set(ks) if fn.summed.get(k) == ks.count(k)))

    def run(values: dict) -> Any:
        import array_api_compat

        got = fn.prepare(_arguments(task, values), sums=fused) if fused else None
        if got is None:
            result = task(values)
            outs = [result] if any(k is None for _, _, k in posts) else result
            done: tuple[int, ...] = ()
        else:
            global summed_in_kernel
            outs, call = got
            call()
            with _COUNT_LOCK:
                summed_in_kernel += len(fused)
            result = outs[0] if len(outs) == 1 else tuple(outs)
            done = fused
        for partials, pos, k in posts:
            k = 0 if k is None else k
            partials[pos] = (
                outs[k] if k in done else array_api_compat.array_namespace(outs[k]).sum(outs[k])
            )
        return result

    return run


def _combine(partials: dict[int, Any], keys: list[tuple], k: int | None, task: Any) -> Any:
    def run(values: dict) -> Any:
        if len(partials) != len(keys):  # not every chunk summed: the whole task
            return task(values)
        import array_api_compat

        chunks = [values[key] if k is None else values[key][k] for key in keys]
        xp = array_api_compat.array_namespace(*chunks)  # as _sum_chunks finds it
        return xp.sum(xp.stack([partials[i] for i in range(len(keys))]))

    return run


def _waves(
    tasks: dict[str, list[tuple[Any, Any]]], quick: set[str], graph: _Graph
) -> list[tuple[list, bool]]:
    """The tasks of the layers made here, in waves: a layer's wave follows the waves of
    the layers it reads (LAMB's two norms, one task each, are one wave); with whether
    the wave is worth threads (a chunk of ``POOL_MIN`` elements or more)."""
    level: dict[str, int] = {}
    waves: list[tuple[list, bool]] = []
    for name, size in graph.own.items():
        k = max((level[d] + 1 for d in graph.deps[name] if d in level), default=0)
        level[name] = k
        if k == len(waves):
            waves.append(([], False))
        wave, threads = waves[k]
        wave.extend(tasks[name])
        waves[k] = (wave, threads or (size >= POOL_MIN and name not in quick))
    return waves


def _run_tasks(tasks: list[tuple[Any, Any]], values: dict, threads: bool) -> dict:
    """The results of ``tasks`` (independent of each other; their inputs in ``values``,
    which no thread writes meanwhile), by key: in this thread, or (``threads``) in this
    thread and the pool's, each taking the next task not yet taken. Where one raises,
    no further task starts, and the first error is raised once every task started has
    finished."""
    n = len(tasks)
    helpers = min(n - 1, _pool()._max_workers) if threads else 0
    if helpers <= 0:
        return {key: task(values) for key, task in tasks}
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()
    todo = iter(range(n))

    def work() -> None:
        while True:
            with lock:
                i = None if errors else next(todo, None)
            if i is None:
                return
            try:
                results[i] = tasks[i][1](values)
            except BaseException as err:  # raised below, in the caller
                with lock:
                    errors.append(err)

    futures = [_pool().submit(work) for _ in range(helpers)]
    try:
        work()
    finally:
        for f in futures:
            f.result()
    if errors:
        raise errors[0]
    return {key: r for (key, _), r in zip(tasks, results)}


def _point(dst: Any, meta: Any, hlg: Any, name: str, chunks: tuple) -> None:
    """Make Dask array ``dst`` the array of layer ``name`` in graph ``hlg``."""
    dst._meta = meta
    dst.dask = hlg
    dst._name = name
    dst._chunks = chunks


def _rebind_concrete(dst: Any, name: str, chunks: dict, value: _Out) -> None:
    """Make ``dst`` stand for ``chunks``, the finished chunks of ``value`` (one layer of
    values, what ``persist`` makes)."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    hlg = HighLevelGraph({name: MaterializedLayer(chunks)}, {name: set()})
    _point(dst, value.meta, hlg, name, value.chunks)


def _snapshot(x: Any) -> Any:
    """A new Dask array object for ``x``'s graph as it is now (``x`` may be rebound)."""
    import dask.array as da

    return da.Array(x.dask, x.name, x.chunks, meta=x._meta)


def _rebind(dst: Any, value: Any, graph: _Graph) -> None:
    """Make Dask array ``dst`` stand for ``value`` (an array or a block's output)."""
    if not isinstance(value, _Out):
        _point(dst, value._meta, value.dask, value.name, value.chunks)
        return
    name = _out_layer(value, graph)
    _point(dst, value.meta, graph.graph_of(name), name, value.chunks)


def _rebind_apart(dsts: list[Any], value: Any, made: bool, graph: _Graph) -> None:
    """Make each of ``dsts`` stand for ``value``, under a name of its own: a value
    ``made`` by this step (a block's output, a count) under its name for the first,
    and aliases of its chunks (no copy, no task run) for the others, and for every one
    where ``value`` is an input array (the gradient, a state leaf returned unchanged,
    which keeps its name).

    Two leaves of one value (a rule returning ``State(m, m)`` or ``State(a, a)``, the
    parameters as the state of two transforms of a chain) would otherwise share a
    name, and ``dask.persist`` hands back one object for one name: persisted
    together, the two leaves would be one array, which the next in-place step
    refuses to write twice.
    """
    first = value
    if made:
        _rebind(dsts[0], value, graph)
        first, dsts = dsts[0], dsts[1:]
    for k, dst in enumerate(dsts, 1):
        alias = renamed(first, f"{first.name}-{k}")
        _point(dst, alias._meta, alias.dask, alias.name, alias.chunks)


def renamed(x: Any, name: str) -> Any:
    """Dask array ``x`` under the new name ``name``, nothing computed or copied: its
    chunks themselves where it holds values only (an array made by ``asarray``, a
    persisted one: still values, so an eager step reads it), else one alias per
    chunk."""
    import dask.array as da
    from dask._task_spec import Alias, DataNode
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    indices = list(_indices(x.chunks))
    layers = getattr(x.dask, "layers", {})
    mapping = getattr(layers.get(x.name), "mapping", None) if len(layers) == 1 else None
    if isinstance(mapping, dict):
        values = [mapping.get((x.name, *idx)) for idx in indices]
        values = [v.value if isinstance(v, DataNode) else v for v in values]
        if all(hasattr(v, "shape") and not hasattr(v, "__dask_graph__") for v in values):
            chunks = {(name, *idx): v for idx, v in zip(indices, values)}
            graph = HighLevelGraph({name: MaterializedLayer(chunks)}, {name: set()})
            return da.Array(graph, name, x.chunks, meta=x._meta)
    layer = {(name, *idx): Alias((name, *idx), (x.name, *idx)) for idx in indices}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    return da.Array(graph, name, x.chunks, meta=x._meta)


def _out_layer(value: _Out, graph: _Graph) -> str:
    """The name of the layer whose chunks are ``value`` (``getitem`` tasks, made once)."""
    if value.single:
        return value.name
    name = _out_name(value)
    if name not in graph.layers:
        from dask._task_spec import Task, TaskRef

        tasks = {}
        for idx in _indices(value.chunks):
            key = (name, *idx)
            tasks[key] = Task(key, operator.getitem, TaskRef((value.name, *idx)), value.k)
        graph.add(name, tasks, {value.name})
    return name


def _out_name(value: _Out) -> str:
    return f"agrad-out{value.k}-{value.name[len('agrad-block-') :]}"


def _array(value: Any, graph: _Graph, name: str = "") -> Any:
    """``value`` as a Dask array (a block's output made one; a NumPy value computed at
    graph time, one data key named after ``name`` and the value; anything else as it is)."""
    import dask.array as da

    if _is_numpy(value):
        return _data_array(value, name)
    if not isinstance(value, _Out):
        return value

    name = _out_layer(value, graph)
    return da.Array(graph.graph_of(name), name, value.chunks, meta=value.meta)


def _is_numpy(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and (type(x) is np.ndarray or isinstance(x, np.generic))


def _data_array(value: Any, name: str) -> Any:
    """A Dask array of one chunk, ``value`` itself (no task): a per-step value computed at
    graph time (a new step count). Its key is the hash of ``name`` (the program and the
    node) and the value, so equal values of different state leaves never share a key."""
    import dask.array as da

    graph, key, chunks, meta = _data_graph(value, name)
    return da.Array(graph, key, chunks, meta=meta)


def _value_name(token: str, node: int, dests: list[tuple[str, int]], columns: dict) -> str:
    """What names a new value computed at graph time (a step count) for the leaves
    ``dests``: the program, the node and the names of the arrays it replaces. Two
    optimizers of one program step their counts to equal values; named after the
    arrays they replace (named apart at ``init``), the new counts stay two arrays,
    which ``dask.persist`` does not merge into one."""
    olds = (getattr(columns[c][leaf], "name", "") for c, leaf in dests)
    return f"{token}-{node}-" + "-".join(map(str, olds))


def _data_graph(value: Any, name: str) -> tuple[Any, str, tuple, Any]:
    """The graph, name, chunks and meta of :func:`_data_array`'s array."""
    import numpy as np
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    value = np.asarray(value)
    digest = hashlib.sha1(
        f"{name}|{value.dtype.str}|{value.shape}|".encode() + value.tobytes()
    ).hexdigest()
    key = f"agrad-value-{digest}"
    chunk_key = (key, *(0,) * value.ndim)
    graph = HighLevelGraph({key: MaterializedLayer({chunk_key: value})}, {key: set()})
    meta = value[:0] if value.ndim else np.empty((), value.dtype)
    return graph, key, tuple((d,) for d in value.shape), meta


def _concrete(x: Any) -> Any:
    """The NumPy value of a 0-d Dask array whose graph is that value alone (persisted), or
    of a NumPy 0-d value; ``None`` otherwise."""
    if _is_numpy(x):
        return x
    if getattr(x, "ndim", None) != 0 or not hasattr(x, "dask"):
        return None
    layers = getattr(x.dask, "layers", None)
    if layers is None or len(layers) != 1:
        return None
    from dask.highlevelgraph import MaterializedLayer

    layer = next(iter(layers.values()))
    if type(layer) is not MaterializedLayer or len(layer.mapping) != 1:
        return None
    value = layer.mapping.get((x.name,))
    if not _is_numpy(value):
        value = getattr(value, "value", None)  # a DataNode
    return value if _is_numpy(value) else None


def _eager_pre(
    program: Program, plan: _Plan, state_leaves: list[Any], scalars: list[Any]
) -> dict[int, Any] | None:
    """The per-step values (:func:`~agrad.optim.program.ir.pre_nodes`: a step count, bias
    corrections, a schedule's value) computed now, with NumPy, as the NumPy fast path
    computes them (bitwise the values the tasks would compute: the same NumPy
    operations on the same 0-d values), where every state value they read is concrete (a
    persisted 0-d array); ``None`` where not (they are then tasks of the graph)."""
    if not plan.pre or not plan.pre_0d:
        return None
    leaves = list(state_leaves)
    for k in plan.pre_leaves:
        value = _concrete(leaves[k])
        if value is None:
            return None
        leaves[k] = value
    import array_api_compat.numpy as xp

    try:
        values = run_nodes(program, plan.pre, xp, leaves, scalars)
    except Exception:  # the tasks compute them (and raise there, as the generic path does)
        return None
    np = sys.modules["numpy"]
    return {
        i: (np.asarray(v) if isinstance(v, np.generic) else v)
        for i, v in values.items()
        if program.nodes[i].op != "input"
    }


def _indices(chunks: tuple) -> Any:
    return itertools.product(*(range(len(c)) for c in chunks))


def _direct(
    program: Program,
    block: Block,
    task: Any,
    env: dict[int, Any],
    scalars: list[Any],
    graph: _Graph,
) -> list[_Out] | None:
    """The block's chunk tasks written straight into ``graph`` (no ``blockwise``): where
    every array input is 0-d or chunked exactly as the block's result. ``None`` where
    not (inputs to align or broadcast: :func:`_blockwise` does that)."""
    import dask.array as da
    from dask._task_spec import Task, TaskRef

    ndim = len(block.shape)
    chunks = None
    refs: list[Any] = []  # per input: ("a", name, 0-d) | ("o", _Out) | ("s", value)
    deps: set[str] = set()
    parts = [task.token]
    meta_like = None
    for r in block.inputs:
        if r[0] == "s":
            refs.append(("s", scalars[r[1]]))
            parts.append(repr(scalars[r[1]]))
            continue
        x = env[r[1]]
        if _is_numpy(x):
            if x.ndim:
                return None
            refs.append(("s", x))
            parts.append(f"{x.dtype.str}:{x.tobytes().hex()}")
            continue
        if isinstance(x, _Out):
            refs.append(("o", x))
            deps.add(x.name)
            parts.append(f"{x.name}/{x.k}")
            meta_like = meta_like if meta_like is not None else x.meta
        elif isinstance(x, da.Array):
            layer = graph.absorb(x)
            if layer is None:
                return None
            refs.append(("a", x.name, x.ndim == 0))
            deps.add(layer)
            parts.append(x.name)
            meta_like = meta_like if meta_like is not None else x._meta
        else:
            return None
        if x.ndim == 0:
            continue
        if x.ndim != ndim:
            return None
        c = x.chunks
        if chunks is None:
            chunks = c
        elif c != chunks:
            return None
    if chunks is None:
        if ndim:
            return None
        chunks = ()
    token = hashlib.sha1("|".join(parts).encode()).hexdigest()
    name = f"agrad-block-{token}"
    if name not in graph.layers:
        tasks = {}
        for idx in _indices(chunks):
            args = []
            for ref in refs:
                if ref[0] == "s":
                    args.append(ref[1])
                elif ref[0] == "a":
                    args.append(TaskRef((ref[1],) if ref[2] else (ref[1], *idx)))
                else:
                    out = ref[1]
                    src = TaskRef((out.name,) if out.ndim == 0 else (out.name, *idx))
                    args.append(src if out.single else Task(None, operator.getitem, src, out.k))
            key = (name, *idx)
            tasks[key] = Task(key, task, *args)
        graph.add(name, tasks, deps, math.prod(max(c) for c in chunks))
    single = len(block.outputs) == 1
    nodes = program.nodes
    return [
        _Out(name, k, single, chunks, _meta_of(meta_like, ndim, nodes[o].dtype))
        for k, o in enumerate(block.outputs)
    ]


def _sum_chunks(*chunks: Any) -> Any:
    """The sum of all elements of all ``chunks``: each chunk's sum, then the sum of those
    in chunk order (Dask's own ``sum`` adds the same partial sums, in a tree where
    there are many: equal to rounding)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(*chunks)
    return xp.sum(xp.stack([xp.sum(c) for c in chunks]))


def _direct_sum(
    program: Program, node: int, env: dict[int, Any], graph: _Graph, token: str
) -> _Out | None:
    """A whole-array ``sum`` (LAMB's and LARS's norms, a global norm) as ONE task that
    reads every chunk of its operand (a block's output or a Dask array of this graph),
    instead of Dask's reduction (its graph costs milliseconds to build; its tasks are
    one per chunk and an aggregate). ``None`` where the node is another reduction, or
    its operand is not chunked into at most 16 chunks of this graph."""
    import dask.array as da
    from dask._task_spec import Task, TaskRef

    n = program.nodes[node]
    refs = [a for a in n.args if a[0] == "n"]
    if n.op != "sum" or dict(n.attrs) != {"axis": None, "keepdims": False} or len(refs) != 1:
        return None
    x = env[refs[0][1]]
    if not isinstance(x, _Out) and not (isinstance(x, da.Array) and graph.absorb(x)):
        return None
    name, chunks = x.name, x.chunks
    idx = list(_indices(chunks))
    if not chunks or len(idx) > 16:
        return None
    args: list[Any] = []
    for i in idx:
        ref = TaskRef((name, *i))
        single = not isinstance(x, _Out) or x.single
        args.append(ref if single else Task(None, operator.getitem, ref, x.k))
    k = x.k if isinstance(x, _Out) else 0
    out = "agrad-sum-" + hashlib.sha1(f"{token}|{node}|{name}|{k}".encode()).hexdigest()
    if out not in graph.layers:
        size = math.prod(sum(c) for c in chunks)  # one task reads every element
        graph.add(out, {(out,): Task((out,), _sum_chunks, *args)}, {name}, size)
        if isinstance(x, _Out):
            graph.sums[out] = (name, None if x.single else x.k, [(name, *i) for i in idx])
    meta = x.meta if isinstance(x, _Out) else x._meta
    return _Out(out, 0, True, (), _meta_of(meta, 0, n.dtype))


def _meta_of(like: Any, ndim: int, dtype: Any) -> Any:
    """An empty array of ``dtype``, of the kind of ``like`` (a chunk's meta) or NumPy."""
    import numpy as np

    if like is None or type(like) is np.ndarray:
        return np.empty((0,) * ndim, dtype=dtype)
    try:
        return like.__array_namespace__().empty((0,) * ndim, dtype=dtype)
    except Exception:
        return np.empty((0,) * ndim, dtype=dtype)


def _blockwise(
    program: Program, block: Block, task: Any, env: dict[int, Any], scalars: list[Any]
) -> list[Any]:
    """The block's outputs as Dask arrays: one ``task`` per chunk, a ``getitem`` per output."""
    import dask.array as da
    import numpy as np

    ndim = len(block.shape)
    out_ind = string.ascii_letters[:ndim]
    args: list[Any] = []
    for r in block.inputs:
        if r[0] == "s":
            args += [scalars[r[1]], None]
            continue
        x = env[r[1]]
        if not isinstance(x, da.Array):
            x = da.asarray(x)
        # a 0-d array is indexed by "" (its one block), never by None: blockwise would
        # embed it as a literal, copying its whole graph under new keys at every step
        args += [x, out_ind[ndim - x.ndim :]]
    nodes = program.nodes
    metas = [_meta(env, block, nodes[o]) for o in block.outputs]
    token = _token(task, args)
    one = len(block.outputs) == 1
    out = da.blockwise(
        task,
        out_ind,
        *args,
        dtype=metas[0].dtype if one else np.float64,
        meta=metas[0] if one else np.empty((0,) * ndim),
        name=f"agrad-block-{token}",
    )
    if one:
        return [out]
    return [
        da.blockwise(
            operator.getitem,
            out_ind,
            out,
            out_ind,
            k,
            None,
            dtype=m.dtype,
            meta=m,
            name=f"agrad-out{k}-{token}",
        )
        for k, m in enumerate(metas)
    ]


def _token(task: BlockTask, args: list[Any]) -> str:
    """The name of one block's graph layer: the block's own token, its inputs' graph
    names and the host scalars' exact values (cheaper than ``tokenize`` of the arrays)."""
    parts = [task.token]
    for x in args[::2]:
        parts.append(getattr(x, "name", None) or repr(x))
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()


def _meta(env: dict[int, Any], block: Block, node: Any) -> Any:
    """An empty array of ``node``'s dtype and of the kind of the block's first Dask input."""
    import dask.array as da
    import numpy as np

    ndim = len(block.shape)
    for r in block.inputs:
        x = env.get(r[1]) if r[0] == "n" else None
        if isinstance(x, da.Array):
            meta = x._meta
            try:
                return meta.__array_namespace__().empty((0,) * ndim, dtype=node.dtype)
            except Exception:
                return np.empty((0,) * ndim, dtype=node.dtype)
    return np.empty((0,) * ndim, dtype=node.dtype)
