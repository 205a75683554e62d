"""Split a :class:`~agrad.optim.program.ir.Program` into fused elementwise blocks and eager nodes.

The kernel-generating executors (CuPy: one ``ElementwiseKernel`` per block; Dask: one
task per chunk per block) share this partition. A *block* is a set of elementwise
nodes of one lane (parameter) and one result shape, computed in one pass over memory;
every other node (a reduction, a reshape, a matmul) runs *eagerly*, with the
backend's own function, between blocks. Elementwise work on 0-d values (a trust
ratio computed from two norms) is a block too: one launch or task instead of one
per operation.

Blocks are cut where a value must exist whole before the rest can go on: a node
reading an eager node's result (LAMB's trust ratio, read after a norm) or another
block's value starts a later *stage*. A node's stage is the largest of its arguments'
stages, plus one across an eager node or a block of another key; blocks are keyed by
``(lane, shape, stage)``. :func:`partition` returns the steps in an order that runs
every value after its arguments: per stage, the eager nodes, then the blocks.

The *per-step values* (nodes of no lane: a step count, ``t = count + 1``, bias
corrections, a schedule's value; :func:`~agrad.optim.program.ir.pre_nodes`) come
first, in steps of their own (:func:`is_pre`), and do not cut the lanes' blocks: a
lane's node reads them as it reads an input, so Adam's step is one block per
parameter after the pre steps (an executor passes them to each block as 0-d
arguments, or runs them eagerly: the CuPy executor does, so that Adam is one kernel).

A block reads its *inputs* (refs to nodes outside it, host scalars) and writes its
*outputs*: the nodes read outside it or that are a final value of the step
(``new_params``, ``new_state``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from agrad.optim.program.ir import ELEMENTWISE, NO_LANE, Program

__all__ = [
    "FUSED_OPS",
    "Block",
    "Eager",
    "dtype_name",
    "final_destinations",
    "input_nodes",
    "is_pre",
    "last_reads",
    "node_args",
    "partition",
    "run_node",
    "sources_first",
]

#: Elementwise operations a block may hold (``ir.ELEMENTWISE`` plus ``full_like``).
FUSED_OPS = ELEMENTWISE


class Eager(NamedTuple):
    """Node ``node`` run on its own, with the backend's function of the same name."""

    node: int


class Block(NamedTuple):
    """Fused elementwise nodes ``nodes`` (program order) of one lane, shape and stage.

    ``inputs``: the refs it reads from outside (``("n", i)`` nodes, ``("s", i)`` host
    scalars), in first-use order; ``outputs``: its nodes read outside it or written
    by the step, in program order; ``stage``: the blocks of one stage read nothing the
    others write, so an executor may run them in any order (or together).
    """

    nodes: tuple[int, ...]
    shape: tuple
    lane: int
    inputs: tuple[tuple, ...]
    outputs: tuple[int, ...]
    stage: int = 0


Step = Eager | Block


_DTYPE_NAMES: dict[Any, str] = {}


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float64"``, ``"bool"`` ...: the NumPy name of a backend dtype."""
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):
        pass
    import numpy as np

    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rsplit(".", 1)[-1]
    with contextlib.suppress(TypeError):  # an unhashable dtype: not cached
        _DTYPE_NAMES[dtype] = name
    return name


def _final_nodes(program: Program) -> set[int]:
    refs = [*program.new_params, *program.new_state]
    return {r[1] for r in refs if r is not None and r[0] == "n"}


def _fusable(program: Program, i: int) -> bool:
    n = program.nodes[i]
    return n.op in FUSED_OPS


def is_pre(program: Program, step: Step) -> bool:
    """Whether ``step`` computes per-step values of no parameter (a step count, bias
    corrections, a schedule's value): the steps :func:`partition` puts first."""
    i = step.node if isinstance(step, Eager) else step.nodes[0]
    return program.nodes[i].lane == NO_LANE


def _stages(
    program: Program, given: frozenset[int] = frozenset()
) -> tuple[list[int], list[tuple | None]]:
    nodes = program.nodes
    stage = [0] * len(nodes)
    key: list[tuple | None] = [None] * len(nodes)
    for i, n in enumerate(nodes):
        if n.op == "input" or i in given:
            continue
        fusable = _fusable(program, i)
        pre = n.lane == NO_LANE
        s = 0
        for a in n.args:
            if a[0] != "n":
                continue
            j = a[1]
            if nodes[j].op == "input" or j in given or (nodes[j].lane == NO_LANE and not pre):
                continue  # an input, a given value or a per-step value: computed before
            crossing = not fusable or key[j] is None or key[j][:2] != (n.lane, n.shape)
            s = max(s, stage[j] + (1 if crossing else 0))
        stage[i] = s
        if fusable:
            key[i] = (n.lane, n.shape, s)
    return stage, key


def partition(program: Program, given: frozenset[int] = frozenset()) -> list[Step]:
    """The steps of ``program``: :class:`Eager` nodes and fused :class:`Block` s, in run order.

    ``given``: nodes whose values the executor has before the step starts (the laneless
    per-step scalars of :func:`~agrad.optim.program.ir.pre_nodes`); they are read like
    inputs, so reading one cuts no block, and they are in no step.
    """
    nodes = program.nodes
    stage, key = _stages(program, frozenset(given))
    members: dict[tuple, list[int]] = {}
    eager: dict[int, list[int]] = {}
    for i, n in enumerate(nodes):
        if n.op == "input" or i in given:
            continue
        if key[i] is None:
            eager.setdefault(stage[i], []).append(i)
        else:
            members.setdefault(key[i], []).append(i)
    readers: dict[int, set[tuple | None]] = {}
    for i, n in enumerate(nodes):
        for a in n.args:
            if a[0] == "n":
                readers.setdefault(a[1], set()).add(key[i] if key[i] is not None else ("eager", i))
    final = _final_nodes(program)
    blocks: dict[int, list[Block]] = {}
    for k, idx in members.items():
        inside = set(idx)
        inputs: list[tuple] = []
        for i in idx:
            for a in nodes[i].args:
                if (a[0] == "n" and a[1] not in inside) or a[0] == "s":
                    if a not in inputs:
                        inputs.append(a)
        outputs = tuple(i for i in idx if i in final or readers.get(i, set()) - {k})
        block = Block(tuple(idx), k[1], k[0], tuple(inputs), outputs, k[2])
        blocks.setdefault(k[2], []).append(block)
    steps: list[Step] = []
    for s in sorted(set(eager) | set(blocks)):
        steps += [Eager(i) for i in eager.get(s, [])]
        steps += sorted(blocks.get(s, []), key=lambda b: b.nodes[0])
    # the per-step values first: every other step reads them as it reads an input
    return [s for s in steps if is_pre(program, s)] + [s for s in steps if not is_pre(program, s)]


def node_args(program: Program, i: int, env: dict[int, Any], scalars: list[Any]) -> Iterator[Any]:
    """The arguments of node ``i``: values of nodes from ``env``, host scalars' values,
    constants."""
    for a in program.nodes[i].args:
        if a[0] == "n":
            yield env[a[1]]
        elif a[0] == "s":
            yield scalars[a[1]]
        else:
            yield a[1]


def run_node(xp: Any, program: Program, i: int, env: dict[int, Any], scalars: list[Any]) -> Any:
    """Node ``i`` computed by namespace ``xp``'s function of the same name (``axis=`` ... from
    its attributes): how eager nodes run, and blocks where no kernel is made."""
    n = program.nodes[i]
    args = list(node_args(program, i, env, scalars))
    if n.op == "astype":
        return xp.astype(args[0], n.dtype)
    if n.op == "full_like":
        return xp.full_like(args[0], args[1], dtype=n.dtype)
    if n.op == "asarray":
        return xp.asarray(n.attr("value"), dtype=n.attr("dtype_to"))
    fn = xp
    for part in n.op.split("."):
        fn = getattr(fn, part)
    # ``reflected`` is how the recorder wrote ``1 - x``: the arguments are already swapped
    return fn(*args, **{k: v for k, v in n.attrs if k != "reflected"})


def final_destinations(program: Program) -> dict[int, list[tuple[str, int]]]:
    """Node -> the buffers that receive its value at the end of the step:
    ``("param", k)`` and ``("state", j)``; inputs returned unchanged are left out."""
    dest: dict[int, list[tuple[str, int]]] = {}
    targets = [("param", k, r) for k, r in enumerate(program.new_params)]
    targets += [("state", j, r) for j, r in enumerate(program.new_state)]
    for column, leaf, ref in targets:
        if ref is None or ref[0] != "n":
            continue
        n = program.nodes[ref[1]]
        if n.op == "input" and (n.attr("column"), n.attr("leaf")) == (column, leaf):
            continue
        dest.setdefault(ref[1], []).append((column, leaf))
    return dest


def input_nodes(program: Program) -> dict[tuple[str, int], int]:
    """``(column, leaf)`` -> the input node reading it."""
    return {
        (n.attr("column"), n.attr("leaf")): i
        for i, n in enumerate(program.nodes)
        if n.op == "input"
    }


def last_reads(program: Program, steps: list[Step]) -> dict[int, int]:
    """Node -> the index in ``steps`` of the last step reading it."""
    last: dict[int, int] = {}
    for s, step in enumerate(steps):
        members = (step.node,) if isinstance(step, Eager) else step.nodes
        for i in members:
            for a in program.nodes[i].args:
                if a[0] == "n":
                    last[a[1]] = s
    return last


def sources_first(
    copies: list[tuple[Any, Any]], copy: Callable[[Any], Any]
) -> list[tuple[Any, Any]]:
    """The final ``(source, destination)`` copies of a step, as one parallel assignment:
    a source that is itself a destination written here (a leaf's old value that is
    another leaf's new one: the parameters returned as new state) is replaced by
    ``copy(source)``, made now, before any destination is written."""
    written = {id(dst) for src, dst in copies if src is not dst}
    return [
        (copy(src) if src is not dst and id(src) in written else src, dst) for src, dst in copies
    ]
