"""Differentiable ``scipy.special`` functions and NumPy ufuncs outside the standard.

``RULES[name]`` is ``(number of arguments, VJP)``; each rule is written with the
tracing namespace and its ``special`` module (``ns.special.digamma`` ...), so it is
traceable itself and gives derivatives of any order. ``NOT_DIFFERENTIABLE_IN[name]``
names the arguments a function has no derivative in (the order of ``zeta`` ...): a
traced one with a gradient raises before anything is computed.

A tracing namespace's ``special`` module (:func:`special_module`) holds one primitive
per rule, computed by the ``scipy.special`` ufunc on the raw values (through NumPy for
other bases). Two ways lead to it:

- ``SCIPY_ARRAY_API=1``: scipy's wrappers look for ``xp.special.<name>`` on the array's
  namespace (the slot of a future ``special`` extension of the standard) and call it;
- plain NumPy ufuncs (``scipy.special.erf`` without that flag, ``np.cbrt``) reaching a
  traced NumPy array call its ``__array_ufunc__`` (:mod:`~agrad.autograd.tape.ufuncs`).

The math (``g`` the cotangent, ``y`` the answer):

- ``erf``: ``2/sqrt(pi) exp(-x^2)``; ``erfc``: its negative; ``erfcx``:
  ``2 x y - 2/sqrt(pi)``; ``erfinv``: ``sqrt(pi)/2 exp(y^2)``; ``erfcinv``: its negative;
- ``expit``: ``y (1 - y)``; ``log_expit``: ``expit(-x)``; ``logit``: ``1 / (x (1 - x))``;
- ``ndtr``: ``phi(x) = exp(-x^2/2) / sqrt(2 pi)``; ``log_ndtr``: ``exp(-x^2/2 - y) /
  sqrt(2 pi)``; ``ndtri``: ``sqrt(2 pi) exp(y^2 / 2)``;
- ``gammaln``: ``digamma(x)``; ``gamma``: ``y digamma(x)``; ``rgamma``:
  ``-y digamma(x)``; ``digamma``/``psi``: ``zeta(2, x)`` (scipy's ``polygamma(1, x)``);
  ``zeta(s, q)``: ``-s zeta(s + 1, q)`` in ``q``; ``betaln(a, b)``:
  ``digamma(a) - digamma(a + b)`` in ``a`` (``b`` alike); ``beta``: ``y`` times that;
  ``gammainc(a, x)``: ``exp(-x + (a - 1) log x - gammaln(a))`` in ``x``, ``gammaincc``
  its negative;
- ``xlogy(x, y)``: ``log y`` and ``x / y``; ``xlog1py``: ``log1p y`` and
  ``x / (1 + y)``; ``entr``: ``-(log x + 1)``; ``rel_entr(x, y)``:
  ``log x - log y + 1`` and ``-x / y``; ``kl_div``: ``log x - log y`` and ``1 - x/y``;
- ``huber(d, r)``: ``r`` (``|r| <= d``) else ``d sign r`` in ``r``, ``0`` else
  ``|r| - d`` in ``d``; ``pseudo_huber(d, r)`` with ``s = sqrt(1 + (r/d)^2)``:
  ``r / s`` in ``r``, ``2 d (s - 1) - r^2 / (d s)`` in ``d``;
- ``cbrt``: ``1 / (3 y^2)``; ``exp2``: ``y ln 2``; ``exp10``: ``y ln 10``; ``expm1``:
  ``y + 1``; ``log1p``: ``1 / (1 + x)``; ``cosm1``: ``-sin x``; ``deg2rad``/``radians``:
  ``pi / 180``; ``rad2deg``/``degrees``: ``180 / pi``; ``logaddexp2(a, b)``:
  ``2^(a - y)`` in ``a`` (``b`` alike).
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from typing import Any

from agrad.autograd.tape.helpers import fit
from agrad.autograd.tape.traced import CONSTANT, TracedArray, primitive
from agrad.autograd.tape.vjp import VJP, vjp

__all__ = [
    "NOT_DIFFERENTIABLE_IN",
    "NUMPY_UFUNCS",
    "RULES",
    "UFUNC_NAMES",
    "make_function",
    "special_module",
]

_SQRT_PI = math.sqrt(math.pi)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _sp(ns: Any) -> Any:
    return ns.special


# ---- one argument ----------------------------------------------------------------


def _erf(ns, g, ans, x):
    return g * (ns.exp(-(x * x)) * (2.0 / _SQRT_PI))


def _erfc(ns, g, ans, x):
    return -_erf(ns, g, ans, x)


def _erfcx(ns, g, ans, x):
    return g * (2.0 * x * ans - 2.0 / _SQRT_PI)


def _erfinv(ns, g, ans, x):
    return g * (ns.exp(ans * ans) * (_SQRT_PI / 2.0))


def _erfcinv(ns, g, ans, x):
    return -_erfinv(ns, g, ans, x)


def _expit(ns, g, ans, x):
    return g * (ans * (1.0 - ans))


def _log_expit(ns, g, ans, x):
    return g * _sp(ns).expit(-x)


def _logit(ns, g, ans, x):
    return g / (x * (1.0 - x))


def _ndtr(ns, g, ans, x):
    return g * (ns.exp(-0.5 * (x * x)) / _SQRT_2PI)


def _log_ndtr(ns, g, ans, x):
    return g * (ns.exp(-0.5 * (x * x) - ans) / _SQRT_2PI)


def _ndtri(ns, g, ans, x):
    return g * (ns.exp(0.5 * (ans * ans)) * _SQRT_2PI)


def _gammaln(ns, g, ans, x):
    return g * _sp(ns).digamma(x)


def _gamma(ns, g, ans, x):
    return g * (ans * _sp(ns).digamma(x))


def _rgamma(ns, g, ans, x):
    return -g * (ans * _sp(ns).digamma(x))


def _digamma(ns, g, ans, x):
    return g * _sp(ns).zeta(2.0, x)


def _cbrt(ns, g, ans, x):
    return g / (3.0 * (ans * ans))


def _exp2(ns, g, ans, x):
    return g * (ans * math.log(2.0))


def _exp10(ns, g, ans, x):
    return g * (ans * math.log(10.0))


def _expm1(ns, g, ans, x):
    return g * (ans + 1.0)


def _log1p(ns, g, ans, x):
    return g / (1.0 + x)


def _cosm1(ns, g, ans, x):
    return -g * ns.sin(x)


def _scale(factor: float):
    def rule(ns, g, ans, x):
        return g * factor

    return rule


def _entr(ns, g, ans, x):
    return -g * (ns.log(x) + 1.0)


# ---- two arguments (broadcasting: ``fit`` sums back to each argument's shape) ----


def _zeta_q(ns, g, ans, s, q):
    return fit(ns, -g * (s * _sp(ns).zeta(s + 1.0, q)), q)


def _betaln_a(ns, g, ans, a, b):
    sp = _sp(ns)
    return fit(ns, g * (sp.digamma(a) - sp.digamma(a + b)), a)


def _betaln_b(ns, g, ans, a, b):
    sp = _sp(ns)
    return fit(ns, g * (sp.digamma(b) - sp.digamma(a + b)), b)


def _beta_a(ns, g, ans, a, b):
    return _betaln_a(ns, g * ans, None, a, b)


def _beta_b(ns, g, ans, a, b):
    return _betaln_b(ns, g * ans, None, a, b)


def _gammainc_x(ns, g, ans, a, x):
    density = ns.exp(-x + (a - 1.0) * ns.log(x) - _sp(ns).gammaln(a))
    return fit(ns, g * density, x)


def _gammaincc_x(ns, g, ans, a, x):
    return -_gammainc_x(ns, g, ans, a, x)


def _xlogy_x(ns, g, ans, x, y):
    return fit(ns, g * ns.log(y), x)


def _xlogy_y(ns, g, ans, x, y):
    return fit(ns, g * (x / y), y)


def _xlog1py_x(ns, g, ans, x, y):
    return fit(ns, g * ns.log1p(y), x)


def _xlog1py_y(ns, g, ans, x, y):
    return fit(ns, g * (x / (1.0 + y)), y)


def _rel_entr_x(ns, g, ans, x, y):
    return fit(ns, g * (ns.log(x) - ns.log(y) + 1.0), x)


def _rel_entr_y(ns, g, ans, x, y):
    return fit(ns, -g * (x / y), y)


def _kl_div_x(ns, g, ans, x, y):
    return fit(ns, g * (ns.log(x) - ns.log(y)), x)


def _kl_div_y(ns, g, ans, x, y):
    return fit(ns, g * (1.0 - x / y), y)


def _huber_d(ns, g, ans, d, r):
    inside = ns.abs(r) <= d
    return fit(ns, g * ns.where(inside, 0.0 * r, ns.abs(r) - d), d)


def _huber_r(ns, g, ans, d, r):
    inside = ns.abs(r) <= d
    return fit(ns, g * ns.where(inside, r, d * ns.sign(r)), r)


def _pseudo_huber_d(ns, g, ans, d, r):
    s = ns.sqrt(1.0 + (r / d) * (r / d))
    return fit(ns, g * (2.0 * d * (s - 1.0) - (r * r) / (d * s)), d)


def _pseudo_huber_r(ns, g, ans, d, r):
    s = ns.sqrt(1.0 + (r / d) * (r / d))
    return fit(ns, g * (r / s), r)


def _logaddexp2_a(ns, g, ans, a, b):
    return fit(ns, g * ns.exp((a - ans) * math.log(2.0)), a)


def _logaddexp2_b(ns, g, ans, a, b):
    return fit(ns, g * ns.exp((b - ans) * math.log(2.0)), b)


#: name -> (number of arguments, rules): the differentiable ``scipy.special`` functions.
RULES: dict[str, tuple[int, VJP]] = {
    "erf": (1, vjp(_erf)),
    "erfc": (1, vjp(_erfc)),
    "erfcx": (1, vjp(_erfcx)),
    "erfinv": (1, vjp(_erfinv)),
    "erfcinv": (1, vjp(_erfcinv)),
    "expit": (1, vjp(_expit)),
    "log_expit": (1, vjp(_log_expit)),
    "logit": (1, vjp(_logit)),
    "ndtr": (1, vjp(_ndtr)),
    "log_ndtr": (1, vjp(_log_ndtr)),
    "ndtri": (1, vjp(_ndtri)),
    "gammaln": (1, vjp(_gammaln)),
    "gamma": (1, vjp(_gamma)),
    "rgamma": (1, vjp(_rgamma)),
    "digamma": (1, vjp(_digamma)),
    "psi": (1, vjp(_digamma)),
    "entr": (1, vjp(_entr)),
    "cbrt": (1, vjp(_cbrt)),
    "exp2": (1, vjp(_exp2)),
    "exp10": (1, vjp(_exp10)),
    "expm1": (1, vjp(_expm1)),
    "log1p": (1, vjp(_log1p)),
    "cosm1": (1, vjp(_cosm1)),
    "zeta": (2, vjp(None, _zeta_q)),
    "betaln": (2, vjp(_betaln_a, _betaln_b)),
    "beta": (2, vjp(_beta_a, _beta_b)),
    "gammainc": (2, vjp(None, _gammainc_x)),
    "gammaincc": (2, vjp(None, _gammaincc_x)),
    "xlogy": (2, vjp(_xlogy_x, _xlogy_y)),
    "xlog1py": (2, vjp(_xlog1py_x, _xlog1py_y)),
    "rel_entr": (2, vjp(_rel_entr_x, _rel_entr_y)),
    "kl_div": (2, vjp(_kl_div_x, _kl_div_y)),
    "huber": (2, vjp(_huber_d, _huber_r)),
    "pseudo_huber": (2, vjp(_pseudo_huber_d, _pseudo_huber_r)),
}

#: Where a function's ufunc is in ``scipy.special._ufuncs`` under another name.
UFUNC_NAMES = {"digamma": "psi", "zeta": "_zeta"}

#: Arguments (by position) a function has no derivative in, with the reason.
NOT_DIFFERENTIABLE_IN: dict[str, dict[int, str]] = {
    "zeta": {0: "the order s, whose derivative is not a scipy.special function"},
    "gammainc": {0: "the shape a, whose derivative is not a scipy.special function"},
    "gammaincc": {0: "the shape a, whose derivative is not a scipy.special function"},
}

#: NumPy ufuncs outside the standard with a rule here: ufunc name -> rule.
NUMPY_UFUNCS: dict[str, tuple[int, VJP]] = {
    "cbrt": RULES["cbrt"],
    "exp2": RULES["exp2"],
    "deg2rad": (1, vjp(_scale(math.pi / 180.0))),
    "radians": (1, vjp(_scale(math.pi / 180.0))),
    "rad2deg": (1, vjp(_scale(180.0 / math.pi))),
    "degrees": (1, vjp(_scale(180.0 / math.pi))),
    "logaddexp2": (2, vjp(_logaddexp2_a, _logaddexp2_b)),
}


def _has_gradient(v: Any) -> bool:
    while isinstance(v, TracedArray):
        if v._node is not CONSTANT:
            return True
        v = v._value
    return False


def _on_numpy(ufunc: Any, base: Any, base_name: str) -> Callable[..., Any]:
    """``ufunc`` applied to raw arrays of ``base`` (through NumPy unless it is NumPy)."""
    if base_name == "numpy":
        return ufunc
    import numpy as np

    def apply(*args: Any) -> Any:
        arrays = [a for a in args if hasattr(a, "shape")]
        device = arrays[0].device if arrays else None
        values = [np.from_dlpack(a) if hasattr(a, "__dlpack__") else a for a in args]
        return base.asarray(ufunc(*values), device=device)

    return apply


def make_function(
    qualname: str, ufunc: Any, entry: tuple[int, VJP], ns: Any, base_name: str
) -> Callable[..., Any]:
    """The differentiable ``ufunc`` of the tracing namespace ``ns`` (named ``qualname``)."""
    nargs, spec = entry
    prim = primitive(qualname, _on_numpy(ufunc, ns._base, base_name), spec, ns)
    short = qualname.rsplit(".", 1)[-1]
    refused = NOT_DIFFERENTIABLE_IN.get(short, {})

    def fn(*args: Any) -> Any:
        if len(args) != nargs:
            msg = f"{qualname} takes {nargs} array arguments here, got {len(args)}"
            raise TypeError(msg)
        for i, why in refused.items():
            if _has_gradient(args[i]):
                msg = f"{qualname} is not differentiable in argument {i}, {why}"
                raise NotImplementedError(msg)
        return prim(*args)

    fn.__name__ = fn.__qualname__ = short
    fn.__doc__ = f"``{qualname}``, differentiable (see :mod:`agrad.autograd.tape.special`)."
    fn._agrad_raw = getattr(prim, "_agrad_raw", None)  # type: ignore[attr-defined]
    return fn


def special_module(ns: Any, base_name: str) -> types.ModuleType | None:
    """``<ns>.special``: every function of :data:`RULES`; ``None`` without scipy."""
    try:
        import scipy.special._ufuncs as ufuncs
    except ImportError:  # pragma: no cover - scipy is optional
        return None
    mod = types.ModuleType(
        f"{ns.__name__}.special",
        f"Differentiable ``scipy.special`` functions of {ns.__name__} "
        "(see :mod:`agrad.autograd.tape.special`).",
    )
    for name, entry in RULES.items():
        ufunc = getattr(ufuncs, UFUNC_NAMES.get(name, name), None)
        if ufunc is not None:
            setattr(mod, name, make_function(f"scipy.special.{name}", ufunc, entry, ns, base_name))
    mod.__all__ = sorted(n for n in vars(mod) if not n.startswith("_"))
    sys.modules[mod.__name__] = mod
    return mod
