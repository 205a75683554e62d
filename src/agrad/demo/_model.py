"""The demo's model, loss and metric, written once against the Array API standard.

Every function takes its namespace from its inputs (``agrad.array_namespace``), so the
same code runs on NumPy, torch, JAX, Dask, CuPy and array-api-strict arrays, and on
agrad's traced arrays while a gradient is being taken. Data from outside (the inputs,
the one-hot targets) is lifted with ``xp.asarray``: inside a gradient computation that
makes it a constant of the trace, so plain operators (``@``, ``+``, ``*``) mix it with
the differentiated arrays on every namespace, array-api-strict's included.
"""

from __future__ import annotations

from typing import Any

import agrad

__all__ = ["accuracy", "cross_entropy", "mlp_logits"]


def mlp_logits(params: dict[str, Any], x: Any) -> Any:
    """Logits of a tanh MLP with layers ``w1, b1, w2, b2, ...`` for the rows of ``x``."""
    xp = agrad.array_namespace(params["w1"], x)
    n_layers = len(params) // 2
    h = xp.asarray(x)
    for i in range(1, n_layers + 1):
        h = h @ params[f"w{i}"] + params[f"b{i}"]
        if i < n_layers:
            h = xp.tanh(h)
    return h


def cross_entropy(logits: Any, onehot: Any) -> Any:
    """Mean softmax cross-entropy; the row maximum is subtracted (without gradient) for stability."""
    xp = agrad.array_namespace(logits, onehot)
    shift = xp.asarray(agrad.stop_gradient(xp.max(logits, axis=1, keepdims=True)))
    z = logits - shift
    log_probs = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))
    return -xp.mean(xp.sum(xp.asarray(onehot) * log_probs, axis=1))


def accuracy(params: dict[str, Any], x: Any, labels: Any) -> float:
    """Fraction of rows of ``x`` whose largest logit is at the integer label."""
    xp = agrad.array_namespace(params["w1"], x)
    predicted = xp.argmax(mlp_logits(params, x), axis=1)
    hits = xp.astype(predicted == xp.astype(labels, predicted.dtype), xp.float64)
    return float(xp.mean(hits))
