"""The program an optimizer step is compiled to: the interface between recorder and executors.

A :class:`Program` is what :mod:`agrad.optim.program.recorder` gets by running an
optimizer's ``inner_update`` (and the ``params + updates`` of a step) once on symbolic
arrays. It is cached per (optimizer, tree structure, shapes, dtypes, devices, kinds of
the state's Python numbers) and handed to a per-backend executor at every step.

**Values.** An operand (:data:`Ref`) is one of

- ``("n", i)``: array node ``i`` of :attr:`Program.nodes`;
- ``("s", i)``: host scalar ``i`` of :attr:`Program.scalars` (a Python number, evaluated
  once per step, before any array work);
- ``("c", v)``: a Python constant baked into the program (a hyperparameter).

**Array nodes** (:class:`Node`, topological order): ``op`` is the name of an Array API
function (``"add"``, ``"sqrt"``, ``"sum"`` ...) or ``"input"``; ``args`` are refs;
``attrs`` the keyword arguments (``axis=`` ...) as a sorted tuple; ``shape`` and
``dtype`` the result's. Inputs have ``attrs = (("column", c), ("leaf", k))`` where
``c`` is ``"param"``, ``"grad"`` or ``"state"`` and ``k`` the leaf's index in that
flattened tree. ``op in ELEMENTWISE`` marks an elementwise node: executors may fuse
any run of them (a *block*); every other node is run eagerly by the backend's own
function between blocks (reductions, reshapes, matmuls).

**Lanes.** Every array node has a ``lane``: the index of the parameter its value
belongs to, or :data:`CROSS` when it mixes several parameters (a global norm), or
:data:`NO_LANE` (a constant array). :func:`lane_groups` groups the parameters whose
per-lane programs are identical up to which leaves they read (the same ops, scalars
and constants on arrays of the parameter's shape and dtype): one group is one
multi-tensor program (``torch._foreach_*`` over the group's lists, or one NumPy
kernel over the group's gathered memory).

**Host scalars** (:class:`Scalar`): ``op`` is an :mod:`operator` name (``"add"``,
``"pow"`` ...), ``"input"`` (the state's Python number at flat state index
``args[0]``) or ``"call"`` (``args[0]`` is a Python function of the other arguments'
values: a learning-rate schedule). They are evaluated with the same Python operations
the generic path performs, so they are bitwise equal to it. :attr:`Program.guards`
are ``(scalar, value)`` pairs: the program is valid for a step only where every
guarded scalar has the recorded value (a Python branch taken on a step count, such
as SGD's first step or RAdam's rectification switch); a step whose guards fail is
recorded again and cached beside the first program.

**Outputs.** :attr:`Program.new_params` gives, per parameter, the ref of its new
value (``params + updates``); :attr:`Program.new_state` gives, per flat state leaf,
the ref of its new value (``None`` where the leaf is not an array or a number, or is
returned unchanged). An executor writes ``new_params[k]`` into parameter ``k`` and
``new_state[j]`` into state leaf ``j`` (in place), and returns the new Python numbers
of the state.

**Calling an executor.** ``executor.run(program, params, grads, state_leaves,
scalars) -> bool`` (see :mod:`agrad.optim.program.dispatch`): raw leaves of one
backend, ``scalars`` the evaluated host scalars; ``False`` means it declined with
nothing written.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = [
    "CROSS",
    "ELEMENTWISE",
    "NO_LANE",
    "Lane",
    "LaneGroup",
    "Node",
    "Program",
    "Ref",
    "Scalar",
    "evaluate_scalars",
    "lane_groups",
    "pre_nodes",
]

Ref = tuple  # ("n", node) | ("s", scalar) | ("c", constant)

#: Lane of a node mixing several parameters (a global norm, a concatenation).
CROSS = -1
#: Lane of a node that depends on no parameter (a constant array).
NO_LANE = -2

#: Array API functions computed element by element (broadcasting aside).
ELEMENTWISE = frozenset(
    {
        "abs",
        "add",
        "astype",
        "clip",
        "cos",
        "divide",
        "equal",
        "exp",
        "expm1",
        "full_like",
        "greater",
        "greater_equal",
        "isfinite",
        "isnan",
        "less",
        "less_equal",
        "log",
        "log1p",
        "logical_and",
        "logical_not",
        "logical_or",
        "maximum",
        "minimum",
        "multiply",
        "negative",
        "not_equal",
        "pow",
        "reciprocal",
        "sign",
        "sin",
        "sqrt",
        "square",
        "subtract",
        "tanh",
        "where",
    }
)


class Node(NamedTuple):
    """One array value of the program (see the module docstring)."""

    op: str
    args: tuple
    attrs: tuple
    shape: tuple
    dtype: Any
    lane: int

    def attr(self, name: str, default: Any = None) -> Any:
        """The keyword argument ``name`` (``default`` where absent)."""
        for k, v in self.attrs:
            if k == name:
                return v
        return default


class Scalar(NamedTuple):
    """One host scalar: a Python number computed once per step."""

    op: str
    args: tuple


class Program(NamedTuple):
    """A recorded optimizer step (see the module docstring)."""

    nodes: tuple[Node, ...]
    scalars: tuple[Scalar, ...]
    guards: tuple[tuple[int, Any], ...]
    new_params: tuple[Ref, ...]
    new_state: tuple[Ref | None, ...]
    n_params: int


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    name: getattr(operator, name)
    for name in (
        *("add", "sub", "mul", "truediv", "floordiv", "mod", "pow"),
        *("eq", "ne", "lt", "le", "gt", "ge", "and_", "or_"),
    )
}
_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": abs,
    "float": float,
    "int": int,
    "bool": bool,
    "not_": operator.not_,
}


def evaluate_scalars(scalars: Sequence[Scalar], state_numbers: Sequence[Any]) -> list[Any]:
    """The values of ``scalars`` for a state whose flat leaves are ``state_numbers``.

    Each scalar is computed with the Python operation the generic path performs on the
    same Python values, so every value is bitwise the generic path's.
    """
    values: list[Any] = []

    def val(a: Any) -> Any:
        return values[a[1]] if a[0] == "s" else a[1]

    for s in scalars:
        if s.op == "input":
            values.append(state_numbers[s.args[0]])
        elif s.op == "call":
            values.append(s.args[0](*(val(a) for a in s.args[1:])))
        elif s.op in _BINARY:
            values.append(_BINARY[s.op](val(s.args[0]), val(s.args[1])))
        else:
            values.append(_UNARY[s.op](val(s.args[0])))
    return values


class Lane(NamedTuple):
    """The program of one parameter: its nodes in order and the leaves they touch.

    ``columns`` are ``(column, leaf)`` pairs, the parameter first, then its gradient,
    then the state leaves in flat order; ``nodes`` the indices of its nodes;
    ``signature`` what must be equal for two lanes to share one multi-tensor program.
    ``outputs`` pairs each written column (its position in ``columns``) with the
    position in ``nodes`` of the node whose value it receives.
    """

    index: int
    columns: tuple[tuple[str, int], ...]
    nodes: tuple[int, ...]
    outputs: tuple[tuple[int, int], ...]
    signature: tuple


class LaneGroup(NamedTuple):
    """Parameters sharing one per-lane program: ``lanes[0]``'s program, for all of them."""

    lanes: tuple[Lane, ...]
    dtype: Any

    @property
    def program(self) -> Lane:
        """The representative lane: its node list and column layout hold for every lane."""
        return self.lanes[0]


def _lane_of(program: Program, k: int, own: list[int], states: list[int]) -> tuple[Lane, bool]:
    """Lane ``k``'s program and whether it is purely elementwise on the parameter's shape.

    ``own``: the lane's nodes, in order; ``states``: its state leaves, in order.
    """
    nodes = program.nodes
    columns: list[tuple[str, int]] = [("param", k), ("grad", k)]
    columns += [("state", j) for j in states]
    col_pos = {c: i for i, c in enumerate(columns)}
    local = {node: i for i, node in enumerate(own)}
    shape, dtype = nodes[own[0]].shape if own else None, None
    regular = True
    sig = []
    for i in own:
        n = nodes[i]
        if n.op == "input":
            where = (n.attr("column"), n.attr("leaf"))
            sig.append(("input", col_pos[where], n.dtype))
            continue
        if n.op not in ELEMENTWISE or n.shape != shape:
            regular = False
        dtype = dtype or n.dtype
        args = []
        for a in n.args:
            if a[0] == "n":
                if a[1] in local:
                    args.append(("l", local[a[1]]))
                elif nodes[a[1]].lane == NO_LANE and nodes[a[1]].shape == ():
                    args.append(("p", a[1]))  # a per-step scalar, computed before the lanes
                else:
                    regular = False  # reads another lane's node
                    args.append(("x", a[1]))
            elif a[0] == "s":
                args.append(a)
            else:
                args.append(("c", type(a[1]), a[1]))
        sig.append((n.op, tuple(args), n.attrs, n.dtype))
    outputs = []
    refs = [program.new_params[k], *(program.new_state[j] for _, j in columns[2:])]
    positions = [0, *range(2, len(columns))]
    for pos, ref in zip(positions, refs):
        if ref is None or (ref[0] == "n" and nodes[ref[1]].lane == NO_LANE):
            continue
        if ref[0] != "n" or ref[1] not in local:
            regular = False
            continue
        n = nodes[ref[1]]
        if n.op == "input" and (n.attr("column"), n.attr("leaf")) == columns[pos]:
            continue  # returned unchanged (another column's input is a copy to make)
        outputs.append((pos, local[ref[1]]))
    signature = (tuple(sig), tuple(outputs), len(columns))
    return Lane(k, tuple(columns), tuple(own), tuple(outputs), signature), regular


def pre_nodes(program: Program) -> list[int]:
    """The laneless nodes, computed once per step before the lanes (step counts,
    bias corrections, schedule values), in order."""
    return [i for i, n in enumerate(program.nodes) if n.lane == NO_LANE]


def lane_groups(program: Program) -> list[LaneGroup] | None:
    """The parameters grouped by identical per-lane programs, or ``None``.

    ``None`` where some lane is not purely elementwise on its parameter's shape (a
    reduction, a broadcast, a node read across lanes) or a node or output belongs to
    no lane: such programs are run node by node by an eager executor.
    """
    state_lane: dict[int, int] = {}
    for n in program.nodes:
        if n.op == "input" and n.attr("column") == "state" and n.lane >= 0:
            state_lane[n.attr("leaf")] = n.lane
    for j, ref in enumerate(program.new_state):
        if ref is not None and ref[0] == "n":
            lane = program.nodes[ref[1]].lane
            if lane == NO_LANE:
                continue  # a per-step scalar of the state (a step count)
            if state_lane.setdefault(j, lane) != lane:
                return None
    if any(lane < 0 for lane in state_lane.values()):
        return None
    if any(n.lane == CROSS for n in program.nodes):
        return None
    groups: dict[tuple, list[Lane]] = {}
    dtypes: dict[tuple, Any] = {}
    own: dict[int, list[int]] = {}  # one pass, not one per lane (O(n^2) on 1000 parameters)
    for i, n in enumerate(program.nodes):
        own.setdefault(n.lane, []).append(i)
    states: dict[int, list[int]] = {}
    for j in sorted(state_lane):
        states.setdefault(state_lane[j], []).append(j)
    for k in range(program.n_params):
        lane, regular = _lane_of(program, k, own.get(k, []), states.get(k, []))
        if not regular:
            return None
        key = (lane.signature, repr(program.nodes[lane.nodes[0]].dtype))
        groups.setdefault(key, []).append(lane)
        dtypes[key] = program.nodes[lane.nodes[0]].dtype
    return [LaneGroup(tuple(lanes), dtypes[key]) for key, lanes in groups.items()]
