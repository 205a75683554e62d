"""Build a tracing namespace (``agrad.numpy``, ``agrad.array_api_strict`` ...) over a base.

Every public name of the base namespace is present, and every name of the standard
(:mod:`agrad.autograd.tape.standard`) even where the base lacks it. A function is, in
order of precedence:

- a *primitive* with a VJP rule (``RULES``, the rule modules' tables merged); one
  whose entry says ``sequence`` (``concat``, ``stack``) takes its arrays as one
  sequence, each of them a positional argument of the primitive; ``clip``, ``astype``,
  ``asarray`` and the creation functions with scalar arguments (``linspace``,
  ``arange``, ``full``, ``full_like``) are front ends to their primitives
  (``_front_ends``);
- *derived*: the base's own function when nothing is traced, else a composition of
  primitives (:mod:`agrad.autograd.tape.derived`);
- *non-differentiable*: run on the raw values (comparisons, argmax ...); the result is
  a constant of the live trace, as is any array created (``zeros``, ``asarray`` ...);
- *unsupported*: a pass-through that raises ``NotImplementedError`` naming itself when
  given a traced array (the base's non-standard extras), never a wrong gradient.

Inside a trace every array a function returns is traced (a constant of the trace when it
carries no gradient: :func:`~agrad.autograd.tape.traced.box_constants`). With no
active trace the namespace is a plain pass-through of its base (except where
the base disagrees with the standard: ``_BASE_FIXES``). ``agrad.numpy`` and
``agrad.array_api_strict`` also have a ``special`` module of differentiable
``scipy.special`` functions, made on first use (scipy's own wrappers call it under
``SCIPY_ARRAY_API=1``), and their traced arrays take NumPy ufuncs through
``__array_ufunc__`` (:mod:`~agrad.autograd.tape.special`,
:mod:`~agrad.autograd.tape.ufuncs`). Integer-array and mask indexing transpose through
``_index_add``, a scatter-add (NumPy/CuPy ``add.at``; elsewhere a one-hot product
written against the standard).
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import array_api_compat

from agrad.autograd.tape import derived, rules, rules_fft, rules_linalg
from agrad.autograd.tape.creation import creation_functions, frequency_functions
from agrad.autograd.tape.operators import bind_operators, computed_by_operator
from agrad.autograd.tape.signatures import apply_signatures
from agrad.autograd.tape.special import special_module
from agrad.autograd.tape.standard import (
    CONSTANTS,
    FFT_FUNCTIONS,
    FUNCTIONS,
    LINALG_ALIASES,
    LINALG_FUNCTIONS,
)
from agrad.autograd.tape.traced import (
    TracedArray,
    box_constants,
    primitive,
    strip,
    strip_key,
)
from agrad.autograd.tape.vjp import VJP

__all__ = ["BASE_MODULES", "CREATION", "DERIVED", "NONDIFFERENTIABLE", "RULES", "populate"]

#: Base namespace module for each tracing namespace.
BASE_MODULES = {
    "numpy": "array_api_compat.numpy",
    "array_api_strict": "array_api_strict",
    "cupy": "array_api_compat.cupy",
    "dask": "array_api_compat.dask.array",
}

#: The rule table: every primitive of every tracing namespace, by name.
RULES: dict[str, VJP] = {**rules.RULES, **rules_linalg.RULES, **rules_fft.RULES}
DERIVED: dict[str, Any] = derived.DERIVED
NONDIFFERENTIABLE = rules.NONDIFFERENTIABLE


def _contains_traced(obj: Any) -> bool:
    if isinstance(obj, TracedArray):
        return True
    if isinstance(obj, (list, tuple)):
        return any(_contains_traced(o) for o in obj)
    if isinstance(obj, dict):
        return any(_contains_traced(o) for o in obj.values())
    return False


def _strip_deep(obj: Any) -> Any:
    if isinstance(obj, TracedArray):
        return strip(obj)
    if isinstance(obj, (list, tuple)) and any(_contains_traced(o) for o in obj):
        return type(obj)(_strip_deep(o) for o in obj)
    return obj


def _any_traced(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    for a in args:
        if isinstance(a, TracedArray):
            return True
    return any(isinstance(v, TracedArray) for v in kwargs.values()) if kwargs else False


def _nondifferentiable(name: str, raw: Callable[..., Any], ns: Any) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        out = raw(*(_strip_deep(a) for a in args), **{k: _strip_deep(v) for k, v in kwargs.items()})
        return box_constants(ns, out)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (
        f"``{name}`` of the base namespace; its result carries no gradient (inside a "
        "gradient computation, a constant of the current trace)."
    )
    fn._agrad_raw = raw  # type: ignore[attr-defined]  # for raw arrays: the base's own
    return fn


#: Creation from a shape: inside a gradient computation the result is a constant of the
#: innermost trace, so third-party code may mix it with traced arrays freely.
CREATION = frozenset(["zeros", "ones", "empty", "full", "eye", "arange", "linspace"])


def _creation(name: str, raw: Callable[..., Any], ns: Any) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        out = raw(*(strip(a) for a in args), **{k: strip(v) for k, v in kwargs.items()})
        return box_constants(ns, out)

    def raw_fn(*args: Any, **kwargs: Any) -> Any:
        return raw(*(strip(a) for a in args), **{k: strip(v) for k, v in kwargs.items()})

    fn._agrad_raw = raw_fn  # type: ignore[attr-defined]
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = (
        f"``{name}`` of the base namespace; inside a gradient computation the result is "
        "a constant of the current trace (it carries no gradient)."
    )
    return fn


def _unsupported(qualname: str, raw: Callable[..., Any], ns: Any) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        if _contains_traced(args) or _contains_traced(kwargs):
            msg = (
                f"{qualname} has no gradient rule in agrad, so it cannot be "
                "differentiated; call it outside the differentiated function or on "
                "agrad.stop_gradient(x)"
            )
            raise NotImplementedError(msg)
        return box_constants(ns, raw(*args, **kwargs))

    fn.__name__ = fn.__qualname__ = qualname.rsplit(".", 1)[-1]
    fn.__doc__ = f"``{qualname}`` passes through to the base namespace; not differentiable."
    return fn


def _missing(qualname: str, base_name: str) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        msg = f"{qualname}: the {base_name} namespace does not provide this function"
        raise NotImplementedError(msg)

    fn.__name__ = fn.__qualname__ = qualname.rsplit(".", 1)[-1]
    fn.__doc__ = f"``{qualname}`` is missing from the base namespace {base_name}."
    return fn


def _derived(name: str, raw: Callable[..., Any] | None, impl: Callable[..., Any], ns: Any):
    if raw is None:

        def fn(*args: Any, **kwargs: Any) -> Any:
            return impl(ns, *args, **kwargs)

    else:

        def fn(*args: Any, **kwargs: Any) -> Any:
            if _any_traced(args, kwargs):
                return impl(ns, *args, **kwargs)
            return box_constants(ns, raw(*args, **kwargs))

        fn._agrad_raw = raw  # type: ignore[attr-defined]
    fn._agrad_derived = impl  # type: ignore[attr-defined]
    fn.__name__ = fn.__qualname__ = name.rsplit(".", 1)[-1]
    fn.__doc__ = impl.__doc__
    return fn


def _is_function(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, type) and not isinstance(obj, types.ModuleType)


def _dask_cholesky(x: Any, /, *, upper: bool = False) -> Any:
    """The standard's Cholesky factor on Dask (whose own returns the upper one)."""
    import dask.array as da

    factor = da.linalg.cholesky(x)
    return factor if upper else da.conj(factor.T)


# Base functions that disagree with the standard, replaced so that gradients match
# the values returned.
_BASE_FIXES: dict[tuple[str, str], Callable[..., Any]] = {
    ("dask", "linalg.cholesky"): _dask_cholesky,
}


def _generic_take_along_axis(base: Any) -> Callable[..., Any]:
    """``take_along_axis`` through ``take`` on the flattened array (for bases without it)."""

    def take_along_axis(x: Any, indices: Any, /, *, axis: int = -1) -> Any:
        axis %= x.ndim
        xm = base.moveaxis(x, axis, -1)
        im = base.moveaxis(indices, axis, -1)
        n, k = xm.shape[-1], im.shape[-1]
        batch = tuple(max(a, b) for a, b in zip(xm.shape[:-1], im.shape[:-1]))
        xm = base.broadcast_to(xm, (*batch, n))
        im = base.broadcast_to(im, (*batch, k))
        im = base.where(im < 0, im + n, im)
        dev = array_api_compat.device(x)
        rows = base.reshape(base.arange(math.prod(batch), device=dev) * n, (*batch, 1))
        rows = base.astype(rows, im.dtype)
        flat = base.take(base.reshape(xm, (-1,)), base.reshape(im + rows, (-1,)))
        return base.moveaxis(base.reshape(flat, (*batch, k)), -1, axis)

    return take_along_axis


# Functions some bases lack (``take_along_axis`` before api_version 2024.12), made from
# what the base has.
_FALLBACKS: dict[str, Callable[[Any], Callable[..., Any]]] = {
    "take_along_axis": _generic_take_along_axis,
}


def _fast_functions(base_name: str) -> dict[str, Callable[..., Any]]:
    """Faster functions with the base's own results (:mod:`~agrad.autograd.tape.fast_numpy`)."""
    if base_name == "numpy":
        from agrad.autograd.tape.fast_numpy import FAST_NUMPY

        return FAST_NUMPY
    return {}


def _wrap(key: str, qualname: str, obj: Any, ns: Any) -> Any:
    """The tracing version of ``obj`` (the base's ``key``: ``"sum"``, ``"linalg.svd"``)."""
    name = key.rsplit(".", 1)[-1]
    base_name = ns._agrad_base_name
    obj = _BASE_FIXES.get((base_name, key), obj)
    if obj is None and key in _FALLBACKS:
        obj = _FALLBACKS[key](ns._base)
    if obj is not None:
        obj = _fast_functions(base_name).get(key, obj)
    if obj is not None and (not _is_function(obj) or name.startswith("__")):
        return obj
    if key in RULES:
        if obj is None:
            return _missing(qualname, base_name)
        if RULES[key].sequence:
            return _sequence_primitive(key, obj, RULES[key], ns)
        return primitive(key, computed_by_operator(key, obj), RULES[key], ns)
    if key in DERIVED:
        return _derived(key, obj, DERIVED[key], ns)
    if obj is None:
        return _missing(qualname, base_name)
    if key in CREATION:
        return _creation(name, obj, ns)
    if key in NONDIFFERENTIABLE:
        return _nondifferentiable(name, obj, ns)
    return _unsupported(qualname, obj, ns)


def _sequence_primitive(key: str, obj: Callable[..., Any], spec: VJP, ns: Any):
    """A function that takes its arrays as one sequence (``concat(arrays, /, *, axis)``).

    Each array is one positional argument of the primitive behind it, with its own rule.
    """

    def unpacked(*arrays: Any, **kwargs: Any) -> Any:
        return obj(list(arrays), **kwargs)

    prim = primitive(key, unpacked, spec, ns)

    def fn(arrays: Any, /, **kwargs: Any) -> Any:
        return prim(*arrays, **kwargs)

    fn.__name__ = fn.__qualname__ = key
    fn.__doc__ = f"``{key}`` of the base namespace; differentiable in every array."
    fn._agrad_raw = obj  # type: ignore[attr-defined]
    return fn


def _populate_extension(ns: Any, base: Any, ext: str, names: tuple[str, ...]) -> types.ModuleType:
    base_ext = getattr(base, ext, None)
    mod = types.ModuleType(f"{ns.__name__}.{ext}", f"``{ext}`` extension of {ns.__name__}.")
    public = [n for n in dir(base_ext) if not n.startswith("_")] if base_ext is not None else []
    for name in dict.fromkeys([*names, *public]):
        obj = getattr(base_ext, name, None)
        if name in LINALG_ALIASES and obj is not None:
            setattr(mod, name, getattr(ns, name))
            continue
        if name not in names and not _is_function(obj):
            continue  # the base module's imports (numpy, typing names ...)
        setattr(mod, name, _wrap(f"{ext}.{name}", f"{mod.__name__}.{name}", obj, ns))
    if ext == "fft" and base_ext is not None:
        for name, fn in frequency_functions(ns, base_ext).items():
            setattr(mod, name, fn)
    mod.__all__ = sorted(n for n in vars(mod) if not n.startswith("_"))
    sys.modules[mod.__name__] = mod
    return mod


def populate(module_globals: dict[str, Any], base_name: str) -> None:
    """Fill the module whose globals are given with the tracing namespace over ``base_name``."""
    ns = sys.modules[module_globals["__name__"]]
    base = importlib.import_module(BASE_MODULES[base_name])
    traced_cls = type("TracedArray", (TracedArray,), {"__slots__": (), "_ns": ns})
    traced_cls.__module__ = ns.__name__
    module_globals.update(_Traced=traced_cls, _base=base, _agrad_base_name=base_name)

    front_ends = _front_ends(ns, base)
    names = [n for n in dir(base) if not n.startswith("_")]
    for name in dict.fromkeys([*names, *FUNCTIONS]):
        if name in ("linalg", "fft") or name in front_ends:
            continue
        obj = getattr(base, name, None)
        if name in CONSTANTS:  # values, ``newaxis`` (None) included
            module_globals[name] = obj
            continue
        module_globals[name] = _wrap(name, f"{ns.__name__}.{name}", obj, ns)
    if hasattr(base, "__array_api_version__"):
        module_globals["__array_api_version__"] = base.__array_api_version__
    module_globals.update(front_ends)
    module_globals.update(_private_primitives(ns, base, base_name))
    for ext, ext_names in (("linalg", LINALG_FUNCTIONS), ("fft", FFT_FUNCTIONS)):
        module_globals[ext] = _populate_extension(ns, base, ext, ext_names)
    if base_name in ("numpy", "array_api_strict"):  # both are NumPy arrays underneath
        from agrad.autograd.tape.ufuncs import array_ufunc_for

        traced_cls.__array_ufunc__ = array_ufunc_for(ns)
    module_globals["__all__"] = sorted(
        n for n in module_globals if not n.startswith("_") and n not in ("annotations", "populate")
    )
    bind_operators(traced_cls, module_globals)
    apply_signatures(module_globals, traced_cls)  # after the operators: they stay unwrapped
    module_globals["_raw_ns"] = _raw_namespace(ns)
    module_globals["__getattr__"] = _lazy_special(ns, base_name, module_globals)


def _lazy_special(ns: Any, base_name: str, module_globals: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` that makes ``ns.special`` on first use.

    Building it imports scipy, which reads ``SCIPY_ARRAY_API`` once, at import: importing
    a tracing namespace must not do that before the user has set it.
    """

    def __getattr__(name: str) -> Any:
        # NumPy and array-api-strict only: scipy.special computes on NumPy arrays
        if name == "special" and base_name in ("numpy", "array_api_strict"):
            mod = special_module(ns, base_name)
            if mod is not None:
                module_globals["special"] = mod
                raw = types.SimpleNamespace(
                    **{k: getattr(v, "_agrad_raw", v) for k, v in vars(mod).items()}
                )
                module_globals["_raw_ns"].special = raw
                return mod
        msg = f"module {ns.__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__


def _raw_namespace(ns: Any) -> types.SimpleNamespace:
    """``ns`` with every primitive, derived and creation function replaced by its base function.

    First-order backward passes (no enclosing trace records them) run the VJP rules with
    it: on raw arrays the results are the same, without the tracing wrappers' overhead.
    """

    def rawify(mod: Any, raw_ns: types.SimpleNamespace, memo: dict[int, Any]) -> None:
        for key, obj in vars(mod).items():
            if id(obj) in memo:
                setattr(raw_ns, key, memo[id(obj)])
                continue
            new = getattr(obj, "_agrad_raw", None)
            if new is None and getattr(obj, "_agrad_derived", None) is not None:
                new = functools.partial(obj._agrad_derived, top)
            if new is not None:
                memo[id(obj)] = new
                setattr(raw_ns, key, new)
            else:
                setattr(raw_ns, key, obj)

    top = types.SimpleNamespace()
    memo: dict[int, Any] = {}
    rawify(ns, top, memo)
    for ext in ("linalg", "fft"):
        sub = getattr(ns, ext, None)
        if isinstance(sub, types.ModuleType):
            raw_sub = types.SimpleNamespace()
            rawify(sub, raw_sub, memo)
            setattr(top, ext, raw_sub)
    return top


def _front_ends(ns: Any, base: Any) -> dict[str, Any]:
    """Functions whose standard signature is not their primitive's.

    ``linspace``, ``arange``, ``full`` and ``full_like`` are differentiable in traced
    scalar arguments (:mod:`~agrad.autograd.tape.creation`); ``clip`` takes its differentiable bounds as keywords too, ``astype`` is
    differentiable only to floating and complex dtypes, ``asarray`` returns a traced
    array as it is.
    """
    clip_p = primitive("clip", base.clip, RULES["clip"], ns)
    astype_p = primitive("astype", base.astype, RULES["astype"], ns)
    differentiable_dtypes = (base.float32, base.float64, base.complex64, base.complex128)

    def clip(x: Any, /, min: Any = None, max: Any = None) -> Any:
        """Clamp ``x`` to ``[min, max]``; differentiable in ``x``, ``min`` and ``max``."""
        return clip_p(x, min, max)

    def astype(x: Any, dtype: Any, /, *, copy: bool = True, **kwargs: Any) -> Any:
        """Cast ``x``; differentiable to floating and complex dtypes, untraced otherwise."""
        if dtype not in differentiable_dtypes:
            return box_constants(ns, base.astype(strip(x), dtype, copy=copy, **kwargs))
        return astype_p(x, dtype, copy=copy, **kwargs)

    def asarray(
        obj: Any, /, *, dtype: Any = None, device: Any = None, copy: bool | None = None
    ) -> Any:
        """``asarray`` of the base; a traced array stays traced (cast if ``dtype`` differs)."""
        if isinstance(obj, TracedArray):
            if dtype is not None and dtype != obj.dtype:
                obj = ns.astype(obj, dtype)
            elif copy:  # a new array object: assigning into one leaves the other as it was
                obj = type(obj)(obj._value, obj._node, obj._trace)
            if device is not None and device != obj.device:
                obj = ns._to_device(obj, device)
            return obj
        if isinstance(obj, (list, tuple)) and _contains_traced(obj):
            return ns.stack([asarray(o, dtype=dtype, device=device) for o in obj])
        return box_constants(ns, base.asarray(obj, dtype=dtype, device=device, copy=copy))

    # the raw namespace (first-order backward passes) calls the base's own
    clip._agrad_raw = base.clip  # type: ignore[attr-defined]
    astype._agrad_raw = base.astype  # type: ignore[attr-defined]
    asarray._agrad_raw = base.asarray  # type: ignore[attr-defined]
    return {
        "clip": clip,
        "astype": astype,
        "asarray": asarray,
        **creation_functions(ns, base),
    }


def _private_primitives(ns: Any, base: Any, base_name: str) -> dict[str, Any]:
    """Indexing, scatter-add and device transfer: the primitives behind array methods."""

    def _scatter_raw(g: Any, key: Any, shape: tuple[int, ...]) -> Any:
        """Zeros of ``shape`` with ``g`` placed at ``key`` (the transpose of basic indexing)."""
        out = base.zeros(shape, dtype=g.dtype, device=array_api_compat.device(g))
        parts = key if isinstance(key, tuple) else (key,)
        if any(p is None for p in parts):  # newaxis: drop it from the key and from g
            parts = tuple(p for p in parts if p is not None)
            g = base.reshape(g, tuple(out[parts].shape))
        out[parts] = g
        return out

    def _setitem_raw(x: Any, key: Any, value: Any) -> Any:
        out = base.asarray(x, copy=True)
        out[key] = value
        return out

    getitem_p = primitive("_getitem", lambda x, key: x[key], RULES["_getitem"], ns)
    getitem_adv_p = primitive(
        "_getitem_advanced", lambda x, key: x[key], RULES["_getitem_advanced"], ns
    )
    setitem_p = primitive("_setitem", _setitem_raw, RULES["_setitem"], ns)

    # Dask's masked results have unknown sizes, so masks there transpose through
    # ``__setitem__`` (which Dask supports) rather than through positions.
    masks_are_advanced = base_name != "dask"

    def _getitem(x: Any, key: Any) -> Any:
        key = strip_key(key)
        if _is_advanced(key, masks_are_advanced):
            return getitem_adv_p(x, key)
        return getitem_p(x, key)

    def _setitem(x: Any, key: Any, value: Any) -> Any:
        return setitem_p(x, strip_key(key), value)

    # the raw namespace (first-order backward passes) indexes raw arrays directly
    _getitem._agrad_raw = lambda x, key: x[strip_key(key)]  # type: ignore[attr-defined]
    _setitem._agrad_raw = lambda x, key, value: _setitem_raw(x, strip_key(key), value)  # type: ignore[attr-defined]

    take_along = _generic_take_along_axis(base)
    return {
        "_getitem": _getitem,
        "_setitem": _setitem,
        "_scatter": primitive("_scatter", _scatter_raw, RULES["_scatter"], ns),
        "_index_add": primitive(
            "_index_add", _index_add_raw(base, base_name), RULES["_index_add"], ns
        ),
        # gathers of derived functions (sort): present on every api_version
        "_take_along_axis": primitive(
            "_take_along_axis", take_along, RULES["_take_along_axis"], ns
        ),
        "_generic_take_along_axis": take_along,
        "_to_device": primitive("_to_device", array_api_compat.to_device, RULES["_to_device"], ns),
        "_base_device": array_api_compat.device,
        "_finalize": _finalizer(base_name),
    }


def _is_advanced(key: Any, masks: bool = True) -> bool:
    """Whether ``key`` holds an array (or a list): a gather whose transpose is a scatter-add.

    Boolean masks count too when ``masks``: their transpose through positions and
    ``_index_add`` needs no ``__setitem__`` with a mask, which some bases refuse
    (array-api-strict on a non-default device).
    """
    parts = key if isinstance(key, tuple) else (key,)
    for k in parts:
        if isinstance(k, list):
            return True
        dtype = getattr(k, "dtype", None)
        if getattr(k, "ndim", None) is not None and (masks or "bool" not in str(dtype)):
            return True
    return False


def _index_add_raw(base: Any, base_name: str) -> Callable[[Any, Any, int], Any]:
    """``zeros(size)`` with ``values`` added at ``index`` (1-D; repeats accumulate).

    NumPy and CuPy use their unbuffered ``add.at``; other bases a one-hot matrix
    product written against the standard (exact, O(len(index) * size) memory).
    """
    if base_name == "numpy":
        import numpy as np

        def index_add(values: Any, index: Any, size: int) -> Any:
            out = np.zeros(size, dtype=values.dtype)
            np.add.at(out, index, values)
            return out

        return index_add
    if base_name == "cupy":

        def index_add(values: Any, index: Any, size: int) -> Any:
            import cupy
            import cupyx

            out = cupy.zeros(size, dtype=values.dtype)
            cupyx.scatter_add(out, index, values)
            return out

        return index_add

    def index_add(values: Any, index: Any, size: int) -> Any:
        dev = array_api_compat.device(values)
        targets = base.reshape(base.arange(size, device=dev), (1, size))
        one_hot = base.astype(base.reshape(index, (-1, 1)) == targets, values.dtype)
        return base.matmul(values, one_hot)

    return index_add


def _finalizer(base_name: str) -> Callable[[Any], Any]:
    """What to do to an array before handing it to the user (NumPy: no scalars, writable)."""
    if base_name != "numpy":
        return lambda x: x

    import numpy as np

    def finalize(x: Any) -> Any:
        if isinstance(x, np.generic):
            return np.asarray(x)
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            return x.copy()
        return x

    return finalize
