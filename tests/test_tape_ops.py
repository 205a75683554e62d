"""Every differentiable function of the standard: agrad's tape against torch.autograd.

Each case is a function written once against the standard (run on agrad's tracing
namespaces and on ``array_api_compat.torch`` for the reference) with its input shapes.
Checked on numpy, Dask (float64; minus what Dask's namespace cannot compute) and on
array_api_strict with api_version 2024.12, 2023.12 and on ``Device("device1")``: the value and the gradient of a weighted loss against torch
(float64 reference; rtol 1e-9 in float64, 2e-3 in float32), and ``check_grads``
(central finite differences in random directions, first and second order, float64).
Complex leaves are compared with torch's complex gradients.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import agrad
from agrad.testing import check_grads, to_numpy

BACKENDS = ["numpy", "array_api_strict"]


def _spd(xp, a):
    """A well-conditioned symmetric positive-definite matrix from any square ``a``."""
    n = a.shape[-1]
    eye = xp.eye(n, dtype=a.dtype, device=a.device)
    return xp.matmul(a, xp.matrix_transpose(a)) + eye * float(n)


def _sym(xp, a):
    return (a + xp.matrix_transpose(a)) * 0.5


def _complex(xp, x, y):
    dt = xp.complex128 if x.dtype == xp.float64 else xp.complex64
    return xp.astype(x, dt) + xp.astype(y, dt) * 1j


def _idx(xp, like, values):
    """An index array on ``like``'s device."""
    return xp.asarray(values, device=like.device)


def _pos(xp, a):
    return a * a + 0.5


def _unit(xp, a):
    return xp.tanh(a) * 0.9


# name -> (function of (xp, *arrays) returning an array or a tuple, input shapes)
CASES = {
    # elementwise, one argument
    "abs": (lambda xp, a: xp.abs(a), [(5,)]),
    "acos": (lambda xp, a: xp.acos(_unit(xp, a)), [(5,)]),
    "acosh": (lambda xp, a: xp.acosh(_pos(xp, a) + 1.0), [(5,)]),
    "asin": (lambda xp, a: xp.asin(_unit(xp, a)), [(5,)]),
    "asinh": (lambda xp, a: xp.asinh(a), [(5,)]),
    "atan": (lambda xp, a: xp.atan(a), [(5,)]),
    "atanh": (lambda xp, a: xp.atanh(_unit(xp, a)), [(5,)]),
    "cos": (lambda xp, a: xp.cos(a), [(5,)]),
    "cosh": (lambda xp, a: xp.cosh(a), [(5,)]),
    "exp": (lambda xp, a: xp.exp(a), [(5,)]),
    "expm1": (lambda xp, a: xp.expm1(a), [(5,)]),
    "log": (lambda xp, a: xp.log(_pos(xp, a)), [(5,)]),
    "log1p": (lambda xp, a: xp.log1p(_pos(xp, a)), [(5,)]),
    "log2": (lambda xp, a: xp.log2(_pos(xp, a)), [(5,)]),
    "log10": (lambda xp, a: xp.log10(_pos(xp, a)), [(5,)]),
    "negative": (lambda xp, a: -a, [(5,)]),
    "positive": (lambda xp, a: +a, [(5,)]),
    "reciprocal": (lambda xp, a: xp.reciprocal(_pos(xp, a)), [(5,)]),
    "sin": (lambda xp, a: xp.sin(a), [(5,)]),
    "sinh": (lambda xp, a: xp.sinh(a), [(5,)]),
    "sqrt": (lambda xp, a: xp.sqrt(_pos(xp, a)), [(5,)]),
    "square": (lambda xp, a: xp.square(a), [(5,)]),
    "tan": (lambda xp, a: xp.tan(_unit(xp, a)), [(5,)]),
    "tanh": (lambda xp, a: xp.tanh(a), [(5,)]),
    # elementwise, two arguments (with broadcasting)
    "add": (lambda xp, a, b: a + b, [(3, 4), (4,)]),
    "subtract": (lambda xp, a, b: xp.subtract(a, b), [(3, 4), (3, 1)]),
    "multiply": (lambda xp, a, b: a * b, [(2, 3), (2, 3)]),
    "divide": (lambda xp, a, b: a / _pos(xp, b), [(2, 3), (3,)]),
    "pow_both": (lambda xp, a, b: xp.pow(_pos(xp, a), b), [(4,), (4,)]),
    "pow_scalar_exponent": (lambda xp, a: a**3.0, [(4,)]),
    "pow_scalar_base": (lambda xp, a: 2.0**a, [(4,)]),
    "atan2": (lambda xp, a, b: xp.atan2(a, b), [(2, 3), (3,)]),
    "hypot": (lambda xp, a, b: xp.hypot(a, b), [(2, 3), (2, 3)]),
    "logaddexp": (lambda xp, a, b: xp.logaddexp(a, b), [(2, 3), (3,)]),
    "copysign": (lambda xp, a, b: xp.copysign(a, b), [(6,), (6,)]),
    "maximum": (lambda xp, a, b: xp.maximum(a, b), [(3, 4), (4,)]),
    "minimum": (lambda xp, a, b: xp.minimum(a, b), [(3, 4), (4,)]),
    "remainder": (lambda xp, a, b: xp.remainder(a, _pos(xp, b) + 1.0), [(6,), (6,)]),
    "clip_scalars": (lambda xp, a: xp.clip(a, min=-0.5, max=0.7), [(8,)]),
    "clip_arrays": (lambda xp, a, lo, hi: xp.clip(a, min=lo - 1.0, max=hi + 1.0), [(8,)] * 3),
    "where": (lambda xp, a, b: xp.where(a > 0, a, b * 2.0), [(3, 4), (3, 4)]),
    # reductions
    "sum": (lambda xp, a: xp.sum(a, axis=1), [(3, 4)]),
    "sum_keepdims": (lambda xp, a: xp.sum(a, axis=(0, 2), keepdims=True), [(2, 3, 4)]),
    "prod": (lambda xp, a: xp.prod(a, axis=0), [(3, 4)]),
    "prod_all": (lambda xp, a: xp.prod(a), [(2, 3)]),
    "mean": (lambda xp, a: xp.mean(a, axis=0), [(3, 4)]),
    "var": (lambda xp, a: xp.var(a, axis=1), [(3, 4)]),
    "var_correction": (lambda xp, a: xp.var(a, axis=0, correction=1, keepdims=True), [(4, 3)]),
    "std": (lambda xp, a: xp.std(a, correction=1.0), [(3, 4)]),
    "max": (lambda xp, a: xp.max(a, axis=1), [(3, 4)]),
    "min": (lambda xp, a: xp.min(a), [(3, 4)]),
    "cumulative_sum": (lambda xp, a: xp.cumulative_sum(a, axis=1), [(3, 4)]),
    "cumulative_sum_initial": (
        lambda xp, a: xp.cumulative_sum(a, axis=0, include_initial=True),
        [(3, 2)],
    ),
    "cumulative_prod": (lambda xp, a: xp.cumulative_prod(a, axis=1), [(3, 4)]),
    "logsumexp": (
        lambda xp, a: (
            xp.log(xp.sum(xp.exp(a - xp.max(a, axis=-1, keepdims=True)), axis=-1))
            + xp.max(a, axis=-1)
        ),
        [(3, 5)],
    ),
    # manipulation
    "reshape": (lambda xp, a: xp.reshape(a, (4, 3)), [(3, 4)]),
    "permute_dims": (lambda xp, a: xp.permute_dims(a, (2, 0, 1)), [(2, 3, 4)]),
    "matrix_transpose": (lambda xp, a: a.mT, [(2, 3, 4)]),
    "T": (lambda xp, a: a.T, [(2, 3)]),
    "expand_dims": (lambda xp, a: xp.expand_dims(a, axis=1), [(3, 4)]),
    "squeeze": (lambda xp, a: xp.squeeze(a, axis=1), [(3, 1, 4)]),
    "broadcast_to": (lambda xp, a: xp.broadcast_to(a, (2, 3, 4)), [(3, 1)]),
    "broadcast_arrays": (lambda xp, a, b: tuple(xp.broadcast_arrays(a, b)), [(3, 1), (4,)]),
    "concat": (lambda xp, a, b: xp.concat([a, b], axis=1), [(2, 3), (2, 2)]),
    "stack": (lambda xp, a, b: xp.stack([a, b], axis=1), [(2, 3), (2, 3)]),
    "flip": (lambda xp, a: xp.flip(a, axis=0), [(3, 4)]),
    "roll": (lambda xp, a: xp.roll(a, 2, axis=1), [(3, 4)]),
    "roll_flat": (lambda xp, a: xp.roll(a, -1), [(3, 4)]),
    "moveaxis": (lambda xp, a: xp.moveaxis(a, 0, -1), [(2, 3, 4)]),
    "repeat": (lambda xp, a: xp.repeat(a, 2, axis=1), [(3, 4)]),
    "tile": (lambda xp, a: xp.tile(a, (2, 1, 3)), [(3, 2)]),
    "unstack": (lambda xp, a: tuple(xp.unstack(a, axis=1)), [(3, 2)]),
    "tril": (lambda xp, a: xp.tril(a, k=-1), [(4, 4)]),
    "triu": (lambda xp, a: xp.triu(a, k=1), [(3, 4)]),
    "diff": (lambda xp, a: xp.diff(a, axis=0), [(4, 3)]),
    "meshgrid": (lambda xp, a, b: tuple(xp.meshgrid(a, b)), [(3,), (4,)]),
    # searching, sorting, indexing
    "sort": (lambda xp, a: xp.sort(a, axis=1), [(3, 5)]),
    "sort_descending": (lambda xp, a: xp.sort(a, axis=0, descending=True), [(4, 2)]),
    "take": (
        lambda xp, a: xp.take(a, _idx(xp, a, [0, 2, 2, 1, 0]), axis=1),
        [(3, 4)],
    ),
    "take_along_axis": (
        lambda xp, a: xp.take_along_axis(a, xp.argsort(-a, axis=1)[:, :2], axis=1),
        [(3, 4)],
    ),
    "getitem_basic": (lambda xp, a: a[1:, ::2], [(3, 4)]),
    "getitem_newaxis": (lambda xp, a: a[..., None, 0], [(3, 4)]),
    "getitem_mask": (lambda xp, a: a[a > 0], [(3, 4)]),
    "getitem_int_arrays": (
        lambda xp, a: a[_idx(xp, a, [0, 2, 0, 0]), _idx(xp, a, [1, 3, 1, 2])],
        [(3, 4)],
    ),
    "getitem_int_array_repeats": (lambda xp, a: a[_idx(xp, a, [2, 0, 2, 2])], [(3,)]),
    # linear algebra in the main namespace
    "matmul": (lambda xp, a, b: a @ b, [(3, 4), (4, 5)]),
    "matmul_batched": (lambda xp, a, b: xp.matmul(a, b), [(2, 3, 4), (4, 5)]),
    "matmul_vec": (lambda xp, a, b: xp.matmul(a, b), [(4,), (2, 4, 3)]),
    "vecdot": (lambda xp, a, b: xp.vecdot(a, b), [(3, 4), (4,)]),
    "tensordot": (
        lambda xp, a, b: xp.tensordot(a, b, axes=([1, 0], [0, 2])),
        [(3, 2, 4), (2, 5, 3)],
    ),
    # linalg extension
    "inv": (lambda xp, a: xp.linalg.inv(_spd(xp, a)), [(3, 3)]),
    "solve": (lambda xp, a, b: xp.linalg.solve(_spd(xp, a), b), [(3, 3), (3, 2)]),
    "solve_batched": (lambda xp, a, b: xp.linalg.solve(_spd(xp, a), b), [(2, 3, 3), (2, 3, 1)]),
    "det": (lambda xp, a: xp.linalg.det(a), [(3, 3)]),
    "slogdet": (lambda xp, a: xp.linalg.slogdet(a)[1], [(2, 3, 3)]),
    "cholesky": (lambda xp, a: xp.linalg.cholesky(_spd(xp, a)), [(3, 3)]),
    "cholesky_upper": (lambda xp, a: xp.linalg.cholesky(_spd(xp, a), upper=True), [(3, 3)]),
    "eigh": (
        lambda xp, a: (lambda r: (r[0], r[1] * r[1]))(xp.linalg.eigh(_sym(xp, a))),
        [(4, 4)],
    ),
    "eigvalsh": (lambda xp, a: xp.linalg.eigvalsh(_sym(xp, a)), [(3, 3)]),
    "svd_tall": (
        lambda xp, a: (lambda r: (r[0] * r[0], r[1], r[2] * r[2]))(
            xp.linalg.svd(a, full_matrices=False)
        ),
        [(4, 3)],
    ),
    "svd_wide": (
        lambda xp, a: (lambda r: (r[0] * r[0], r[1], r[2] * r[2]))(
            xp.linalg.svd(a, full_matrices=False)
        ),
        [(2, 4)],
    ),
    "svdvals": (lambda xp, a: xp.linalg.svdvals(a), [(3, 4)]),
    "qr_tall": (lambda xp, a: (lambda r: (r[0] * r[0], r[1] * r[1]))(xp.linalg.qr(a)), [(4, 3)]),
    "qr_wide": (lambda xp, a: (lambda r: (r[0] * r[0], r[1] * r[1]))(xp.linalg.qr(a)), [(3, 5)]),
    "matrix_norm_fro": (lambda xp, a: xp.linalg.matrix_norm(a), [(3, 4)]),
    "matrix_norm_nuc": (lambda xp, a: xp.linalg.matrix_norm(a, ord="nuc"), [(3, 4)]),
    "matrix_norm_2": (lambda xp, a: xp.linalg.matrix_norm(a, ord=2, keepdims=True), [(3, 4)]),
    "matrix_norm_1": (lambda xp, a: xp.linalg.matrix_norm(a, ord=1), [(3, 4)]),
    "matrix_norm_inf": (lambda xp, a: xp.linalg.matrix_norm(a, ord=math.inf), [(3, 4)]),
    "vector_norm": (lambda xp, a: xp.linalg.vector_norm(a, axis=1), [(3, 4)]),
    "vector_norm_3": (lambda xp, a: xp.linalg.vector_norm(a, ord=3), [(3, 4)]),
    "vector_norm_1": (lambda xp, a: xp.linalg.vector_norm(a, ord=1, axis=0), [(3, 4)]),
    "vector_norm_inf": (
        lambda xp, a: xp.linalg.vector_norm(a, ord=math.inf, axis=(0, 1), keepdims=True),
        [(3, 4)],
    ),
    "pinv": (lambda xp, a: xp.linalg.pinv(a), [(4, 3)]),
    "matrix_power": (lambda xp, a: xp.linalg.matrix_power(a * 0.5, 3), [(3, 3)]),
    "trace": (lambda xp, a: xp.linalg.trace(a, offset=1), [(2, 3, 4)]),
    "diagonal": (lambda xp, a: xp.linalg.diagonal(a, offset=-1), [(2, 4, 3)]),
    "outer": (lambda xp, a, b: xp.linalg.outer(a, b), [(3,), (4,)]),
    "cross": (lambda xp, a, b: xp.linalg.cross(a, b), [(2, 3), (3,)]),
    # fft extension (real views of complex results)
    "fft": (lambda xp, a, b: xp.fft.fft(_complex(xp, a, b), axis=0), [(4, 3), (4, 3)]),
    "fft_n": (lambda xp, a, b: xp.fft.fft(_complex(xp, a, b), n=6), [(2, 4), (2, 4)]),
    "ifft": (lambda xp, a, b: xp.fft.ifft(_complex(xp, a, b), n=3, norm="ortho"), [(5,), (5,)]),
    "fftn": (lambda xp, a, b: xp.fft.fftn(_complex(xp, a, b)), [(3, 4), (3, 4)]),
    "ifftn": (
        lambda xp, a, b: xp.fft.ifftn(_complex(xp, a, b), s=(2, 5), axes=(0, 1), norm="forward"),
        [(3, 4), (3, 4)],
    ),
    "rfft": (lambda xp, a: xp.fft.rfft(a), [(2, 6)]),
    "rfft_n": (lambda xp, a: xp.fft.rfft(a, n=5, norm="ortho"), [(7,)]),
    "irfft": (lambda xp, a, b: xp.fft.irfft(_complex(xp, a, b)), [(4,), (4,)]),
    "irfft_odd": (lambda xp, a, b: xp.fft.irfft(_complex(xp, a, b), n=7), [(3, 4), (3, 4)]),
    "rfftn": (lambda xp, a: xp.fft.rfftn(a), [(3, 4)]),
    "irfftn": (
        lambda xp, a, b: xp.fft.irfftn(_complex(xp, a, b), s=(3, 4), axes=(0, 1)),
        [(3, 3), (3, 3)],
    ),
    "hfft": (lambda xp, a, b: xp.fft.hfft(_complex(xp, a, b)), [(4,), (4,)]),
    "ihfft": (lambda xp, a: xp.fft.ihfft(a), [(6,)]),
    "fftshift": (lambda xp, a: xp.fft.fftshift(a), [(3, 4)]),
    "ifftshift": (lambda xp, a: xp.fft.ifftshift(a, axes=1), [(3, 5)]),
    # complex elementwise through real inputs
    "complex_mul_abs": (
        lambda xp, a, b: xp.abs(_complex(xp, a, b) * _complex(xp, b, a)),
        [(4,), (4,)],
    ),
    "complex_exp_log": (
        lambda xp, a, b: xp.log(xp.exp(_complex(xp, a, b)) + 2.0),
        [(4,), (4,)],
    ),
    "complex_div_sqrt": (
        lambda xp, a, b: xp.sqrt(_complex(xp, a, b) / (_complex(xp, b, a) + 3.0)),
        [(4,), (4,)],
    ),
    "complex_trig": (
        lambda xp, a, b: xp.sin(_complex(xp, a, b)) * xp.cosh(_complex(xp, b, a)),
        [(4,), (4,)],
    ),
    "complex_conj_real_imag": (
        lambda xp, a, b: (
            xp.real(xp.conj(_complex(xp, a, b)) * _complex(xp, b, a))
            + xp.imag(_complex(xp, a, b) ** 2.0)
        ),
        [(4,), (4,)],
    ),
    "complex_matmul": (
        lambda xp, a, b: xp.matmul(_complex(xp, a, b), _complex(xp, b, a)),
        [(3, 3), (3, 3)],
    ),
    "complex_sum_mean": (
        lambda xp, a, b: xp.mean(_complex(xp, a, b), axis=0) * xp.sum(_complex(xp, b, a)),
        [(3, 2), (3, 2)],
    ),
    "complex_inv_det": (
        lambda xp, a, b: xp.linalg.det(xp.linalg.inv(_complex(xp, _spd(xp, a), b))),
        [(3, 3), (3, 3)],
    ),
    "complex_vector_norm": (
        lambda xp, a, b: xp.linalg.vector_norm(_complex(xp, a, b), axis=1),
        [(2, 3), (2, 3)],
    ),
}

# Cases whose inputs need special values (ties, zeros).
SPECIAL_DATA = {
    "prod": lambda rng: [
        np.array([[1.5, 0.0, 2.0, -1.0], [0.5, 0.0, 0.0, 3.0], [2.0, 1.0, 1.0, -2.0]])
    ],
    "prod_all": lambda rng: [np.array([[1.5, 0.0, 2.0], [0.5, -1.0, 3.0]])],
    "cumulative_prod": lambda rng: [
        np.array([[1.5, 0.0, 2.0, -1.0], [0.5, 1.2, 0.7, 3.0], [2.0, 0.0, 0.0, -2.0]])
    ],
    "max": lambda rng: [
        np.array([[1.0, 3.0, 3.0, 0.5], [2.0, -1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    ],
    "min": lambda rng: [
        np.array([[1.0, -3.0, 2.0, 0.5], [2.0, -3.0, 0.0, 1.0], [0.0, 4.0, 1.0, 0.0]])
    ],
    "maximum": lambda rng: [
        np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0]]),
        np.array([1.0, 0.5, 3.0, -1.0]),
    ],
    "minimum": lambda rng: [
        np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0]]),
        np.array([1.0, 0.5, 3.0, -1.0]),
    ],
    "vector_norm_inf": lambda rng: [
        np.array([[1.0, -3.0, 2.0, 0.5], [2.0, 3.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    ],
}

# Cases where finite differences are not valid (kinks at the chosen points, or
# tie-splitting subgradients that a two-sided difference does not see).
NOT_SMOOTH = {"max", "min", "maximum", "minimum", "vector_norm_inf"}


def case_data(name: str, seed: int = 1) -> list[np.ndarray]:
    """float64 NumPy inputs of case ``name``."""
    rng = np.random.default_rng(seed)
    if name in SPECIAL_DATA:
        return SPECIAL_DATA[name](rng)
    return [rng.standard_normal(s) for s in CASES[name][1]]


def _outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def weighted_loss(fn):
    """A scalar depending on every output element differently (real views of complex)."""

    def loss(xp, *args):
        total = 0.0
        for k, out in enumerate(_outputs(fn(xp, *args))):
            parts = [out]
            if xp.isdtype(out.dtype, "complex floating"):
                parts = [xp.real(out), xp.imag(out)]
            for j, p in enumerate(parts):
                n = math.prod(p.shape)
                w = xp.linspace(0.5, 1.5 + k + j, n, dtype=p.dtype, device=p.device)
                w = xp.reshape(w, p.shape)
                total = total + xp.sum(xp.multiply(w, p)) + xp.sum(p * p) * 0.25
        return total

    return loss


def torch_reference(fn, data):
    """Value and gradients of ``weighted_loss(fn)`` by torch.autograd, float64."""
    import array_api_compat.torch as txp
    import torch

    ts = [torch.tensor(d, dtype=torch.float64, requires_grad=True) for d in data]
    out = weighted_loss(fn)(txp, *ts)
    grads = torch.autograd.grad(out, ts, allow_unused=True, materialize_grads=True)
    return float(out.detach()), [g.numpy() for g in grads]


# Cases using functions added in the 2024.12 revision.
NEEDS_2024 = {"cumulative_prod", "take_along_axis", "diff", "reciprocal", "complex_sum_mean"}


BASES = ["numpy", "strict-2024.12", "strict-2023.12", "strict-device1", "dask"]

# What Dask's namespace cannot do itself (the forward pass fails there, or the test's
# loss does): these cases are not run on Dask.
DASK_CANNOT = {
    "getitem_mask": "masked results have unknown sizes (the test's loss needs them)",
    "getitem_int_arrays": "no multi-array fancy indexing",
    "solve_batched": "linalg.solve is 2-D only",
    "det": "no linalg.det",
    "slogdet": "no linalg.slogdet",
    "eigh": "no linalg.eigh",
    "eigvalsh": "no linalg.eigvalsh",
    "cross": "no linalg.cross",
    "complex_inv_det": "no linalg.det",
    "svdvals": "array_api_compat's svdvals asks Dask for full_matrices=True",
    "matrix_norm_nuc": "array_api_compat's svdvals asks Dask for full_matrices=True",
    "matrix_norm_2": "array_api_compat's svdvals asks Dask for full_matrices=True",
}


@pytest.fixture
def base(request):
    """``(namespace, device)``; array-api-strict at an api_version or on a second device."""
    plain = {"numpy": "array_api_compat.numpy", "dask": "array_api_compat.dask.array"}
    if request.param in plain:
        yield pytest.importorskip(plain[request.param]), None
        return
    strict = pytest.importorskip("array_api_strict")
    kind = request.param.removeprefix("strict-")
    version = "2023.12" if kind == "2023.12" else "2024.12"
    saved = strict.get_array_api_strict_flags()
    strict.set_array_api_strict_flags(api_version=version)
    try:
        yield strict, strict.Device("device1") if kind == "device1" else None
    finally:
        strict.set_array_api_strict_flags(**saved)


def _runs(base: str, name: str) -> bool:
    if base == "dask":
        return name not in DASK_CANNOT
    return not (base == "strict-2023.12" and name in NEEDS_2024)


# float64 everywhere; float32 on numpy and array-api-strict 2024.12.
TORCH_PARAMS = [
    pytest.param(b, n, d, id=f"{b}-{n}-{d}")
    for n in CASES
    for b in BASES
    for d in ("float64", "float32")
    if _runs(b, n) and (d == "float64" or b in ("numpy", "strict-2024.12"))
]
# Second order by finite differences on numpy and array-api-strict (2024.12, device1).
SECOND_ORDER_PARAMS = [
    pytest.param(b, n, id=f"{b}-{n}")
    for n in CASES
    if n not in NOT_SMOOTH
    for b in ("numpy", "strict-2024.12", "strict-device1")
]


def _inputs(base, name, dtype="float64", seed=1):
    xp, device = base
    dt = getattr(xp, dtype)
    return [xp.asarray(d, dtype=dt, device=device) for d in case_data(name, seed)]


def _tolerances(dtype):
    return (1e-9, 1e-10) if dtype == "float64" else (2e-3, 2e-4)


@pytest.mark.parametrize(("base", "name", "dtype"), TORCH_PARAMS, indirect=["base"])
def test_gradient_matches_torch(base, name, dtype):
    fn, _ = CASES[name]
    args = _inputs(base, name, dtype)
    ref_value, ref_grads = torch_reference(fn, case_data(name))
    loss = weighted_loss(fn)
    value, grads = agrad.execute_with_gradients(
        lambda xs: loss(agrad.array_namespace(*xs), *xs), args
    )
    rtol, atol = _tolerances(dtype)
    scale = max(1.0, max(float(np.max(np.abs(g))) for g in ref_grads))
    assert float(to_numpy(value)) == pytest.approx(ref_value, rel=rtol * 10, abs=atol * 10)
    for g, ref, arg in zip(grads, ref_grads, args):
        assert g.dtype == arg.dtype
        assert tuple(g.shape) == tuple(arg.shape)
        if base[1] is not None:
            assert g.device == base[1]
        np.testing.assert_allclose(to_numpy(g), ref, rtol=rtol, atol=atol * scale, err_msg=name)


@pytest.mark.parametrize(("base", "name"), SECOND_ORDER_PARAMS, indirect=["base"])
def test_check_grads_first_and_second_order(base, name):
    fn, _ = CASES[name]
    args = _inputs(base, name, seed=2)
    check_grads(lambda *xs: fn(agrad.array_namespace(*xs), *xs), *args, order=2)


# Complex inputs differentiated directly: agrad returns the gradient torch.autograd
# returns for a real loss of complex leaves (its conjugate-Wirtinger convention).
COMPLEX_LEAF_CASES = {
    "mul_conj": lambda xp, z, w: xp.real(xp.sum(z * xp.conj(w) * z)),
    "abs_exp": lambda xp, z, w: xp.sum(xp.abs(xp.exp(z) + w)),
    "log_div": lambda xp, z, w: xp.sum(xp.imag(xp.log(z * z + 2.0) / (w + 3.0))),
    "matmul_inv": lambda xp, z, w: xp.sum(
        xp.abs(xp.linalg.inv(xp.matmul(z, w) + 4.0 * _eye(xp, z)))
    ),
    "fft_ifft": lambda xp, z, w: xp.sum(xp.abs(xp.fft.fft(z, axis=0) * xp.fft.ifft(w, axis=1))),
    "sqrt_square": lambda xp, z, w: xp.sum(xp.real(xp.sqrt(xp.square(z) + w * w))),
    "vector_norm": lambda xp, z, w: xp.sum(xp.linalg.vector_norm(z * w, axis=0)),
    "det_slogdet": lambda xp, z, w: (
        xp.real(xp.sum(xp.linalg.det(z + 3.0 * _eye(xp, z))))
        + xp.sum(xp.linalg.slogdet(w + 3.0 * _eye(xp, w))[1])
    ),
    "svd": lambda xp, z, w: _phase_free(xp, xp.linalg.svd(z + w * 0.5, full_matrices=False)),
    "eigh": lambda xp, z, w: _phase_free(
        xp, xp.linalg.eigh(z * w + xp.conj(xp.matrix_transpose(z * w)))
    ),
    "qr": lambda xp, z, w: _phase_free(xp, xp.linalg.qr(z * w)),
}


def _phase_free(xp, outputs):
    """A loss that does not depend on the phases the decompositions leave free."""
    total = 0.0
    for k, out in enumerate(outputs):
        mag = xp.abs(out) ** 2.0 if xp.isdtype(out.dtype, "complex floating") else out
        weights = xp.linspace(0.5, 1.5 + k, math.prod(mag.shape), dtype=mag.dtype)
        total = total + xp.sum(xp.multiply(xp.reshape(weights, mag.shape), mag))
    return total


def _eye(xp, like):
    return xp.eye(like.shape[-1], dtype=like.dtype, device=like.device)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict"])
@pytest.mark.parametrize("name", sorted(COMPLEX_LEAF_CASES))
def test_complex_leaf_gradient_matches_torch(backend, name):
    import array_api_compat.torch as txp
    import torch

    xp = pytest.importorskip("array_api_compat.numpy" if backend == "numpy" else backend)
    fn = COMPLEX_LEAF_CASES[name]
    rng = np.random.default_rng(7)
    data = [rng.standard_normal((3, 3)) + 1j * rng.standard_normal((3, 3)) for _ in range(2)]
    ts = [torch.tensor(d, dtype=torch.complex128, requires_grad=True) for d in data]
    ref = torch.autograd.grad(fn(txp, *ts), ts)
    # execute_with_gradients accepts real leaves only; the tape itself takes complex ones.
    from agrad.autograd.adapters.tape import TapeAdapter

    tape = TapeAdapter("numpy" if backend == "numpy" else backend)
    _, grads, _ = tape.value_and_grad(
        lambda zs: (fn(agrad.array_namespace(*zs), *zs), ()), [xp.asarray(d) for d in data], False
    )
    for g, r in zip(grads, ref):
        assert g.dtype == xp.complex128
        np.testing.assert_allclose(to_numpy(g), r.numpy(), rtol=1e-9, atol=1e-11)


# ---- the rule table: a new primitive is one entry with one rule --------------------


def _numpy_primitive(name, raw, entry):
    import agrad.numpy as anp
    from agrad.autograd.tape.traced import primitive

    return primitive(name, raw, entry, anp)


def test_a_variadic_primitive_needs_one_rule():
    """``vjp_argnum``: one rule for every argument, told which by ``argnum``."""
    from agrad.autograd.tape.vjp import vjp_argnum

    def weighted_rule(ns, g, ans, *arrays, argnum):
        return ns.multiply(g, float(argnum + 1))

    weighted = _numpy_primitive(
        "weighted",
        lambda *arrays: sum((i + 1) * a for i, a in enumerate(arrays)),
        vjp_argnum(weighted_rule),
    )

    def f(x):
        xp = agrad.array_namespace(x)
        return weighted(x, xp.sin(x), x * x, 2.0 * x)

    x = np.array([0.3, -1.2, 2.0])
    g = agrad.grad(lambda x: agrad.array_namespace(x).sum(f(x)))(x)
    np.testing.assert_allclose(g, 1.0 + 2.0 * np.cos(x) + 3.0 * 2.0 * x + 4.0 * 2.0)
    check_grads(f, x, order=2)


def test_a_tuple_returning_primitive_traces_the_outputs_listed():
    """``vjp(rule, outputs=...)``: the rule gets the list of the outputs' cotangents."""
    from agrad.autograd.tape.traced import TracedArray
    from agrad.autograd.tape.vjp import vjp

    def rule(ns, gs, ans, x):
        g_twice, _ = gs
        return None if g_twice is None else ns.multiply(g_twice, 2.0)

    twice_and_index = _numpy_primitive(
        "twice_and_index", lambda x: (x * 2.0, np.argmax(x)), vjp(rule, outputs=(0,))
    )
    seen = []

    def f(x):
        twice, index = twice_and_index(x)
        seen.append(isinstance(index, TracedArray))
        return agrad.array_namespace(x).sum(twice * twice)

    x = np.array([0.5, -1.0, 3.0])
    np.testing.assert_allclose(agrad.grad(f)(x), 8.0 * x)
    assert seen == [False]
    check_grads(lambda x: twice_and_index(x)[0], x, order=2)
