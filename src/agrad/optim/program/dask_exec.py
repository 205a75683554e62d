"""The Dask executor: each fused elementwise block of a program is one task per chunk.

Dask arrays are immutable graphs, so a step makes new arrays. The generic path adds one
task per chunk for every operation of the rule (Adam: about fifteen); here each fused
:class:`~agrad.optim.program.fusion.Block` is one ``dask.array.blockwise`` layer
whose task computes the whole block on one chunk of each input (with the chunk's own
namespace: NumPy chunks with NumPy, CuPy chunks with CuPy) and returns all of the
block's outputs as a tuple; each output is then one ``getitem`` task per chunk. A step
of Adam on an array of ``c`` chunks is ``c`` compute tasks (plus ``3c`` to hand out
``p``, ``m``, ``v``), whatever the rule's length. Eager nodes (reductions: LAMB's
norms, a global norm) are Dask's own functions between blocks.

Inputs of a block are aligned by ``blockwise`` (a gradient chunked unlike its
parameter is rechunked to match, as Dask does for ``p + g``); smaller operands
broadcast by their trailing dimensions, 0-d ones and host scalars go whole to every
task. Inside a task on a NumPy chunk the block runs tile by tile (``TILE`` elements),
each ufunc writing with ``out=`` into its output's tile or a reused tile-sized scratch
buffer; other chunks (CuPy) run one call of their namespace per node.
"""

from __future__ import annotations

import hashlib
import operator
import string
import sys
from typing import Any

from agrad.optim._cache import LRUCache
from agrad.optim.program.fusion import (
    Block,
    Eager,
    Step,
    final_destinations,
    input_nodes,
    partition,
    run_node,
)
from agrad.optim.program.ir import Program

__all__ = ["DaskExecutor", "BlockTask"]

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

        self.program = program
        self.block = block
        self.token = tokenize(block, [program.nodes[i] for i in block.nodes])
        last: dict[int, int] = {}
        for pos, i in enumerate(block.nodes):
            for a in program.nodes[i].args:
                if a[0] == "n":
                    last[a[1]] = pos
        keep = set(block.outputs)
        self._dying = [
            tuple(
                j
                for j in {a[1] for a in program.nodes[i].args if a[0] == "n"}
                if last.get(j) == pos and j not in keep and j in set(block.nodes)
            )
            for pos, i in enumerate(block.nodes)
        ]

    def __repr__(self) -> str:
        return f"BlockTask({len(self.block.nodes)} nodes -> {len(self.block.outputs)})"

    def __call__(self, *inputs: Any) -> Any:
        arrays = [x for r, x in zip(self.block.inputs, inputs) if r[0] == "n"]
        np = sys.modules.get("numpy")
        if np is not None and self.block.shape and arrays:
            if all(type(x) is np.ndarray for x in arrays):
                shape = np.broadcast_shapes(*(x.shape for x in arrays))
                if shape and all(
                    x.ndim == 0 or (x.shape == shape and x.flags.c_contiguous) for x in arrays
                ):
                    outs = self._tiled(np, inputs, shape)
                    return outs[0] if len(outs) == 1 else tuple(outs)
        outs = self._whole(inputs)
        return outs[0] if len(outs) == 1 else tuple(outs)

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
        return [env[o] for o in self.block.outputs]

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
        outs = [np.empty(shape, dtype=nodes[o].dtype) for o in self.block.outputs]
        flat_out = {o: a.reshape(-1) for o, a in zip(self.block.outputs, outs)}
        size = outs[0].size if outs else 0
        pool: dict[Any, list[Any]] = {}
        for start in range(0, size, TILE):
            stop = min(start + TILE, size)
            env = {j: (v[start:stop] if v.ndim else v) for j, v in flat_in.items()}
            held: dict[int, Any] = {}
            for i, dying in zip(self.block.nodes, self._dying):
                n = nodes[i]
                fn = _ufunc(n.op) if n.op in _INPLACE_UFUNCS else None
                if fn is not None:
                    if i in flat_out:
                        out = flat_out[i][start:stop]
                    else:
                        dtype = np.dtype(n.dtype)
                        free = pool.get(dtype)
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
                        pool.setdefault(buf.dtype, []).append(buf)
            for buf in held.values():
                pool.setdefault(buf.dtype, []).append(buf)
        return outs


def _ufunc(op: str) -> Any:
    import numpy as np

    return {"abs": np.absolute, "pow": np.power}.get(op) or getattr(np, op, None)


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

    def _plan(self, program: Program) -> tuple[list[Step], dict, dict, list[BlockTask | None]]:
        got = self._plans.get(id(program))
        if got is None or got[0] is not program:
            steps = partition(program)
            tasks = [BlockTask(program, s) if isinstance(s, Block) else None for s in steps]
            got = (program, (steps, input_nodes(program), final_destinations(program), tasks))
            self._plans[id(program)] = got
        return got[1]

    def evaluate(
        self,
        program: Program,
        params: list[Any],
        grads: list[Any],
        state_leaves: list[Any],
        scalars: list[Any],
    ) -> tuple[list[Any], list[Any]]:
        """The new parameters and state leaves (lazy Dask arrays) of one step.

        A state leaf the step leaves unchanged, or that is not an array, comes back as it
        was given; nothing is computed (``dask.persist`` the results to run the step).
        """
        steps, inputs, destinations, tasks = self._plan(program)
        columns = {"param": params, "grad": grads, "state": state_leaves}
        env: dict[int, Any] = {i: columns[c][k] for (c, k), i in inputs.items()}
        for step, task in zip(steps, tasks):
            if isinstance(step, Eager):
                env[step.node] = run_node(self.xp, program, step.node, env, scalars)
            else:
                env.update(zip(step.outputs, _blockwise(program, step, task, env, scalars)))
        new = {"param": list(params), "state": list(state_leaves)}
        for node, dests in destinations.items():
            for column, leaf in dests:
                new[column][leaf] = env[node]
        return new["param"], new["state"]


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
