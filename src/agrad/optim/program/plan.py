"""Buffer planning for one lane program: which node is computed into which buffer.

Shared by the NumPy and torch executors. A lane program (:class:`~agrad.optim.program.ir.Lane`)
reads *columns* (the parameter, its gradient, its state leaves) and computes nodes in
order; each written column finally receives one node's value. :func:`plan_lane` walks
the nodes once and gives every node a buffer:

- ``("col", c)``: computed in place into column ``c``, allowed when ``c`` is written
  (not the gradient) and its old value is read by no later node; the intermediate
  values a written column holds are overwritten by its final value before the step
  ends;
- ``("tmp", k)``: scratch buffer ``k``, reused as soon as its value is dead
  (liveness), so a program needs as many scratch buffers as values live at once;
- an input node lives in its column, ``("col", c)``, until that column is
  overwritten.

The plan ends with the copies of final values that could not be computed in place,
ordered so that none reads a column an earlier one wrote (:func:`_order_copies`).
"""

from __future__ import annotations

from typing import NamedTuple

from agrad.optim.program.ir import Lane, Program

__all__ = ["Instr", "LanePlan", "plan_lane"]

COMMUTATIVE = frozenset({"add", "multiply", "maximum", "minimum"})


class Instr(NamedTuple):
    """Compute ``op(*args)`` into ``out``; args are buffers, ``("s", i)`` or ``("c", v)``."""

    op: str
    args: tuple
    attrs: tuple
    out: tuple

    def attr(self, name: str, default: object = None) -> object:
        """The keyword argument ``name`` of the node (``default`` where absent)."""
        return dict(self.attrs).get(name, default)


class LanePlan(NamedTuple):
    """The instructions of one lane program, its scratch count and the final copies."""

    instrs: tuple[Instr, ...]
    n_temps: int
    copies: tuple[tuple[int, tuple], ...]  # (column, source buffer)
    n_columns: int
    written: tuple[int, ...]


def _operand(a: tuple, where: dict, local_of: dict) -> tuple:
    """A node argument as a buffer, or ``("p", node)`` for a laneless per-step scalar."""
    if a[0] != "n":
        return a
    return where[local_of[a[1]]] if a[1] in local_of else ("p", a[1])


def plan_lane(program: Program, lane: Lane) -> LanePlan:
    """Assign buffers to the nodes of ``lane`` (see the module docstring)."""
    nodes = [program.nodes[i] for i in lane.nodes]
    local_of = {node: i for i, node in enumerate(lane.nodes)}
    col_pos = {c: i for i, c in enumerate(lane.columns)}
    written = {pos for pos, _ in lane.outputs}
    final_of = {}  # local node -> columns it is the final value of
    for pos, local in lane.outputs:
        final_of.setdefault(local, []).append(pos)
    last_read: dict[int, int] = {}
    for i, n in enumerate(nodes):
        for a in n.args:
            if a[0] == "n" and a[1] in local_of:
                last_read[local_of[a[1]]] = i
    end = len(nodes)
    for local in final_of:
        last_read[local] = max(last_read.get(local, -1), end)  # read by the final copy
    where: dict[int, tuple] = {}
    col_value: dict[int, int | None] = {}  # column -> local node it holds (None: dead)
    free: list[int] = []
    n_temps = 0
    instrs = []
    for i, n in enumerate(nodes):
        if n.op == "input":
            c = col_pos[(n.attr("column"), n.attr("leaf"))]
            where[i] = ("col", c)
            col_value[c] = i
            continue
        args = tuple(_operand(a, where, local_of) for a in n.args)
        # values dead after this node free their buffers for its result
        dying: list[int] = []  # in argument order: the first operand's buffer is preferred
        for a in n.args:
            local = local_of.get(a[1]) if a[0] == "n" else None
            if local is not None and last_read.get(local, -1) <= i and local not in dying:
                dying.append(local)
        out = None
        for c in final_of.get(i, ()):
            held = col_value.get(c)
            if held is None or held in dying:
                out = ("col", c)
                break
        if out is None:
            for local in dying:
                buf = where[local]
                if buf[0] == "tmp":
                    out = buf
                    break
                if buf[0] in ("in", "col") and buf[1] in written and col_value.get(buf[1]) == local:
                    out = ("col", buf[1])
                    break
        if out is None and free:
            out = ("tmp", free.pop())
        if out is None:
            out = ("tmp", n_temps)
            n_temps += 1
        for local in dying:
            buf = where[local]
            if buf[0] == "tmp" and buf != out:
                free.append(buf[1])
            if (
                buf[0] in ("in", "col")
                and col_value.get(buf[1]) == local
                and out != ("col", buf[1])
            ):
                col_value[buf[1]] = None
        if out[0] == "col":
            col_value[out[1]] = i
        where[i] = out
        instrs.append(Instr(n.op, args, n.attrs, out))
    copies = []
    for local, cols in final_of.items():
        for c in cols:
            if where[local] != ("col", c):
                copies.append((c, where[local]))
    copies, saves = _order_copies(copies, n_temps)
    instrs += saves
    return LanePlan(
        tuple(instrs),
        n_temps + len(saves),
        tuple(copies),
        len(lane.columns),
        tuple(sorted(written)),
    )


def _order_copies(copies: list, n_temps: int) -> tuple[list, list[Instr]]:
    """The final copies in an order where none reads a column an earlier one wrote,
    and the instructions saving a column to new scratch first where they form a cycle.

    The copies are one parallel assignment: every column receives a value as it was
    when the last instruction ran. A column's old value may be another column's new
    one (a rule swapping two state leaves, or returning the parameter as new state
    while the parameter's new value was computed into that state's column); each
    copy runs once no pending copy still reads its column. Where every pending copy's
    column is still read (a cycle), that column is first saved to a new scratch
    buffer (``where`` on a constant condition: a copy, on every executor) and its
    readers read the scratch.
    """
    ordered: list = []
    saves: list[Instr] = []
    pending = list(copies)
    while pending:
        read = {src for _, src in pending}
        ready = [cs for cs in pending if ("col", cs[0]) not in read]
        if not ready:  # a cycle
            col, tmp = ("col", pending[0][0]), ("tmp", n_temps + len(saves))
            saves.append(Instr("where", (("c", True), col, col), (), tmp))
            pending = [(c, tmp if src == col else src) for c, src in pending]
            continue
        ordered += ready
        pending = [cs for cs in pending if cs not in ready]
    return ordered, saves
