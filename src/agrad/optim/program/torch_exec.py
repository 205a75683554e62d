"""A lane program as a torch multi-tensor program, or one of torch's fused kernels.

:func:`compile_group` turns a :class:`~agrad.optim.program.plan.LanePlan` into a
function of ``(columns, scalars)`` where each column is the list of one leaf kind
(parameters, gradients, ``exp_avg`` ...) over a group of parameters: every instruction
is one ``torch._foreach_*`` call over the lists, in place where the plan computes into
a column or a dead value, and a few peephole fusions cut passes over memory:

- ``add(x, multiply(a, b))`` -> ``_foreach_addcmul_(x, a, b)`` and
  ``add(x, multiply(multiply(a, s), b))`` -> ``_foreach_addcmul_(x, a, b, s)``;
- ``add(x, divide(a, b))`` -> ``_foreach_addcdiv_(x, a, b)`` and
  ``add(x, divide(multiply(a, s), b))`` -> ``_foreach_addcdiv_(x, a, b, s)``;
- ``add(x, negative(a))`` -> ``_foreach_add_(x, a, alpha=-1)``;
- ``add(a, multiply(subtract(b, a), w))`` (|w| < 0.5) -> ``_foreach_lerp_(a, b, w)``;
- a rule that returns ``new_p - p`` (``t = p*c + ...; t = t - p; p = p + t``, as AdamW's
  decay and NAdam's two terms record) updates ``p`` in place instead
  (:func:`_in_place_update`), as torch.optim's foreach code does.

The unscaled addcdiv and negative fusions compute the same roundings as the separate
operations (torch's kernels evaluate ``x + 1*(a/b)`` and ``x - a``), so a program with
only those is bitwise the generic path's; ``addcmul`` may fuse its multiply-add (torch
2.13's CPU kernel does on an AVX2 machine: it differs from ``x + a*b`` in the last bit
for about a quarter of the elements), ``lerp`` rounds as torch's ``lerp`` does (it may
fuse a multiply-add too), a scale folded into ``addcdiv`` computes ``x + s*(a/b)`` for
``x + (a*s)/b``, and the in-place update rounds ``p`` once less: programs with those
(RMSprop, NAdam, AdamW, Adam, any rule with ``x + a*b``) agree with the generic path to
rounding, as torch.optim's foreach code does.

:func:`recognise_fused` finds programs that are exactly one of torch's fused
optimizers (``_fused_adam_``, ``_fused_adamw_``, ``_fused_sgd_``, ``_fused_adagrad_``):
it records the reference rule with the hyperparameters the optimizer states and
compares the two programs node for node, so a program is recognised by what it
computes, whatever its optimizer is called (an optimizer named ``adam`` whose program
differs is not, a user rule that computes Adam's exact program is).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agrad.optim.program.ir import Lane, Program
from agrad.optim.program.plan import Instr, LanePlan

__all__ = ["SUPPORTED", "compile_group"]

_LIST_LIST = {
    "add": "_foreach_add",
    "subtract": "_foreach_sub",
    "multiply": "_foreach_mul",
    "divide": "_foreach_div",
    "maximum": "_foreach_maximum",
    "minimum": "_foreach_minimum",
    "pow": "_foreach_pow",
}
_UNARY = {
    "sqrt": "_foreach_sqrt",
    "negative": "_foreach_neg",
    "abs": "_foreach_abs",
    "sign": "_foreach_sign",
    "exp": "_foreach_exp",
    "expm1": "_foreach_expm1",
    "log": "_foreach_log",
    "log1p": "_foreach_log1p",
    "sin": "_foreach_sin",
    "cos": "_foreach_cos",
    "tanh": "_foreach_tanh",
    "reciprocal": "_foreach_reciprocal",
}
_COMMUTATIVE = frozenset({"add", "multiply", "maximum", "minimum"})

#: The ops this executor runs.
SUPPORTED = frozenset(_LIST_LIST) | frozenset(_UNARY) | {"square", "full_like", "where"}


def _is_buf(a: tuple) -> bool:
    return a[0] in ("in", "col", "tmp")


def _fuse(plan: LanePlan) -> list[tuple]:
    """The plan's instructions with the peephole fusions of the module docstring applied.

    A fused-away instruction's value must be read by the fusing instruction only, and
    the buffers it read must not be written between it and the fusing instruction.
    """
    instrs = _in_place_update(list(plan.instrs))
    latest: dict[tuple, int] = {}  # buffer -> instruction that last wrote it
    args_from: list[tuple] = []  # per instruction: the producer of each buffer argument
    uses = [0] * len(instrs)
    for i, ins in enumerate(instrs):
        srcs = tuple(latest.get(a) if _is_buf(a) else None for a in ins.args)
        for k in srcs:
            if k is not None:
                uses[k] += 1
        args_from.append(srcs)
        latest[ins.out] = i
    for _, src in plan.copies:
        if src in latest:
            uses[latest[src]] += 1
    removed: set[int] = set()

    def single(i: int, pos: int, op: str) -> int | None:
        k = args_from[i][pos]
        if k is None or uses[k] != 1 or instrs[k].op != op or k in removed:
            return None
        return k

    def untouched(k: int, i: int) -> bool:
        read = {a for a in instrs[k].args if _is_buf(a)}
        return not any(instrs[j].out in read for j in range(k + 1, i))

    def scaled(k: int, pos: int, i: int) -> tuple[tuple, tuple, int | None]:
        """Argument ``pos`` of ``instrs[k]`` as ``(buffer, scale, producer)``: the
        operands of a single-use ``multiply(buffer, scalar)`` that may be folded into
        instruction ``i``, or the argument itself with scale 1."""
        arg = instrs[k].args[pos]
        k2 = single(k, pos, "multiply")
        if k2 is not None and k2 not in fused_at:
            a2, s2 = instrs[k2].args
            if _is_buf(a2) and not _is_buf(s2) and untouched(k2, i):
                return a2, s2, k2
        return arg, ("c", 1.0), None

    fused: dict[int, tuple] = {}
    fused_at: set[int] = set()  # instructions that became a fused instruction
    for i, ins in enumerate(instrs):
        if ins.op != "add" or ins.out != ins.args[0]:
            continue
        if not all(map(_is_buf, ins.args)):
            continue
        x = ins.args[0]
        k = single(i, 1, "negative")
        if k is not None and untouched(k, i):  # x + (-a) == x - a, exactly
            fused[i] = ("add_alpha", x, instrs[k].args[0], ("c", -1.0))
            fused_at.add(i)
            removed.add(k)
            continue
        k = single(i, 1, "divide")
        if k is not None and all(map(_is_buf, instrs[k].args)) and untouched(k, i):
            a, scale, k2 = scaled(k, 0, i)
            fused[i] = ("addcdiv", x, a, instrs[k].args[1], scale)
            fused_at.add(i)
            removed.update(j for j in (k, k2) if j is not None)
            continue
        k = single(i, 1, "multiply")
        if k is None or not untouched(k, i):
            continue
        a, b = instrs[k].args
        if _is_buf(a) and _is_buf(b):
            a, scale, k2 = scaled(k, 0, i)
            fused[i] = ("addcmul", x, a, b, scale)
            fused_at.add(i)
            removed.update(j for j in (k, k2) if j is not None)
            continue
        if _is_buf(a) and b[0] == "c" and abs(b[1]) < 0.5:
            k2 = single(k, 0, "subtract")
            if k2 is not None and instrs[k2].args[1] == x and _is_buf(instrs[k2].args[0]):
                if untouched(k2, i):
                    fused[i] = ("lerp", x, instrs[k2].args[0], b)
                    fused_at.add(i)
                    removed.update((k, k2))
                    continue
    return [fused.get(i, ("op", ins)) for i, ins in enumerate(instrs) if i not in removed]


def _runnable(ins: Instr) -> bool:
    """Whether :func:`_run_instr` runs ``ins`` (checked before any step runs)."""
    if ins.op not in SUPPORTED:
        return False
    if ins.op == "where":  # only a per-step scalar condition: one operand is copied
        return not _is_buf(ins.args[0]) and all(map(_is_buf, ins.args[1:]))
    if ins.op in _LIST_LIST:
        a, b = ins.args
        if not _is_buf(a) and not _is_buf(b):
            return False
        if not _is_buf(a) and ins.op not in _COMMUTATIVE and ins.op != "subtract":
            return ins.op == "divide" and ins.attr("reflected", False)
    return True


def compile_group(plan: LanePlan) -> Callable[..., None] | None:
    """``run(columns, scalars, pre)``: the plan over lists of tensors (module docstring).

    ``columns[c]`` is the list of column ``c``'s tensors (run under ``no_grad``;
    version counters are the caller's to set); ``scalars`` the step's host-scalar values,
    ``pre`` the laneless nodes' values (Python numbers) by node index.
    ``None`` where an instruction has no multi-tensor form (found here, so a step
    never stops half-way).
    """
    import torch

    if not all(map(_runnable, plan.instrs)):
        return None
    program = _fuse(plan)
    n_cols = plan.n_columns

    def run(columns: list[list[Any]], scalars: list[Any], pre: dict[int, Any]) -> None:
        bufs: dict[tuple, list[Any]] = {}

        def get(a: tuple) -> Any:
            if a[0] in ("in", "col"):
                return columns[a[1]]
            if a[0] == "tmp":
                return bufs[a]
            if a[0] == "p":
                return pre[a[1]]
            return scalars[a[1]] if a[0] == "s" else a[1]

        for entry in program:
            if entry[0] == "op":
                _run_instr(torch, entry[1], get, bufs, columns)
            elif entry[0] == "addcmul":
                _, x, a, b, s = entry
                torch._foreach_addcmul_(get(x), get(a), get(b), value=get(s))
            elif entry[0] == "addcdiv":
                _, x, a, b, s = entry
                torch._foreach_addcdiv_(get(x), get(a), get(b), value=get(s))
            elif entry[0] == "add_alpha":
                _, x, a, s = entry
                torch._foreach_add_(get(x), get(a), alpha=get(s))
            else:  # lerp
                _, x, b, w = entry
                torch._foreach_lerp_(get(x), get(b), get(w))
        for c, src in plan.copies:
            torch._foreach_copy_(columns[c], get(src))

    run.n_columns = n_cols  # type: ignore[attr-defined]
    return run


def _store(torch: Any, out: tuple, value: list[Any], bufs: dict, columns: list) -> None:
    if out[0] == "tmp":
        bufs[out] = value
    else:
        torch._foreach_copy_(columns[out[1]], value)


def _run_instr(torch: Any, ins: Instr, get: Callable, bufs: dict, columns: list) -> None:
    op, args, out = ins.op, ins.args, ins.out
    if op == "where":
        src = args[1] if get(args[0]) else args[2]
        if src == out:
            return
        if out[0] == "tmp":
            bufs[out] = torch._foreach_mul(get(src), 1.0)  # a copy (x * 1 is x, -0 too)
        else:
            torch._foreach_copy_(get(out), get(src))
        return
    if op == "full_like":
        target = get(out) if out[0] != "tmp" else [torch.empty_like(t) for t in get(args[0])]
        value = get(args[1])
        for t in target:
            t.fill_(value)
        if out[0] == "tmp":
            bufs[out] = target
        return
    if op in _UNARY or op == "square":
        (a,) = args
        if op == "square":
            if a == out:
                torch._foreach_mul_(get(a), get(a))
            else:
                _store(torch, out, torch._foreach_mul(get(a), get(a)), bufs, columns)
            return
        name = _UNARY[op]
        if a == out:
            getattr(torch, name + "_")(get(a))
        else:
            _store(torch, out, getattr(torch, name)(get(a)), bufs, columns)
        return
    a, b = args
    name = _LIST_LIST[op]
    if not _is_buf(a):  # a scalar on the left
        if op in _COMMUTATIVE:
            a, b = b, a
        elif op == "divide":  # ``s / x`` on a tensor is ``x.reciprocal() * s``
            value = get(b) if b == out else torch._foreach_reciprocal(get(b))
            if b == out:
                torch._foreach_reciprocal_(value)
            if a != ("c", 1.0):
                torch._foreach_mul_(value, get(a))
            if b != out:
                _store(torch, out, value, bufs, columns)
            return
        elif op == "subtract":  # s - x == -(x - s), exactly
            if b == out:
                torch._foreach_sub_(get(b), get(a))
                torch._foreach_neg_(get(b))
            else:
                value = torch._foreach_sub(get(b), get(a))
                torch._foreach_neg_(value)
                _store(torch, out, value, bufs, columns)
            return
        else:
            raise NotImplementedError(f"{op} with a scalar first operand")
    if a == out:
        getattr(torch, name + "_")(get(a), get(b))
    elif b == out and op in _COMMUTATIVE:
        getattr(torch, name + "_")(get(b), get(a))
    elif out[0] != "tmp" and out != b:
        torch._foreach_copy_(get(out), get(a))
        getattr(torch, name + "_")(get(out), get(b))
    else:
        _store(torch, out, getattr(torch, name)(get(a), get(b)), bufs, columns)


def lane_supported(program: Program, lane: Lane, ops: frozenset) -> bool:
    """Whether every node of ``lane`` is one of ``ops`` (inputs aside)."""
    return all(program.nodes[i].op in ops or program.nodes[i].op == "input" for i in lane.nodes)


def _bufs(ins: Instr) -> list[tuple]:
    return [a for a in ins.args if _is_buf(a)]


def _accumulates(ins: Instr, t: tuple) -> bool:
    """``t = t + v`` or ``t = t - v`` with ``v`` not ``t``."""
    return ins.op in ("add", "subtract") and ins.out == t and ins.args[0] == t and ins.args[1] != t


def _in_place_update(instrs: list[Instr]) -> list[Instr]:
    """Rewrite ``t = x*c (or x + v); t += ...; t = t - x; x = x + t`` as ``x *= c; x += ...``.

    A rule that returns its update as ``new_p - p`` (AdamW's decay, NAdam's two
    terms) records that chain; torch.optim's foreach code updates the parameter in
    place, as this does (the peephole fusions then apply to ``x += ...``). Equal to
    rounding: the chain adds ``(new - x)`` back to ``x``, one more rounding. Applied
    only where nothing else reads or writes ``x`` between the chain's first and last
    instruction and ``t`` only accumulates in between.
    """
    i = 0
    while i < len(instrs):
        ins = instrs[i]
        if ins.op == "add" and ins.out == ins.args[0] and len(ins.args) == 2:
            x, t = ins.args
            if t[0] == "tmp" and x[0] == "col":
                rewritten = _rewrite_chain(instrs, i, x, t)
                if rewritten is not None:
                    instrs = rewritten
                    continue
        i += 1
    return instrs


def _rewrite_chain(instrs: list[Instr], i: int, x: tuple, t: tuple) -> list[Instr] | None:
    """:func:`_in_place_update` for the chain ending at ``instrs[i]`` (``x = x + t``)."""
    k = i - 1
    while k >= 0 and t not in _bufs(instrs[k]) and instrs[k].out != t:
        if x in _bufs(instrs[k]) or instrs[k].out == x:
            return None
        k -= 1
    if k < 0 or instrs[k].op != "subtract" or instrs[k].args != (t, x) or instrs[k].out != t:
        return None
    j = k - 1
    while j >= 0:
        ins = instrs[j]
        acc = _accumulates(ins, t)
        if ins.out == t and not acc:
            break
        if x in _bufs(ins) or ins.out == x or (t in _bufs(ins) and not acc):
            return None
        j -= 1
    if j < 0:
        return None
    first = instrs[j]
    if first.op not in ("add", "multiply") or x not in first.args or len(first.args) != 2:
        return None
    other = first.args[1] if first.args[0] == x else first.args[0]
    if other == x:
        return None
    new = list(instrs)
    new[j] = first._replace(args=(x, other), out=x)
    for m in range(j + 1, k):
        if _accumulates(new[m], t):
            new[m] = new[m]._replace(args=(x, new[m].args[1]), out=x)
    del new[i]
    del new[k]
    return new
