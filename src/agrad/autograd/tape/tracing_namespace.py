"""Build a tracing namespace (``agrad.numpy``, ``agrad.array_api_strict`` ...) over a base.

Every public name of the base namespace is present. Functions with a VJP rule become
primitives; functions without a gradient run on the raw values and return untraced
results; any other function passes through when no argument is traced and raises
``NotImplementedError`` naming itself when one is, never giving a wrong gradient.
With no active trace the namespace is a plain pass-through of its base.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

import array_api_compat

from agrad.autograd.tape.rules import NONDIFFERENTIABLE, RULES
from agrad.autograd.tape.traced import TracedArray, primitive, strip

__all__ = ["BASE_MODULES", "populate"]

#: Base namespace module for each tracing namespace.
BASE_MODULES = {
    "numpy": "array_api_compat.numpy",
    "array_api_strict": "array_api_strict",
    "cupy": "array_api_compat.cupy",
    "dask": "array_api_compat.dask.array",
}

_OPERATOR_IMPLS: dict[str, Callable[[Any, Any], Any]] = {
    "add": lambda x, y: x + y,
    "subtract": lambda x, y: x - y,
    "multiply": lambda x, y: x * y,
    "divide": lambda x, y: x / y,
    "pow": lambda x, y: x**y,
    "matmul": lambda x, y: x @ y,
}


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


def _nondifferentiable(name: str, raw: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        return raw(
            *(_strip_deep(a) for a in args), **{k: _strip_deep(v) for k, v in kwargs.items()}
        )

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``{name}`` of the base namespace; its result carries no gradient."
    return fn


def _unsupported(qualname: str, raw: Callable[..., Any]) -> Callable[..., Any]:
    def fn(*args: Any, **kwargs: Any) -> Any:
        if _contains_traced(args) or _contains_traced(kwargs):
            msg = (
                f"{qualname} has no gradient rule in agrad yet, so it cannot be "
                "differentiated; call it outside the differentiated function or on "
                "agrad.stop_gradient(x)"
            )
            raise NotImplementedError(msg)
        return raw(*args, **kwargs)

    fn.__name__ = fn.__qualname__ = qualname.rsplit(".", 1)[-1]
    fn.__doc__ = f"``{qualname}`` passes through to the base namespace; not differentiable yet."
    return fn


def _is_function(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, type) and not isinstance(obj, types.ModuleType)


def _wrap(name: str, qualname: str, obj: Any, ns: Any) -> Any:
    if not _is_function(obj) or name.startswith("__"):
        return obj
    if name in RULES:
        return primitive(name, _OPERATOR_IMPLS.get(name, obj), RULES[name], ns)
    if name in NONDIFFERENTIABLE:
        return _nondifferentiable(name, obj)
    return _unsupported(qualname, obj)


def _populate_extension(ns: Any, base: Any, ext: str) -> types.ModuleType:
    base_ext = getattr(base, ext)
    mod = types.ModuleType(f"{ns.__name__}.{ext}", f"{ext} extension of {ns.__name__}.")
    for name in dir(base_ext):
        if name.startswith("_"):
            continue
        same_as_main = name in ("matmul", "tensordot", "matrix_transpose", "vecdot")
        if same_as_main and hasattr(ns, name):
            setattr(mod, name, getattr(ns, name))
        else:
            setattr(mod, name, _wrap(name, f"{mod.__name__}.{name}", getattr(base_ext, name), ns))
    sys.modules[mod.__name__] = mod
    return mod


def populate(module_globals: dict[str, Any], base_name: str) -> None:
    """Fill the module whose globals are given with the tracing namespace over ``base_name``."""
    ns = sys.modules[module_globals["__name__"]]
    base = importlib.import_module(BASE_MODULES[base_name])
    traced_cls = type("TracedArray", (TracedArray,), {"__slots__": (), "_ns": ns})
    traced_cls.__module__ = ns.__name__
    module_globals.update(_Traced=traced_cls, _base=base, _agrad_base_name=base_name)

    for name in dir(base):
        if name.startswith("_") and name != "__array_namespace_info__":
            continue
        if name in ("linalg", "fft"):
            continue
        module_globals[name] = _wrap(name, f"{ns.__name__}.{name}", getattr(base, name), ns)
    if hasattr(base, "__array_api_version__"):
        module_globals["__array_api_version__"] = base.__array_api_version__

    # Variadic primitives take their arrays as separate positional arguments.
    concat_p = primitive(
        "concat",
        lambda *arrays, axis=0: base.concat(list(arrays), axis=axis),
        RULES["concat"],
        ns,
    )
    stack_p = primitive(
        "stack",
        lambda *arrays, axis=0: base.stack(list(arrays), axis=axis),
        RULES["stack"],
        ns,
    )

    def concat(arrays: Any, /, *, axis: int | None = 0) -> Any:
        """Join arrays along an existing axis (differentiable)."""
        return concat_p(*arrays, axis=axis)

    def stack(arrays: Any, /, *, axis: int = 0) -> Any:
        """Join arrays along a new axis (differentiable)."""
        return stack_p(*arrays, axis=axis)

    def asarray(
        obj: Any, /, *, dtype: Any = None, device: Any = None, copy: bool | None = None
    ) -> Any:
        """``asarray`` of the base; a traced array stays traced (cast if ``dtype`` differs)."""
        if isinstance(obj, TracedArray):
            if dtype is not None and dtype != obj.dtype:
                obj = ns.astype(obj, dtype)
            if device is not None and device != obj.device:
                obj = ns._to_device(obj, device)
            return obj
        return base.asarray(obj, dtype=dtype, device=device, copy=copy)

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

    def _getitem(x: Any, key: Any) -> Any:
        _check_key(ns.__name__, key)
        return getitem_p(x, key)

    def _to_device_raw(x: Any, device: Any) -> Any:
        return array_api_compat.to_device(x, device)

    to_device_p = primitive(
        "to_device",
        _to_device_raw,
        (lambda ns_, g, ans, x, device: ns_._to_device(g, ns_._base_device(strip(x))),),
        ns,
    )

    module_globals.update(
        concat=concat,
        stack=stack,
        asarray=asarray,
        _getitem=_getitem,
        _scatter=primitive("_scatter", _scatter_raw, RULES["_scatter"], ns),
        _setitem=primitive("_setitem", _setitem_raw, RULES["_setitem"], ns),
        _to_device=lambda x, device: to_device_p(x, device),
        _base_device=array_api_compat.device,
        _finalize=_finalizer(base_name),
    )
    for ext in ("linalg", "fft"):
        if hasattr(base, ext):
            module_globals[ext] = _populate_extension(ns, base, ext)
    module_globals["__all__"] = sorted(
        n for n in module_globals if not n.startswith("_") and n not in ("annotations", "populate")
    )


def _check_key(ns_name: str, key: Any) -> None:
    """Integer-array indices need a scatter-add gradient; refuse them rather than be wrong."""
    parts = key if isinstance(key, tuple) else (key,)
    for k in parts:
        if hasattr(k, "dtype") and hasattr(k, "shape"):
            kd = strip(k).dtype
            is_bool = str(kd).endswith("bool")
            if not is_bool:
                msg = (
                    f"{ns_name}: indexing a traced array with an integer array has no "
                    "gradient rule yet (repeated indices need a scatter-add); use take "
                    "outside the differentiated path"
                )
                raise NotImplementedError(msg)


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
