"""Any agrad optimizer as a real ``torch.optim.Optimizer``: schedulers, GradScaler, state dicts.

``TorchOptimizer(model.parameters(), agrad.optim.adam, lr=1e-3)`` (or an optimizer
already built: ``TorchOptimizer(model.parameters(), agrad.optim.adam(lr=1e-3))``) is a
``torch.optim.Optimizer`` subclass: ``step(closure=None)``, ``zero_grad``,
``param_groups`` whose options are the agrad optimizer's hyperparameters,
``add_param_group``, ``state_dict``/``load_state_dict``, every
``torch.optim.lr_scheduler`` and ``torch.amp.GradScaler`` work as with
``torch.optim.Adam``.

How it works:

- Options. Each parameter group holds the keyword arguments of the optimizer's
  constructor (its *factory*: ``agrad.optim.adam``, or any callable that returns a
  :class:`~agrad.optim.GradientTransformation`). A step builds the group's optimizer
  from the group's current options (a scheduler that changed ``group["lr"]`` or
  ``group["betas"]`` is seen at the next step); built optimizers are cached per
  distinct options (building one costs about 20 us; its first step compiles a program,
  see Schedules).
- Schedules. A new optimizer is a new program for agrad's fast route to compile, so a
  group whose numeric options change at two steps in a row (an lr scheduler stepped
  per step) switches to ``inject_hyperparams`` of its constructor, built once
  (:class:`_Scheduled`): the options that moved are 0-d tensors of its state, filled
  from the group before each step and never kept in ``self.state``, whose entries
  keep the plain optimizer's names. Another option changed builds it again; 64 steps
  with the same options take the group back to the plain optimizer. A factory of
  your own switches too; where its rule cannot take an option as a 0-d tensor (it
  raises when it steps, before anything is written), the group keeps building the
  plain optimizer of each value.
- State. As in torch, state is per parameter and lazy: ``self.state[p]`` holds the
  parameter's slice of the agrad state under torch's names (``exp_avg``,
  ``momentum_buffer``..., ``step`` for the step count, a float tensor as torch keeps
  it), made at the parameter's first step with a gradient. A step gathers the states
  of the parameters that have a gradient into one agrad state (one per distinct step
  count, so a parameter that was frozen for a while keeps its own count, as in torch)
  and runs ``opt.step`` on them in place. ``state_dict()`` is therefore torch's format:
  tensors, Python numbers, tuples, dicts and lists only, so ``torch.load(...,
  weights_only=True)`` reads it; for the 14 optimizers torch also has it is exactly
  that ``torch.optim`` optimizer's (:mod:`agrad.optim._torch_state`), so state dicts
  load both ways.
- Checks. Every gradient of every group is checked (dense, its parameter's shape,
  dtype and device; a complex parameter only where the optimizer takes one) before
  any parameter is written; a parameter whose ``grad`` is ``None`` is skipped, as
  torch does.
- Steady steps. After a full step whose parameters share one step count, a group
  keeps the detached views, state leaves and containers it passed ``opt.step``
  (:class:`_SteadyGroup`); while a bulk check finds nothing changed but values (the
  same group, optimizer, parameters, gradients' metadata, addresses, state tensors
  and step counts), the next step passes the very same objects, so agrad's torch fast
  route takes its own steady check (:mod:`agrad.optim._steady`) instead of checking
  every tensor (a scheduled group's new ``lr`` is a value too). Anything else
  (``p.data = ...``, ``load_state_dict``, a new optimizer, a ``None`` gradient) takes
  the full path, which makes a new record.
- Closure-driven optimizers (``agrad.optim.lbfgs``) take torch's ``step(closure)``:
  the closure is called at every point the optimizer tries, with the parameters set
  to it, as ``torch.optim.LBFGS`` does; one parameter group, as torch's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from itertools import repeat
from operator import attrgetter, is_, is_not, itemgetter
from typing import Any

import torch

from agrad.optim import _steady
from agrad.optim._cache import LRUCache
from agrad.optim._torch_state import group_to_torch, state_from_torch, state_to_torch
from agrad.optim._treeplan import TreePlan
from agrad.optim.base import GradientTransformation, is_array
from agrad.pytree import flatten, flatten_leaves, unflatten

__all__ = ["TorchOptimizer"]

Factory = Callable[..., GradientTransformation]

# Keys a parameter group may hold besides the optimizer's options: torch's own, the
# ones lr schedulers write, and a name many training scripts give their groups.
_GROUP_KEYS = frozenset(
    {
        "params",
        "param_names",
        "name",
        "initial_lr",
        "max_lr",
        "min_lr",
        "base_momentum",
        "max_momentum",
    }
)
_BUILT_KEPT = 32  # optimizers per distinct options (OneCycleLR makes a new set each step)
_LAYOUTS_KEPT = 32


_PLAIN = (float, int, bool, str, type(None))


def _frozen(value: Any) -> Any:
    """A hashable stand-in of an option's value (lists become tuples, 0-d tensors numbers)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def _plain(value: Any) -> Any:
    """An option's value as the factory takes it (a list from a state dict is a tuple)."""
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0:
        return value.item()
    return value


def _options_of(factory: Factory) -> dict[str, Any]:
    """The factory's keyword arguments and their defaults (``inspect.Parameter.empty``: none)."""
    out = {}
    for name, p in inspect.signature(factory).parameters.items():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[name] = p.default
    return out


def _same_hyperparams(a: Any, b: Any) -> bool:
    try:
        return bool(dict(a) == dict(b))
    except Exception:  # arrays compare elementwise: such options are not rebuilt
        return False


def _is_optimizer(x: Any) -> bool:
    """An agrad optimizer: a ``GradientTransformation``, or closure-driven (``lbfgs``)."""
    return isinstance(x, GradientTransformation) or _closure_driven(x)


def _closure_driven(x: Any) -> bool:
    """An optimizer that evaluates the loss itself (``lbfgs``): ``step(params, closure, state)``."""
    return (
        not isinstance(x, (type, GradientTransformation))
        and callable(getattr(x, "init", None))
        and callable(getattr(x, "step", None))
        and hasattr(x, "hyperparams")
    )


def _factory_of(opt: GradientTransformation) -> tuple[Factory | None, dict[str, Any]]:
    """The public agrad constructor that rebuilds ``opt`` from its hyperparameters, if any.

    ``agrad.optim.<opt.name>`` is used when calling it with the hyperparameters it takes
    gives back the same hyperparameters; otherwise (a plain chain, a custom optimizer)
    ``(None, {})``: the optimizer is used as it is, with no per-group options.
    """
    import agrad.optim

    name = getattr(opt, "name", None) or type(opt).__name__.lower()
    factory = getattr(agrad.optim, name, None)
    if not callable(factory) or isinstance(factory, (type, GradientTransformation)):
        return None, {}
    try:
        accepted = _options_of(factory)
    except (TypeError, ValueError):
        return None, {}
    options = {k: v for k, v in dict(opt.hyperparams).items() if k in accepted}
    try:
        rebuilt = factory(**options)
    except Exception:
        return None, {}
    if not _is_optimizer(rebuilt) or not _same_hyperparams(rebuilt.hyperparams, opt.hyperparams):
        return None, {}
    defaults = {k: v for k, v in accepted.items() if v is not inspect.Parameter.empty}
    return factory, {**defaults, **options}


def _scalar_dtype() -> torch.dtype:
    """The dtype torch.optim keeps step counts in (float32, float64 when that is the default)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _entry_name(path: str) -> str:
    """The name of a state leaf in ``self.state[p]``: its key path, ``count`` called ``step``."""
    name = path.lstrip(".")
    if name == "count":
        return "step"
    if name.endswith(".count"):
        return name[: -len("count")] + "step"
    return name


_INNER = "inner_state."  # a scheduled group's optimizer state: its entries' prefix
_FED = "hyperparams["  # and its injected hyperparameters' (fed from the group)
_SCHEDULE_AFTER = 2  # consecutive steps with new option values: a schedule
_CONSTANT_AFTER = 64  # steps with the same values: constant again, back to the plain optimizer


def _number(v: Any) -> bool:
    """A Python ``int`` or ``float`` (not a ``bool``)."""
    return type(v) in (int, float)


def _injectable(v: Any) -> bool:
    """An option value a scheduled group takes as data: a number, or a tuple of numbers
    (``betas``; ``None`` entries stay ``None``)."""
    if isinstance(v, tuple):
        return bool(v) and any(map(_number, v)) and all(x is None or _number(x) for x in v)
    return _number(v)


class _Scheduled:
    """A group's watch over its options, and its optimizer while they are scheduled.

    Every step of a group with a factory is observed (:meth:`observe`). While its
    options keep their values, the group runs the plain optimizer of its options, as
    always. After :data:`_SCHEDULE_AFTER` consecutive steps with new values of numeric
    options (an lr scheduler stepped per step), the group switches to
    ``inject_hyperparams(factory, static_args=<the others>)`` built once (``opt``):
    the options that moved (``names``) are 0-d float tensors in its state, fed from
    the group at each step (:meth:`feed`), so a new value is new data, not a new
    program for the fast route to compile. Its state's entries keep the plain
    optimizer's names (:class:`_Layout` ``scheduled``), so ``self.state`` and state
    dicts do not change. After :data:`_CONSTANT_AFTER` steps with unchanged options, or
    a change of an option it holds fixed (``amsgrad``...), the group goes back to the
    plain optimizer (one new program, as any new option value makes).
    """

    __slots__ = (
        "calm", "changed", "current", "fixed", "key", "moved", "names", "opt", "refused", "values",
    )  # fmt: skip

    def __init__(self, key: tuple):
        self.key = key  # the options at the last step, as _optimizer_for keys them
        self.changed = 0  # consecutive steps with new values
        self.calm = 0  # consecutive steps with the same values
        self.moved: set[str] = set()  # numeric options whose value changed
        self.opt: GradientTransformation | None = None
        self.names: tuple[str, ...] = ()  # the injected options
        self.fixed: tuple = ()  # the other options' values, which ``opt`` was built with
        self.refused: tuple | None = None  # (fixed, names) that could not be injected
        self.values: dict[tuple, Any] = {}  # (entry name, dtype, device) -> 0-d tensor
        self.current: dict[str, Any] = {}  # the injected options' values this step

    def observe(self, key: tuple) -> None:
        """Count this step's options against the last step's."""
        if key == self.key:
            self.changed, self.calm = 0, self.calm + 1
            return
        for (k, old), (_, new) in zip(self.key, key):
            if old != new and _injectable(old) and _injectable(new):
                self.moved.add(k)
        self.key, self.changed, self.calm = key, self.changed + 1, 0

    def fits(self, key: tuple) -> bool:
        """Whether ``opt`` runs the options ``key``: the same fixed options."""
        return self.fixed == tuple(kv for kv in key if kv[0] not in self.names)

    def feed(self, group: dict[str, Any]) -> None:
        """The group's values of the injected options into their tensors, in place."""
        self.current = {k: _plain(group[k]) for k in self.names}
        for (name, _, _), t in self.values.items():
            t.fill_(self._value(name))

    def _value(self, name: str) -> float:
        """The option value for the entry ``hyperparams['betas'][0]`` (or ``['lr']``)."""
        key, _, rest = name[len(_FED) :].partition("]")
        value = self.current[key.strip("'\"")]
        return float(value[int(rest.strip("[]"))] if rest else value)

    def leaf(self, name: str, spec: Any, device: Any) -> Any:
        """The tensor fed to the state leaf ``name`` (made at first use, of ``spec``'s
        dtype, on ``device``)."""
        where = (name, spec.dtype, device)
        t = self.values.get(where)
        if t is None:
            t = self.values[where] = torch.tensor(
                self._value(name), dtype=spec.dtype, device=device
            )
        return t


class _Layout:
    """Where each leaf of an agrad state for ``n`` parameters lives in ``self.state``.

    ``per_param[i]`` is ``(name, j)`` for the leaf that belongs to the bucket's ``j``-th
    parameter, or ``(name, None)`` for a leaf shared by the whole bucket (a step
    count), which every parameter keeps a copy of, as torch keeps ``step``.

    ``scheduled``: the state is a :class:`_Scheduled` optimizer's
    (``InjectHyperparamsState``): its ``inner_state.<x>`` entries are named ``<x>``, as
    the plain optimizer's, and its ``hyperparams[...]`` leaves are ``fed`` (leaf index
    -> name): fed from the group's options at each step, never kept in ``self.state``.
    """

    __slots__ = ("fed", "leaves", "shared", "template", "treedef")

    def __init__(self, template: Any, n: int, scheduled: bool = False):
        leaves, self.treedef, paths = flatten(template)
        keys = {f"[{str(j)!r}]": j for j in range(n)}
        self.leaves: list[tuple[str, int | None]] = []
        self.fed: dict[int, str] = {}
        for i, path in enumerate(paths):
            cut = path.rfind("[")
            j = keys.get(path[cut:]) if cut >= 0 else None
            name = _entry_name(path[:cut] if j is not None else path)
            if scheduled and name.startswith(_INNER):
                name = name[len(_INNER) :]
            elif scheduled and j is None and name.startswith(_FED):
                self.fed[i] = name
            self.leaves.append((name, j))
        self.template = leaves
        self.shared = [
            (i, name) for i, (name, j) in enumerate(self.leaves) if j is None and i not in self.fed
        ]


class TorchOptimizer(torch.optim.Optimizer):
    """An agrad optimizer as a ``torch.optim.Optimizer`` (schedulers, GradScaler, state dicts).

    Args:
        params: what ``torch.optim.Adam`` takes: ``model.parameters()``,
            ``model.named_parameters()`` or a list of parameter groups (dicts with
            ``"params"`` and any options).
        optimizer: an agrad constructor (``agrad.optim.adam``, or any callable whose
            keyword arguments are the options and which returns a
            ``GradientTransformation``), or an optimizer it built
            (``agrad.optim.adam(lr=1e-3)``; its hyperparameters become the defaults).
            A plain ``chain`` takes its links' options (``lr`` of the link that has
            one; two links with an ``lr`` are refused, naming them); an
            ``inject_hyperparams`` optimizer takes its injected hyperparameters as
            options, written into its state before each step. Any other optimizer
            no public constructor rebuilds is used as it is, without options.
        **defaults: options for every group that does not set its own (``lr=1e-3``).

    Each step builds the group's optimizer from ``group``'s options, so schedulers and
    manual edits of ``group["lr"]`` (or ``betas``, ``weight_decay``...) apply from the
    next step. A new value builds a new optimizer, whose program the fast route
    compiles at its first step; where the options change step after step (a scheduler
    stepped per step), the group switches by itself to ``inject_hyperparams`` of the
    constructor, built once, whose state holds the changing options as data: no new
    program per step, and ``self.state`` and state dicts as before (torch's names;
    docs/migrating/torch-optim.md has the numbers).
    Example::

        opt = TorchOptimizer(model.parameters(), agrad.optim.adamw, lr=1e-3)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
        for x, y in data:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
    """

    def __init__(
        self,
        params: Iterable[Any],
        optimizer: GradientTransformation | Factory,
        **defaults: Any,
    ):
        cls = type(self).__name__
        self._fixed: GradientTransformation | None = None
        self._injected: tuple[str, ...] = ()  # options kept in the state (inject_hyperparams)
        if _is_optimizer(optimizer):
            factory, options = _factory_of(optimizer)
            if factory is None:
                factory, options = _chain_factory(optimizer, cls)
            if factory is None:
                options = _injected_options(optimizer)
                self._injected = tuple(options)
                if defaults and not options:
                    msg = (
                        f"{cls}: {optimizer!r} has no constructor that rebuilds it, so it "
                        f"takes no options ({', '.join(defaults)}); pass a function that "
                        "builds it instead, e.g. "
                        f"{cls}(params, lambda lr: agrad.optim.chain(..., agrad.optim.adam(lr=lr)), lr=1e-3)"
                    )
                    raise TypeError(msg)
                self._fixed = optimizer
        elif callable(optimizer):
            factory = optimizer
            try:
                options = {
                    k: v
                    for k, v in _options_of(factory).items()
                    if v is not inspect.Parameter.empty or k in defaults
                }
            except (TypeError, ValueError) as err:
                msg = f"{cls}: cannot read the keyword arguments of {optimizer!r}: {err}"
                raise TypeError(msg) from None
            missing = [
                k
                for k, v in _options_of(factory).items()
                if v is inspect.Parameter.empty and k not in defaults
            ]
            if missing:
                msg = f"{cls}: {_name(factory)} needs {', '.join(map(repr, missing))}; pass it as a keyword"
                raise TypeError(msg)
        else:
            msg = (
                f"{cls}: optimizer must be an agrad optimizer or a function that builds "
                f"one (e.g. agrad.optim.adam), got {type(optimizer).__name__}"
            )
            raise TypeError(msg)
        if factory is not None or self._injected:
            unknown = [k for k in defaults if k not in options]
            if unknown:
                msg = (
                    f"{cls}: {_name(factory) if factory is not None else repr(optimizer)} "
                    f"takes no option {', '.join(map(repr, unknown))}; "
                    f"its options are {', '.join(options)}"
                )
                raise TypeError(msg)
            options = {**options, **defaults}
        self._factory = factory
        self._torch_name = _agrad_name(factory if factory is not None else self._fixed)
        # the options, kept apart from self.defaults (torch adds "differentiable" there)
        self._options: dict[str, Any] = options if factory is not None or self._injected else {}
        self._built = LRUCache(_BUILT_KEPT)
        self._layouts = LRUCache(_LAYOUTS_KEPT)
        # group index -> its last full step's objects, for the steady check (_SteadyGroup)
        self._steady: dict[int, _SteadyGroup] = {}
        # group index -> (optimizer, parameter addresses) of its last full step
        self._seen: dict[int, tuple] = {}
        # group index -> (the optimizer of its options, a copy of its own for steady steps)
        self._own: dict[int, tuple] = {}
        # group index -> its watch over its options (a schedule switches it, _Scheduled)
        self._watch: dict[int, _Scheduled] = {}
        # id of a scheduled group's optimizer -> the group's watch (its layout, fed leaves)
        self._by_opt: dict[int, _Scheduled] = {}
        super().__init__(params, dict(self._options))

    # -- state dicts ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict``; for an optimizer torch also has, exactly that optimizer's format.

        Same state keys, tensor or number, ``step`` dtype and group options as
        ``torch.optim.<Name>.state_dict()``, so that ``torch.optim.<Name>.load_state_dict``
        accepts it (see :mod:`agrad.optim._torch_state`).
        """
        sd = super().state_dict()
        name = self._torch_name
        if name is None:
            return sd
        params = [p for g in self.param_groups for p in g["params"]]
        state = {}
        for i, entries in sd["state"].items():
            out = state_to_torch(name, entries, params[i]) if isinstance(i, int) else entries
            if out:
                state[i] = out
        return {
            "state": state,
            "param_groups": [group_to_torch(name, g) for g in sd["param_groups"]],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict of this wrapper or of the ``torch.optim`` optimizer of the same name."""
        name = self._torch_name
        if name is not None and isinstance(state_dict, dict) and "state" in state_dict:
            state = {k: state_from_torch(name, v) for k, v in state_dict["state"].items()}
            state_dict = {**state_dict, "state": state}
        super().load_state_dict(state_dict)

    # -- groups and options -----------------------------------------------------------
    def __repr__(self) -> str:
        what = repr(self._fixed) if self._factory is None else _name(self._factory)
        return f"{type(self).__name__}[{what}] " + super().__repr__().split(" ", 1)[1]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore (``load_state_dict`` calls it); groups lacking an option get the default."""
        super().__setstate__(state)
        self._steady = {}  # new groups and state tensors: the next step takes the full path
        self._seen = {}
        self._own = {}
        self._watch = {}
        self._by_opt = {}
        for group in self.param_groups:
            for k, v in self._options.items():
                group.setdefault(k, v)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's checks), refusing options the optimizer does not take."""
        cls = type(self).__name__
        if isinstance(param_group, dict):
            unknown = [k for k in param_group if k not in _GROUP_KEYS and k not in self._options]
            if unknown:
                what = "no options" if not self._options else f"options {', '.join(self._options)}"
                msg = (
                    f"{cls}.add_param_group: unknown option {', '.join(map(repr, unknown))}; "
                    f"{self._label()} takes {what}"
                )
                raise ValueError(msg)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if not (p.is_floating_point() or p.is_complex()):
                self.param_groups.pop()
                msg = f"{cls}: a parameter of dtype {p.dtype} cannot be optimized (floating point only)"
                raise TypeError(msg)
        try:
            opt = self._optimizer_for(group)  # invalid options fail now, as torch's do
        except Exception:
            self.param_groups.pop()
            raise
        if _closure_driven(opt) and len(self.param_groups) > 1:
            self.param_groups.pop()
            msg = (
                f"{cls}: {self._label()} doesn't support per-parameter options (parameter "
                "groups), as torch.optim.LBFGS: give it one group, all the parameters with "
                "one set of options"
            )
            raise ValueError(msg)

    def _label(self) -> str:
        return repr(self._fixed) if self._factory is None else _name(self._factory)

    def _optimizer_for(
        self, group: dict[str, Any], key: tuple | None = None
    ) -> GradientTransformation:
        """The agrad optimizer for ``group``'s current options (cached per distinct options;
        ``key``: :meth:`_key` of the group, where already known)."""
        if self._factory is None:
            assert self._fixed is not None
            return self._fixed
        names = self._options
        if key is None:
            key = self._key(group)
        opt = self._built.get(key)
        if opt is None:
            opt = self._factory(**{k: _plain(group[k]) for k in names})
            if not _is_optimizer(opt):
                msg = f"{type(self).__name__}: {_name(self._factory)} returned {type(opt).__name__}, not an agrad optimizer"
                raise TypeError(msg)
            self._built[key] = opt
        return opt

    def _key(self, group: dict[str, Any]) -> tuple:
        """The group's options as a hashable key (what the built optimizers are cached by)."""
        return tuple((k, _frozen(group[k])) for k in self._options)

    def _group_optimizer(self, gi: int, group: dict[str, Any]) -> GradientTransformation:
        """The optimizer group ``gi`` steps with: the plain one of its options, or while
        they are scheduled (new values step after step) its :class:`_Scheduled` one, fed
        the options' current values."""
        if self._factory is None or self._injected:
            return self._optimizer_for(group)  # chains, fixed optimizers
        key = self._key(group)
        watch = self._watch.get(gi)
        if watch is None:
            self._watch[gi] = _Scheduled(key)
            return self._optimizer_for(group, key)
        watch.observe(key)
        if watch.opt is not None:
            if watch.calm < _CONSTANT_AFTER and watch.fits(key):
                watch.feed(group)
                return watch.opt
            self._unschedule(watch)
        if watch.changed >= _SCHEDULE_AFTER and watch.moved and self._schedule(watch, group, key):
            watch.feed(group)
            return watch.opt
        return self._optimizer_for(group, key)

    def _unschedule(self, watch: _Scheduled) -> None:
        """Back to the plain optimizer of the group's options."""
        self._by_opt.pop(id(watch.opt), None)
        watch.opt, watch.names, watch.fixed, watch.values = None, (), (), {}

    def _schedule(self, watch: _Scheduled, group: dict[str, Any], key: tuple) -> bool:
        """Build the group's scheduled optimizer (``inject_hyperparams`` of the options
        that moved); ``False`` where it cannot stand in for the plain one: an option
        not injectable, or a state of another structure than the plain optimizer's."""
        from agrad.optim.inject import inject_hyperparams

        names = tuple(
            k for k in self._options if k in watch.moved and _injectable(_plain(group[k]))
        )
        fixed = tuple(kv for kv in key if kv[0] not in names)
        if not names or watch.refused == (fixed, names):
            return False
        plain = self._optimizer_for(group, key)
        try:
            if _closure_driven(plain):
                raise TypeError("closure-driven")
            values = {k: _plain(group[k]) for k in self._options}
            statics = tuple(k for k in self._options if k not in names)
            opt = inject_hyperparams(self._factory, static_args=statics)(**values)
            # the state the injected rule steps on (hyperparameters as arrays) must be the
            # plain one's: an option at 0 may keep no buffer in one and one in the other
            as_arrays = self._factory(**{**values, **{k: _as_array(values[k]) for k in names}})
            plain_entries = _entries(plain.init(_PROBE), False)
            same = _entries(opt.init(_PROBE), True) == plain_entries
            same = same and _entries(as_arrays.init(_PROBE), False) == plain_entries
        except Exception:
            same = False
        if not same:
            watch.refused = (fixed, names)
            return False
        watch.opt, watch.names, watch.fixed, watch.values = opt, names, fixed, {}
        self._by_opt[id(opt)] = watch
        return True

    # -- the step ---------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter with a gradient; returns ``closure()``'s loss.

        Every group's gradients are checked before any parameter is written; a
        parameter whose ``grad`` is ``None`` is skipped (its state is left as it is).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for i in [i for i in self._watch if i >= len(self.param_groups)]:
            watch = self._watch.pop(i)
            self._unschedule(watch)
        opts = [self._group_optimizer(i, g) for i, g in enumerate(self.param_groups)]
        if any(_closure_driven(opt) for opt in opts):
            return self._step_closure_driven(closure)
        groups = list(enumerate(zip(self.param_groups, opts)))
        for i in [i for i in self._steady if i >= len(groups)]:
            del self._steady[i]
        for i in [i for i in self._seen if i >= len(groups)]:
            del self._seen[i]
            self._own.pop(i, None)
        steady = [self._steady_check(i, g, opt) for i, (g, opt) in groups]
        plans = [
            self._plan(i, g, opt) if ready is None else None
            for (i, (g, opt)), ready in zip(groups, steady)
        ]
        for (i, (group, opt)), ready, plan in zip(groups, steady, plans):
            if ready is not None:
                self._steady_step(i, ready)
            elif plan[1]:
                self._run_group(opt, plan[1], group, i)
        return loss

    def _run_group(
        self, opt: GradientTransformation, params: list[Any], group: dict[str, Any], gi: int
    ) -> None:
        """:meth:`_run`; where a custom factory's scheduled optimizer (its options as 0-d
        tensors) fails, the plain one of the group's options instead, and for these
        options from then on: a rule may need an option as a Python number. Nothing was
        written by the failed step (an agrad step runs its rule before any write)."""
        watch = self._by_opt.get(id(opt)) if self._torch_name is None else None
        if watch is None:
            self._run(opt, params, group, gi)
            return
        try:
            self._run(opt, params, group, gi)
        except Exception:
            watch.refused = (watch.fixed, watch.names)
            self._unschedule(watch)
            self._run(self._optimizer_for(group), params, group, gi)

    def _step_closure_driven(self, closure: Callable[[], Any] | None) -> Any:
        """A step of an optimizer that evaluates the loss itself (``lbfgs``), as torch's LBFGS.

        One parameter group; ``closure()`` (zero the gradients, compute the loss,
        ``backward()``, return the loss) is called at each point the optimizer tries,
        with the parameters set to that point; a ``None`` gradient counts as zeros. The
        state lives in ``self.state`` of the first parameter, as torch keeps it.
        Returns the first loss, as torch does.
        """
        cls = type(self).__name__
        if closure is None:
            msg = f"{cls}.step: {self._label()} evaluates the loss itself: pass step(closure), a function that zeroes the gradients, computes the loss, calls backward() and returns the loss"
            raise TypeError(msg)
        if len(self.param_groups) != 1:
            msg = f"{cls}: {self._label()} takes one parameter group (as torch.optim.LBFGS), got {len(self.param_groups)}"
            raise ValueError(msg)
        opt = self._optimizer_for(self.param_groups[0])
        params = list(self.param_groups[0]["params"])
        tree = {str(j): p.detach() for j, p in enumerate(params)}
        template = opt.init(tree)
        stored = self.state[params[0]]
        state = type(template)(**{f: stored.get(f, getattr(template, f)) for f in template._fields})

        def evaluate(at: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            for k, p in tree.items():
                if at[k] is not p:
                    p.copy_(at[k])
            with torch.enable_grad():
                loss = closure()
            grads = {}
            for j, p in enumerate(params):
                g = p.grad
                if g is not None and g.layout != torch.strided:
                    msg = f"{cls}.step: param_groups[0]['params'][{j}] has a sparse gradient ({g.layout}); {self._label()} takes dense gradients"
                    raise TypeError(msg)
                grads[str(j)] = torch.zeros_like(p) if g is None else g
            return loss, grads

        _, new_state, loss = opt.step(tree, evaluate, state)
        stored.update(new_state._asdict())
        return loss

    def _plan(
        self, gi: int, group: dict[str, Any], opt: GradientTransformation
    ) -> tuple[GradientTransformation, list[Any]]:
        """The group's optimizer and parameters with a gradient, after checking each."""
        out = []
        for j, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            where = f"param_groups[{gi}]['params'][{j}] (shape {tuple(p.shape)})"
            fn = f"{type(self).__name__}.step"
            if g.layout != torch.strided or p.layout != torch.strided:
                what = "gradient" if g.layout != torch.strided else "parameter"
                bad = g.layout if g.layout != torch.strided else p.layout
                msg = (
                    f"{fn}: {where} has a sparse {what} ({bad}); agrad optimizers take dense "
                    "gradients: use torch.optim.SparseAdam for sparse embeddings, or "
                    "nn.Embedding(..., sparse=False)"
                )
                raise TypeError(msg)
            if p.is_complex() and not getattr(opt, "complex_params", False):
                msg = f"{fn}: {where} is complex ({p.dtype}); {opt!r} takes real parameters"
                raise TypeError(msg)
            if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                msg = (
                    f"{fn}: {where}: its gradient has shape {tuple(g.shape)}, dtype {g.dtype} "
                    f"on {g.device} but the parameter is {p.dtype} on {p.device}"
                )
                raise ValueError(msg)
            out.append(p)
        return opt, out

    def _layout(self, opt: GradientTransformation, params: dict[str, Any]) -> _Layout:
        key = (opt, tuple((p.shape, p.dtype) for p in params.values()))
        layout = self._layouts.get(key)
        if layout is None:
            template = getattr(opt, "_template", None)
            if template is not None:
                leaves, treedef = flatten(params)[:2]
                state = template(leaves, treedef)
            else:
                state = opt.init(params)
            scheduled = id(opt) in self._by_opt
            layout = self._layouts[key] = _Layout(state, len(params), scheduled)
        return layout

    def _initialize(self, opt: GradientTransformation, params: list[Any]) -> None:
        """Torch's lazy state: the parameters' slices of ``opt.init`` in ``self.state``."""
        tree = {str(j): p for j, p in enumerate(params)}
        state = opt.init(tree)
        layout = self._layout(opt, tree)
        leaves = flatten(state)[0]
        fresh: list[dict[str, Any]] = [{} for _ in params]
        for i, ((name, j), value) in enumerate(zip(layout.leaves, leaves)):
            if i in layout.fed:
                continue
            for k in range(len(params)) if j is None else (j,):
                fresh[k][name] = _stored(value, name) if j is None else value
        for p, entries in zip(params, fresh):
            self.state[p].update({k: v for k, v in entries.items() if k not in self.state[p]})

    def _run(
        self, opt: GradientTransformation, params: list[Any], group: dict[str, Any], gi: int
    ) -> None:
        """``opt.step`` on ``params``, one call per set of parameters sharing a step count;
        where they all share one, the step is kept for the next steps' steady check."""
        new = [p for p in params if not self.state.get(p)]
        if new:
            self._initialize(opt, new)
        for k in self._injected:  # the group's value into the state, where the rule reads it
            value = _plain(group[k])
            if isinstance(value, tuple):  # betas: one entry per element (None stays None)
                for i, v in enumerate(value):
                    if v is not None:
                        _inject(self.state, params, _entry_name(f".hyperparams[{k!r}][{i}]"), v)
            else:
                _inject(self.state, params, _entry_name(f".hyperparams[{k!r}]"), value)
        buckets: dict[Any, list[Any]] = {}
        probe = self._layout(opt, {"0": params[0]})
        states = [self.state[p] for p in params]
        columns = [_values_of([s.get(name) for s in states]) for _, name in probe.shared]
        for p, key in zip(params, zip(*columns) if columns else [()] * len(params)):
            buckets.setdefault(key, []).append(p)
        for bucket in buckets.values():
            step = self._step_bucket(opt, bucket)
        if len(buckets) == 1 and not self._injected and self._settled(gi, opt, params):
            rec = _SteadyGroup.make(self, group, opt, params, *step)
            if rec is not None:
                rec.opt = self._own_optimizer(gi, group, opt)
                self._steady[gi] = rec

    def _own_optimizer(
        self, gi: int, group: dict[str, Any], opt: GradientTransformation
    ) -> GradientTransformation:
        """``opt``, or where another group's steady steps use it too (groups with the same
        options), a copy built from the same options for group ``gi`` alone: the fast
        route keeps one steady record per optimizer object, which two groups would
        replace in turn, each step taking the full check."""
        if self._factory is None or not any(
            r.opt is opt for i, r in self._steady.items() if i != gi
        ):
            return opt
        own = self._own.get(gi)
        if own is None or own[0] is not opt:
            own = self._own[gi] = (
                opt,
                self._factory(**{k: _plain(group[k]) for k in self._options}),
            )
        return own[1]

    def _settled(self, gi: int, opt: GradientTransformation, params: list[Any]) -> bool:
        """Whether group ``gi``'s last full step had this optimizer and these parameter
        addresses too: a record costs a few passes over the tensors (the guard is built in
        Python), not worth making where they change every step (an ``lr`` scheduled
        per step, ``p.data`` replaced each step)."""
        seen = self._seen.get(gi)
        ptrs = list(map(_DATA_PTR, params))
        self._seen[gi] = (opt, ptrs)
        return seen is not None and seen[0] is opt and seen[1] == ptrs

    def _step_bucket(self, opt: GradientTransformation, params: list[Any]) -> tuple:
        """One ``opt.step`` on ``params``; returns what :class:`_SteadyGroup` keeps of it:
        ``(views, layout, leaves)``."""
        tree = {str(j): p for j, p in enumerate(params)}
        layout = self._layout(opt, tree)
        states = [self.state[p] for p in params]
        lacking = {j for name, j in layout.leaves if j is not None and name not in states[j]}
        if lacking:  # an option that adds state (amsgrad turned on), or a partial load
            self._fill(opt, [params[j] for j in sorted(lacking)])
        leaves = []
        first = states[0]
        for i, ((name, j), spec) in enumerate(zip(layout.leaves, layout.template)):
            if i in layout.fed:
                leaves.append(self._by_opt[id(opt)].leaf(name, spec, params[0].device))
            elif j is None:
                leaves.append(_as_leaf(first.get(name, _MISSING), spec, params[0], first, name))
            else:
                x = states[j][name]
                if is_array(spec) and x.dtype != spec.dtype:
                    x = x.to(spec.dtype)
                leaves.append(x)
        state = unflatten(layout.treedef, leaves)
        grads = {k: p.grad for k, p in tree.items()}
        # detached views share the parameters' memory: written in place, the parameters
        # change, and agrad's fused-kernel fast path takes them (it declines tensors that
        # require grad)
        views = {k: p.detach() for k, p in tree.items()}
        _, new_state = opt.step(views, grads, state)
        _write_back(layout, states, flatten_leaves(new_state)[0])
        return views, layout, leaves

    def _steady_check(
        self, gi: int, group: dict[str, Any], opt: GradientTransformation
    ) -> tuple | None:
        """``(record, gradients, states)`` where group ``gi`` may take its steady step
        (nothing changed since its last step but values), else ``None`` (the record is
        dropped; the full path runs and may make a new one)."""
        rec = self._steady.get(gi)
        if rec is None:
            return None
        got = rec.check(self.state, group, opt)
        if got is None:
            del self._steady[gi]
            return None
        return (rec, *got)

    def _steady_step(self, gi: int, ready: tuple) -> None:
        """The step of a group that passed :meth:`_steady_check`: the same views, state
        tensors and containers as last step, the step count read from the state."""
        rec, grads, states, counts = ready
        leaves = list(rec.leaves)
        for (i, name), leaf, count in zip(rec.layout.shared, rec.shared, counts):
            leaves[i] = _count_leaf(leaf, count, rec.layout.template[i], rec.params[0], name)
        _, new_state = rec.opt.step(rec.views, dict(zip(rec.views, grads)), rec.plan.build(leaves))
        new_leaves = rec.plan.leaves(new_state)
        same = new_leaves is not None and all(map(is_, rec.arrays(new_leaves), rec.arrays(leaves)))
        if not same:  # new state arrays (the generic path): written as usual, no record
            del self._steady[gi]
            new_leaves = flatten_leaves(new_state)[0]
        if not _write_back(rec.layout, states, new_leaves, same, rec.steps):
            self._steady.pop(gi, None)

    def _fill(self, opt: GradientTransformation, params: list[Any]) -> None:
        """Give ``params`` the state entries they lack, with ``opt.init``'s values."""
        tree = {str(j): p for j, p in enumerate(params)}
        layout = self._layout(opt, tree)
        for (name, j), value in zip(layout.leaves, flatten(opt.init(tree))[0]):
            if j is not None and name not in self.state[params[j]]:
                self.state[params[j]][name] = value


_MISSING = object()
_GRAD = attrgetter("grad")
_DTYPE = attrgetter("dtype")
_DATA_PTR = torch.Tensor.data_ptr


_PROBE = {"0": torch.zeros(2, 2)}  # a parameter tree to compare two optimizers' states on


def _as_array(value: Any) -> Any:
    """An option's value as ``inject_hyperparams`` passes it to the rule: 0-d arrays."""
    if isinstance(value, tuple):
        return tuple(None if v is None else _as_array(v) for v in value)
    return torch.tensor(float(value), dtype=torch.float64)


def _entries(state: Any, scheduled: bool) -> list[tuple[str, bool]]:
    """A state's entries as ``self.state`` names them, and whether each is an array
    (a scheduled state's fed hyperparameters left out)."""
    layout = _Layout(state, 1, scheduled)
    return [
        (name, is_array(spec))
        for i, ((name, _), spec) in enumerate(zip(layout.leaves, layout.template))
        if i not in layout.fed
    ]


def _is_step(name: str) -> bool:
    return name == "step" or name.endswith(".step")


class _SteadyGroup:
    """A group's last full step, kept so that the next steps pass ``opt.step`` the very
    same objects (and agrad's torch fast route takes its steady check,
    :mod:`agrad.optim._steady`), after a bulk check that nothing they stand for changed.

    Kept: the group and its optimizer (``source``: a changed option builds another, not
    the same object; ``opt``, what the steady steps run: ``source``, or a copy of its own
    where another group's steady steps run ``source``), the group's parameters in order and which had a gradient, the detached
    views of those in the dict ``opt.step`` takes, the state's leaves (each
    parameter's tensors in ``self.state``, the agrad step count), and TorchDynamo's
    tensor guard over the parameters, their gradients and their ``step`` tensors.

    :meth:`check` holds where the full path would do exactly what the steady step does:

    - the same group object, optimizer, parameters (by identity, in order) and the same
      parameters with a gradient (a ``None`` gradient is skipped by the full path);
    - the guard: every parameter, gradient and ``step`` tensor has the recorded exact
      type, dispatch keys (device, layout: a sparse gradient fails), dtype, device
      index, ``requires_grad``, sizes and strides, so the full path's gradient checks
      pass and the step counts are still tensors it writes in place;
    - every parameter's data pointer and its view's are the recorded ones: with the
      same metadata and memory, the view is what ``p.detach()`` would give.
      ``p.data = x``, ``p.set_(...)``, ``resize_``, ``as_strided_`` each change the
      parameter's metadata or address; a storage resized (``resize_(0)``, shared by
      parameter and view) moves both pointers; and the recorded view keeps the old
      storage alive, so no new tensor can take its address;
    - every state entry is the very tensor recorded, of the dtype the optimizer's state
      takes (``load_state_dict`` and entries replaced by the user give new objects);
    - the step counts, read as the full path reads them (one ``torch.stack``), are all
      equal: one bucket, as recorded.

    Anything else (a value changed in place, ``lr`` read from the group each step
    through the optimizer object) needs no check: the full path would read it the same.
    """

    __slots__ = (
        "arrays", "columns", "group", "group_params", "guard", "layout", "leaves", "mask",
        "opt", "params", "pick", "plan", "ptrs", "shared", "source", "step_tensors", "steps",
        "view_list", "views",
    )  # fmt: skip

    @classmethod
    def make(
        cls,
        owner: TorchOptimizer,
        group: dict,
        opt: Any,
        params: list,
        views: dict,
        layout: _Layout,
        leaves: list,
    ) -> _SteadyGroup | None:
        """The record of a full step of ``group`` on ``params`` (one bucket), or ``None``
        where its objects would not be the next step's (a state entry converted to
        another dtype, a step count not kept as torch's tensor) or no guard is available."""
        if not all(_is_step(name) for _, name in layout.shared):
            return None  # a shared entry other than a step count (NAdam's mu_product)
        states = [owner.state[p] for p in params]
        per_param = [(i, name, j) for i, (name, j) in enumerate(layout.leaves) if j is not None]
        kept = list(leaves)
        for i, name, j in per_param:
            x = states[j].get(name)
            spec = layout.template[i]
            if type(x) is not torch.Tensor or not is_array(spec) or x.dtype != spec.dtype:
                return None
            kept[i] = x
        shared, steps = [], []
        for i, name in layout.shared:
            column = [s.get(name) for s in states]
            if not _steps_kept(column):
                return None
            leaf, spec = leaves[i], layout.template[i]
            if is_array(spec) and not (type(leaf) is torch.Tensor and leaf.dtype == spec.dtype):
                return None
            shared.append(leaf)
            steps.append((name, column))
        grads = list(map(_GRAD, params))
        ptrs = list(map(_DATA_PTR, params))
        if list(map(_DATA_PTR, views.values())) != ptrs:
            return None
        rec_steps = [t for _, column in steps for t in column]
        guard = _steady.tensor_guard([*params, *grads, *rec_steps])
        if guard is None:
            return None
        rec = cls()
        rec.group, rec.opt, rec.params, rec.views = group, opt, list(params), views
        rec.source = opt
        rec.view_list = list(views.values())
        rec.group_params = list(group["params"])
        rec.mask = list(map(is_not, map(_GRAD, rec.group_params), repeat(None)))
        rec.pick = _steady._pick([k for k, m in enumerate(rec.mask) if m])
        rec.guard, rec.ptrs, rec.layout, rec.leaves = guard, ptrs, layout, kept
        rec.plan = TreePlan(layout.treedef)
        rec.arrays = _steady._pick([i for i, _, _ in per_param])
        rec.columns = _columns(per_param, kept, layout.template)
        rec.shared, rec.steps, rec.step_tensors = shared, steps, rec_steps
        return rec

    def check(self, state: dict, group: dict, opt: Any) -> tuple | None:
        """``(gradients, states, step counts)`` where the steady step does exactly what the
        full path would, else ``None`` (see the class)."""
        ps = group["params"]
        if self.group is not group or self.source is not opt or len(ps) != len(self.group_params):
            return None
        if not all(map(is_, ps, self.group_params)):
            return None
        grads = list(map(_GRAD, ps))
        if list(map(is_not, grads, repeat(None))) != self.mask:
            return None
        grads = self.pick(grads)
        params = self.params
        if not self.guard(*params, *grads, *self.step_tensors):
            return None
        if not _steady.all_equal(_DATA_PTR, params, self.ptrs):
            return None
        if not _steady.all_equal(_DATA_PTR, self.view_list, self.ptrs):
            return None
        states = list(map(state.get, params))
        try:
            for name, pick, column, dtypes in self.columns:
                if not all(map(is_, map(itemgetter(name), pick(states)), column)):
                    return None
                if not all(map(is_, map(_DTYPE, column), dtypes)):
                    return None
            counts = []
            for name, column in self.steps:
                if not all(map(is_, map(itemgetter(name), states), column)):
                    return None
                values = torch.stack(column).tolist()  # as the full path buckets them
                if values.count(values[0]) != len(values):
                    return None
                counts.append(column[0])
        except (KeyError, TypeError, RuntimeError):  # an entry gone, a state emptied
            return None
        return grads, states, counts


def _columns(per_param: list[tuple], leaves: list, template: list) -> list[tuple]:
    """Per state entry name: ``(name, pick, tensors, dtypes)``, where ``pick(states)``
    takes the states of the parameters that have the entry, ``tensors`` are those
    entries and ``dtypes`` the ones the optimizer's state takes."""
    by_name: dict[str, list[tuple[int, int]]] = {}
    for i, name, j in per_param:
        by_name.setdefault(name, []).append((j, i))
    out = []
    for name, pairs in by_name.items():
        pairs.sort()
        out.append(
            (
                name,
                _steady._pick([j for j, _ in pairs]),
                [leaves[i] for _, i in pairs],
                [template[i].dtype for _, i in pairs],
            )
        )
    return out


def _steps_kept(steps: list[Any]) -> bool:
    """Whether step counts are torch's distinct 0-d float tensors of one dtype and
    device, which :func:`_set_steps` writes in place (the same objects next step)."""
    return _step_tensors(steps) and len({t.device for t in steps}) == 1


def _count_leaf(leaf: Any, step: Any, spec: Any, p: Any, name: str) -> Any:
    """The agrad state's step count from the stored ``step`` tensor, as :func:`_as_leaf`
    makes it; an array into ``leaf``, last step's (the same object each step)."""
    if type(leaf) is torch.Tensor:
        if leaf is not step:  # as_tensor made a new one: the same conversion, in place
            leaf.copy_(step)
        return leaf
    return _as_leaf(step, spec, p, {}, name)


def _write_back(
    layout: _Layout, states: list[dict], new_leaves: list, same: bool = False, steps: Any = None
) -> bool:
    """Store a step's new state in each parameter's ``self.state`` entry (its arrays
    only unless ``same``: they are the very tensors there); returns whether every
    shared entry (the step count) was written into the existing tensors. ``steps``:
    the step tensors per shared entry where the steady check vouched for them."""
    if not same:
        for (name, j), value in zip(layout.leaves, new_leaves):
            if j is not None:
                states[j][name] = value
    in_place = True
    for k, (i, name) in enumerate(layout.shared):  # torch.optim writes "step" in place
        value = new_leaves[i]
        if steps is not None:
            _copy_steps(steps[k][1], value)
        elif not _set_steps([s.get(name) for s in states], name, value):
            in_place = False
            for s in states:
                s[name] = _stored(value, name)
    return in_place


def _inject(state: Any, params: list[Any], name: str, value: Any) -> None:
    """Write an injected hyperparameter's value into each parameter's copy of it."""
    for p in params:
        old = state[p].get(name)
        if isinstance(old, torch.Tensor) and old.ndim == 0:
            old.fill_(value)
        else:
            state[p][name] = value


def _injected_options(opt: Any) -> dict[str, Any]:
    """The hyperparameters an ``inject_hyperparams`` optimizer keeps in its state, with
    their values (``{}`` for any other optimizer)."""
    if not (isinstance(opt, GradientTransformation) and opt.name.startswith("inject_hyperparams(")):
        return {}
    try:
        state = opt.init({"0": torch.zeros(2, 2)})
    except Exception:
        return {}
    hp = getattr(state, "hyperparams", None)
    if not isinstance(hp, dict):
        return {}
    return {
        k: tuple(None if x is None else _plain(x) for x in v) if isinstance(v, tuple) else _plain(v)
        for k, v in hp.items()
    }


def _chain_factory(opt: Any, cls: str) -> tuple[Factory | None, dict[str, Any]]:
    """A plain ``chain``'s options and a function that rebuilds it with new ones.

    The options are those of the links a public constructor rebuilds
    (``clip_by_global_norm``'s ``max_norm``, ``adam``'s ``lr``...); one that several
    links take is left out (each link keeps its value), except ``lr``: two links with
    a learning rate make ``group["lr"]`` ambiguous, a ``ValueError`` that names them.
    ``(None, {})`` for anything else.
    """
    from agrad.optim.base import chain

    links = (
        dict(opt.hyperparams).get("transforms") if getattr(opt, "name", None) == "chain" else None
    )
    if not (isinstance(links, tuple) and links):
        return None, {}
    parts = [_factory_of(t) for t in links]
    owners: dict[str, list[int]] = {}
    for i, (_, options) in enumerate(parts):
        for k in options:
            owners.setdefault(k, []).append(i)
    if len(owners.get("lr", ())) > 1:
        which = ", ".join(f"{i} ({links[i].name})" for i in owners["lr"])
        msg = (
            f"{cls}: group['lr'] of this chain is ambiguous: links {which} each have an lr; "
            "pass a function that builds the chain and says which lr is the group's, e.g. "
            f"{cls}(params, lambda lr: agrad.optim.chain(..., agrad.optim.adam(lr=lr)), lr=1e-3)"
        )
        raise ValueError(msg)
    own = {k: idx[0] for k, idx in owners.items() if len(idx) == 1}
    if not own:
        return None, {}
    options = {k: parts[i][1][k] for k, i in own.items()}

    def build(**values: Any) -> GradientTransformation:
        new = []
        for i, (link, (factory, link_options)) in enumerate(zip(links, parts)):
            if factory is None:
                new.append(link)
                continue
            mine = {k: v for k, v in values.items() if own.get(k) == i}
            new.append(factory(**{**link_options, **mine}))
        return chain(*new)

    build.__name__ = build.__qualname__ = f"chain({', '.join(t.name for t in links)})"
    return build, options


def _values_of(values: list[Any]) -> list[Any]:
    """Hashable values of one shared state entry of many parameters (their step counts):
    one ``stack`` for 0-d tensors, not one ``item()`` each."""
    if values and all(type(v) is torch.Tensor and v.ndim == 0 for v in values):
        try:
            return torch.stack(values).tolist()
        except RuntimeError:  # dtypes or devices differ
            pass
    return [_frozen(v) for v in values]


def _set_steps(steps: list[Any], name: str, value: Any) -> bool:
    """Write the new step count into each parameter's own ``step`` tensor, as torch.optim
    does (one ``_foreach_copy_``); ``False`` where they are not such tensors (then new
    ones are made)."""
    if not _is_step(name) or not _step_tensors(steps):
        return False
    _copy_steps(steps, value)
    return True


def _step_tensors(steps: list[Any]) -> bool:
    """Whether ``steps`` are distinct 0-d float tensors of one dtype (torch's step counts,
    which :func:`_copy_steps` writes in place)."""
    if not all(type(t) is torch.Tensor and t.ndim == 0 and t.is_floating_point() for t in steps):
        return False
    return len({id(t) for t in steps}) == len(steps) and len({t.dtype for t in steps}) == 1


def _copy_steps(steps: list[Any], value: Any) -> None:
    """``value`` into every tensor of ``steps`` (distinct 0-d float tensors of one dtype)."""
    src = torch.tensor(float(value), dtype=steps[0].dtype, device=steps[0].device)
    torch._foreach_copy_(steps, [src] * len(steps))


def _stored(value: Any, name: str) -> Any:
    """A shared state leaf as each ``self.state[p]`` keeps it: a step count as torch's
    float tensor, an array as a copy of its own (torch.optim writes state in place)."""
    if name == "step" or name.endswith(".step"):
        return torch.tensor(float(value), dtype=_scalar_dtype())
    if isinstance(value, torch.Tensor):
        return value.clone()
    return value


def _as_leaf(value: Any, spec: Any, p: Any, entries: dict[str, Any], name: str) -> Any:
    """A shared entry of ``self.state`` as the agrad state holds it (``spec``'s type).

    A missing step count is 0, or 1 when the parameter already has other state:
    ``torch.optim.SGD`` keeps a momentum buffer but no count, and a buffer means a step
    was taken. Another missing entry takes ``opt.init``'s value (``spec``).
    """
    if value is _MISSING:
        if name == "step" or name.endswith(".step"):
            value = 1 if entries else 0
        elif is_array(spec):
            return torch.zeros(spec.shape, dtype=spec.dtype, device=p.device)
        else:
            return spec
    if type(spec) is bool:
        return bool(value)
    if type(spec) is int:
        return round(float(value))
    if type(spec) is float:
        return float(value)
    if is_array(spec):
        return torch.as_tensor(value, dtype=spec.dtype, device=p.device)
    return value


def _agrad_name(x: Any) -> str | None:
    """The name of the agrad constructor ``x`` is, or that built ``x`` (``None`` for others)."""
    import agrad.optim

    if x is None:
        return None
    if _is_optimizer(x):
        name = getattr(x, "name", None)
        return name if isinstance(name, str) and _factory_of(x)[0] is not None else None
    name = getattr(x, "__name__", None)
    return name if isinstance(name, str) and getattr(agrad.optim, name, None) is x else None


def _name(factory: Any) -> str:
    module = getattr(factory, "__module__", "") or ""
    name = getattr(factory, "__qualname__", None) or repr(factory)
    return f"agrad.optim.{name}" if module.startswith("agrad.optim") else name
