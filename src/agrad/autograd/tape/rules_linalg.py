"""VJP rules for the ``linalg`` extension, written with the tracing namespace.

Same conventions as :mod:`agrad.autograd.tape.rules` (torch's for complex inputs);
keys are ``"linalg.<name>"``. The rules of decompositions with several outputs
(``eigh``, ``svd``, ``qr``, ``slogdet``) receive the list of the outputs' cotangents.
Formulas follow the standard matrix-calculus results (Giles 2008; Murray 2016 for
Cholesky; Townsend 2016 and torch's ``svd_backward`` for the SVD; Liao et al. 2019 for QR).
"""

from __future__ import annotations

from typing import Any

from agrad.autograd.tape.helpers import conj, fit, is_complex, restore_reduced
from agrad.autograd.tape.traced import strip
from agrad.autograd.tape.vjp import VJP, vjp

__all__ = ["RULES"]


def _h(ns: Any, a: Any) -> Any:
    """Conjugate transpose of the last two axes."""
    return ns.matrix_transpose(conj(ns, a))


def _eye_like(ns: Any, a: Any) -> Any:
    n = a.shape[-1]
    return ns._base.eye(n, dtype=a.dtype, device=ns._base_device(strip(a)))


def _diag_embed(ns: Any, d: Any) -> Any:
    """Batched diagonal matrices with ``d`` (..., n) on the diagonal."""
    return ns.multiply(ns.expand_dims(d, axis=-1), _eye_like(ns, d))


def _mat_diag(ns: Any, a: Any) -> Any:
    return ns.linalg.diagonal(a)


def _scale_matrix(ns: Any, c: Any, m: Any) -> Any:
    """``c[..., None, None] * m``."""
    return ns.multiply(ns.expand_dims(ns.expand_dims(c, axis=-1), axis=-1), m)


def _right_solve_h(ns: Any, b: Any, r: Any) -> Any:
    """``b @ inv(r)^H``, through ``solve``: ``(solve(r, b^H))^H``."""
    return _h(ns, ns.linalg.solve(r, _h(ns, b)))


# ---- single-output -------------------------------------------------------------------


def _inv(ns, g, ans, x):
    ans_h = _h(ns, ans)
    return ns.negative(ns.matmul(ns.matmul(ans_h, g), ans_h))


def _solve_is_vector(x2) -> bool:
    return x2.ndim == 1


def _solve_b(ns, g, ans, x1, x2):
    a_h = _h(ns, x1)
    if _solve_is_vector(x2):
        return ns.linalg.solve(a_h, ns.expand_dims(g, axis=-1))[..., 0]
    return ns.linalg.solve(a_h, g)


def _solve_x1(ns, g, ans, x1, x2):
    gb = _solve_b(ns, g, ans, x1, x2)
    if _solve_is_vector(x2):
        ga = ns.multiply(ns.expand_dims(gb, axis=-1), ns.expand_dims(conj(ns, ans), axis=-2))
    else:
        ga = ns.matmul(gb, _h(ns, ans))
    return fit(ns, ns.negative(ga), x1)


def _solve_x2(ns, g, ans, x1, x2):
    return fit(ns, _solve_b(ns, g, ans, x1, x2), x2)


def _det(ns, g, ans, x):
    c = ns.multiply(g, conj(ns, ans))
    return _scale_matrix(ns, c, _h(ns, ns.linalg.inv(x)))


def _cholesky(ns, g, ans, x, upper=False):
    low = _h(ns, ans) if upper else ans
    g_low = _h(ns, g) if upper else g
    phi = ns.matmul(_h(ns, low), g_low)
    phi = ns.subtract(ns.tril(phi), ns.multiply(phi, _eye_like(ns, phi)) * 0.5)
    low_inv = ns.linalg.inv(low)
    ga = ns.matmul(ns.matmul(_h(ns, low_inv), phi), low_inv)
    return ns.add(ga, _h(ns, ga)) * 0.5


def _eigvalsh(ns, g, ans, x):
    v = ns.linalg.eigh(x).eigenvectors
    return ns.matmul(ns.multiply(v, ns.expand_dims(g, axis=-2)), _h(ns, v))


def _svdvals(ns, g, ans, x):
    u, _, vh = ns.linalg.svd(x, full_matrices=False)
    return ns.matmul(ns.multiply(u, ns.expand_dims(g, axis=-2)), vh)


def _phase(ns, x):
    """``sign(x)``; for complex ``x`` the differentiable ``x / |x|`` (0 where ``x`` is 0)."""
    if not is_complex(ns, x):
        return ns.sign(x)
    ax = ns.abs(x)
    zero = strip(ax) == 0
    return ns.divide(x, ns.astype(ns.where(zero, ns.ones_like(ax), ax), x.dtype))


def _vector_norm(ns, g, ans, x, axis=None, keepdims=False, ord=2):
    gk = restore_reduced(ns, g, x, axis, keepdims)
    nk = restore_reduced(ns, ans, x, axis, keepdims)
    if ord == 0:
        return ns.zeros_like(x)
    if ord in (float("inf"), -float("inf")):
        ax = strip(ns.abs(x))
        mask = ns.astype(ax == strip(nk), ax.dtype)
        axes = tuple(range(x.ndim)) if axis is None else axis
        count = ns.sum(mask, axis=axes, keepdims=True)
        return ns.multiply(gk, ns.divide(ns.multiply(_phase(ns, x), mask), count))
    if ord == 1:
        return ns.multiply(gk, _phase(ns, x))
    zero = strip(nk) == 0
    safe = ns.where(zero, ns.ones_like(nk), nk)
    if ord == 2:
        d = ns.divide(x, safe)
    else:
        ratio = ns.divide(ns.abs(x), safe)
        d = ns.multiply(_phase(ns, x), ns.pow(ratio, ord - 1.0))
    return ns.multiply(ns.where(zero, ns.zeros_like(gk), gk), d)


def _cross_x1(ns, g, ans, x1, x2, axis=-1):
    return fit(ns, ns.linalg.cross(conj(ns, x2), g, axis=axis), x1)


def _cross_x2(ns, g, ans, x1, x2, axis=-1):
    return fit(ns, ns.linalg.cross(g, conj(ns, x1), axis=axis), x2)


def _diagonal(ns, g, ans, x, offset=0):
    m, n = x.shape[-2:]
    length = g.shape[-1]
    target = m if offset >= 0 else n
    dev = ns._base_device(strip(g))
    if target > length:
        pad = ns._base.zeros((*g.shape[:-1], target - length), dtype=g.dtype, device=dev)
        g = ns.concat([g, pad], axis=-1)
    spread = ns.expand_dims(g, axis=-1 if offset >= 0 else -2)
    return ns.multiply(spread, _offset_eye(ns, m, n, offset, g.dtype, dev))


def _offset_eye(ns, m, n, k, dtype, device):
    """``eye(m, n, k=k)`` from index comparisons (Dask's ``eye`` with ``k`` breaks graphs)."""
    base = ns._base
    rows = base.reshape(base.arange(m, device=device), (m, 1))
    cols = base.reshape(base.arange(n, device=device), (1, n))
    return base.astype((cols - rows) == k, dtype)


# ---- multi-output ------------------------------------------------------------------


def _slogdet(ns, gs, ans, x):
    g_sign, g_log = gs
    sign = ans[0]
    if g_log is None and (g_sign is None or not is_complex(ns, x)):
        return None
    c = ns.zeros_like(ans[1]) if g_log is None else g_log
    if is_complex(ns, x):
        c = ns.astype(c, x.dtype)
        if g_sign is not None:
            rot = ns.imag(ns.multiply(conj(ns, g_sign), sign))
            c = ns.subtract(c, ns.multiply(ns.astype(rot, x.dtype), 1j))
    return _scale_matrix(ns, c, _h(ns, ns.linalg.inv(x)))


def _eigh(ns, gs, ans, x):
    gw, gv = gs
    w, v = ans
    inner = None
    if gv is not None:
        e = ns.subtract(ns.expand_dims(w, axis=-2), ns.expand_dims(w, axis=-1))  # w_j - w_i
        eye = ns.astype(_eye_like(ns, strip(e)), ns.bool)
        f = ns.where(eye, ns.zeros_like(e), ns.divide(1.0, ns.where(eye, ns.ones_like(e), e)))
        inner = ns.multiply(ns.matmul(_h(ns, v), gv), f)
    if gw is not None:
        d = _diag_embed(ns, gw)
        inner = d if inner is None else ns.add(inner, ns.astype(d, inner.dtype))
    if inner is None:
        return None
    return ns.matmul(ns.matmul(v, inner), _h(ns, v))


def _skew(ns, a):
    return ns.subtract(a, _h(ns, a))


def _svd(ns, gs, ans, x, full_matrices=True):
    gu, gsv, gvh = gs
    u, s, vh = ans
    m, n = x.shape[-2:]
    k = min(m, n)
    if gu is None and gvh is None:
        if gsv is None:
            return None
        return ns.matmul(ns.multiply(u[..., :k], ns.expand_dims(gsv, axis=-2)), vh[..., :k, :])
    if full_matrices and m != n:
        msg = (
            "linalg.svd: the gradient through U or Vh of a non-square matrix with "
            "full_matrices=True is not defined (the extra singular vectors are arbitrary); "
            "use full_matrices=False"
        )
        raise NotImplementedError(msg)
    v = _h(ns, vh)
    s_row = ns.expand_dims(s, axis=-2)  # s_j
    s_col = ns.expand_dims(s, axis=-1)  # s_i
    s2 = ns.multiply(s, s)
    e = ns.subtract(ns.expand_dims(s2, axis=-2), ns.expand_dims(s2, axis=-1))
    eye = ns.astype(_eye_like(ns, strip(e)), ns.bool)
    e = ns.where(eye, ns.ones_like(e), e)
    inner = None
    uhgu = vhgv = None
    if gu is not None:
        uhgu = _skew(ns, ns.matmul(_h(ns, u), gu))
        inner = ns.multiply(uhgu, s_row)
    if gvh is not None:
        vhgv = _skew(ns, ns.matmul(vh, _h(ns, gvh)))
        term = ns.multiply(s_col, vhgv)
        inner = term if inner is None else ns.add(inner, term)
    inner = ns.divide(inner, e)
    if gsv is not None:
        inner = ns.add(inner, ns.astype(_diag_embed(ns, gsv), inner.dtype))
    if is_complex(ns, x) and uhgu is not None:
        im = ns.divide(ns.imag(_mat_diag(ns, uhgu)), s * 2.0)
        inner = ns.add(inner, ns.multiply(ns.astype(_diag_embed(ns, im), inner.dtype), 1j))
    if m > n and gu is not None:
        ga = ns.matmul(u, inner)
        gu_s = ns.divide(gu, s_row)
        ga = ns.add(ga, ns.subtract(gu_s, ns.matmul(u, ns.matmul(_h(ns, u), gu_s))))
        return ns.matmul(ga, vh)
    if m < n and gvh is not None:
        gv = _h(ns, gvh)
        ga = ns.matmul(inner, vh)
        gv_s = ns.divide(gv, s_row)
        ga = ns.add(ga, _h(ns, ns.subtract(gv_s, ns.matmul(v, ns.matmul(vh, gv_s)))))
        return ns.matmul(u, ga)
    return ns.matmul(ns.matmul(u, inner), vh)


def _copyltu(ns, a):
    """Lower triangle mirrored onto the upper one (Hermitian)."""
    return ns.add(ns.tril(a), _h(ns, ns.tril(a, k=-1)))


def _qr_tall(ns, q, r, gq, gr):
    """QR backward for ``m >= n`` (Liao et al. 2019, eq. 5)."""
    mm = ns.subtract(ns.matmul(r, _h(ns, gr)), ns.matmul(_h(ns, gq), q))
    b = ns.add(gq, ns.matmul(q, _copyltu(ns, mm)))
    return _right_solve_h(ns, b, r)


def _qr(ns, gs, ans, x, mode="reduced"):
    gq, gr = gs
    q, r = ans
    m, n = x.shape[-2:]
    if gq is None and gr is None:
        return None
    if mode == "complete" and m > n and gq is not None:
        msg = (
            "linalg.qr: the gradient through Q of a tall matrix with mode='complete' is "
            "not defined (the extra columns are arbitrary); use mode='reduced'"
        )
        raise NotImplementedError(msg)
    gq = ns.zeros_like(q) if gq is None else gq
    gr = ns.zeros_like(r) if gr is None else gr
    if m >= n:
        return _qr_tall(ns, q, r, gq, gr)
    y = x[..., m:]
    gx = _qr_tall(ns, q, r[..., :m], ns.add(gq, ns.matmul(y, _h(ns, gr[..., m:]))), gr[..., :m])
    gy = ns.matmul(q, gr[..., m:])
    return ns.concat([gx, gy], axis=-1)


RULES: dict[str, VJP] = {
    "linalg.inv": vjp(_inv),
    "linalg.solve": vjp(_solve_x1, _solve_x2),
    "linalg.det": vjp(_det),
    "linalg.cholesky": vjp(_cholesky),
    "linalg.eigvalsh": vjp(_eigvalsh),
    "linalg.svdvals": vjp(_svdvals),
    "linalg.vector_norm": vjp(_vector_norm),
    "linalg.cross": vjp(_cross_x1, _cross_x2),
    "linalg.diagonal": vjp(_diagonal),
    "linalg.slogdet": vjp(_slogdet, outputs=(0, 1)),
    "linalg.eigh": vjp(_eigh, outputs=(0, 1)),
    "linalg.svd": vjp(_svd, outputs=(0, 1, 2)),
    "linalg.qr": vjp(_qr, outputs=(0, 1)),
}
