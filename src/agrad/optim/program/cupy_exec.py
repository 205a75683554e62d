"""The CuPy executor: each fused elementwise block of a program is one ``ElementwiseKernel``.

For a recorded :class:`~agrad.optim.program.ir.Program`, :func:`~agrad.optim.program.fusion.partition`
gives the fused blocks and the eager nodes between them. Each block becomes one
``cupy.ElementwiseKernel`` whose ``operation`` is
:func:`~agrad.optim.program.c_codegen.kernel_body` of the block (built once per
program and per types of the host scalars it reads, then cached by CuPy on disk as
well); eager nodes (reductions, reshapes, 0-d arithmetic) run as the CuPy functions
of the same name. The per-step values (a step count, bias corrections: the nodes of
no lane) are computed first, as the generic path computes them
(:func:`~agrad.optim.program.eager.run_nodes`), and reach the kernels as 0-d array
arguments (no copy to the host). A step is then one kernel launch per block: Adam on one parameter
is one launch that reads ``p, g, m, v`` once and writes ``p, m, v`` once, where the
generic path launches one kernel and allocates one temporary per operation.

A block writes a final value straight into its parameter or state buffer (CuPy reads
every input of an element before the body writes it) when no later step reads that
buffer's old value; otherwise into a new array, copied into the buffer after the last
step. Kernels are compiled with ``--fmad=false``, so ``+ - * / sqrt`` round as NumPy
rounds them (no fused multiply-add).

The executor takes the ``cupy`` module and its Array API namespace as arguments, so the
tests run it on the CPU with a stand-in whose ``ElementwiseKernel`` compiles the same
operation text with the host C compiler
(:func:`agrad.optim.program.host_c.host_kernel`).
"""

from __future__ import annotations

import hashlib
from operator import methodcaller
from typing import Any

from agrad.optim._cache import LRUCache
from agrad.optim.program.c_codegen import UnsupportedOp, kernel_body
from agrad.optim.program.cblock import c_block, scalar_types
from agrad.optim.program.eager import run_nodes
from agrad.optim.program.fusion import (
    Block,
    Eager,
    Step,
    dtype_name,
    final_destinations,
    input_nodes,
    is_pre,
    last_reads,
    partition,
    run_node,
    sources_first,
)
from agrad.optim.program.ir import Program, pre_nodes

__all__ = ["CupyExecutor", "KERNEL_OPTIONS", "kernel_params"]

#: NVRTC options of every kernel: no contraction of ``a * b + c`` into one rounding.
KERNEL_OPTIONS = ("--fmad=false",)
_PLANS_KEPT = 64
_KERNELS_KEPT = 1024


def kernel_params(program: Program, block: Block, types: tuple[str, ...]) -> tuple[str, str]:
    """``(in_params, out_params)`` of the block's ``ElementwiseKernel``: ``"float32 v2, ..."``."""
    cb = c_block(program, block, types)
    ins = ", ".join(f"{x.dtype} {x.name}" for x in cb.inputs)
    outs = ", ".join(f"{cb.output_dtype(v)} {o}" for o, v in cb.outputs)
    return ins, outs


class _Plan:
    """What a program needs at every step: its steps, write targets and kernels."""

    __slots__ = ("destinations", "eager", "in_place", "inputs", "kernels", "pre", "steps")

    def __init__(self, program: Program):
        self.steps: list[Step] = partition(program)
        self.inputs = input_nodes(program)
        self.destinations = final_destinations(program)
        last = last_reads(program, self.steps)
        # (step index, node) -> destination written by the kernel itself
        self.in_place: dict[tuple[int, int], tuple[str, int]] = {}
        for s, step in enumerate(self.steps):
            if not isinstance(step, Block) or is_pre(program, step):
                continue
            for o in step.outputs:
                for dest in self.destinations.get(o, ()):
                    source = self.inputs.get(dest)
                    if source in self.destinations:
                        continue  # its old value is another leaf's new value, copied at the end
                    if source is None or last.get(source, -1) <= s:
                        self.in_place[(s, o)] = dest
                        break
        self.kernels: dict[tuple[int, tuple[str, ...]], Any] = {}
        #: step index -> whether it runs as CuPy functions (the per-step values: a few
        #: 0-d operations, cheaper than a kernel and no device-to-host copy)
        self.eager = [isinstance(st, Eager) or is_pre(program, st) for st in self.steps]
        self.pre = pre_nodes(program)


class CupyExecutor:
    """Runs programs on CuPy arrays with generated ``ElementwiseKernel`` s (see the module)."""

    name = "cupy"

    def __init__(self, cupy: Any = None, xp: Any = None):
        self._cupy = cupy
        self._xp = xp
        self._plans = LRUCache(_PLANS_KEPT)
        self._kernels = LRUCache(_KERNELS_KEPT)
        self._warm = LRUCache(_KERNELS_KEPT)  # id -> kernel (kept alive: ids stay unique)

    @property
    def cupy(self) -> Any:
        if self._cupy is None:
            import cupy

            self._cupy = cupy
        return self._cupy

    @property
    def xp(self) -> Any:
        if self._xp is None:
            import array_api_compat.cupy

            self._xp = array_api_compat.cupy
        return self._xp

    def plan(self, program: Program) -> _Plan:
        """The cached plan of ``program`` (made on first use)."""
        key = id(program)
        got = self._plans.get(key)
        if got is None or got[0] is not program:
            got = (program, _Plan(program))
            self._plans[key] = got
        return got[1]

    def kernel(self, program: Program, plan: _Plan, s: int, types: tuple[str, ...]) -> Any:
        """The ``ElementwiseKernel`` of block step ``s`` (``None``: the block has no C form)."""
        key = (s, types)
        if key not in plan.kernels:
            block = plan.steps[s]
            try:
                body = kernel_body(c_block(program, block, types))
            except UnsupportedOp:
                plan.kernels[key] = None
            else:
                ins, outs = kernel_params(program, block, types)
                plan.kernels[key] = self._shared_kernel(ins, outs, body)
        return plan.kernels[key]

    def _shared_kernel(self, ins: str, outs: str, body: str) -> Any:
        """One ``ElementwiseKernel`` per distinct text: parameters of one shape class
        (and other programs doing the same work) share it and its compiled binary."""
        text = f"{ins}|{outs}|{body}"
        kernel = self._kernels.get(text)
        if kernel is None:
            name = "agrad_" + hashlib.sha256(text.encode()).hexdigest()[:12]
            kernel = self.cupy.ElementwiseKernel(ins, outs, body, name, options=KERNEL_OPTIONS)
            self._kernels[text] = kernel
        return kernel

    def prepare(self, program: Program, scalars: list[Any]) -> bool:
        """Compile every kernel the step will launch (a launch on one element, once per
        kernel text), so that a kernel that does not compile fails before the first
        write: False then, and that block runs as CuPy functions from then on."""
        plan = self.plan(program)
        for s, step in enumerate(plan.steps):
            if plan.eager[s]:
                continue
            types = scalar_types(step, scalars)
            if (s, types) in plan.kernels:
                continue
            try:
                kernel = self.kernel(program, plan, s, types)
                if kernel is not None and id(kernel) not in self._warm:
                    kernel(*self._dummies(program, step, scalars))
                    self._warm[id(kernel)] = kernel
            except Exception:
                plan.kernels[(s, types)] = None
                return False
        return True

    def _dummies(self, program: Program, block: Block, scalars: list[Any]) -> list[Any]:
        cp = self.cupy
        ins = [
            cp.zeros((1,), dtype=dtype_name(program.nodes[r[1]].dtype))
            if r[0] == "n"
            else scalars[r[1]]
            for r in block.inputs
        ]
        outs = [cp.empty((1,), dtype=dtype_name(program.nodes[o].dtype)) for o in block.outputs]
        return ins + outs

    def run(
        self,
        program: Program,
        params: list[Any],
        grads: list[Any],
        state_leaves: list[Any],
        scalars: list[Any],
    ) -> bool:
        """One step: the new parameters and state arrays written into ``params`` and
        ``state_leaves``; returns True (it never declines a recorded program)."""
        plan = self.plan(program)
        columns = {"param": params, "grad": grads, "state": state_leaves}
        env: dict[int, Any] = {i: columns[c][k] for (c, k), i in plan.inputs.items()}
        # the per-step values (a count, bias corrections) as the generic path computes
        # them, 0-d CuPy arrays passed to the kernels: no device-to-host copy
        env.update(run_nodes(program, plan.pre, self.xp, state_leaves, scalars))
        written: set[int] = set()
        for s, step in enumerate(plan.steps):
            if isinstance(step, Eager):
                env[step.node] = run_node(self.xp, program, step.node, env, scalars)
                continue
            if plan.eager[s]:
                continue  # a per-step value, computed above
            kernel = self.kernel(program, plan, s, scalar_types(step, scalars))
            if kernel is None:
                for i in step.nodes:
                    env[i] = run_node(self.xp, program, i, env, scalars)
                continue
            args = [env[r[1]] if r[0] == "n" else scalars[r[1]] for r in step.inputs]
            outs = []
            for o in step.outputs:
                dest = plan.in_place.get((s, o))
                if dest is not None:
                    outs.append(columns[dest[0]][dest[1]])
                    written.add(o)
                else:
                    n = program.nodes[o]
                    outs.append(self.cupy.empty(n.shape, dtype=dtype_name(n.dtype)))
            kernel(*args, *outs)
            env.update(zip(step.outputs, outs))
        copies = [
            (env[node], columns[column][leaf])
            for node, dests in plan.destinations.items()
            for column, leaf in dests
        ]
        for value, buf in sources_first(copies, methodcaller("copy")):
            if buf is not value:
                buf[...] = value
        return True
