"""Which array library an input belongs to, without importing any framework.

``array_namespace`` is array-api-compat's, taught about agrad's own objects: a box
type registered with :func:`register_box_type` (``agrad.Variable``) counts as the array
it holds, and a traced array gives its tracing namespace (``agrad.numpy`` ...), even
when mixed with raw arrays of the same base library. Frameworks are recognised by
module name through ``sys.modules``; nothing here imports torch, JAX or CuPy.

This is the bottom layer: it knows nothing of autograd or optim. Upper layers tell it
what it needs (box types) instead of being imported by it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import array_api_compat

__all__ = [
    "array_namespace",
    "base_library",
    "common_namespace",
    "is_native_autograd_namespace",
    "is_numpy_scalar",
    "is_tracing_namespace",
    "library_name",
    "register_box_type",
]

_LIBRARY_NAMES = {
    "array_api_compat.numpy": "numpy",
    "numpy": "numpy",
    "array_api_compat.torch": "torch",
    "torch": "torch",
    "jax.numpy": "jax",
    "jax.experimental.array_api": "jax",
    "array_api_compat.cupy": "cupy",
    "cupy": "cupy",
    "array_api_compat.dask.array": "dask",
    "dask.array": "dask",
    "array_api_strict": "array_api_strict",
}


def library_name(xp: ModuleType) -> str:
    """Short name of the library behind a namespace: ``numpy``, ``torch``, ``jax`` ..."""
    name = getattr(xp, "__name__", None) or repr(xp)
    base = getattr(xp, "_agrad_base_name", None)
    if base is not None:  # a tracing namespace: agrad.numpy -> "agrad.numpy"
        return name
    return _LIBRARY_NAMES.get(name, name)


def base_library(xp: ModuleType) -> str:
    """The framework a namespace computes with (a tracing namespace counts as its base)."""
    return getattr(xp, "_agrad_base_name", None) or library_name(xp)


def is_tracing_namespace(xp: ModuleType) -> bool:
    """True for agrad's tracing namespaces (``agrad.numpy``, ``agrad.array_api_strict`` ...)."""
    return getattr(xp, "_agrad_base_name", None) is not None


def is_native_autograd_namespace(xp: ModuleType) -> bool:
    """True for namespaces whose library has its own autograd (torch, JAX)."""
    return library_name(xp) in ("torch", "jax")


def is_numpy_scalar(x: Any) -> bool:
    """True for NumPy's scalars (``np.float64(1.0)``: what NumPy returns for 0-d operands)."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.generic)


# Array type -> its namespace. Every library we serve gives one namespace per array type
# (a traced array's class belongs to one tracing namespace), so the answer is cached.
_NAMESPACE_BY_TYPE: dict[type, ModuleType] = {}
_PYTHON_SCALARS = (bool, int, float, complex)
# Box type -> how to take the array out of one (``agrad.Variable`` -> ``.value``).
_BOX_TYPES: dict[type, Callable[[Any], Any]] = {}


def register_box_type(cls: type, unbox: Callable[[Any], Any]) -> None:
    """Make instances of ``cls`` count as the array ``unbox(instance)`` returns.

    A box holds an array of any library, so its namespace is decided per instance
    (never cached by type). ``agrad.Variable`` registers itself this way.
    """
    _BOX_TYPES[cls] = unbox


def _box_unboxer(x: Any) -> Callable[[Any], Any] | None:
    """The unboxing function of a registered box type that ``x`` is a subclass of."""
    for cls, unbox in _BOX_TYPES.items():
        if isinstance(x, cls):
            return unbox
    return None


def _namespace_of(x: Any) -> ModuleType | None:
    ns = _NAMESPACE_BY_TYPE.get(type(x))
    if ns is not None:
        return ns
    unbox = _BOX_TYPES.get(type(x)) or _box_unboxer(x)
    if unbox is not None:
        return _namespace_of(unbox(x))
    if x is None or isinstance(x, _PYTHON_SCALARS):
        return None
    ns = array_api_compat.array_namespace(x)  # a traced array answers with its own namespace
    _NAMESPACE_BY_TYPE[type(x)] = ns
    return ns


def _cached_common_namespace(xs: tuple[Any, ...]) -> ModuleType | None:
    """The namespace of ``xs`` when every array among them has a cached type of one namespace.

    ``None`` sends the caller down the general path (unseen types, mixed namespaces,
    Variables, NumPy scalars among arrays of another library).
    """
    get = _NAMESPACE_BY_TYPE.get
    found = None
    for x in xs:
        ns = get(type(x))
        if ns is None:
            if x is None or type(x) in _PYTHON_SCALARS:
                continue
            return None
        if found is None:
            found = ns
        elif ns is not found:
            return None
    return found


def array_namespace(*xs: Any, xp: ModuleType | None = None) -> ModuleType:
    """Return the Array API namespace shared by ``xs``.

    Python scalars and ``None`` are ignored. NumPy scalars (``np.float64(0.1)``, what
    NumPy returns for 0-d operands) are weak in the same way: they give NumPy only when
    no input is an array, so ``lr=np.float64(0.1)`` goes with torch tensors. A traced
    array mixed with raw arrays of its base library gives the tracing namespace.
    Passing ``xp`` skips inference.

    Raises:
        TypeError: inputs come from two different array libraries (both are named, with
            the positions of the first input of each), or no input is an array.
    """
    if xp is not None:
        return xp
    cached = _cached_common_namespace(xs)
    if cached is not None:
        return cached
    found: list[tuple[ModuleType, int]] = []
    numpy_scalar = None
    for i, x in enumerate(xs):
        if is_numpy_scalar(x):  # a weak input, like a Python scalar: NumPy only if alone
            if numpy_scalar is None:
                numpy_scalar = x
            continue
        try:
            ns = _namespace_of(x)
        except TypeError as err:
            msg = f"agrad.array_namespace: argument {i} of type {type(x).__qualname__} is not an array of any supported library ({err})"
            raise TypeError(msg) from None
        if ns is not None and all(ns is not f for f, _ in found):
            found.append((ns, i))
    if not found and numpy_scalar is not None:
        return array_api_compat.array_namespace(numpy_scalar)
    if not found:
        msg = "agrad.array_namespace: none of the inputs is an array"
        raise TypeError(msg)
    first, i0 = found[0]
    for ns, i in found[1:]:
        if base_library(ns) != base_library(first):
            msg = (
                "agrad.array_namespace: inputs come from two array libraries, "
                f"{base_library(first)} (argument {i0}) and {base_library(ns)} (argument {i}); "
                "convert them to one library first"
            )
            raise TypeError(msg)
    tracing = [ns for ns, _ in found if is_tracing_namespace(ns)]
    return tracing[0] if tracing else first


def common_namespace(
    leaves: Sequence[Any],
    labels: Sequence[str] | Callable[[], Sequence[str]],
    fn: str,
    xp: ModuleType | None = None,
) -> ModuleType:
    """The namespace of all ``leaves``, or a ``TypeError`` naming two that differ.

    ``labels`` name each leaf in messages (``"ws['w1']"``), or is a function returning
    them, called only to write a message; ``fn`` names the caller.
    """
    if xp is not None:
        return xp
    try:
        return array_namespace(*leaves)
    except TypeError:
        pass
    if callable(labels):
        labels = labels()
    seen: list[tuple[str, str]] = []
    for leaf, label in zip(leaves, labels):
        if is_numpy_scalar(leaf):  # weak, as in array_namespace
            continue
        try:
            lib = library_name(array_namespace(leaf)).removeprefix("agrad.")
        except TypeError:
            msg = f"{fn}: {label} is not an array of a supported library (got {type(leaf).__qualname__})"
            raise TypeError(msg) from None
        for other_lib, other_label in seen:
            if other_lib != lib:
                msg = (
                    f"{fn}: inputs mix array libraries: {other_label} is {other_lib} but "
                    f"{label} is {lib}; convert everything to one library first"
                )
                raise TypeError(msg)
        seen.append((lib, label))
    raise TypeError(f"{fn}: could not determine a common array namespace")
