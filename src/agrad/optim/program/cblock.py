"""A fused :class:`~agrad.optim.program.fusion.Block` of a program as a C block.

Names are fixed by the program: node ``i`` is ``v{i}`` (an input when the block reads
it from outside, a ``const`` temporary when the block computes it), host scalar ``k``
is the by-value parameter ``s{k}``, and the output receiving node ``i`` is ``o{i}``.
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


def _arg(a: tuple) -> Any:
    if a[0] == "n":
        return f"v{a[1]}"
    if a[0] == "s":
        return f"s{a[1]}"
    return a[1]


def c_block(program: Program, block: Block, types: tuple[str, ...]) -> CBlock:
    """The :class:`~agrad.optim.program.c_codegen.CBlock` of ``block``; ``types`` from
    :func:`scalar_types`."""
    it = iter(types)
    inputs = []
    for r in block.inputs:
        if r[0] == "n":
            inputs.append(CInput(f"v{r[1]}", dtype_name(program.nodes[r[1]].dtype)))
        else:
            inputs.append(CInput(f"s{r[1]}", next(it), scalar=True))
    statements = []
    for i in block.nodes:
        n = program.nodes[i]
        statements.append(
            CStatement(f"v{i}", n.op, tuple(_arg(a) for a in n.args), dtype_name(n.dtype))
        )
    outputs = [(f"o{i}", f"v{i}") for i in block.outputs]
    return CBlock(inputs, statements, outputs)
