"""Record an optimizer step as a :class:`~agrad.optim.program.ir.Program`.

:func:`record` runs ``opt.inner_update`` once on :class:`SymArray` leaves (symbolic
arrays with the shape, dtype and device of the real ones, whose namespace records each
Array API call as a node) and the state's Python numbers as :class:`SymScalar` (a
number that records the Python arithmetic done with it, so step counts, bias
corrections and schedule values are program inputs, recomputed every step, not
constants). A Python branch on a :class:`SymScalar` (``if t == 1``, ``float(t)``)
takes the recorded value's branch and adds a *guard*; a branch on an array's value
(``bool(x)``, ``float(x)``), an array of another library, or a function the recording
namespace does not know raises :class:`NotRecordable`, and the step then runs on the
generic path. Recording costs one run of the rule; executions cost none.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from agrad.optim.program.ir import (
    _BINARY,
    CROSS,
    NO_LANE,
    Node,
    Program,
    Scalar,
)
from agrad.pytree import flatten_leaves, key_paths, unflatten

__all__ = ["NotRecordable", "Recorder", "SymArray", "SymScalar", "record"]


class NotRecordable(Exception):
    """The rule does something a program cannot hold (a branch on an array's value ...)."""


def _const_key(v: Any) -> Any:
    return ("c", type(v), v)


class Recorder:
    """The nodes, host scalars and guards of one recording, with hash-consed scalars."""

    def __init__(self, xp: Any):
        self.xp = xp
        self.nodes: list[Node] = []
        self.scalars: list[Scalar] = []
        self._scalar_ids: dict[tuple, int] = {}
        self._node_ids: dict[tuple, int] = {}
        self.guards: dict[int, Any] = {}
        self.array_cls, self.namespace = _backend(xp)

    # -- host scalars -------------------------------------------------------------
    def scalar(self, op: str, args: tuple, value: Any) -> SymScalar:
        key = (op, tuple(_const_key(a[1]) if type(a) is tuple and a[0] == "c" else a for a in args))
        try:
            i = self._scalar_ids.get(key)
        except TypeError:  # an unhashable constant
            i, key = None, None
        if i is None:
            i = len(self.scalars)
            self.scalars.append(Scalar(op, args))
            if key is not None:
                self._scalar_ids[key] = i
        return SymScalar(self, i, value)

    def guard(self, s: SymScalar, value: Any) -> Any:
        self.guards[s.index] = value
        return value

    # -- array nodes --------------------------------------------------------------
    def node(self, op: str, args: tuple, attrs: tuple, shape: tuple, dtype: Any) -> SymArray:
        lanes = {self.nodes[a[1]].lane for a in args if a[0] == "n"} - {NO_LANE}
        lane = NO_LANE if not lanes else (lanes.pop() if len(lanes) == 1 else CROSS)
        key = None
        if lane == NO_LANE:  # a pure function of the state's scalars: computed once
            key = (op, tuple(_const_key(a[1]) if a[0] == "c" else a for a in args), attrs)
            key += (tuple(shape), repr(dtype))
            try:
                found = self._node_ids.get(key)
            except TypeError:  # an unhashable constant
                found, key = None, None
            if found is not None:
                return self.array_cls(self, found)
        self.nodes.append(Node(op, args, attrs, tuple(shape), dtype, lane))
        if key is not None:
            self._node_ids[key] = len(self.nodes) - 1
        return self.array_cls(self, len(self.nodes) - 1)

    def input(self, column: str, leaf: int, x: Any, lane: int) -> SymArray:
        attrs = (("column", column), ("leaf", leaf))
        self.nodes.append(Node("input", (), attrs, tuple(x.shape), x.dtype, lane))
        return self.array_cls(self, len(self.nodes) - 1)

    def ref(self, x: Any) -> tuple:
        """The operand ``x`` as a ref: a node, a host scalar or a constant."""
        if isinstance(x, SymArray):
            if x.recorder is not self:
                raise NotRecordable("an array of another recording")
            return ("n", x.index)
        if isinstance(x, SymScalar):
            return ("s", x.index)
        if isinstance(x, (bool, int, float)):
            return ("c", x)
        raise NotRecordable(f"an operand of type {type(x).__name__} (not a recorded array)")

    def operand_info(self, x: Any) -> tuple[tuple, Any | None]:
        """``(shape, dtype)`` of an operand; a Python number has shape () and no dtype."""
        if isinstance(x, SymArray):
            n = self.nodes[x.index]
            return n.shape, n.dtype
        return (), None


class SymScalar:
    """A Python number of the state (a step count) or computed from one, recorded."""

    __slots__ = ("index", "recorder", "value")

    def __init__(self, recorder: Recorder, index: int, value: Any):
        self.recorder = recorder
        self.index = index
        self.value = value

    def __repr__(self) -> str:
        return f"SymScalar({self.value!r})"

    def _binary(self, op: str, other: Any, reflected: bool = False) -> Any:
        if isinstance(other, SymArray):
            return NotImplemented
        if isinstance(other, SymScalar):
            o_ref, o_val = ("s", other.index), other.value
        elif isinstance(other, (int, float)):
            o_ref, o_val = ("c", other), other
        else:
            return NotImplemented
        me = ("s", self.index)
        args = (o_ref, me) if reflected else (me, o_ref)
        a, b = (o_val, self.value) if reflected else (self.value, o_val)
        return self.recorder.scalar(op, args, _BINARY[op](a, b))

    def __add__(self, o):
        return self._binary("add", o)

    def __radd__(self, o):
        return self._binary("add", o, True)

    def __sub__(self, o):
        return self._binary("sub", o)

    def __rsub__(self, o):
        return self._binary("sub", o, True)

    def __mul__(self, o):
        return self._binary("mul", o)

    def __rmul__(self, o):
        return self._binary("mul", o, True)

    def __truediv__(self, o):
        return self._binary("truediv", o)

    def __rtruediv__(self, o):
        return self._binary("truediv", o, True)

    def __floordiv__(self, o):
        return self._binary("floordiv", o)

    def __rfloordiv__(self, o):
        return self._binary("floordiv", o, True)

    def __mod__(self, o):
        return self._binary("mod", o)

    def __rmod__(self, o):
        return self._binary("mod", o, True)

    def __pow__(self, o):
        return self._binary("pow", o)

    def __rpow__(self, o):
        return self._binary("pow", o, True)

    def _unary(self, op: str, fn: Callable[[Any], Any]) -> SymScalar:
        return self.recorder.scalar(op, (("s", self.index),), fn(self.value))

    def __neg__(self):
        return self._unary("neg", lambda v: -v)

    def __pos__(self):
        return self._unary("pos", lambda v: +v)

    def __abs__(self):
        return self._unary("abs", abs)

    def _compare(self, op: str, o: Any) -> Any:
        out = self._binary(op, o)
        if out is NotImplemented:
            return out
        return self.recorder.guard(out, out.value)

    def __eq__(self, o):  # type: ignore[override]
        return self._compare("eq", o)

    def __ne__(self, o):  # type: ignore[override]
        return self._compare("ne", o)

    def __lt__(self, o):
        return self._compare("lt", o)

    def __le__(self, o):
        return self._compare("le", o)

    def __gt__(self, o):
        return self._compare("gt", o)

    def __ge__(self, o):
        return self._compare("ge", o)

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(self.recorder.guard(self, self.value))

    def __float__(self) -> float:
        return float(self.recorder.guard(self, self.value))

    def __int__(self) -> int:
        return int(self.recorder.guard(self, self.value))

    def __index__(self) -> int:
        if type(self.value) is not int:
            raise TypeError("not an integer")
        return int(self.recorder.guard(self, self.value))

    def apply(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(self)`` computed on the host at every step (a schedule of the step count).

        The result must be a Python number; it becomes a host scalar of the program.
        """
        value = fn(self.value)
        if type(value) not in (int, float):
            raise NotRecordable(f"a schedule gave {type(value).__name__}, not a Python number")
        return self.recorder.scalar("call", (fn, ("s", self.index)), value)


def _broadcast(shapes: list[tuple]) -> tuple:
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for dims in zip(*[(1,) * (ndim - len(s)) + tuple(s) for s in shapes]):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            raise NotRecordable(f"shapes {shapes} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


class SymArray:
    """A symbolic array: node ``index`` of a :class:`Recorder`."""

    __slots__ = ("index", "recorder")

    def __init__(self, recorder: Recorder, index: int):
        self.recorder = recorder
        self.index = index

    @property
    def _node(self) -> Node:
        return self.recorder.nodes[self.index]

    @property
    def shape(self) -> tuple:
        return self._node.shape

    @property
    def dtype(self) -> Any:
        return self._node.dtype

    @property
    def ndim(self) -> int:
        return len(self._node.shape)

    @property
    def size(self) -> int:
        return math.prod(self._node.shape)

    @property
    def device(self) -> Any:
        return None

    def __array_namespace__(self, api_version: str | None = None) -> Any:
        return self.recorder.namespace

    def __repr__(self) -> str:
        n = self._node
        return f"SymArray({n.op}, shape={n.shape}, dtype={n.dtype})"

    def __bool__(self) -> bool:
        raise NotRecordable("a Python branch on an array's value")

    def __float__(self) -> float:
        raise NotRecordable("an array's value read as a Python number")

    __int__ = __index__ = __float__  # type: ignore[assignment]

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __iter__(self):
        raise NotRecordable("iteration over an array")

    def __getitem__(self, key: Any) -> Any:
        raise NotRecordable("indexing an array")

    def __setitem__(self, key: Any, value: Any) -> None:
        raise NotRecordable("writing into an array")

    def _ns(self) -> RecordingNamespace:
        return self.recorder.namespace

    def __add__(self, o):
        return self._ns().add(self, o)

    def __radd__(self, o):
        return self._ns().add(o, self)

    def __sub__(self, o):
        return self._ns().subtract(self, o)

    def __rsub__(self, o):
        return self._ns()._elementwise("subtract", o, self, reflected=True)

    def __mul__(self, o):
        return self._ns().multiply(self, o)

    def __rmul__(self, o):
        return self._ns().multiply(o, self)

    def __truediv__(self, o):
        return self._ns().divide(self, o)

    def __rtruediv__(self, o):  # torch computes ``o / x`` as ``x.reciprocal() * o``
        return self._ns()._elementwise("divide", o, self, reflected=True)

    def __pow__(self, o):
        return self._ns().pow(self, o)

    def __rpow__(self, o):
        return self._ns()._elementwise("pow", o, self, reflected=True)

    def __neg__(self):
        return self._ns().negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return self._ns().abs(self)

    def __gt__(self, o):
        return self._ns().greater(self, o)

    def __ge__(self, o):
        return self._ns().greater_equal(self, o)

    def __lt__(self, o):
        return self._ns().less(self, o)

    def __le__(self, o):
        return self._ns().less_equal(self, o)

    def __eq__(self, o):  # type: ignore[override]
        return self._ns().equal(self, o)

    def __ne__(self, o):  # type: ignore[override]
        return self._ns().not_equal(self, o)

    __hash__ = None  # type: ignore[assignment]


_COMPARISONS = frozenset(
    {"equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "isfinite", "isnan"}
)
_LOGICAL = frozenset({"logical_and", "logical_or", "logical_not"})
_REDUCTIONS = frozenset({"sum", "mean", "max", "min", "prod", "all", "any"})


class RecordingNamespace:
    """The Array API namespace of :class:`SymArray`: each call becomes a node.

    Dtypes, constants and inspection functions (``float32``, ``isdtype``, ``finfo``)
    are the real backend's; elementwise functions, the common reductions,
    ``expand_dims`` and ``astype`` are recorded; anything else (``reshape``,
    ``matmul`` ...) raises :class:`NotRecordable`.
    """

    def __init__(self, xp: Any) -> None:
        self._xp = xp
        self.__name__ = "agrad.optim.program.recording"

    @property
    def _recorder(self) -> Recorder:
        rec = _active.recorder
        if rec is None:
            raise NotRecordable("a recording namespace used outside its recording")
        return rec

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        real = getattr(self._xp, name, None)
        if real is None:
            raise AttributeError(name)
        if callable(real) and not isinstance(real, type) and name not in _PASSTHROUGH:
            raise NotRecordable(f"{name} is not recorded")
        return real

    # -- helpers --------------------------------------------------------------------
    def _result_dtype(self, args: tuple) -> Any:
        infos = [self._recorder.operand_info(a) for a in args]
        arrays = [(shape, d) for shape, d in infos if d is not None]
        if not arrays:
            raise NotRecordable("an operation on Python numbers only")
        if len({d for _, d in arrays}) == 1:
            return arrays[0][1]
        if _is_torch(self._xp):
            return _torch_result_type(arrays)
        out = arrays[0][1]
        for _, d in arrays[1:]:
            if d != out:
                out = self._xp.result_type(out, d)
        return out

    def _elementwise(self, op: str, *args: Any, dtype: Any = None, **attrs: Any) -> SymArray:
        rec = self._recorder
        refs = tuple(rec.ref(a) for a in args)
        shape = _broadcast([rec.operand_info(a)[0] for a in args])
        if dtype is None:
            dtype = self._result_dtype(args)
            if op in _COMPARISONS or op in _LOGICAL:
                dtype = self._xp.bool
        return rec.node(op, refs, tuple(sorted(attrs.items())), shape, dtype)

    # -- elementwise ----------------------------------------------------------------
    def add(self, a, b):
        return self._elementwise("add", a, b)

    def subtract(self, a, b):
        return self._elementwise("subtract", a, b)

    def multiply(self, a, b):
        return self._elementwise("multiply", a, b)

    def divide(self, a, b):
        return self._elementwise("divide", a, b)

    def pow(self, a, b):
        return self._elementwise("pow", a, b)

    def maximum(self, a, b):
        return self._elementwise("maximum", a, b)

    def minimum(self, a, b):
        return self._elementwise("minimum", a, b)

    def equal(self, a, b):
        return self._elementwise("equal", a, b)

    def not_equal(self, a, b):
        return self._elementwise("not_equal", a, b)

    def greater(self, a, b):
        return self._elementwise("greater", a, b)

    def greater_equal(self, a, b):
        return self._elementwise("greater_equal", a, b)

    def less(self, a, b):
        return self._elementwise("less", a, b)

    def less_equal(self, a, b):
        return self._elementwise("less_equal", a, b)

    def logical_and(self, a, b):
        return self._elementwise("logical_and", a, b)

    def logical_or(self, a, b):
        return self._elementwise("logical_or", a, b)

    def logical_not(self, a):
        return self._elementwise("logical_not", a)

    def where(self, c, a, b):
        rec = self._recorder
        refs = (rec.ref(c), rec.ref(a), rec.ref(b))
        shape = _broadcast([rec.operand_info(x)[0] for x in (c, a, b)])
        return rec.node("where", refs, (), shape, self._result_dtype((a, b)))

    def clip(self, x, /, min=None, max=None):
        if isinstance(min, SymArray) or isinstance(max, SymArray):
            raise NotRecordable("clip with array bounds")
        out = x
        if min is not None:
            out = self._elementwise("maximum", out, min)
        if max is not None:
            out = self._elementwise("minimum", out, max)
        return out

    def astype(self, x, dtype, /, *, copy=True, device=None):
        return self._elementwise("astype", x, dtype=dtype, dtype_to=dtype)

    def full_like(self, x, /, fill_value, *, dtype=None, device=None):
        if not isinstance(fill_value, (bool, int, float, SymScalar)):
            raise NotRecordable("full_like with a non-number fill value")
        rec = self._recorder
        n = rec.nodes[rec.ref(x)[1]]
        return rec.node(
            "full_like", (rec.ref(x), rec.ref(fill_value)), (), n.shape, dtype or n.dtype
        )

    def zeros_like(self, x, /, *, dtype=None, device=None):
        return self.full_like(x, 0.0, dtype=dtype)

    def ones_like(self, x, /, *, dtype=None, device=None):
        return self.full_like(x, 1.0, dtype=dtype)

    def asarray(self, obj, /, *, dtype=None, device=None, copy=None):
        if isinstance(obj, SymArray):
            return obj if dtype is None or dtype == obj.dtype else self.astype(obj, dtype)
        if type(obj) not in (bool, int, float) or dtype is None:
            raise NotRecordable("asarray of a Python value without a dtype")
        attrs = (("dtype_to", dtype), ("value", obj))
        return self._recorder.node("asarray", (), attrs, (), dtype)


def _expand_dims(self: RecordingNamespace, x: Any, /, *, axis: int = 0) -> SymArray:
    """``expand_dims`` as a node (a view of its operand, one axis of length 1 inserted)."""
    rec = self._recorder
    shape, dtype = rec.operand_info(x)
    if type(axis) is not int or not -len(shape) - 1 <= axis <= len(shape):
        raise NotRecordable(f"expand_dims with axis={axis!r} on a {len(shape)}-d array")
    at = axis if axis >= 0 else len(shape) + 1 + axis
    out = (*shape[:at], 1, *shape[at:])
    return rec.node("expand_dims", (rec.ref(x),), (("axis", axis),), out, dtype)


RecordingNamespace.expand_dims = _expand_dims  # type: ignore[attr-defined]


def _unary(op: str) -> Callable[[RecordingNamespace, Any], SymArray]:
    def fn(self: RecordingNamespace, x: Any) -> SymArray:
        return self._elementwise(op, x)

    fn.__name__ = op
    return fn


for _op in ("abs", "cos", "exp", "expm1", "isfinite", "isnan", "log", "log1p", "negative"):
    setattr(RecordingNamespace, _op, _unary(_op))
for _op in ("reciprocal", "sign", "sin", "sqrt", "square", "tanh"):
    setattr(RecordingNamespace, _op, _unary(_op))


def _reduction(op: str) -> Callable[..., SymArray]:
    def fn(self: RecordingNamespace, x: Any, /, *, axis=None, keepdims=False, **kw: Any) -> Any:
        if kw:
            raise NotRecordable(f"{op} with {sorted(kw)}")
        rec = self._recorder
        shape = rec.operand_info(x)[0]
        axes = range(len(shape)) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
        axes = {a % len(shape) for a in axes} if shape else set()
        out = tuple(1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes)
        dtype = rec.operand_info(x)[1]
        if op in ("all", "any"):
            dtype = self._xp.bool
        attrs = (("axis", axis), ("keepdims", keepdims))
        return rec.node(op, (rec.ref(x),), attrs, out, dtype)

    fn.__name__ = op
    return fn


for _op in _REDUCTIONS:
    setattr(RecordingNamespace, _op, _reduction(_op))


def _is_torch(xp: Any) -> bool:
    import array_api_compat

    return array_api_compat.is_torch_namespace(xp)


def _torch_result_type(arrays: list[tuple[tuple, Any]]) -> Any:
    """The dtype torch gives an operation on tensors of these shapes and dtypes: a 0-d
    tensor does not promote tensors with dimensions of its category or above (a 0-d
    float64 learning rate times a float32 tensor is float32), unlike the standard's
    rule. Asked of torch itself, on empty tensors of the same dimensionality."""
    import torch

    probes = [torch.empty((0,) if shape else (), dtype=d) for shape, d in arrays]
    out = probes[0]
    for p in probes[1:]:
        dtype = torch.result_type(out, p)
        out = torch.empty((0,) if out.ndim or p.ndim else (), dtype=dtype)
    return out.dtype


_PASSTHROUGH = frozenset({"isdtype", "finfo", "iinfo", "result_type", "can_cast"})

# One recording namespace and one SymArray subclass per backend namespace:
# array_namespace caches namespaces by array type, and per-backend caches (dtypes)
# are keyed by namespace. The recording in progress is per thread.
_active = threading.local()
_PER_BACKEND: dict[int, tuple[Any, type, RecordingNamespace]] = {}


def _backend(xp: Any) -> tuple[type, RecordingNamespace]:
    got = _PER_BACKEND.get(id(xp))
    if got is None or got[0] is not xp:
        name = getattr(xp, "__name__", "xp").rsplit(".", 1)[-1]
        cls = type(f"SymArray_{name}", (SymArray,), {"__slots__": ()})
        got = _PER_BACKEND[id(xp)] = (xp, cls, RecordingNamespace(xp))
    return got[1], got[2]


def record(
    opt: Any, xp: Any, params: list[Any], grads: list[Any], treedef: Any, state: Any
) -> Program:
    """The program of ``opt.step`` for these leaves (raw arrays of namespace ``xp``).

    ``state`` is the optimizer state as given; its arrays become inputs, its Python
    numbers (not bools) host-scalar inputs. Raises :class:`NotRecordable` where the rule
    cannot be recorded.
    """
    rec = Recorder(xp)
    previous = getattr(_active, "recorder", None)
    _active.recorder = rec
    try:
        return _record(rec, opt, params, grads, treedef, state)
    finally:
        _active.recorder = previous


def _record(
    rec: Recorder, opt: Any, params: list, grads: list, treedef: Any, state: Any
) -> Program:
    s_leaves, s_def = flatten_leaves(state)
    sym_p = [rec.input("param", k, p, k) for k, p in enumerate(params)]
    sym_g = [rec.input("grad", k, g, k) for k, g in enumerate(grads)]
    lanes = _state_lanes(params, treedef, s_leaves, s_def)
    sym_s: list[Any] = []
    for j, leaf in enumerate(s_leaves):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            sym_s.append(rec.input("state", j, leaf, lanes[j]))
        elif type(leaf) in (int, float):
            sym_s.append(rec.scalar("input", (j,), leaf))
        else:
            sym_s.append(leaf)
    sym_state = unflatten(s_def, sym_s)
    try:
        updates, new_state = opt.inner_update(
            unflatten(treedef, sym_g), sym_state, unflatten(treedef, sym_p)
        )
    except NotRecordable:
        raise
    except Exception as err:  # the rule met something the recording cannot stand for
        raise NotRecordable(f"{type(err).__name__}: {err}") from err
    u_leaves, u_def = flatten_leaves(updates)
    if u_def != treedef or len(u_leaves) != len(params):
        raise NotRecordable("the updates do not have the parameters' structure")
    new_p = []
    for p, u in zip(sym_p, u_leaves):
        if not isinstance(u, SymArray) or u.shape != p.shape or u.dtype != p.dtype:
            raise NotRecordable("an update that is not an array of its parameter's shape and dtype")
        new_p.append(rec.ref(rec.namespace.add(p, u)))
    n_leaves, n_def = flatten_leaves(new_state)
    if n_def != s_def:
        raise NotRecordable("the new state does not have the state's structure")
    new_s: list[Any] = []
    for old, new in zip(s_leaves, n_leaves):
        if isinstance(new, SymArray):
            n = rec.nodes[new.index]
            if not hasattr(old, "shape") or n.shape != tuple(old.shape) or n.dtype != old.dtype:
                raise NotRecordable("a new state array that does not fit its old one")
            new_s.append(rec.ref(new))
        elif isinstance(new, SymScalar) or type(new) in (int, float):
            if hasattr(old, "shape"):
                raise NotRecordable("a state array replaced by a number")
            new_s.append(rec.ref(new))
        elif hasattr(new, "shape"):
            raise NotRecordable("a state array that is not recorded")
        else:
            new_s.append(None)
    return Program(
        tuple(rec.nodes),
        tuple(rec.scalars),
        tuple(rec.guards.items()),
        tuple(new_p),
        tuple(new_s),
        len(params),
    )


def _state_lanes(params: list, treedef: Any, s_leaves: list, s_def: Any) -> list[int]:
    """The parameter each state leaf belongs to, by key path, or ``NO_LANE``.

    ``state.exp_avg['w']`` (or ``.states[1].exp_avg[0]``) ends with the key path of
    parameter ``['w']`` (``[0]``); a step count (``.count``) ends with none. A single
    array as the parameters (key path ``""``) owns the state leaves of its shape and
    dtype.
    """
    p_paths = key_paths(treedef)
    by_path = {path: k for k, path in enumerate(p_paths)}
    s_paths = key_paths(s_def)
    out = []
    for path, leaf in zip(s_paths, s_leaves):
        lane = NO_LANE
        if hasattr(leaf, "shape"):
            if "" in by_path:
                p = params[by_path[""]]
                if tuple(leaf.shape) == tuple(p.shape) and leaf.dtype == p.dtype:
                    lane = by_path[""]
            else:
                for i, ch in enumerate(path):
                    if ch in ".[" and path[i:] in by_path:
                        lane = by_path[path[i:]]
                        break
        out.append(lane)
    return out
