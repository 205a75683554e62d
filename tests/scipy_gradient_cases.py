"""Gradients through scipy's Array API code, run in a subprocess with ``SCIPY_ARRAY_API=1``.

scipy reads ``SCIPY_ARRAY_API`` once, when it is first imported, and other tests import
it without the flag; ``tests/test_scipy_gradients.py`` therefore runs this file in a
fresh interpreter (``python tests/scipy_gradient_cases.py``), which prints one JSON
object: for each case and backend, the largest error of agrad's gradient against
central finite differences of scipy's own function (first order; second order too for
the elementwise special functions), or the exception raised.
"""

from __future__ import annotations

import json
import os
import sys

#: scipy.stats and scipy.special functions a statistician would differentiate.
STATS = [
    "variation",
    "entropy",
    "entropy_qk",
    "zscore",
    "skew",
    "kurtosis",
    "moment",
    "gmean",
    "hmean",
    "pmean",
    "sem",
    "tvar",
    "tstd",
    "gstd",
    "differential_entropy",
    "logsumexp",
    "softmax",
    "log_softmax",
]
#: Elementwise scipy.special functions (first and second order), with their domain.
SPECIAL = {
    "erf": "n",
    "erfc": "n",
    "erfcx": "n",
    "erfinv": "u",
    "erfcinv": "p1",
    "expit": "n",
    "log_expit": "n",
    "logit": "p01",
    "ndtr": "n",
    "log_ndtr": "n",
    "ndtri": "p01",
    "gammaln": "p",
    "gamma": "p",
    "rgamma": "p",
    "digamma": "p",
    "psi": "p",
    "entr": "p",
    "cbrt": "p",
    "exp2": "n",
    "exp10": "n",
    "expm1": "n",
    "log1p": "p",
    "cosm1": "n",
    "zeta_q": "p",
    "betaln": "p",
    "beta": "p",
    "gammainc_x": "p",
    "gammaincc_x": "p",
    "xlogy": "p",
    "xlog1py": "p",
    "rel_entr": "p",
    "kl_div": "p",
    "huber": "n",
    "pseudo_huber": "n",
}
#: array-api-extra functions (scipy's vendored copy finds the namespace from the arrays).
EXTRA = ["apply_where", "cov", "sinc", "kron", "pad"]
BACKENDS = ["numpy", "array_api_strict"]


def _stats_functions():
    import scipy.special as sp
    import scipy.stats as st

    return {
        "variation": st.variation,
        "entropy": st.entropy,
        "entropy_qk": lambda x: st.entropy(x, x[::-1] * 0.5 + 0.25),
        "zscore": lambda x: st.zscore(x) * _w(x),
        "skew": st.skew,
        "kurtosis": st.kurtosis,
        "moment": lambda x: st.moment(x, order=3),
        "gmean": st.gmean,
        "hmean": st.hmean,
        "pmean": lambda x: st.pmean(x, 2.5),
        "sem": st.sem,
        "tvar": st.tvar,
        "tstd": st.tstd,
        "gstd": st.gstd,
        "differential_entropy": st.differential_entropy,
        "logsumexp": sp.logsumexp,
        "softmax": lambda x: sp.softmax(x) * _w(x),
        "log_softmax": lambda x: sp.log_softmax(x) * _w(x),
    }


def _special_functions():
    import scipy.special as sp

    two = {
        "zeta_q": lambda x: sp.zeta(3.0, x),
        "betaln": lambda x: sp.betaln(x, x * 0.5 + 1.0),
        "beta": lambda x: sp.beta(x * 0.5 + 1.0, x),
        "gammainc_x": lambda x: sp.gammainc(1.5, x),
        "gammaincc_x": lambda x: sp.gammaincc(1.5, x),
        "xlogy": lambda x: sp.xlogy(x, x * 0.5 + 1.0),
        "xlog1py": lambda x: sp.xlog1py(x * 0.5 + 1.0, x),
        "rel_entr": lambda x: sp.rel_entr(x, x * x + 0.5),
        "kl_div": lambda x: sp.kl_div(x * x + 0.5, x),
        "huber": lambda x: sp.huber(0.5, x),
        "pseudo_huber": lambda x: sp.pseudo_huber(x * 0.0 + 0.7, x),
    }
    return {n: two[n] if n in two else getattr(sp, n) for n in SPECIAL}


def _extra_functions():
    import scipy._lib.array_api_extra as xpx

    def apply_where(x):
        return xpx.apply_where(x > 1.0, (x,), lambda v: v * v, lambda v: -v)

    return {
        "apply_where": apply_where,
        "cov": lambda x: xpx.cov(_xp(x).reshape(x, (2, 3))),
        "sinc": xpx.sinc,
        "kron": lambda x: xpx.kron(x, x[:2]),
        "pad": lambda x: xpx.pad(x, 2) * _w(xpx.pad(x, 2)),
    }


def _xp(x):
    import agrad

    return agrad.array_namespace(x)


def _w(x):
    """Different weights per element, so that a sum sees every output."""
    xp = _xp(x)
    return xp.linspace(0.5, 1.5, x.shape[0], dtype=x.dtype)


def _data(kind, n=6):
    import numpy as np

    rng = np.random.default_rng(0)
    lo, hi = {
        "n": (-1.5, 1.5),
        "u": (-0.8, 0.8),
        "p": (0.5, 2.5),
        "p01": (0.1, 0.9),
        "p1": (0.2, 1.8),
    }[kind]
    return rng.uniform(lo, hi, n)


def _run(fn, x0, base, order):
    """Largest relative errors ``[first, second]`` of agrad's derivatives against differences.

    Second differences (step 1e-4) are accurate to about 1e-6; ``second`` is 0 for
    ``order=1``.
    """
    import numpy as np

    import agrad

    def total(v):
        xp = _xp(v)
        return xp.sum(xp.asarray(fn(v)))

    def value(x):
        return float(np.asarray(agrad.stop_gradient(total(base.asarray(x)))))

    got = np.asarray(agrad.grad(total)(base.asarray(x0)))
    eps = 1e-6
    fd = np.array([(value(x0 + e) - value(x0 - e)) / (2 * eps) for e in np.eye(x0.size) * eps])
    err = float(np.max(np.abs(got - fd) / (1.0 + np.abs(fd))))
    err2 = 0.0
    if order == 2:  # elementwise: the second derivative is the gradient of sum(f')
        second = np.asarray(
            agrad.grad(lambda v: _xp(v).sum(agrad.grad(total)(v)))(base.asarray(x0))
        )
        h = 1e-4
        fd2 = np.array(
            [(value(x0 + e) - 2 * value(x0) + value(x0 - e)) / h**2 for e in np.eye(x0.size) * h]
        )
        err2 = float(np.max(np.abs(second - fd2) / (1.0 + np.abs(fd2))))
    return [err, err2]


def main() -> None:
    """Print ``{"<backend>:<case>": [first, second] or "raised: ..."}`` as JSON."""
    assert os.environ.get("SCIPY_ARRAY_API") == "1", "run with SCIPY_ARRAY_API=1"
    import array_api_strict
    import numpy as np

    import agrad
    import agrad.array_api_strict
    import agrad.numpy  # noqa: F401

    bases = {"numpy": np, "array_api_strict": array_api_strict}
    groups = [
        (_stats_functions(), lambda name: "p", 1),
        (_special_functions(), SPECIAL.get, 2),
        (_extra_functions(), lambda name: "p", 1),
    ]
    out = {}
    for functions, kind, order in groups:
        for name, fn in functions.items():
            for backend in BACKENDS:
                try:
                    err = _run(fn, _data(kind(name)), bases[backend], order)
                except Exception as e:  # reported, and the test fails naming it
                    err = f"raised: {type(e).__name__}: {e}"
                out[f"{backend}:{name}"] = err
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
