"""Every function of the tracing namespace, with a traced argument in every position.

Each function of the standard (and of ``linalg`` and ``fft``) has an example call below.
Every floating argument of it, arrays and Python scalars alike (a scalar becomes a
traced 0-d array), positional or keyword, is traced in turn, and the gradient of a
weighted sum of the floating outputs is checked against central finite differences of
the base library's own function, or the call must raise one of the errors listed in
``RAISES`` with a message naming what is wrong. A silent zero (the gradient of
``linspace(x, 2x, 5)`` used to be 0) fails here. Functions with no floating output
must return traced constants equal to the base's result. Checked on NumPy and
array-api-strict, float64.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import pytest

import agrad
import agrad.array_api_strict
import agrad.numpy
from agrad.autograd.tape.standard import FFT_FUNCTIONS, FUNCTIONS, LINALG_FUNCTIONS
from agrad.autograd.tape.traced import CONSTANT, TracedArray, strip


class A:
    """An example float64 array of ``shape``; ``kind`` picks the values' domain."""

    def __init__(self, *shape: int, kind: str = "n", as_complex: bool = False):
        self.shape, self.kind, self.as_complex = shape, kind, as_complex

    def make(self, rng: np.random.Generator) -> np.ndarray:
        x = self._make(rng)
        return x + 0j if self.as_complex else x

    def _make(self, rng: np.random.Generator) -> np.ndarray:
        n = self.shape
        if self.kind == "n":
            return rng.standard_normal(n)
        if self.kind == "p":  # positive
            return rng.uniform(0.5, 2.0, n)
        if self.kind == "u":  # inside (-1, 1)
            return rng.uniform(-0.8, 0.8, n)
        if self.kind == "g":  # above 1
            return rng.uniform(1.5, 3.0, n)
        if self.kind == "spd":
            a = rng.standard_normal(n)
            return a @ a.T + n[-1] * np.eye(n[-1])
        if self.kind == "sorted":
            return np.sort(rng.standard_normal(n))
        raise ValueError(self.kind)


class Const:
    """A non-floating example argument (ints, bools): given as an array, never traced."""

    def __init__(self, value: Any, dtype: str):
        self.value, self.dtype = value, dtype


def I(*values: int) -> Const:  # noqa: E743
    return Const(list(values), "int64")


def B(*values: bool) -> Const:
    return Const(list(values), "bool")


# name -> list of (args, kwargs); floats and A(...) are traced in turn.
CALLS: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {}


def call(name: str, *args: Any, **kwargs: Any) -> None:
    CALLS.setdefault(name, []).append((args, kwargs))


for _n in ["abs", "atan", "asinh", "cos", "cosh", "exp", "expm1", "negative", "positive"]:
    call(_n, A(4))
for _n in ["sin", "sinh", "square", "tanh", "ceil", "floor", "round", "trunc", "sign"]:
    call(_n, A(4))
for _n in ["signbit", "isnan", "isinf", "isfinite", "conj", "real"]:
    call(_n, A(4))
call("imag", A(4, as_complex=True))
for _n in ["acos", "asin", "atanh", "tan"]:
    call(_n, A(4, kind="u"))
for _n in ["log", "log1p", "log2", "log10", "sqrt", "reciprocal"]:
    call(_n, A(4, kind="p"))
call("acosh", A(4, kind="g"))
for _n in ["add", "subtract", "multiply", "maximum", "minimum", "atan2", "hypot"]:
    call(_n, A(2, 3), A(3))
    call(_n, A(3), 0.7)
for _n in ["logaddexp", "copysign", "nextafter"]:
    call(_n, A(2, 3), A(3))
call("copysign", A(3), 0.7)
call("divide", A(2, 3), A(3, kind="p"))
call("divide", A(3), 0.7)
call("divide", 0.7, A(3, kind="p"))
call("pow", A(3, kind="p"), A(3))
call("pow", A(3, kind="p"), 2.5)
call("pow", 1.5, A(3))
call("remainder", A(3, kind="p"), A(3, kind="g"))
call("floor_divide", A(3, kind="p"), A(3, kind="g"))
for _n in ["equal", "not_equal", "less", "less_equal", "greater", "greater_equal"]:
    call(_n, A(3), A(3))
    call(_n, A(3), 0.1)
for _n in ["logical_and", "logical_or", "logical_xor"]:
    call(_n, B(True, False, True), B(False, False, True))
call("logical_not", B(True, False))
for _n in ["bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_left_shift"]:
    call(_n, I(1, 2, 3), I(1, 1, 2))
call("bitwise_right_shift", I(4, 8), I(1, 2))
call("bitwise_invert", I(1, 2))
call("clip", A(6), -0.3, 0.4)
call("clip", A(6), min=A(6), max=A(6, kind="g"))
call("clip", A(6), max=0.2)
call("where", B(True, False, True), A(3), A(3))
call("where", B(True, False, True), A(3), 0.5)
call("where", B(True, False, True), -0.5, A(3))
# reductions and statistics
for _n in ["sum", "prod", "mean", "max", "min", "cumulative_sum", "cumulative_prod"]:
    call(_n, A(2, 3), axis=1)
call("sum", A(2, 3))
call("var", A(2, 3), axis=0, correction=0.5)
call("std", A(5), correction=1.5)
call("var", A(5))
for _n in ["argmax", "argmin", "all", "any", "count_nonzero"]:
    call(_n, A(2, 3), axis=1)
call("diff", A(5))
call("diff", A(2, 3), axis=1, prepend=A(2, 1), append=A(2, 2))
# manipulation
call("reshape", A(2, 3), (3, 2))
call("permute_dims", A(2, 3), (1, 0))
call("matrix_transpose", A(2, 3))
call("expand_dims", A(3), axis=0)
call("squeeze", A(1, 3), axis=0)
call("flip", A(2, 3), axis=1)
call("roll", A(5), 2)
call("moveaxis", A(2, 3, 1), 0, 2)
call("broadcast_to", A(3), (2, 3))
call("broadcast_arrays", A(3), A(2, 1))
call("concat", [A(2), A(3)])
call("stack", [A(2), A(2)], axis=1)
call("unstack", A(2, 3), axis=1)
call("tile", A(2), (3,))
call("repeat", A(3), 2)
call("repeat", A(3), I(1, 0, 2))
call("tril", A(3, 3), k=-1)
call("triu", A(3, 3))
call("take", A(4), I(3, 0, 0))
call("take_along_axis", A(2, 3), Const([[2, 0], [1, 1]], "int64"), axis=1)
call("sort", A(5))
call("argsort", A(5))
call("searchsorted", A(5, kind="sorted"), A(3))
call("nonzero", A(4))
call("unique_values", A(4))
call("unique_counts", A(4))
call("unique_inverse", A(4))
call("unique_all", A(4))
call("meshgrid", A(2), A(3))
call("matmul", A(2, 3), A(3, 2))
call("tensordot", A(2, 3), A(3, 2), axes=1)
call("vecdot", A(2, 3), A(3))
call("astype", A(3), "complex128")
call("astype", A(3), "int64")
call("asarray", A(3))
call("from_dlpack", A(3))
# creation
call("linspace", 0.5, 2.0, 5)
call("linspace", 0.5, 2.0, 4, endpoint=False)
call("arange", 0.5, 3.05, 0.5)
call("arange", 2.5)
call("full", (2, 3), 1.5)
call("full_like", A(2, 3), 1.5)
call("zeros_like", A(3))
call("ones_like", A(3))
call("empty_like", A(3))
call("zeros", (2,))
call("ones", (2,))
call("empty", (2,))
call("eye", 3, k=1)
# dtype queries: arrays in, no arrays out
call("result_type", A(3), A(2))
call("can_cast", A(3), "float32")
call("isdtype", "float64", "real floating")
call("finfo", A(3))
call("iinfo", I(1))
call("__array_namespace_info__")
# linalg
call("linalg.cholesky", A(3, 3, kind="spd"))
call("linalg.cross", A(2, 3), A(3))
call("linalg.det", A(3, 3))
call("linalg.diagonal", A(3, 4), offset=1)
call("linalg.eigh", A(3, 3, kind="spd"))
call("linalg.eigvalsh", A(3, 3, kind="spd"))
call("linalg.inv", A(3, 3, kind="spd"))
call("linalg.matmul", A(2, 3), A(3))
call("linalg.matrix_norm", A(3, 2))
call("linalg.matrix_norm", A(3, 2), ord=1)
call("linalg.matrix_power", A(3, 3), 3)
call("linalg.matrix_rank", A(3, 3))
call("linalg.matrix_transpose", A(2, 3))
call("linalg.outer", A(2), A(3))
call("linalg.pinv", A(3, 2))
call("linalg.pinv", A(3, 2), rtol=0.01)
call("linalg.qr", A(3, 2))
call("linalg.slogdet", A(3, 3, kind="spd"))
call("linalg.solve", A(3, 3, kind="spd"), A(3, 2))
call("linalg.svd", A(3, 2), full_matrices=False)
call("linalg.svdvals", A(3, 2))
call("linalg.tensordot", A(2, 3), A(3), axes=1)
call("linalg.trace", A(3, 3))
call("linalg.vecdot", A(3), A(3))
call("linalg.vector_norm", A(4))
call("linalg.vector_norm", A(4), ord=3.0)
call("linalg.vector_norm", A(2, 3), ord=1, axis=1)
# fft
for _n in ["rfft", "ihfft", "fftshift", "ifftshift"]:
    call(f"fft.{_n}", A(4))
for _n in ["fft", "ifft"]:
    call(f"fft.{_n}", A(4, as_complex=True))
for _n in ["fftn", "ifftn"]:
    call(f"fft.{_n}", A(2, 4, as_complex=True))
call("fft.rfftn", A(2, 4))
call("fft.irfft", A(3, as_complex=True), n=4)
call("fft.hfft", A(3, as_complex=True), n=4)
call("fft.irfftn", A(2, 3, as_complex=True), s=(2, 4), axes=(0, 1))
call("fft.fftfreq", 5, d=0.5)
call("fft.rfftfreq", 5, d=0.5)

# (name, position) -> why the call raises instead of differentiating.
RAISES = {
    ("linalg.vector_norm", "ord"): "ord is a keyword: a traced one is refused",
}

#: What cannot take an example call here, and why.
NOT_CALLED: dict[str, str] = {}


def _namespaces(backend: str):
    if backend == "numpy":
        import array_api_compat.numpy as base

        return agrad.numpy, base
    import array_api_strict as base

    return agrad.array_api_strict, base


def _function(ns, name):
    obj = ns
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _positions(args, kwargs):
    """Paths of the floating arguments: ``(i,)``, ``(i, j)`` in a list, or a keyword."""
    out = []
    for i, a in enumerate(args):
        if isinstance(a, (A, float)):
            out.append((i,))
        elif isinstance(a, list):
            out.extend((i, j) for j, b in enumerate(a) if isinstance(b, (A, float)))
    out.extend((k,) for k, v in kwargs.items() if isinstance(v, (A, float)))
    return out


def _materialize(base, rng, args, kwargs):
    """NumPy data for every ``A``; ``Const`` as base arrays; dtype names as dtypes."""

    def one(a):
        if isinstance(a, A):
            return a.make(rng)
        if isinstance(a, Const):
            return base.asarray(a.value, dtype=getattr(base, a.dtype))
        if isinstance(a, list):
            return [one(b) for b in a]
        if isinstance(a, str) and hasattr(base, a):
            return getattr(base, a)
        return a

    return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}


def _get(args, kwargs, path):
    if isinstance(path[0], str):
        return kwargs[path[0]]
    v = args[path[0]]
    return v[path[1]] if len(path) == 2 else v


def _with(args, kwargs, path, value):
    args, kwargs = list(args), dict(kwargs)
    if isinstance(path[0], str):
        kwargs[path[0]] = value
    elif len(path) == 2:
        seq = list(args[path[0]])
        seq[path[1]] = value
        args[path[0]] = seq
    else:
        args[path[0]] = value
    return args, kwargs


def _to_base(base, a):
    if isinstance(a, np.ndarray):
        return base.asarray(a)
    if isinstance(a, list):
        return [_to_base(base, b) for b in a]
    if isinstance(a, dict):
        return {k: _to_base(base, v) for k, v in a.items()}
    return a


def _outputs(out):
    if isinstance(out, (tuple, list)):
        return [o for x in out for o in _outputs(x)]
    return [out] if hasattr(out, "dtype") and hasattr(out, "shape") else []


def _kind(x) -> str:
    s = str(x.dtype)
    return "complex" if "complex" in s else "float" if "float" in s else "other"


def _weights(n: int, k: int) -> np.ndarray:
    return np.linspace(0.5, 1.5 + k, n)


def _loss_value(outs) -> float:
    """The weighted sum of the floating outputs, in NumPy (for the finite differences)."""
    total = 0.0
    k = 0
    for o in outs:
        v = np.asarray(strip(o))
        if _kind(v) == "other":
            continue
        parts = [v.real, v.imag] if _kind(v) == "complex" else [v]
        for p in parts:
            total += float(np.sum(_weights(p.size, k) * p.reshape(-1)))
            k += 1
    return total


def _loss_traced(xp, outs):
    total = None
    k = 0
    for o in outs:
        if _kind(o) == "other":
            continue
        parts = [xp.real(o), xp.imag(o)] if _kind(o) == "complex" else [o]
        for p in parts:
            w = xp.asarray(np.reshape(_weights(math.prod(p.shape), k), p.shape))
            term = xp.sum(w * p)
            total = term if total is None else total + term
            k += 1
    return total


def _fd(f, x, eps=1e-6):
    """Central differences of the scalar ``f`` at the float or float64 array ``x``."""
    if isinstance(x, float):
        return (f(x + eps) - f(x - eps)) / (2 * eps)
    g = np.zeros_like(x)
    for i in np.ndindex(*x.shape):
        hi, lo = x.copy(), x.copy()
        hi[i] += eps
        lo[i] -= eps
        g[i] = (f(hi) - f(lo)) / (2 * eps)
    return g


def _fd_symmetric(f, x, eps=1e-6):
    """Central differences of ``f`` along ``(E_ij + E_ji) / 2`` for each ``(i, j)``."""
    g = np.zeros_like(x)
    for i, j in np.ndindex(*x.shape):
        d = np.zeros_like(x)
        d[i, j] += 0.5
        d[j, i] += 0.5
        g[i, j] = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
    return g


PARAMS = [
    pytest.param(backend, name, k, id=f"{backend}-{name}-{k}")
    for backend in ("numpy", "array_api_strict")
    for name, calls in CALLS.items()
    for k in range(len(calls))
]


def test_every_function_of_the_namespace_has_an_example_call():
    names = {n for n in FUNCTIONS}
    names |= {f"linalg.{n}" for n in LINALG_FUNCTIONS} | {f"fft.{n}" for n in FFT_FUNCTIONS}
    assert names - set(CALLS) - set(NOT_CALLED) == set()


@pytest.mark.parametrize(("backend", "name", "k"), PARAMS)
def test_traced_in_every_position(backend, name, k):
    ns, base = _namespaces(backend)
    fn, raw_fn = _function(ns, name), _function(base, name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    args, kwargs = _materialize(base, rng, *CALLS[name][k])
    positions = _positions(*CALLS[name][k])
    base_args, base_kwargs = _to_base(base, args), _to_base(base, kwargs)
    expected = raw_fn(*base_args, **base_kwargs)
    floating = any(_kind(o) != "other" for o in _outputs(expected))

    for path in positions:
        spec = _get(*CALLS[name][k], path)
        as_complex = isinstance(spec, A) and spec.as_complex
        x0 = _get(args, kwargs, path)
        x0 = x0.real.copy() if as_complex else x0
        key = (name, path[0] if isinstance(path[0], str) else path)
        leaf = base.asarray(x0, dtype=base.float64)

        def traced_loss(t, path=path, as_complex=as_complex):
            if as_complex:
                t = agrad.array_namespace(t).astype(t, base.complex128)
            a, kw = _with(base_args, base_kwargs, path, t)
            out = _outputs(fn(*a, **kw))
            if not floating:
                for o, e in zip(out, _outputs(expected)):
                    assert isinstance(o, TracedArray) and o._node is CONSTANT, (name, path)
                    np.testing.assert_array_equal(np.asarray(strip(o)), np.asarray(e))
                return agrad.array_namespace(t).sum(t) * 0.0
            return _loss_traced(agrad.array_namespace(t), out)

        if (name, str(path[0])) in {(n, str(p)) for n, p in RAISES}:
            with pytest.raises((TypeError, ValueError, NotImplementedError), match=r"\w"):
                agrad.grad(traced_loss)(leaf)
            continue
        got = np.asarray(agrad.grad(traced_loss)(leaf))
        if not floating:
            continue

        def value(x, path=path, as_complex=as_complex):
            x = x + 0j if as_complex else x
            xb = base.asarray(x) if isinstance(x, np.ndarray) else x
            a, kw = _with(base_args, base_kwargs, path, xb)
            return _loss_value(_outputs(raw_fn(*a, **kw)))

        if isinstance(spec, A) and spec.kind == "spd":
            # a symmetric input (only its lower triangle may be read): compare the
            # derivatives along symmetric directions (E_ij + E_ji) / 2
            want = _fd_symmetric(value, x0)
            got = (got + np.swapaxes(got, -1, -2)) / 2
        else:
            want = _fd(value, x0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{key}")
