"""A fused :class:`~agrad.optim.program.fusion.Block` of a program as a C block.

Names are local to the block, so blocks doing the same work on different parameters
have the same text (one compiled kernel for all the parameters of a shape class, and
one host build in the tests): the ``k``-th array input is ``a{k}``, the ``k``-th host
scalar ``s{k}`` (by value), the ``k``-th node computed ``t{k}`` and the ``k``-th
output ``o{k}``.
Host scalars are typed by their Python type at the step (``float`` is passed as a
C ``double`` and rounded to the operation's type where it is used, as NumPy rounds
a Python float to a float32 array's dtype), so a program's kernel is built once per
tuple of those types.
"""

from __future__ import annotations

from typing import Any

from agrad.optim.program.c_codegen import CBlock, CInput, CStatement
from agrad.optim.program.fusion import Block, dtype_name
from agrad.optim.program.ir import Program

__all__ = ["c_block", "scalar_dtype", "scalar_types"]


def scalar_dtype(value: Any) -> str:
    """The C-side dtype of a host scalar's value: ``bool``, ``int64`` or ``float64``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    return "float64"


def scalar_types(block: Block, scalars: list[Any]) -> tuple[str, ...]:
    """The dtypes of the host scalars ``block`` reads, at this step: part of its kernel's key."""
    return tuple(scalar_dtype(scalars[r[1]]) for r in block.inputs if r[0] == "s")


def c_block(program: Program, block: Block, types: tuple[str, ...]) -> CBlock:
    """The :class:`~agrad.optim.program.c_codegen.CBlock` of ``block``; ``types`` from
    :func:`scalar_types`."""
    it = iter(types)
    names: dict[tuple, str] = {}
    inputs = []
    for r in block.inputs:
        if r[0] == "n":
            names[r] = f"a{sum(1 for k in names if k[0] == 'n')}"
            inputs.append(CInput(names[r], dtype_name(program.nodes[r[1]].dtype)))
        else:
            names[r] = f"s{sum(1 for k in names if k[0] == 's')}"
            inputs.append(CInput(names[r], next(it), scalar=True))
    statements = []
    for k, i in enumerate(block.nodes):
        n = program.nodes[i]
        args = tuple(names[a] if a[0] in ("n", "s") else a[1] for a in n.args)
        names[("n", i)] = f"t{k}"
        statements.append(CStatement(f"t{k}", n.op, args, dtype_name(n.dtype)))
    outputs = [(f"o{k}", names[("n", i)]) for k, i in enumerate(block.outputs)]
    return CBlock(inputs, statements, outputs)
