"""The optimizer record, composition, and applying updates.

An optimizer (any gradient transformation) is a pair of pure functions, optax-style:
``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``,
wrapped in :class:`GradientTransformation`, whose public methods validate everything
(structure, namespaces, shapes, dtypes, the state's structure with key paths) before
computing anything, and whose :meth:`~GradientTransformation.step` also writes the new
parameters and state in place where the arrays allow it, all or nothing.

States are small ``NamedTuple`` records of pytrees shaped like the parameters plus
0-d arrays (step counts as ``int32``, flags as ``bool``), so every rule runs under
``jax.jit`` and ``jax.lax.scan``; a state with a Python int where a count is expected
(one built by hand, or saved by an older agrad) is accepted too. The inner functions work on raw arrays of one
namespace; transforms composed by :func:`chain` call each other's inner functions.
"""

from __future__ import annotations

import bisect
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NamedTuple

import array_api_compat

from agrad._arrays import as_array, device_or_none
from agrad.autograd.adapters import adapter_for
from agrad.namespace import array_namespace, common_namespace
from agrad.optim._cache import LRUCache
from agrad.optim.fastpath import try_step as try_fast_step
from agrad.optim.numerics import concrete_value
from agrad.optim.validation import check_leaf_matches
from agrad.pytree import (
    check_same_structure,
    flatten_leaves,
    key_paths,
    keystr,
    leaves_like,
    unflatten,
)

__all__ = [
    "GradientTransformation",
    "Hyperparams",
    "Optimizer",
    "apply_updates",
    "chain",
    "ChainState",
    "is_array",
]

InitFn = Callable[[Any], Any]
_TEMPLATES_KEPT = 64
UpdateFn = Callable[[Any, Any, Any], tuple[Any, Any]]


_NUMBERS = (int, float, bool, complex)


def is_array(x: Any) -> bool:
    """True for array leaves (anything with a shape and dtype), False for Python numbers."""
    if type(x) in _NUMBERS:
        return False
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _signature(leaves: list[Any]) -> tuple:
    """Shapes and dtypes of ``leaves``, hashable. A dtype's class comes before the dtype,
    so dtypes of two libraries are never compared with each other (array-api-strict
    warns when its dtypes meet NumPy's)."""
    sig = tuple((tuple(x.shape), type(x.dtype), x.dtype) for x in leaves)
    try:
        hash(sig)
    except TypeError:  # a library with unhashable dtypes: their names instead
        return tuple((tuple(x.shape), str(x.dtype)) for x in leaves)
    return sig


def _library_key(x: Any) -> tuple:
    """What decides a state's scalar dtypes besides the parameters' dtypes: the array
    type, and for JAX whether x64 is on (float64 or float32 per-step scalars)."""
    kind = type(x)
    if kind.__module__.startswith("jax"):
        return (kind, bool(sys.modules["jax"].config.jax_enable_x64))
    return (kind,)


class _LeafSpec:
    """The shape and dtype of a state array, kept instead of the array (no memory held)."""

    __slots__ = ("dtype", "shape")

    def __init__(self, x: Any):
        self.shape = tuple(x.shape)
        self.dtype = x.dtype


def _fits(spec: _LeafSpec, x: Any) -> bool:
    """Whether ``x`` is an array of the shape and dtype ``spec`` records."""
    return is_array(x) and tuple(x.shape) == spec.shape and x.dtype == spec.dtype


def _dtype_kind(dtype: Any) -> str:
    """``"bool"``, ``"int"`` or ``"float"`` (by name: dtypes of every library)."""
    name = str(dtype).rsplit(".", 1)[-1]
    if name.startswith("bool"):
        return "bool"
    return "int" if "int" in name else "float"


def _negative_on_host(x: Any) -> bool:
    """Whether a 0-d integer array in host memory holds a negative value (a tampered step
    count); arrays on an accelerator or traced are not read (that would synchronise)."""
    if _dtype_kind(x.dtype) != "int":
        return False
    mod = type(x).__module__.split(".")[0]
    if mod == "torch" and x.device.type != "cpu":
        return False
    if mod not in ("numpy", "torch", "array_api_strict"):
        return False
    value = concrete_value(x)
    return value is not None and value < 0


def _scalar_fits(spec: _LeafSpec, x: Any) -> bool | None:
    """Whether ``x`` may stand for the 0-d scalar record ``spec`` (a step count, a flag).

    A 0-d integer spec is a step count: an int >= 0, or a 0-d integer array of any
    integer dtype whose value, where known, is >= 0 (a saved state from NumPy loaded
    on JAX, a state built by hand). A 0-d bool spec takes a bool; a 0-d float spec
    takes a Python float (a state saved before scalars became arrays). ``None``:
    ``spec`` is not such a record.
    """
    if spec.shape != ():
        return None
    kind = _dtype_kind(spec.dtype)
    if kind == "bool":
        return type(x) is bool or (
            is_array(x) and tuple(x.shape) == () and _dtype_kind(x.dtype) == "bool"
        )
    if kind == "int":
        if type(x) is int:
            return x >= 0
        if not (is_array(x) and tuple(x.shape) == () and _dtype_kind(x.dtype) == "int"):
            return False
        value = concrete_value(x)
        return value is None or value >= 0
    return type(x) in (int, float) or None


class _LazyPaths:
    """The key paths of a tree, made on the first call (only messages need them)."""

    __slots__ = ("_paths", "_treedef")

    def __init__(self, treedef: Any):
        self._treedef = treedef
        self._paths: list[str] | None = None

    def __call__(self) -> list[str]:
        if self._paths is None:
            self._paths = [] if self._treedef is None else key_paths(self._treedef)
        return self._paths


class TreeNames(NamedTuple):
    """What error messages call the trees of one call.

    ``agrad.optim`` says ``params``, ``grads`` and ``state``; the seed API says ``ws``
    and ``dcdws`` and names the state's fields after its own arguments
    (``state_fields=((".exp_avg", "mw"),)`` turns ``state.exp_avg['w']`` into ``mw['w']``).
    """

    params: str = "params"
    grads: str = "grads"
    state_fields: tuple[tuple[str, str], ...] = ()

    def state(self, path: str) -> str:
        """The name of the state leaf at key path ``path``."""
        for field, name in self.state_fields:
            if path.startswith(field) and path[len(field) : len(field) + 1] in ("", ".", "["):
                return name + path[len(field) :]
        return "state" + path


_NAMES = TreeNames()


class _Checked(NamedTuple):
    """Validated inputs of one call: raw parameter and gradient leaves and their tree."""

    xp: ModuleType
    treedef: Any
    paths: _LazyPaths  # the parameters' key paths, made on demand (only messages need them)
    params: list[Any]
    raw_params: list[Any]
    raw_grads: list[Any] | None
    state_leaves: list[Any]


def check_call(
    fn: str,
    params: Any,
    grads: Any,
    state: Any = None,
    *,
    xp: ModuleType | None = None,
    names: TreeNames = _NAMES,
    hyperparams: dict[str, Any] | None = None,
    complex_params: bool = False,
    state_check: Callable[..., None] | None = None,
) -> _Checked:
    """Validate one call before anything is computed; return its raw leaves.

    Checks, in order: ``params`` holds arrays; ``grads`` (if given) has its structure;
    every array (state and array hyperparameters included) belongs to one namespace;
    parameters are (real, unless ``complex_params``) floating point; gradients match
    their parameter's shape and dtype; everything sits on its parameter's device; and
    ``state_check(fn, raw_params, treedef, state, names)`` accepts the state. Messages
    name leaves by key path, in the words of ``names``.
    """
    hyperparams = hyperparams or {}
    _refuse_iterators(fn, params, names)
    p_leaves, treedef = flatten_leaves(params)
    if not p_leaves:
        raise ValueError(f"{fn}: {names.params} contains no arrays")
    lazy_paths = _LazyPaths(treedef)
    s_leaves, s_def = flatten_leaves(state) if state is not None else ([], None)
    s_paths = _LazyPaths(s_def)
    leaves = list(p_leaves)
    if grads is not None:
        check_same_structure(params, grads, names=(names.params, names.grads))
        leaves += leaves_like(grads, params)
    s_arrays = [i for i, leaf in enumerate(s_leaves) if is_array(leaf)]
    leaves += [s_leaves[i] for i in s_arrays]
    hyper_arrays = {k: v for k, v in hyperparams.items() if is_array(v)}
    leaves += hyper_arrays.values()

    def labels() -> list[str]:
        paths = lazy_paths()
        out = [f"{names.params}{keystr(p)}" for p in paths]
        if grads is not None:
            out += [f"{names.grads}{keystr(p)}" for p in paths]
        out += [names.state(s_paths()[i]) for i in s_arrays]
        return out + [f"hyperparameter {k}" for k in hyper_arrays]

    xp = common_namespace(leaves, labels, fn, xp)
    adapter = adapter_for(xp)
    raw_p = [adapter.read(p) for p in p_leaves]
    kinds = ("real floating", "complex floating") if complex_params else "real floating"
    for i, raw in enumerate(raw_p):
        if not xp.isdtype(raw.dtype, kinds):
            what = "floating-point" if complex_params else "real floating-point"
            msg = f"{fn}: {names.params}{keystr(lazy_paths()[i])} has dtype {raw.dtype}; optimizers need {what} parameters"
            raise TypeError(msg)
    raw_g = None
    if grads is not None:
        raw_g = [adapter.read(g) for g in leaves_like(grads, params)]
        for i, (p, g) in enumerate(zip(raw_p, raw_g)):
            where = lambda i=i: keystr(lazy_paths()[i])  # noqa: E731 (made for messages only)
            check_leaf_matches(fn, where, names.params, p, names.grads, g)
    _check_supported(fn, adapter, lazy_paths, raw_p, raw_g, s_leaves, s_paths, names)
    _check_devices(fn, lazy_paths, raw_p, raw_g, s_leaves, s_paths, names)
    if state_check is not None:
        state_check(fn, raw_p, treedef, state, names)
    return _Checked(xp, treedef, lazy_paths, p_leaves, raw_p, raw_g, s_leaves)


def _refuse_iterators(fn: str, params: Any, names: TreeNames) -> None:
    """A generator (``model.parameters()``) or a torch module is no pytree: say what to pass."""
    if isinstance(params, Iterator):
        what = f"a {type(params).__name__} (model.parameters()?)"
    elif hasattr(params, "named_parameters") and hasattr(params, "parameters"):
        what = f"a {type(params).__name__} module"
    else:
        return
    msg = (
        f"{fn}: {names.params} is {what}, not a pytree of arrays; pass "
        "dict(model.named_parameters()) (and the same dict of p.grad), or use "
        "agrad.optim.TorchOptimizer(model.parameters(), ...) for a torch.optim.Optimizer"
    )
    raise TypeError(msg)


class Hyperparams(dict):
    """A transformation's hyperparameters: read them like a dict; writing raises.

    They are fixed when the transformation is built (its rule has already read
    them), so ``opt.hyperparams["lr"] = 0.01`` would change nothing; it raises a
    ``TypeError`` saying what to do instead.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: Any, values: dict[str, Any]):
        super().__init__(values)
        self._owner = owner.name

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        msg = (
            f"agrad.optim: the hyperparameters of {self._owner} are fixed when it is built "
            "(setting one here would be ignored). To change one at run time, build the "
            f"optimizer with agrad.optim.inject_hyperparams(agrad.optim.{self._owner})(lr=...) "
            "and set it in the state (state = state.with_hyperparams(lr=...)), or pass a "
            "schedule as lr, or build a new optimizer and keep using the state"
        )
        raise TypeError(msg)

    __setitem__ = __delitem__ = _refuse
    update = setdefault = pop = popitem = clear = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


class GradientTransformation:
    """A named pair of pure functions ``init`` and ``update``, with validation and ``step``.

    ``init(params) -> state``; ``update(grads, state, params) -> (updates, state)``
    computes the additive updates (``params + updates`` is the new parameters) and the
    new state without touching any input; ``step(params, grads, state)`` does both and
    writes the results in place where the library allows it.

    Args:
        name: the name in messages and ``repr``.
        init, update: the pure functions.
        hyperparams: the public hyperparameters, shown by ``repr``; array values take
            part in choosing the namespace.
        needs_params: whether ``update`` reads the parameters (weight decay, trust
            ratios); ``update(grads, state)`` without params is then refused.
        complex_params: whether the rule is defined for complex parameters (SGD);
            otherwise complex parameters are refused with a ``TypeError``.
    """

    __slots__ = (
        "_programs",
        "_templates",
        "complex_params",
        "hyperparams",
        "inner_init",
        "inner_update",
        "name",
        "needs_params",
    )

    def __init__(
        self,
        name: str,
        init: InitFn,
        update: UpdateFn,
        hyperparams: dict[str, Any] | None = None,
        *,
        needs_params: bool = True,
        complex_params: bool = False,
    ):
        self.name = name
        self.inner_init = init
        self.inner_update = update
        self.hyperparams = Hyperparams(self, hyperparams or {})
        self.needs_params = needs_params
        self.complex_params = complex_params
        # state templates per (structure, shapes, dtypes): bounded, a model has few
        self._templates = LRUCache(_TEMPLATES_KEPT)
        # recorded step programs per (structure, shapes, dtypes, devices): agrad.optim.fastpath
        self._programs = LRUCache(_TEMPLATES_KEPT)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{self.name}({args})"

    # -- validation -------------------------------------------------------------
    def _check(
        self,
        fn: str,
        params: Any,
        grads: Any,
        state: Any,
        xp: ModuleType | None,
        names: TreeNames = _NAMES,
    ) -> _Checked:
        return check_call(
            fn,
            params,
            grads,
            state,
            xp=xp,
            names=names,
            hyperparams=self.hyperparams,
            complex_params=self.complex_params,
            state_check=None if state is None else self._check_state,
        )

    def _template(self, raw_params: list[Any], treedef: Any) -> Any:
        # the library too: NumPy and JAX share dtypes, not the dtype of per-step scalars
        key = (treedef, _signature(raw_params), _library_key(raw_params[0]))
        template = self._templates.get(key)
        if template is None:
            state = self.inner_init(unflatten(treedef, raw_params))
            leaves, s_def = flatten_leaves(state)
            skeleton = [_LeafSpec(x) if is_array(x) else x for x in leaves]
            template = self._templates[key] = unflatten(s_def, skeleton)
        return template

    def _check_state(
        self, fn: str, raw_params: list[Any], treedef: Any, state: Any, names: TreeNames = _NAMES
    ) -> None:
        template = self._template(raw_params, treedef)
        t_leaves, t_def = flatten_leaves(template)
        s_leaves, s_def = flatten_leaves(state)
        if s_def != t_def:
            try:
                check_same_structure(
                    template, state, names=(f"the state {self.name}.init(params) makes", "state")
                )
            except ValueError as err:
                msg = f"{fn}: state does not belong to {self!r} with these params: {err}"
                raise ValueError(msg) from None
            s_leaves = leaves_like(state, template)
        t_paths = _LazyPaths(t_def)
        for i, (t, s) in enumerate(zip(t_leaves, s_leaves)):
            if type(t) is _LeafSpec and _fits(t, s):
                if not (t.shape == () and _negative_on_host(s)):
                    continue  # the common case, settled without building the key path
            fits_scalar = _scalar_fits(t, s) if type(t) is _LeafSpec else None
            if fits_scalar:
                continue
            if type(t) is type(s) and not is_array(t) and (type(t) is not int or s >= 0):
                continue
            where = names.state(t_paths()[i])
            count_spec = (
                type(t) is _LeafSpec and fits_scalar is False and _dtype_kind(t.dtype) == "int"
            )
            if (type(t) is int and not (type(s) is int and s >= 0)) or count_spec:
                msg = (
                    f"{fn}: state does not belong to {self!r} with these params: {where} "
                    f"should be an int >= 0 (a step count), or a 0-d integer array holding "
                    f"one, got {s!r}"
                )
                raise ValueError(msg)
            if type(t) is _LeafSpec and fits_scalar is False:
                kind = "a bool" if _dtype_kind(t.dtype) == "bool" else "a 0-d array"
                msg = (
                    f"{fn}: state does not belong to {self!r} with these params: {where} "
                    f"should be {kind} (a per-step scalar), got {s!r}"
                )
                raise ValueError(msg)
            if is_array(t) != is_array(s):
                kind = "an array" if is_array(t) else f"a {type(t).__name__}"
                msg = (
                    f"{fn}: state does not belong to {self!r} with these params: {where} "
                    f"should be {kind}, got {type(s).__name__}"
                )
                raise ValueError(msg)
            if is_array(t) and tuple(t.shape) != tuple(s.shape):
                msg = (
                    f"{fn}: state does not belong to {self!r} with these params: {where} has "
                    f"shape {tuple(s.shape)}, expected {tuple(t.shape)}"
                )
                raise ValueError(msg)
            if is_array(t) and t.dtype != s.dtype:
                msg = (
                    f"{fn}: {where} has dtype {s.dtype} but these params need {t.dtype} "
                    "(state arrays keep their parameter's dtype)"
                )
                raise TypeError(msg)

    # -- public API -------------------------------------------------------------
    def init(self, params: Any, *, xp: ModuleType | None = None) -> Any:
        """The initial state for ``params`` (arrays with each parameter's dtype and device)."""
        c = self._check(f"{self.name}.init", params, None, None, xp)
        state = self.inner_init(unflatten(c.treedef, c.raw_params))
        if array_api_compat.is_dask_namespace(c.xp):
            state = _distinct_dask_names(state)
        return state

    def update(
        self, grads: Any, state: Any, params: Any = None, *, xp: ModuleType | None = None
    ) -> tuple[Any, Any]:
        """``(updates, new_state)`` for ``grads``; pure: no input is modified.

        ``params`` is needed by rules that read the parameters (weight decay, trust
        ratios); without it the gradients' structure stands in for the check.
        """
        fn = f"{self.name}.update"
        ref = grads if params is None else params
        c = self._check(fn, ref, None if params is None else grads, state, xp)
        raw_g = c.raw_params if params is None else c.raw_grads
        if params is None and self.needs_params:
            msg = f"{fn}: {self!r} reads the parameters; pass params"
            raise ValueError(msg)
        u_leaves, new_state, _, half = _call_rule(self, c, raw_g, state, params is not None)
        updates = unflatten(c.treedef, half.down(u_leaves, c.raw_params))
        if _is_numpy(c.xp):
            updates, new_state = _scalars_as_arrays(updates), _scalars_as_arrays(new_state)
        return updates, new_state

    def step(
        self,
        params: Any,
        grads: Any,
        state: Any,
        inplace: bool = True,
        *,
        xp: ModuleType | None = None,
    ) -> tuple[Any, Any]:
        """One optimizer step: ``(new_params, new_state)``.

        With ``inplace=True`` the new values are written into ``params`` and the state's
        arrays where the library allows (NumPy arrays, torch tensors, agrad variables),
        after every write has been checked; JAX arrays and arrays inside a gradient
        trace get new arrays. With ``inplace=False`` nothing is modified and, inside
        ``agrad.execute_with_gradients``, the step is differentiable.
        """
        return run_step(self, params, grads, state, inplace=inplace, xp=xp)


Optimizer = GradientTransformation


def run_step(
    opt: GradientTransformation,
    params: Any,
    grads: Any,
    state: Any,
    *,
    inplace: bool = True,
    xp: ModuleType | None = None,
    names: TreeNames = _NAMES,
    fn: str | None = None,
) -> tuple[Any, Any]:
    """``opt.step``, with messages that say ``fn`` and call the trees by ``names``.

    The seed API (``agrad.adam_update`` ...) runs its optimizer through this, so its
    errors name its own arguments (``ws``, ``dcdws``, ``mw``, ``vw``).
    """
    if inplace and xp is None:
        fast = try_fast_step(opt, params, grads, state)
        if fast is not None:
            return fast
    fn = fn or f"{opt.name}.step"
    c = opt._check(fn, params, grads, state, xp, names)
    xp = c.xp
    u_leaves, new_state, raw_p, half = _call_rule(opt, c, c.raw_grads, state, True)
    new_p = half.down([xp.add(p, u) for p, u in zip(raw_p, u_leaves)], c.raw_params)
    if _is_numpy(xp):
        new_p = [as_array(x) for x in new_p]
        new_state = _scalars_as_arrays(new_state)
    if not inplace:
        return unflatten(c.treedef, new_p), new_state
    adapter = adapter_for(xp)
    pairs = [(("params", i), d, v) for i, (d, v) in enumerate(zip(c.params, new_p))]
    s_def = flatten_leaves(state)[1]
    n_leaves, n_def = flatten_leaves(new_state)
    if n_def != s_def and _same_structure(state, new_state):
        n_leaves, n_def = leaves_like(new_state, state), s_def  # the caller's dict key order
    if n_def == s_def:
        pairs += [
            (("state", i), d, v)
            for i, (d, v) in enumerate(zip(c.state_leaves, n_leaves))
            if is_array(d) and is_array(v)
        ]

    def label(where: tuple[str, int]) -> str:
        tree, i = where
        if tree == "params":
            return f"{names.params}{keystr(c.paths()[i])}"
        return names.state(key_paths(n_def)[i])

    out_p, out_s = _write_all(fn, adapter, pairs, len(new_p), label)
    if out_s is not None:
        it = iter(out_s)
        n_leaves = [
            next(it) if is_array(d) and is_array(v) else v for d, v in zip(c.state_leaves, n_leaves)
        ]
        new_state = unflatten(n_def, n_leaves)
    return unflatten(c.treedef, out_p), new_state


def _call_rule(
    opt: GradientTransformation, c: _Checked, raw_g: list[Any], state: Any, with_params: bool
) -> tuple[list[Any], Any, list[Any], _Float32Compute]:
    """``opt.inner_update`` on validated leaves, half-precision leaves computed in float32.

    Returns the updates aligned with the parameters (still float32 where the parameter
    is half precision), the new state (rounded to its arrays' dtypes), the parameters
    the rule saw, and the helper that rounds the rest.
    """
    half = _Float32Compute(c.xp, c.raw_params)
    raw_p, rule_state = c.raw_params, state
    if half.active:
        raw_p, raw_g, rule_state = half.up(raw_p), half.up(raw_g), half.up_tree(state)
    params = unflatten(c.treedef, raw_p)
    updates, new_state = opt.inner_update(
        unflatten(c.treedef, raw_g), rule_state, params if with_params else None
    )
    if half.active:
        new_state = half.down_like(new_state, state)
    return leaves_like(updates, params), new_state, raw_p, half


class _Float32Compute:
    """Half-precision leaves (float16, bfloat16) computed in float32, stored in their dtype.

    As torch's fused kernels do: the rule sees float32 copies of half-precision
    parameters, gradients and state, and each result is rounded once, to the dtype of
    the array it replaces.
    """

    __slots__ = ("active", "xp")

    def __init__(self, xp: ModuleType, raw_params: list[Any]):
        self.xp = xp
        self.active = any(_is_half(p.dtype) for p in raw_params)

    @staticmethod
    def _is_half(x: Any) -> bool:
        return is_array(x) and _is_half(x.dtype)

    def up(self, leaves: list[Any]) -> list[Any]:
        f32 = self.xp.float32
        return [self.xp.astype(x, f32) if self._is_half(x) else x for x in leaves]

    def up_tree(self, tree: Any) -> Any:
        leaves, treedef = flatten_leaves(tree)
        return unflatten(treedef, self.up(leaves))

    def down(self, leaves: list[Any], like: list[Any]) -> list[Any]:
        if not self.active:
            return leaves
        return [
            self.xp.astype(x, ref.dtype) if self._is_half(ref) and is_array(x) else x
            for x, ref in zip(leaves, like)
        ]

    def down_like(self, tree: Any, like: Any) -> Any:
        """``tree``'s arrays rounded to the dtype of ``like``'s half-precision arrays."""
        if not _same_structure(like, tree):
            return tree
        leaves, treedef = flatten_leaves(tree)
        return unflatten(treedef, self.down(leaves, leaves_like(like, tree)))


# dtype -> whether it is a 16-bit float; dtypes are few, hashable, and named alike
# everywhere (float16, torch.float16, bfloat16, torch.bfloat16).
_HALF: dict[tuple[type, Any], bool] = {}


def _is_half(dtype: Any) -> bool:
    """Whether ``dtype`` is ``float16`` or ``bfloat16``, in any library."""
    key = (type(dtype), dtype)  # the class first: dtypes of two libraries never compared
    try:
        return _HALF[key]
    except KeyError:
        half = _HALF[key] = str(dtype).rsplit(".", 1)[-1] in ("float16", "bfloat16")
        return half
    except TypeError:  # an unhashable dtype
        return str(dtype).rsplit(".", 1)[-1] in ("float16", "bfloat16")


def _same_structure(a: Any, b: Any) -> bool:
    """Whether two trees have one structure, dict key order aside."""
    try:
        check_same_structure(a, b, names=("a", "b"))
    except ValueError:
        return False
    return True


def _distinct_dask_names(state: Any) -> Any:
    """``state`` with each Dask array leaf under a name of its own, made for this
    ``init``. Equal lazy arrays share a name (Adam's two ``zeros_like(p)``; the step
    counts of two optimizers, or the moments of two optimizers of the same
    parameters), and ``dask.persist`` hands back one object for one name: persisted
    together, two state leaves would be one array, and an in-place step of one
    optimizer would rebind the other's too. Each leaf becomes one alias per chunk of
    the array it equals (no copy, no computation); the names a step gives its new
    arrays derive from these, so they stay apart too."""
    import uuid

    leaves, treedef = flatten_leaves(state)
    if not any(hasattr(x, "dask") for x in leaves):
        return state
    tag = uuid.uuid4().hex
    out = [_dask_alias(x, f"{k}-{tag}") if hasattr(x, "dask") else x for k, x in enumerate(leaves)]
    return unflatten(treedef, out)


def _dask_alias(x: Any, tag: str) -> Any:
    """Dask array ``x`` under the new name ``agrad-state-<tag>`` (nothing computed)."""
    from agrad.optim.program.dask_exec import renamed

    return renamed(x, f"agrad-state-{tag}")


def _is_numpy(xp: ModuleType) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def _scalars_as_arrays(tree: Any) -> Any:
    """``tree`` with NumPy scalars (NumPy's results for 0-d operands) made 0-d arrays."""
    leaves, treedef = flatten_leaves(tree)
    np = sys.modules["numpy"]
    if not any(isinstance(x, np.generic) for x in leaves):
        return tree
    return unflatten(treedef, [as_array(x) for x in leaves])


def _check_devices(
    fn: str,
    paths: Callable[[], list[str]],
    raw_p: list[Any],
    raw_g: list[Any] | None,
    s_leaves: list[Any],
    s_paths: Callable[[], list[str]],
    names: TreeNames = _NAMES,
) -> None:
    """Every gradient and state array on its parameter's device, before anything runs.

    ``paths`` and ``s_paths`` give the key paths of the parameters and the state's
    leaves. When every array is on one device there is nothing to match. Otherwise a
    state array is matched to the parameter whose key path ends its own
    (``state.exp_avg['w']`` to ``params['w']``); one that matches none (a factored
    statistic, a chained transform's own leaf) is compared with the parameters'
    device when they all share one.
    """
    p_devs = [device_or_none(p) for p in raw_p]
    g_devs = [device_or_none(g) for g in raw_g] if raw_g is not None else []
    s_devs = {i: device_or_none(x) for i, x in enumerate(s_leaves) if is_array(x)}
    if len(set(map(repr, [*p_devs, *g_devs, *s_devs.values()]))) <= 1:
        return  # one device for everything (the usual case)
    by_path = {keystr(path): d for path, d in zip(paths(), p_devs)}
    shared = p_devs[0] if len(set(map(repr, p_devs))) == 1 else None

    def fail(where: str, d_p: Any, label: str, d_x: Any) -> None:
        msg = (
            f"{fn}: device mismatch at {where}: {names.params} is on {d_p!r} but {label} is on "
            f"{d_x!r}; move them to one device first"
        )
        raise ValueError(msg)

    for path, d_p, d_g in zip(paths(), p_devs, g_devs):
        if d_p is not None and d_g is not None and d_p != d_g:
            fail(keystr(path), d_p, f"{names.grads}{keystr(path)}", d_g)
    for i, d_s in s_devs.items():
        s_path = s_paths()[i]
        key = _param_key(s_path, by_path)
        d_p = by_path[key] if key is not None else shared
        if d_p is not None and d_s is not None and d_p != d_s:
            fail(key if key is not None else "state", d_p, names.state(s_path), d_s)


def _check_supported(
    fn: str,
    adapter: Any,
    paths: Callable[[], list[str]],
    raw_p: list[Any],
    raw_g: list[Any] | None,
    s_leaves: list[Any],
    s_paths: Callable[[], list[str]],
    names: TreeNames,
) -> None:
    """Refuse arrays no update can use (sparse or meta tensors), naming the first one."""
    reason = adapter.unsupported_reason
    for i, x in enumerate(raw_p):
        if (why := reason(x)) is not None:
            raise TypeError(f"{fn}: {names.params}{keystr(paths()[i])} cannot be used: {why}")
    for i, g in enumerate(raw_g or ()):
        if (why := reason(g)) is not None:
            raise TypeError(f"{fn}: {names.grads}{keystr(paths()[i])} cannot be used: {why}")
    for i, x in enumerate(s_leaves):
        if is_array(x) and (why := reason(x)) is not None:
            raise TypeError(f"{fn}: {names.state(s_paths()[i])} cannot be used: {why}")


def _param_key(s_path: str, by_path: dict[str, Any]) -> str | None:
    """The longest parameter key path that ends ``s_path`` (``.exp_avg['w']`` -> ``['w']``)."""
    for i, ch in enumerate(s_path):
        if ch in ".[" and s_path[i:] in by_path:
            return s_path[i:]
    return None


def _write_all(
    fn: str,
    adapter: Any,
    pairs: list[tuple[Any, Any, Any]],
    n_params: int,
    label: Callable[[Any], str],
):
    """Check that every ``(where, dst, new)`` can be written, then write them all.

    A destination is refused when it is read-only (the adapter says why), or when it is
    the same object as another destination or shares memory with one (two key paths,
    a state array that is also a parameter, two views of one buffer), because one write
    would overwrite the other. ``label(where)`` names a destination in the message.
    Every new value exists before the first write, and the writes are copies that
    these checks have shown possible; a ``KeyboardInterrupt`` arriving meanwhile (in
    the main thread) is held until the last write is done.
    """
    plan = []
    first_seen: dict[int, Any] = {}
    for where, dst, new in pairs:
        write = adapter.writable(dst, new) and _same_buffer_kind(dst, new)
        if write:
            reason = adapter.readonly_reason(dst)
            if reason is not None:
                msg = f"{fn}: cannot update {label(where)} in place: {reason}; pass inplace=False or a writable array"
                raise ValueError(msg)
            first = first_seen.setdefault(id(dst), where)
            if first != where:
                msg = (
                    f"{fn}: {label(first)} and {label(where)} are the same array, so in-place "
                    "writes would overwrite each other; pass separate arrays (or inplace=False)"
                )
                raise ValueError(msg)
        plan.append(write)
    _check_overlap(
        fn, adapter, [(where, dst) for (where, dst, _), w in zip(pairs, plan) if w], label
    )
    # a new value that is a destination, or a view of one (a rule returning the
    # parameters, or a reshape of them, as new state) is read before anything is
    # written: a copy of it, made now
    reads_written = _reads_written(adapter, [dst for (_, dst, _), w in zip(pairs, plan) if w])
    pairs = [
        (where, dst, _copy(new) if new is not dst and reads_written(new) else new)
        for where, dst, new in pairs
    ]
    with _interrupts_held():
        out = [adapter.write(dst, new) if w else new for (_, dst, new), w in zip(pairs, plan)]
    return out[:n_params], (out[n_params:] if len(pairs) > n_params else None)


def _reads_written(adapter: Any, written: list[Any]) -> Callable[[Any], bool]:
    """Whether an array is one of the ``written`` destinations or shares memory with one.

    The destinations' byte spans (disjoint where they do not share memory, as
    :func:`_check_overlap` has checked) are sorted by start; an array's span is looked
    up by bisection, and the exact check runs on the spans it reaches into, so a step
    of many parameters checks each new value in about log(n) comparisons.
    """
    ids = {id(dst) for dst in written}
    spans = []
    for dst in written:
        span = adapter.memory_span(dst)
        if span is not None:
            spans.append((repr(span[0]), span[1], span[2], dst))
    spans.sort(key=lambda s: s[:2])
    keys = [s[:2] for s in spans]
    reach = []  # the furthest end of spans[: i + 1] in spans[i]'s buffer
    for i, (buffer, _, end, _) in enumerate(spans):
        reach.append(max(end, reach[-1]) if i and spans[i - 1][0] == buffer else end)

    def reads(x: Any) -> bool:
        if id(x) in ids:
            return True
        span = adapter.memory_span(x) if spans else None
        if span is None:
            return False
        buffer, start, end = repr(span[0]), span[1], span[2]
        i = bisect.bisect_left(keys, (buffer, end)) - 1
        while i >= 0 and spans[i][0] == buffer and reach[i] > start:
            if spans[i][2] > start and adapter.shares_memory(x, spans[i][3]):
                return True
            i -= 1
        return False

    return reads


def _copy(x: Any) -> Any:
    """A copy of array ``x`` (of its library, dtype and device)."""
    return array_api_compat.array_namespace(x).asarray(x, copy=True)


def _check_overlap(
    fn: str, adapter: Any, written: list[tuple[Any, Any]], label: Callable[[Any], str]
) -> None:
    """Refuse two destinations whose memory overlaps (sorted byte spans, then exact check)."""
    spans = []
    for where, dst in written:
        span = adapter.memory_span(dst)
        if span is not None:
            buffer, start, end = span
            spans.append((repr(buffer), start, end, where, dst))
    spans.sort(key=lambda s: (s[0], s[1]))
    reach: tuple | None = None  # the span reaching furthest so far, in this buffer
    for span in spans:
        if reach is not None and reach[0] == span[0] and span[1] < reach[2]:
            if adapter.shares_memory(reach[4], span[4]):
                msg = (
                    f"{fn}: {label(reach[3])} and {label(span[3])} share memory, so in-place "
                    "writes would overwrite each other; pass separate arrays (or inplace=False)"
                )
                raise ValueError(msg)
        if reach is None or reach[0] != span[0] or span[2] > reach[2]:
            reach = span


class _interrupts_held:
    """Hold a ``KeyboardInterrupt`` (SIGINT) until the block ends, in the main thread only."""

    def __enter__(self) -> None:
        self._held = None
        self._previous = None
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # a handler installed outside Python: left alone
            return
        try:
            signal.signal(signal.SIGINT, self._hold)
        except (ValueError, TypeError):  # no signal support here (an embedded interpreter)
            return
        self._previous = previous

    def _hold(self, signum: int, frame: Any) -> None:
        self._held = (signum, frame)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGINT, self._previous)
        if self._held is not None:  # delivered again, to whatever handled it before
            signal.raise_signal(self._held[0])


def _same_buffer_kind(dst: Any, new: Any) -> bool:
    shape = getattr(dst, "shape", None)
    return shape is None or tuple(shape) == tuple(new.shape)


def apply_updates(
    params: Any, updates: Any, inplace: bool = True, *, xp: ModuleType | None = None
) -> Any:
    """``params + updates`` leafwise, written into ``params`` where possible.

    .. math:: \\theta_{t} = \\theta_{t-1} + u_t

    (as ``optax.apply_updates``; the optimizers here put the sign and learning rate
    into :math:`u_t`). All leaves are validated first, then all are written.
    """
    fn = "agrad.optim.apply_updates"
    c = check_call(fn, params, updates, xp=xp, names=TreeNames(grads="updates"))
    new = [as_array(c.xp.add(p, u)) for p, u in zip(c.raw_params, c.raw_grads)]
    if not inplace:
        return unflatten(c.treedef, new)
    adapter = adapter_for(c.xp)
    pairs = [(i, d, v) for i, (d, v) in enumerate(zip(c.params, new))]
    out, _ = _write_all(fn, adapter, pairs, len(new), lambda i: f"params{keystr(c.paths()[i])}")
    return unflatten(c.treedef, out)


class ChainState(NamedTuple):
    """The states of the chained transformations, in order."""

    states: tuple


def chain(
    *transforms: GradientTransformation,
    name: str = "chain",
    hyperparams: dict[str, Any] | None = None,
) -> GradientTransformation:
    """Compose transformations: each one's updates are the next one's input (``optax.chain``).

    .. math:: u = T_n(\\dots T_2(T_1(g)))

    Example: ``chain(clip_by_global_norm(1.0), adam(lr=1e-3))``. An optax
    transformation may be a link too (wrapped by :func:`~agrad.optim.from_optax`; JAX
    arrays only). An optimizer built as
    a chain gives its own ``name`` and public ``hyperparams`` (``lion`` shows
    ``lr``, ``b1`` ...; a plain chain shows its ``transforms``). Array-valued
    hyperparameters of the parts are kept too, so they take part in choosing the
    namespace.
    """
    transforms = tuple(_as_transformation(t) for t in transforms)
    for i, t in enumerate(transforms):
        if not isinstance(t, GradientTransformation):
            msg = f"agrad.optim.chain: argument {i} is a {type(t).__name__}, not a transformation"
            raise TypeError(msg)

    def init(params: Any) -> ChainState:
        return ChainState(tuple(t.inner_init(params) for t in transforms))

    def update(updates: Any, state: ChainState, params: Any) -> tuple[Any, ChainState]:
        new_states = []
        for t, s in zip(transforms, state.states):
            updates, s = t.inner_update(updates, s, params)
            new_states.append(s)
        return updates, ChainState(tuple(new_states))

    hyper = {"transforms": transforms} if hyperparams is None else dict(hyperparams)
    for t in transforms:
        for k, v in t.hyperparams.items():
            if is_array(v):
                hyper.setdefault(k, v)
    needs = any(t.needs_params for t in transforms)
    return GradientTransformation(name, init, update, hyper, needs_params=needs)


def _as_transformation(t: Any) -> Any:
    """An optax transformation wrapped by :func:`~agrad.optim.from_optax`; others as they are."""
    from agrad.optim.optax_bridge import from_optax, is_optax_transformation

    return from_optax(t) if is_optax_transformation(t) else t


def namespace_of(*trees: Any, extra: tuple = ()) -> ModuleType:
    """The namespace of the array leaves of ``trees`` and any array in ``extra``."""
    leaves = [x for t in trees for x in flatten_leaves(t)[0] if is_array(x)]
    leaves += [e for e in extra if is_array(e)]
    return array_namespace(*leaves)
