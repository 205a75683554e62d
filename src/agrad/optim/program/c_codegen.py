"""C text for one fused elementwise block: the body CuPy compiles, and host C around it.

A block is a straight-line list of elementwise statements over same-shaped values
(:class:`CBlock`): named inputs (arrays, or scalars passed by value), statements
``target = op(args)``, and the values it writes out. :func:`kernel_body` turns it
into C statements that read the inputs by name and assign the outputs by name, one
element at a time; that text is the ``operation`` of a ``cupy.ElementwiseKernel``
and, unchanged, the loop body of :func:`host_source` (a C function the host compiler
builds, for testing the very same text without a GPU) and of :func:`cuda_source`
(a complete ``__global__`` kernel ``nvcc`` compiles). :func:`host_batch_source` runs
one text over many blocks in one host call; where a block sums its values
(:class:`CReduction`: norms, factored moments) or reads an input broadcast along rows
(:attr:`CInput.bcast`), it becomes :func:`host_rows_source`, the same body inside a
row loop that adds in NumPy's order.

Every intermediate has the C type of its dtype (``float`` for float32, ``double`` for
float64), so float32 stays float32 at every operation, as in NumPy. Literals are
written as C99 hexadecimal floats rounded to the value's type, so a Python float
hyperparameter means in C exactly what it means to a NumPy float32 array (NumPy
casts it to float32 first). Built with contraction off (``-ffp-contract=off``,
``--fmad=false``), ``+ - * /`` and ``sqrt`` are IEEE correctly rounded in C and
CUDA, so such blocks agree with NumPy bit for bit; ``exp``, ``log``, ``pow`` and
``tanh`` come from each platform's math library and agree to an ulp or two.
NaN propagation follows NumPy: ``maximum``/``minimum`` return NaN if either side is
NaN, ``sign(nan)`` is NaN and ``sign(-0.0)`` is ``0.0``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "C_TYPES",
    "CBlock",
    "CInput",
    "CReduction",
    "CStatement",
    "UnsupportedOp",
    "cuda_source",
    "host_batch_source",
    "host_rows_source",
    "host_source",
    "kernel_body",
    "literal",
    "supported_ops",
]

C_TYPES: dict[str, str] = {
    "float32": "float",
    "float64": "double",
    "bool": "bool",
    "int32": "int",
    "int64": "long long",
}

FLOAT_TYPES = ("float32", "float64")


class UnsupportedOp(NotImplementedError):
    """An operation that has no C form here; the executor runs its block another way."""


@dataclass(frozen=True)
class CInput:
    """An input of a block: ``name`` of dtype ``dtype`` (a dtype name: ``"float32"``...),
    an array read element by element, or (``scalar=True``) one value passed by value.

    ``bcast`` (host row loops only, :func:`host_rows_source`): ``"row"`` for an array
    broadcast along the block's last axis (one value per row: ``(..., m, 1)``),
    ``"elem"`` for one broadcast along other axes (``(..., 1, n)``)."""

    name: str
    dtype: str
    scalar: bool = False
    bcast: str = ""


@dataclass(frozen=True)
class CReduction:
    """Output ``out``: the sum (``mean=True``: the mean) of value ``value`` over the
    block's elements (``kind="all"``), over its last axis (``"rows"``) or over its
    second-to-last axis (``"cols"``), computed in the loop that produces ``value``."""

    out: str
    value: str
    kind: str
    mean: bool = False


@dataclass(frozen=True)
class CStatement:
    """``target = op(*args)`` of dtype ``dtype``; an arg is a value's name or a Python number."""

    target: str
    op: str
    args: tuple[Any, ...]
    dtype: str


@dataclass
class CBlock:
    """A fused elementwise block: inputs, statements in order, and the values written out.

    ``outputs`` pairs an output parameter's name with the value it receives (an input's
    or a statement's name).
    """

    inputs: list[CInput]
    statements: list[CStatement]
    outputs: list[tuple[str, str]]
    reductions: list[CReduction] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)
    scalars: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for x in self.inputs:
            self.dtypes[x.name] = x.dtype
        self.scalars = frozenset(x.name for x in self.inputs if x.scalar)
        for s in self.statements:
            self.dtypes[s.target] = s.dtype

    def output_dtype(self, value: str) -> str:
        """The dtype of the value named ``value``."""
        return self.dtypes[value]


def _fn(name: str) -> Callable[[str, list[str]], str]:
    """A libm function: ``sqrtf`` for float, ``sqrt`` for double."""

    def emit(ctype: str, a: list[str]) -> str:
        suffix = "f" if ctype == "float" else ""
        return f"{name}{suffix}({', '.join(a)})"

    return emit


def _binary(op: str) -> Callable[[str, list[str]], str]:
    return lambda ctype, a: f"({a[0]} {op} {a[1]})"


_C_OPS: dict[str, Callable[[str, list[str]], str]] = {
    "add": _binary("+"),
    "subtract": _binary("-"),
    "multiply": _binary("*"),
    "divide": _binary("/"),
    "greater": _binary(">"),
    "greater_equal": _binary(">="),
    "less": _binary("<"),
    "less_equal": _binary("<="),
    "equal": _binary("=="),
    "not_equal": _binary("!="),
    "logical_and": _binary("&&"),
    "logical_or": _binary("||"),
    "logical_not": lambda ctype, a: f"(!{a[0]})",
    "negative": lambda ctype, a: f"(-{a[0]})",
    "positive": lambda ctype, a: a[0],
    "square": lambda ctype, a: f"({a[0]} * {a[0]})",
    "sqrt": _fn("sqrt"),
    "abs": _fn("fabs"),
    "exp": _fn("exp"),
    "expm1": _fn("expm1"),
    "log": _fn("log"),
    "log1p": _fn("log1p"),
    "tanh": _fn("tanh"),
    "sin": _fn("sin"),
    "cos": _fn("cos"),
    "pow": _fn("pow"),
    "reciprocal": lambda ctype, a: f"(({ctype})1 / {a[0]})",
    "isfinite": lambda ctype, a: f"((bool)isfinite({a[0]}))",
    "isnan": lambda ctype, a: f"((bool)isnan({a[0]}))",
    "maximum": lambda ctype, a: f"(({a[0]} > {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})",
    "minimum": lambda ctype, a: f"(({a[0]} < {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]})",
    "clip": lambda ctype, a: f"({a[0]} < {a[1]} ? {a[1]} : ({a[0]} > {a[2]} ? {a[2]} : {a[0]}))",
    # branch-free where the input is a number (random signs mispredict branches)
    "sign": lambda ctype, a: (
        f"({a[0]} != {a[0]} ? {a[0]} : ({ctype})(({a[0]} > 0) - ({a[0]} < 0)))"
    ),
    "where": lambda ctype, a: f"({a[0]} ? {a[1]} : {a[2]})",
    "copy": lambda ctype, a: a[0],
}

# NumPy's power with a scalar exponent takes these as the exact functions they equal.
_POW_SPECIAL = {2.0: "square", 0.5: "sqrt", -1.0: "reciprocal", 1.0: "copy"}


def supported_ops() -> frozenset[str]:
    """The operation names :func:`kernel_body` can write in C."""
    return frozenset(_C_OPS)


def literal(value: Any, dtype: str) -> str:
    """``value`` as a C literal of ``dtype``, exact: a hexadecimal float rounded to the type.

    ``literal(0.1, "float32")`` is ``0x1.99999ap-4f``, float32's nearest value to 0.1,
    which is what NumPy multiplies a float32 array by for ``x * 0.1``.
    """
    if dtype == "bool":
        return "true" if value else "false"
    if dtype not in FLOAT_TYPES:
        return f"(({C_TYPES[dtype]}){int(value)})"
    import numpy as np

    v = float(np.float32(value)) if dtype == "float32" else float(value)
    suffix = "f" if dtype == "float32" else ""
    if v != v:
        return f"(({C_TYPES[dtype]})NAN)"
    if v in (float("inf"), float("-inf")):
        return f"(({C_TYPES[dtype]}){'-' if v < 0 else ''}INFINITY)"
    return f"{v.hex()}{suffix}"


def _operand(arg: Any, block: CBlock, dtype: str) -> str:
    """``arg`` as C text of ``dtype``: a literal, or a name (cast if its dtype differs)."""
    if not isinstance(arg, str):
        return literal(arg, dtype)
    have = block.dtypes.get(arg)
    if have is None:
        raise ValueError(f"C block: value {arg!r} is used before it is defined")
    if have != dtype and have != "bool" and dtype in FLOAT_TYPES:
        return f"(({C_TYPES[dtype]}){arg})"
    return arg


def _operand_dtype(stmt: CStatement, block: CBlock) -> str:
    """The dtype operands of ``stmt`` are taken in: its first named array operand's float
    dtype (NumPy: a Python number takes the array's dtype), else the statement's own."""
    for a in stmt.args:
        if isinstance(a, str) and block.dtypes.get(a) in FLOAT_TYPES and a not in block.scalars:
            return block.dtypes[a]
    return stmt.dtype if stmt.dtype in FLOAT_TYPES else "float64"


def _expression(s: CStatement, block: CBlock) -> str:
    arg_dtype = _operand_dtype(s, block)
    ctype = C_TYPES[arg_dtype]
    if s.op == "astype":
        return f"(({C_TYPES[s.dtype]}){_operand(s.args[0], block, s.dtype)})"
    if s.op == "full_like":
        return _operand(s.args[-1], block, s.dtype)
    args = [_operand(a, block, arg_dtype) for a in s.args]
    if s.op == "pow":
        exp = s.args[1]
        if not isinstance(exp, str):
            special = _POW_SPECIAL.get(float(exp))
            if special is not None:
                return _C_OPS[special](ctype, args[:1])
        elif exp in block.scalars:
            e, x = args[1], args[0]
            cases = [
                f"{e} == {literal(v, arg_dtype)} ? {_C_OPS[op](ctype, [x])}"
                for v, op in _POW_SPECIAL.items()
            ]
            return f"({' : '.join(cases)} : {_C_OPS['pow'](ctype, args)})"
    emit = _C_OPS.get(s.op)
    if emit is None:
        raise UnsupportedOp(f"no C form for the elementwise operation {s.op!r}")
    return emit(ctype, args)


def kernel_body(block: CBlock) -> str:
    """The C statements of ``block``, one element: temporaries declared, outputs assigned.

    Inputs are read by name and outputs assigned by name, as ``cupy.ElementwiseKernel``
    binds them; raises :class:`UnsupportedOp` for an operation with no C form.
    """
    lines = []
    for s in block.statements:
        lines.append(f"const {C_TYPES[s.dtype]} {s.target} = {_expression(s, block)};")
    for out, value in block.outputs:
        if value not in block.dtypes:
            raise ValueError(f"C block: output {out!r} takes undefined value {value!r}")
        lines.append(f"{out} = {value};")
    return "\n".join(lines)


def _params(block: CBlock, array_ptr: Callable[[str, str, bool], str]) -> list[str]:
    params = []
    for x in block.inputs:
        ctype = C_TYPES[x.dtype]
        params.append(f"const {ctype} {x.name}" if x.scalar else array_ptr(ctype, x.name, True))
    for out, value in block.outputs:
        params.append(array_ptr(C_TYPES[block.output_dtype(value)], out, False))
    return params


def _loads(block: CBlock) -> tuple[list[str], list[str], list[str]]:
    """Per-element reads of the inputs, declarations of the outputs, and their stores."""
    reads = [
        f"const {C_TYPES[x.dtype]} {x.name} = {x.name}_p[i];" for x in block.inputs if not x.scalar
    ]
    decls = [f"{C_TYPES[block.output_dtype(v)]} {out};" for out, v in block.outputs]
    stores = [f"{out}_p[i] = {out};" for out, _ in block.outputs]
    return reads, decls, stores


def _indent(lines: Sequence[str], n: int) -> str:
    return "\n".join(" " * n + ln for ln in "\n".join(lines).splitlines())


def host_source(name: str, block: CBlock) -> str:
    """A C99 function ``void name(long long n, inputs..., outputs...)`` looping the body.

    Array inputs and outputs are pointers to ``n`` contiguous elements (suffix ``_p``),
    scalar inputs are values: the host-CPU twin of the CuPy kernel, same body text.
    """

    def ptr(ctype: str, nm: str, const: bool) -> str:
        return f"{'const ' if const else ''}{ctype} *restrict {nm}_p"

    reads, decls, stores = _loads(block)
    params = ", ".join(["long long n", *_params(block, ptr)])
    body = [*reads, *decls, kernel_body(block), *stores]
    return (
        "#include <math.h>\n#include <stdbool.h>\n\n"
        f"void {name}({params}) {{\n"
        "    for (long long i = 0; i < n; ++i) {\n"
        f"{_indent(body, 8)}\n"
        "    }\n}\n"
    )


def cuda_source(name: str, block: CBlock) -> str:
    """A complete CUDA translation unit: ``extern "C" __global__ void name(n, ...)``.

    A grid-stride loop around the same body CuPy's ``ElementwiseKernel`` gets, with the
    same parameter types; what ``nvcc`` compiles in the tests where it exists.
    """

    def ptr(ctype: str, nm: str, const: bool) -> str:
        return f"{'const ' if const else ''}{ctype} *__restrict__ {nm}_p"

    reads, decls, stores = _loads(block)
    params = ", ".join(["long long n", *_params(block, ptr)])
    body = [*reads, *decls, kernel_body(block), *stores]
    return (
        "#include <math.h>\n\n"
        f'extern "C" __global__ void {name}({params}) {{\n'
        "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
        "         i += (long long)blockDim.x * gridDim.x) {\n"
        f"{_indent(body, 8)}\n"
        "    }\n}\n"
    )


def host_batch_source(
    name: str, block: CBlock, slots: Sequence[int], buffers: Sequence[str]
) -> str:
    """C99 text running ``block`` on many blocks of the same text in one call, in place.

    The entry point is ``void name(long long nb, const long long *n, void *const *ptrs,
    const double *sv, long long ss)``: block ``b`` works on ``n[b]`` contiguous
    elements of its buffers ``ptrs[k * nb + b]`` (buffer ``k`` of dtype
    ``buffers[k]``), and reads its scalar inputs, in order, from ``sv[b * ss + j]``
    (``ss = 0``: every block reads the same values), each cast to its dtype (a float32
    value or an integer below 2**53 passes through a ``double`` exactly).
    ``slots`` gives, for every array input and then every output of ``block``, the
    buffer it reads or writes: an input and an output given the same buffer are read
    and written through one pointer (the in-place update of a parameter or state
    array; every input of an element is read before any output of it is written), so
    every pointer may be ``restrict``: distinct buffers are distinct memory. Stores
    cast to the buffer's type, as an assignment ``buf[...] = value`` does. The loop
    body is :func:`kernel_body`'s text, as in :func:`host_source`.
    """
    if block.reductions or any(x.bcast for x in block.inputs):
        return host_rows_source(name, block, slots, buffers)
    arrays = [x for x in block.inputs if not x.scalar]
    scalars = [x for x in block.inputs if x.scalar]
    if len(slots) != len(arrays) + len(block.outputs):
        raise ValueError(f"{name}: {len(slots)} slots for {len(arrays)} inputs and outputs")
    out_slots = list(slots[len(arrays) :])
    written = set(out_slots)
    params = ["long long n"]
    casts = []
    for k, dtype in enumerate(buffers):
        ctype = C_TYPES[dtype]
        const = "" if k in written else "const "
        params.append(f"{const}{ctype} *restrict b{k}")
        casts.append(f"({const}{ctype} *)ptrs[{k} * nb + b]")
    params += [f"const {C_TYPES[x.dtype]} {x.name}" for x in scalars]
    casts += [f"({C_TYPES[x.dtype]})v[{j}]" for j, x in enumerate(scalars)]
    reads = [f"const {C_TYPES[x.dtype]} {x.name} = b{s}[i];" for x, s in zip(arrays, slots)]
    decls = [f"{C_TYPES[block.output_dtype(v)]} {out};" for out, v in block.outputs]
    stores = [
        f"b{s}[i] = ({C_TYPES[buffers[s]]}){out};" for (out, _), s in zip(block.outputs, out_slots)
    ]
    body = [*reads, *decls, kernel_body(block), *stores]
    return (
        f"static void {name}_one({', '.join(params)}) {{\n"
        "    for (long long i = 0; i < n; ++i) {\n"
        f"{_indent(body, 8)}\n"
        "    }\n}\n\n"
        f"void {name}(long long nb, const long long *restrict n, void *const *restrict ptrs,\n"
        f"          const double *restrict sv, long long ss) {{\n"
        "    for (long long b = 0; b < nb; ++b) {\n"
        "        const double *v = sv + b * ss;\n"
        "        (void)v;\n"
        f"        {name}_one({', '.join(['n[b]', *casts])});\n"
        "    }\n}\n"
    )


def _reduced_dtype(block: CBlock, r: CReduction) -> str:
    return block.dtypes[r.value]


def host_rows_source(name: str, block: CBlock, slots: Sequence[int], buffers: Sequence[str]) -> str:
    """C99 text running ``block`` row by row, with fused reductions and broadcast inputs.

    The entry point is :func:`host_batch_source`'s, except that ``n`` holds five
    numbers per block, ``n[5 * b : 5 * b + 5] = (N, R, L, m, ncol)``: ``N`` elements
    in ``R`` rows of ``L`` (the last axis), ``m`` rows per matrix (the second-to-last
    axis) and ``ncol`` column sums (``N / (m L)`` matrices times ``L``). A block with
    only ``"all"`` reductions and no broadcast input is run as one row (``R = 1``).

    ``slots`` gives the buffers of the array inputs, then the outputs, then the
    :attr:`CBlock.reductions`, then one ``int64`` row-offset table per broadcast input
    (:attr:`CInput.bcast`: ``"row"`` reads ``x[off[r]]`` for every element of row
    ``r``, ``"elem"`` reads ``x[off[r] + j]``).

    Sums over a row (``"rows"``, and ``"all"`` on one row) are NumPy's pairwise sum
    (``0 + pairwise(row)``: 8 accumulators over leaves of at most 128 elements, halves
    cut at multiples of 8), in the value's dtype, with the value computed inside the
    leaves: bitwise ``numpy.sum`` of a contiguous array. Column sums (``"cols"``) add
    the rows in order, as ``numpy.sum(axis=-2)`` does: bitwise too. ``"all"`` over
    several rows adds the rows' pairwise sums in ``double``: equal to NumPy's
    ``sum`` to rounding, not bitwise. A mean is the sum divided by the count in the
    value's dtype, as ``numpy.mean``.
    """
    arrays = [x for x in block.inputs if not x.scalar]
    scalars = [x for x in block.inputs if x.scalar]
    bcast = [x for x in arrays if x.bcast]
    reds = block.reductions
    n_slots = len(arrays) + len(block.outputs) + len(reds) + len(bcast)
    if len(slots) != n_slots:
        raise ValueError(f"{name}: {len(slots)} slots for {n_slots} buffers")
    in_slots = list(slots[: len(arrays)])
    out_slots = list(slots[len(arrays) : len(arrays) + len(block.outputs)])
    red_slots = list(slots[len(arrays) + len(block.outputs) : len(slots) - len(bcast)])
    off_slots = dict(zip((x.name for x in bcast), slots[len(slots) - len(bcast) :]))
    written = set(out_slots) | set(red_slots)
    params, casts, args = [], [], []
    for k, dtype in enumerate(buffers):
        ctype = C_TYPES[dtype]
        const = "" if k in written else "const "
        params.append(f"{const}{ctype} *restrict b{k}")
        casts.append(f"({const}{ctype} *)ptrs[{k} * nb + b]")
        args.append(f"b{k}")
    params += [f"const {C_TYPES[x.dtype]} {x.name}" for x in scalars]
    casts += [f"({C_TYPES[x.dtype]})v[{j}]" for j, x in enumerate(scalars)]
    args += [x.name for x in scalars]
    reads = []
    for x, s in zip(arrays, in_slots):
        index = {"": "i", "row": f"b{off_slots.get(x.name)}[r]"}.get(
            x.bcast, f"b{off_slots.get(x.name)}[r] + j"
        )
        reads.append(f"const {C_TYPES[x.dtype]} {x.name} = b{s}[{index}];")
    decls = [f"{C_TYPES[block.output_dtype(v)]} {out};" for out, v in block.outputs]
    stores = [
        f"b{s}[i] = ({C_TYPES[buffers[s]]}){out};" for (out, _), s in zip(block.outputs, out_slots)
    ]
    for red, s in zip(reds, red_slots):
        if red.kind == "cols":
            stores.append(f"b{s}[cb + j] += ({C_TYPES[buffers[s]]}){red.value};")
    pairwise = [(k, red) for k, red in enumerate(reds) if red.kind in ("all", "rows")]
    body = [*reads, *decls, kernel_body(block), *stores]

    def element(index: str, tail: list[str]) -> list[str]:
        inner = [f"const long long i = {index};", "const long long j = i - rs;", *body, *tail]
        return ["{", *("    " + ln for ln in "\n".join(inner).splitlines()), "}"]

    types = {k: C_TYPES[_reduced_dtype(block, red)] for k, red in pairwise}
    value = {k: red.value for k, red in pairwise}
    where = ["long long r", "long long cb", "long long rs"]
    parts = []
    if pairwise:
        seg_params = [*params, *where, "long long lo", "long long cnt"]
        seg_params += [f"{types[k]} *restrict out{k}" for k in types]
        call = [*args, "r", "cb", "rs"]
        halves = [f"{types[k]} x{k}, y{k};" for k in types]
        halves.append(f"{name}_seg({', '.join([*call, 'lo', 'h', *(f'&x{k}' for k in types)])});")
        halves.append(
            f"{name}_seg({', '.join([*call, 'lo + h', 'cnt - h', *(f'&y{k}' for k in types)])});"
        )
        halves += [f"*out{k} = x{k} + y{k};" for k in types]
        small = [f"{types[k]} acc{k} = -({types[k]})0;" for k in types]
        small += ["for (long long q = 0; q < cnt; ++q)"]
        small += element("lo + q", [f"acc{k} += {value[k]};" for k in types])
        small += [f"*out{k} = acc{k};" for k in types]
        leaf = [f"{types[k]} p{k}[8];" for k in types]
        leaf += ["for (long long u = 0; u < 8; ++u)"]
        leaf += element("lo + u", [f"p{k}[u] = {value[k]};" for k in types])
        leaf += ["long long q = 8;", "const long long end = cnt - cnt % 8;"]
        leaf += ["for (; q < end; q += 8) {", "    for (long long u = 0; u < 8; ++u)"]
        leaf += [
            "    " + ln for ln in element("lo + q + u", [f"p{k}[u] += {value[k]};" for k in types])
        ]
        leaf += ["}"]
        leaf += [
            f"{types[k]} res{k} = ((p{k}[0] + p{k}[1]) + (p{k}[2] + p{k}[3])) + "
            f"((p{k}[4] + p{k}[5]) + (p{k}[6] + p{k}[7]));"
            for k in types
        ]
        leaf += ["for (; q < cnt; ++q)"]
        leaf += element("lo + q", [f"res{k} += {value[k]};" for k in types])
        leaf += [f"*out{k} = res{k};" for k in types]
        parts.append(
            f"static void {name}_seg({', '.join(seg_params)}) {{\n"
            "    if (cnt > 128) {\n"
            "        long long h = cnt / 2;\n"
            "        h -= h % 8;\n"
            f"{_indent(halves, 8)}\n"
            "        return;\n"
            "    }\n"
            "    if (cnt < 8) {\n"
            f"{_indent(small, 8)}\n"
            "        return;\n"
            "    }\n"
            f"{_indent(leaf, 4)}\n"
            "}\n"
        )
    one = []
    for red, s in zip(reds, red_slots):
        if red.kind == "cols":
            one.append(f"for (long long q = 0; q < ncol; ++q) b{s}[q] = 0;")
        elif red.kind == "all":
            one.append(f"double total{s} = 0.0;")
    row = [
        "const long long rs = r * L;",
        "const long long cb = m > 0 ? (r / m) * L : 0;",
        "(void)cb;",
    ]
    if pairwise:
        row += [f"{types[k]} sum{k};" for k in types]
        row.append(
            f"{name}_seg({', '.join([*args, 'r', 'cb', 'rs', 'rs', 'L', *(f'&sum{k}' for k in types)])});"
        )
    else:
        row += ["for (long long q = 0; q < L; ++q)", *element("rs + q", [])]
    for k, red in enumerate(reds):
        s = red_slots[k]
        ctype = C_TYPES[buffers[s]]
        if red.kind == "rows":
            got = f"(({ctype})0 + sum{k})"
            row.append(f"b{s}[r] = {f'{got} / ({ctype})L' if red.mean else got};")
        elif red.kind == "all":
            row.append(f"total{s} += (double)sum{k};")
    one += ["for (long long r = 0; r < R; ++r) {", *("    " + ln for ln in row), "}"]
    for k, red in enumerate(reds):
        s = red_slots[k]
        ctype = C_TYPES[buffers[s]]
        if red.kind == "all":
            got = f"({ctype})total{s}"
            one.append(f"b{s}[0] = {f'{got} / ({ctype})N' if red.mean else got};")
        elif red.kind == "cols" and red.mean:
            one.append(f"for (long long q = 0; q < ncol; ++q) b{s}[q] = b{s}[q] / ({ctype})m;")
    one_params = ["long long N", "long long R", "long long L", "long long m", "long long ncol"]
    parts.append(
        f"static void {name}_one({', '.join([*one_params, *params])}) {{\n"
        "    (void)N;\n"
        f"{_indent(one, 4)}\n"
        "}\n\n"
        f"void {name}(long long nb, const long long *restrict n, void *const *restrict ptrs,\n"
        f"          const double *restrict sv, long long ss) {{\n"
        "    for (long long b = 0; b < nb; ++b) {\n"
        "        const double *v = sv + b * ss;\n"
        "        const long long *d = n + 5 * b;\n"
        "        (void)v;\n"
        f"        {name}_one({', '.join(['d[0]', 'd[1]', 'd[2]', 'd[3]', 'd[4]', *casts])});\n"
        "    }\n}\n"
    )
    return "\n".join(parts)
