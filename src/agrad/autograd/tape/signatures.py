"""The standard's signatures, and functions that have them exactly.

``SIGNATURES`` holds the parameter list of every function of the Python Array API
standard, 2024.12 revision, by name (``"sum"``, ``"linalg.svd"``, ``"info.dtypes"``,
``"array.__dlpack__"`` for methods of the array object), as the standard's own stubs
(``array_api_stubs``) write it, without annotations. The 2023.12 revision is the same
less the functions it does not have and the ``dtype`` keyword of ``fft.fftfreq`` and
``fft.rfftfreq`` (:func:`parameters` with ``version="2023.12"``); 2024.12's
signatures accept every call 2023.12's do, so the tracing namespaces use them.

:func:`with_signature` wraps a function in one made from the standard's parameter list
(compiled once per process, all together), so that Python itself binds the
arguments: a wrong keyword, a keyword for a positional-only parameter or one argument
too many raises ``TypeError`` exactly as the standard's function would, and
``inspect.signature`` shows the standard's names, kinds and defaults. The wrapper hands
on only what the caller gave: keyword-only arguments left at their default are not
passed, so the function behind it sees the call it would have seen without the
wrapper (a call with no keywords stays a call with no keywords, which the tape's fast
path expects); positional parameters go on positionally, optional ones up to the last
one given.

:func:`apply_signatures` does this to a tracing namespace as it is built: every standard
function (``linalg`` and ``fft`` included) and every standard method of its traced array
class. The ``info.*`` entries describe the inspection namespace, which is the base
library's own object. The cost on the tape's benchmarks is within their noise
(docs/testing.md).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = [
    "SIGNATURES",
    "VERSIONS",
    "apply_signatures",
    "parameters",
    "standard_signature",
    "with_signature",
]

#: The revisions of the standard whose signatures :func:`parameters` gives.
VERSIONS = ("2023.12", "2024.12")

#: The standard's parameter list of every function and array method, 2024.12.
SIGNATURES: dict[str, str] = {
    "__array_namespace_info__": "",
    "abs": "x, /",
    "acos": "x, /",
    "acosh": "x, /",
    "add": "x1, x2, /",
    "all": "x, /, *, axis=None, keepdims=False",
    "any": "x, /, *, axis=None, keepdims=False",
    "arange": "start, /, stop=None, step=1, *, dtype=None, device=None",
    "argmax": "x, /, *, axis=None, keepdims=False",
    "argmin": "x, /, *, axis=None, keepdims=False",
    "argsort": "x, /, *, axis=-1, descending=False, stable=True",
    "asarray": "obj, /, *, dtype=None, device=None, copy=None",
    "asin": "x, /",
    "asinh": "x, /",
    "astype": "x, dtype, /, *, copy=True, device=None",
    "atan": "x, /",
    "atan2": "x1, x2, /",
    "atanh": "x, /",
    "bitwise_and": "x1, x2, /",
    "bitwise_invert": "x, /",
    "bitwise_left_shift": "x1, x2, /",
    "bitwise_or": "x1, x2, /",
    "bitwise_right_shift": "x1, x2, /",
    "bitwise_xor": "x1, x2, /",
    "broadcast_arrays": "*arrays",
    "broadcast_to": "x, /, shape",
    "can_cast": "from_, to, /",
    "ceil": "x, /",
    "clip": "x, /, min=None, max=None",
    "concat": "arrays, /, *, axis=0",
    "conj": "x, /",
    "copysign": "x1, x2, /",
    "cos": "x, /",
    "cosh": "x, /",
    "count_nonzero": "x, /, *, axis=None, keepdims=False",
    "cumulative_prod": "x, /, *, axis=None, dtype=None, include_initial=False",
    "cumulative_sum": "x, /, *, axis=None, dtype=None, include_initial=False",
    "diff": "x, /, *, axis=-1, n=1, prepend=None, append=None",
    "divide": "x1, x2, /",
    "empty": "shape, *, dtype=None, device=None",
    "empty_like": "x, /, *, dtype=None, device=None",
    "equal": "x1, x2, /",
    "exp": "x, /",
    "expand_dims": "x, /, axis",
    "expm1": "x, /",
    "eye": "n_rows, n_cols=None, /, *, k=0, dtype=None, device=None",
    "finfo": "type, /",
    "flip": "x, /, *, axis=None",
    "floor": "x, /",
    "floor_divide": "x1, x2, /",
    "from_dlpack": "x, /, *, device=None, copy=None",
    "full": "shape, fill_value, *, dtype=None, device=None",
    "full_like": "x, /, fill_value, *, dtype=None, device=None",
    "greater": "x1, x2, /",
    "greater_equal": "x1, x2, /",
    "hypot": "x1, x2, /",
    "iinfo": "type, /",
    "imag": "x, /",
    "isdtype": "dtype, kind",
    "isfinite": "x, /",
    "isinf": "x, /",
    "isnan": "x, /",
    "less": "x1, x2, /",
    "less_equal": "x1, x2, /",
    "linspace": "start, stop, /, num, *, dtype=None, device=None, endpoint=True",
    "log": "x, /",
    "log10": "x, /",
    "log1p": "x, /",
    "log2": "x, /",
    "logaddexp": "x1, x2, /",
    "logical_and": "x1, x2, /",
    "logical_not": "x, /",
    "logical_or": "x1, x2, /",
    "logical_xor": "x1, x2, /",
    "matmul": "x1, x2, /",
    "matrix_transpose": "x, /",
    "max": "x, /, *, axis=None, keepdims=False",
    "maximum": "x1, x2, /",
    "mean": "x, /, *, axis=None, keepdims=False",
    "meshgrid": "*arrays, indexing='xy'",
    "min": "x, /, *, axis=None, keepdims=False",
    "minimum": "x1, x2, /",
    "moveaxis": "x, source, destination, /",
    "multiply": "x1, x2, /",
    "negative": "x, /",
    "nextafter": "x1, x2, /",
    "nonzero": "x, /",
    "not_equal": "x1, x2, /",
    "ones": "shape, *, dtype=None, device=None",
    "ones_like": "x, /, *, dtype=None, device=None",
    "permute_dims": "x, /, axes",
    "positive": "x, /",
    "pow": "x1, x2, /",
    "prod": "x, /, *, axis=None, dtype=None, keepdims=False",
    "real": "x, /",
    "reciprocal": "x, /",
    "remainder": "x1, x2, /",
    "repeat": "x, repeats, /, *, axis=None",
    "reshape": "x, /, shape, *, copy=None",
    "result_type": "*arrays_and_dtypes",
    "roll": "x, /, shift, *, axis=None",
    "round": "x, /",
    "searchsorted": "x1, x2, /, *, side='left', sorter=None",
    "sign": "x, /",
    "signbit": "x, /",
    "sin": "x, /",
    "sinh": "x, /",
    "sort": "x, /, *, axis=-1, descending=False, stable=True",
    "sqrt": "x, /",
    "square": "x, /",
    "squeeze": "x, /, axis",
    "stack": "arrays, /, *, axis=0",
    "std": "x, /, *, axis=None, correction=0.0, keepdims=False",
    "subtract": "x1, x2, /",
    "sum": "x, /, *, axis=None, dtype=None, keepdims=False",
    "take": "x, indices, /, *, axis=None",
    "take_along_axis": "x, indices, /, *, axis=-1",
    "tan": "x, /",
    "tanh": "x, /",
    "tensordot": "x1, x2, /, *, axes=2",
    "tile": "x, repetitions, /",
    "tril": "x, /, *, k=0",
    "triu": "x, /, *, k=0",
    "trunc": "x, /",
    "unique_all": "x, /",
    "unique_counts": "x, /",
    "unique_inverse": "x, /",
    "unique_values": "x, /",
    "unstack": "x, /, *, axis=0",
    "var": "x, /, *, axis=None, correction=0.0, keepdims=False",
    "vecdot": "x1, x2, /, *, axis=-1",
    "where": "condition, x1, x2, /",
    "zeros": "shape, *, dtype=None, device=None",
    "zeros_like": "x, /, *, dtype=None, device=None",
    "fft.fft": "x, /, *, n=None, axis=-1, norm='backward'",
    "fft.fftfreq": "n, /, *, d=1.0, dtype=None, device=None",
    "fft.fftn": "x, /, *, s=None, axes=None, norm='backward'",
    "fft.fftshift": "x, /, *, axes=None",
    "fft.hfft": "x, /, *, n=None, axis=-1, norm='backward'",
    "fft.ifft": "x, /, *, n=None, axis=-1, norm='backward'",
    "fft.ifftn": "x, /, *, s=None, axes=None, norm='backward'",
    "fft.ifftshift": "x, /, *, axes=None",
    "fft.ihfft": "x, /, *, n=None, axis=-1, norm='backward'",
    "fft.irfft": "x, /, *, n=None, axis=-1, norm='backward'",
    "fft.irfftn": "x, /, *, s=None, axes=None, norm='backward'",
    "fft.rfft": "x, /, *, n=None, axis=-1, norm='backward'",
    "fft.rfftfreq": "n, /, *, d=1.0, dtype=None, device=None",
    "fft.rfftn": "x, /, *, s=None, axes=None, norm='backward'",
    "info.capabilities": "",
    "info.default_device": "",
    "info.default_dtypes": "*, device=None",
    "info.devices": "",
    "info.dtypes": "*, device=None, kind=None",
    "linalg.cholesky": "x, /, *, upper=False",
    "linalg.cross": "x1, x2, /, *, axis=-1",
    "linalg.det": "x, /",
    "linalg.diagonal": "x, /, *, offset=0",
    "linalg.eigh": "x, /",
    "linalg.eigvalsh": "x, /",
    "linalg.inv": "x, /",
    "linalg.matmul": "x1, x2, /",
    "linalg.matrix_norm": "x, /, *, keepdims=False, ord='fro'",
    "linalg.matrix_power": "x, n, /",
    "linalg.matrix_rank": "x, /, *, rtol=None",
    "linalg.matrix_transpose": "x, /",
    "linalg.outer": "x1, x2, /",
    "linalg.pinv": "x, /, *, rtol=None",
    "linalg.qr": "x, /, *, mode='reduced'",
    "linalg.slogdet": "x, /",
    "linalg.solve": "x1, x2, /",
    "linalg.svd": "x, /, *, full_matrices=True",
    "linalg.svdvals": "x, /",
    "linalg.tensordot": "x1, x2, /, *, axes=2",
    "linalg.trace": "x, /, *, offset=0, dtype=None",
    "linalg.vecdot": "x1, x2, /, *, axis=-1",
    "linalg.vector_norm": "x, /, *, axis=None, keepdims=False, ord=2",
    "array.__abs__": "self, /",
    "array.__add__": "self, other, /",
    "array.__and__": "self, other, /",
    "array.__array_namespace__": "self, /, *, api_version=None",
    "array.__bool__": "self, /",
    "array.__complex__": "self, /",
    "array.__dlpack__": "self, /, *, stream=None, max_version=None, dl_device=None, copy=None",
    "array.__dlpack_device__": "self, /",
    "array.__eq__": "self, other, /",
    "array.__float__": "self, /",
    "array.__floordiv__": "self, other, /",
    "array.__ge__": "self, other, /",
    "array.__getitem__": "self, key, /",
    "array.__gt__": "self, other, /",
    "array.__index__": "self, /",
    "array.__int__": "self, /",
    "array.__invert__": "self, /",
    "array.__le__": "self, other, /",
    "array.__lshift__": "self, other, /",
    "array.__lt__": "self, other, /",
    "array.__matmul__": "self, other, /",
    "array.__mod__": "self, other, /",
    "array.__mul__": "self, other, /",
    "array.__ne__": "self, other, /",
    "array.__neg__": "self, /",
    "array.__or__": "self, other, /",
    "array.__pos__": "self, /",
    "array.__pow__": "self, other, /",
    "array.__rshift__": "self, other, /",
    "array.__setitem__": "self, key, value, /",
    "array.__sub__": "self, other, /",
    "array.__truediv__": "self, other, /",
    "array.__xor__": "self, other, /",
    "array.to_device": "self, device, /, *, stream=None",
}

# What 2023.12 lacks or has differently (checked against its stubs by tests/test_signatures.py).
_NOT_IN_2023_12 = frozenset(
    ["count_nonzero", "cumulative_prod", "diff", "nextafter", "reciprocal", "take_along_axis"]
)
_CHANGED_IN_2024_12 = {
    "fft.fftfreq": "n, /, *, d=1.0, device=None",
    "fft.rfftfreq": "n, /, *, d=1.0, device=None",
}


def parameters(name: str, version: str = "2024.12") -> str:
    """The standard's parameter list of ``name`` (``"sum"``, ``"array.__dlpack__"``) in ``version``.

    Raises ``KeyError`` naming the function and the version when the standard has no
    such function in that version.
    """
    if version not in VERSIONS:
        msg = f"signatures are known for the standard's versions {VERSIONS}, not {version!r}"
        raise ValueError(msg)
    if name not in SIGNATURES or (version == "2023.12" and name in _NOT_IN_2023_12):
        msg = f"{name!r} is not a function of the Array API standard {version}"
        raise KeyError(msg)
    if version == "2023.12":
        return _CHANGED_IN_2024_12.get(name, SIGNATURES[name])
    return SIGNATURES[name]


def standard_signature(name: str, version: str = "2024.12") -> inspect.Signature:
    """The standard's :class:`inspect.Signature` of ``name`` in ``version`` (no annotations)."""
    parameters(name, version)  # the error for an unknown name or version
    return _signatures(version)[name]


def _names(version: str) -> list[str]:
    return [n for n in SIGNATURES if not (version == "2023.12" and n in _NOT_IN_2023_12)]


@functools.cache
def _signatures(version: str) -> dict[str, inspect.Signature]:
    """Every signature of ``version``, from the standard's text (one ``compile`` for all)."""
    names = _names(version)
    source = "\n".join(f"def _{i}({parameters(n, version)}): pass" for i, n in enumerate(names))
    scope: dict[str, Any] = {}
    exec(compile(source, "<the standard's signatures>", "exec"), scope)
    return {n: inspect.signature(scope[f"_{i}"]) for i, n in enumerate(names)}


@functools.cache
def _factories(version: str) -> dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]:
    """For each name, ``make(function)``: the wrapper of :func:`with_signature` around it.

    The wrappers' source is generated from the signatures and compiled once per process,
    all together; making a wrapper is then one call. Every default is a global of its own
    (``_d3_axis``), so "left at its default" is one identity test.
    """
    scope: dict[str, Any] = {}
    chunks = [
        _factory_source(i, name, sig, scope)
        for i, (name, sig) in enumerate(_signatures(version).items())
    ]
    exec(compile("\n".join(chunks), "<agrad's standard signatures>", "exec"), scope)
    return {name: scope[f"_make_{i}"] for i, name in enumerate(_signatures(version))}


def _factory_source(i: int, name: str, sig: inspect.Signature, scope: dict[str, Any]) -> str:
    """``def _make_i(_f)`` returning ``def name(<the signature>)`` that calls ``_f``."""
    head: list[str] = []
    required: list[str] = []  # positional, no default: passed positionally
    optional: list[str] = []  # positional with a default: passed while needed
    star: list[str] = []
    keywords: list[str] = []
    kind_seen = None
    P = inspect.Parameter
    for p in sig.parameters.values():
        if kind_seen is P.POSITIONAL_ONLY and p.kind is not P.POSITIONAL_ONLY:
            head.append("/")
        if p.kind is P.KEYWORD_ONLY and kind_seen not in (P.KEYWORD_ONLY, P.VAR_POSITIONAL):
            head.append("*")
        kind_seen = p.kind
        text = p.name
        if p.default is not P.empty:
            scope[f"_d{i}_{p.name}"] = p.default
            text = f"{p.name}=_d{i}_{p.name}"
        if p.kind is P.VAR_POSITIONAL:
            text = f"*{p.name}"
            star.append(text)
        elif p.kind is P.VAR_KEYWORD:
            text = f"**{p.name}"
        elif p.kind is P.KEYWORD_ONLY:
            keywords.append(p.name)
        elif p.default is P.empty:
            required.append(p.name)
        else:
            optional.append(p.name)
        head.append(text)
    if kind_seen is P.POSITIONAL_ONLY:
        head.append("/")

    def calls(kw: list[str], indent: str) -> list[str]:
        """Return statements: the optional positionals passed up to the last one given."""
        out = []
        for k in range(len(optional), 0, -1):
            args = ", ".join([*required, *optional[:k], *star, *kw])
            out.append(f"{indent}if {optional[k - 1]} is not _d{i}_{optional[k - 1]}:")
            out.append(f"{indent}    return _f({args})")
        out.append(f"{indent}return _f({', '.join([*required, *star, *kw])})")
        return out

    body: list[str] = []
    if keywords:
        body.append("        if " + " and ".join(f"{k} is _d{i}_{k}" for k in keywords) + ":")
        body.extend(calls([], "            "))
        body.append("        kw = {}")
        for k in keywords:
            body.append(f"        if {k} is not _d{i}_{k}:")
            body.append(f"            kw[{k!r}] = {k}")
        body.extend(calls(["**kw"], "        "))
    else:
        body.extend(calls([], "        "))
    ident = _identifier(name)
    return "\n".join(
        [
            f"def _make_{i}(_f):",
            f"    def {ident}({', '.join(head)}):",
            *body,
            f"    return {ident}",
        ]
    )


def _identifier(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def with_signature(
    function: Callable[..., Any], name: str, version: str = "2024.12"
) -> Callable[..., Any]:
    """``function`` behind the standard's exact signature of ``name`` (see the module doc).

    The wrapper keeps ``function``'s docstring and the private attributes the tracing
    namespace reads (``_agrad_raw``, ``_agrad_derived``); ``_agrad_exact`` is ``function``.
    """
    parameters(name, version)  # the error for an unknown name or version
    wrapper = _factories(version)[name](function)
    wrapper.__qualname__ = _identifier(name)
    wrapper.__module__ = getattr(function, "__module__", None) or __name__
    wrapper.__doc__ = function.__doc__
    for attr in ("_agrad_raw", "_agrad_derived"):
        if hasattr(function, attr):
            setattr(wrapper, attr, getattr(function, attr))
    wrapper._agrad_exact = function  # type: ignore[attr-defined]
    return wrapper


def _matches(obj: Any, name: str) -> bool:
    """Whether ``obj``'s signature is already the standard's (names, kinds and defaults)."""
    code = getattr(obj, "__code__", None)
    if code is not None and code.co_flags & inspect.CO_VARKEYWORDS:
        return False  # ``**kwargs``: no function of the standard has them (the quick answer)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    plain = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return list(standard_signature(name).parameters.values()) == plain


#: Array methods left unwrapped on the hot path: Python's operator protocol always calls
#: them with ``(self, other)``, and their function ends in the ``operator`` module's
#: (``operator.add`` ...), which refuses keywords and extra arguments itself; they get
#: the standard's ``__signature__`` only.
_OPERATOR_METHODS = frozenset(
    ["__add__", "__sub__", "__mul__", "__truediv__", "__mod__", "__pow__", "__matmul__"]
)


def apply_signatures(functions: dict[str, Any], traced_cls: type) -> None:
    """Give every standard function of a tracing namespace, and every array method, its signature.

    ``functions`` is the namespace module's globals (its ``linalg`` and ``fft``
    submodules are changed in place); ``traced_cls`` its traced array class. A function
    whose signature is already the standard's is kept as it is; any other is replaced by
    :func:`with_signature` (one wrapper per function object, so aliases such as
    ``linalg.matmul`` stay the same object as ``matmul``).
    """
    memo: dict[int, Any] = {}

    def exact(obj: Any, name: str) -> Any:
        if not callable(obj) or isinstance(obj, type):
            return obj
        if id(obj) not in memo:
            memo[id(obj)] = obj if _matches(obj, name) else with_signature(obj, name)
        return memo[id(obj)]

    for name in SIGNATURES:
        prefix, _, short = name.rpartition(".")
        if prefix == "array":
            _apply_method(traced_cls, short)
        elif prefix == "":
            if name in functions:
                functions[name] = exact(functions[name], name)
        elif prefix in functions:  # linalg, fft; ``info`` is the base's own object
            module = functions[prefix]
            if hasattr(module, short):
                setattr(module, short, exact(getattr(module, short), name))


def _apply_method(traced_cls: type, method: str) -> None:
    obj = getattr(traced_cls, method, None)
    name = f"array.{method}"
    if obj is None or _matches(obj, name):
        return
    if method in _OPERATOR_METHODS:
        obj.__signature__ = standard_signature(name)
        return
    wrapper = with_signature(obj, name)
    wrapper.__qualname__ = f"{traced_cls.__name__}.{method}"
    setattr(traced_cls, method, wrapper)
