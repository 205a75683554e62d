"""A library author's ``fit``: written once, called with NumPy, torch and JAX arrays.

``fit`` never imports an array library. It takes the namespace from its inputs, copies
the user's initial parameters (``agrad.variable`` on a torch tensor shares its memory,
and in-place optimizer steps would otherwise write into the caller's arrays), and hands
back results in the caller's library, on the caller's device, in the caller's dtype.

    python examples/library_fit.py
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import agrad
import agrad.optim


def linear(params: dict[str, Any], x: Any) -> Any:
    """``x @ w + b``: a model a user might pass to ``fit``."""
    xp = agrad.array_namespace(params["w"], x)
    return xp.add(xp.matmul(x, params["w"]), params["b"])


def fit(
    model: Callable[[dict[str, Any], Any], Any],
    params: dict[str, Any],
    x: Any,
    y: Any,
    *,
    steps: int = 300,
    optimizer: agrad.optim.Optimizer | None = None,
) -> tuple[dict[str, Any], float]:
    """Minimise the mean squared error of ``model(params, x)`` against ``y``.

    Args:
        model: ``model(params, x) -> predictions``, written against the Array API.
        params: initial parameters: a dict of arrays of the same library as ``x``.
        x, y: inputs and targets.
        steps: optimizer steps (full batch).
        optimizer: any ``agrad.optim`` optimizer (default: SGD with momentum 0.9).

    Returns:
        ``(fitted_params, final_loss)``; the arrays are of ``x``'s library, without history.
    """
    xp = agrad.array_namespace(x, y, *params.values())
    opt = agrad.optim.sgd(lr=0.1, momentum=0.9) if optimizer is None else optimizer
    params = {k: agrad.variable(xp.asarray(v, copy=True)) for k, v in params.items()}
    state = opt.init(params)

    def loss(p: dict[str, Any]) -> Any:
        pred = model(p, x)
        ns = agrad.array_namespace(pred, y)  # inside a trace: the tracing namespace, not xp
        err = ns.subtract(pred, y)
        return ns.mean(ns.multiply(err, err))

    for _ in range(steps):
        value, grads = agrad.execute_with_gradients(loss, params)
        params, state = opt.step(params, grads, state)
    return {k: agrad.stop_gradient(v) for k, v in params.items()}, float(value)


def make_problem(seed: int = 0) -> tuple[dict[str, Any], Any, Any]:
    """A linear regression problem as NumPy arrays: initial parameters, inputs, targets."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((200, 3))
    y = x @ np.array([[1.5], [-2.0], [0.5]]) + 0.3 + 0.1 * rng.standard_normal((200, 1))
    return {"w": np.zeros((3, 1)), "b": np.zeros(1)}, x, y


def main(libraries: tuple[str, ...] = ("numpy", "torch", "jax"), steps: int = 300) -> dict:
    """Call ``fit`` with each library's arrays; returns ``{library: (params, loss)}``."""
    from agrad.testing import load_backend, to_numpy

    init, x, y = make_problem()
    results = {}
    for name in libraries:
        xp, reason = load_backend(name)
        if xp is None:
            print(f"{name:<6} skipped: {reason}")
            continue
        params, loss = fit(
            linear,
            {k: xp.asarray(v) for k, v in init.items()},
            xp.asarray(x),
            xp.asarray(y),
            steps=steps,
        )
        results[name] = (params, loss)
        w = to_numpy(params["w"]).ravel()
        print(f"{name:<6} {type(params['w']).__name__:<10} loss {loss:.6f}  w {np.round(w, 4)}")
    return results


if __name__ == "__main__":
    main()
