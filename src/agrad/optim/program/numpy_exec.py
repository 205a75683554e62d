"""A lane program as one in-place NumPy kernel: ufuncs with ``out=`` on chunks.

:func:`compile_lane` turns a :class:`~agrad.optim.program.plan.LanePlan` into
``kernel(scalars)(*columns, *temps)``: each instruction is one ufunc call writing into
the buffer the plan chose (a column, in place, or a scratch chunk). The kernel works
on any equal-shaped views of the columns, so :mod:`agrad.optim.fastpath` runs it on
cache-sized chunks of large arrays and on one gathered buffer holding all the small
ones. Each instruction is the generic path's operation on the same operands in the
same order, so the result is bitwise the generic path's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agrad.optim.program.plan import LanePlan

__all__ = ["SUPPORTED", "compile_lane"]


def _ufuncs() -> dict[str, Any]:
    import numpy as np

    return {
        "add": np.add,
        "subtract": np.subtract,
        "multiply": np.multiply,
        "divide": np.divide,
        "maximum": np.maximum,
        "minimum": np.minimum,
        "pow": np.power,
        "negative": np.negative,
        "sqrt": np.sqrt,
        "abs": np.abs,
        "sign": np.sign,
        "square": np.square,
        "exp": np.exp,
        "expm1": np.expm1,
        "log": np.log,
        "log1p": np.log1p,
        "sin": np.sin,
        "cos": np.cos,
        "tanh": np.tanh,
        "reciprocal": np.reciprocal,
    }


#: The ops this executor runs (all elementwise, one floating dtype per lane).
SUPPORTED = frozenset(
    {"add", "subtract", "multiply", "divide", "maximum", "minimum", "pow", "negative"}
    | {"sqrt", "abs", "sign", "square", "exp", "expm1", "log", "log1p", "sin", "cos"}
    | {"tanh", "reciprocal", "full_like"}
)


def compile_lane(plan: LanePlan) -> Callable[[list[Any]], Callable[..., None]]:
    """``bind(scalars) -> kernel(*columns, *temps)`` for one lane plan.

    ``scalars`` are the step's host-scalar values; ``columns`` equal-shaped views of
    the lane's leaves (parameter, gradient, state) and ``temps`` scratch of that shape.
    """
    import numpy as np

    ufuncs = _ufuncs()
    n_cols = plan.n_columns

    def slot(buf: tuple) -> int:
        return buf[1] if buf[0] in ("in", "col") else n_cols + buf[1]

    steps = []
    for ins in plan.instrs:
        out = slot(ins.out)
        args = tuple(("b", slot(a)) if a[0] in ("in", "col", "tmp") else a for a in ins.args)
        steps.append((ins.op, args, out))
    copies = [(c, slot(src)) for c, src in plan.copies]

    def bind(scalars: list[Any]) -> Callable[..., None]:
        program = []
        for op, args, out in steps:
            const = tuple(scalars[a[1]] if a[0] == "s" else a[1] for a in args)
            if op == "full_like":
                program.append((None, (), out, const[1]))
                continue
            program.append((ufuncs[op], args, out, const))

        def kernel(*bufs: Any) -> None:
            for fn, args, out, const in program:
                if fn is None:
                    bufs[out][...] = const
                    continue
                vals = [bufs[a[1]] if a[0] == "b" else c for a, c in zip(args, const)]
                fn(*vals, out=bufs[out])
            for c, src in copies:
                np.copyto(bufs[c], bufs[src])

        return kernel

    bind.n_temps = plan.n_temps  # type: ignore[attr-defined]
    return bind
