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
task. Inside a task the block's nodes run in order with ``out=`` into buffers freed by
dead values, so a chunk needs about as many temporaries as values live at once.
"""

from __future__ import annotations

import operator
import string
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
_INPLACE_UFUNCS = frozenset(
    {"add", "subtract", "multiply", "divide", "maximum", "minimum", "sqrt", "negative", "abs"}
    | {"square", "exp", "log", "sign"}
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
        import array_api_compat

        block = self.block
        env: dict[int, Any] = {}
        scalars: dict[int, Any] = {}
        arrays = []
        for r, x in zip(block.inputs, inputs):
            if r[0] == "n":
                env[r[1]] = x
                arrays.append(x)
            else:
                scalars[r[1]] = x
        xp = array_api_compat.array_namespace(*arrays) if arrays else None
        if xp is None:
            import array_api_compat.numpy as xp
        free: list[Any] = []
        for i, dying in zip(block.nodes, self._dying):
            env[i] = self._compute(xp, i, env, scalars, free)
            for j in dying:
                free.append(env.pop(j))
        outs = tuple(env[o] for o in block.outputs)
        return outs[0] if len(outs) == 1 else outs

    def _compute(
        self, xp: Any, i: int, env: dict[int, Any], scalars: dict[int, Any], free: list[Any]
    ) -> Any:
        n = self.program.nodes[i]
        if n.op in _INPLACE_UFUNCS and free and _numpy_like(xp):
            for k, buf in enumerate(free):
                if _is_ndarray(buf) and buf.shape == n.shape and buf.dtype == n.dtype:
                    args = [
                        env[a[1]] if a[0] == "n" else (scalars[a[1]] if a[0] == "s" else a[1])
                        for a in n.args
                    ]
                    fn = _ufunc(n.op)
                    if fn is not None:
                        del free[k]
                        return fn(*args, out=buf)
                    break
        return run_node(xp, self.program, i, env, scalars)  # type: ignore[arg-type]


def _is_ndarray(x: Any) -> bool:
    import numpy as np

    return isinstance(x, np.ndarray) and x.ndim > 0


def _numpy_like(xp: Any) -> bool:
    return "numpy" in getattr(xp, "__name__", "")


def _ufunc(op: str) -> Any:
    import numpy as np

    return np.absolute if op == "abs" else getattr(np, op, None)


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
    from dask.base import tokenize

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
        args += [x, out_ind[ndim - x.ndim :] if x.ndim else None]
    nodes = program.nodes
    metas = [_meta(env, block, nodes[o]) for o in block.outputs]
    one = len(block.outputs) == 1
    out = da.blockwise(
        task,
        out_ind,
        *args,
        dtype=metas[0].dtype if one else np.float64,
        meta=metas[0] if one else np.empty((0,) * ndim),
        name=f"agrad-block-{tokenize(task.token, *args)}",
    )
    if one:
        return [out]
    return [
        da.map_blocks(operator.getitem, out, k, dtype=m.dtype, meta=m) for k, m in enumerate(metas)
    ]


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
