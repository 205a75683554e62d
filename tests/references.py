"""Reference computations for tests: torch.autograd and central finite differences."""

from __future__ import annotations

import numpy as np


def torch_grads(fn, *arrays):
    """Gradients of ``fn(xp, *tensors)`` (a scalar) by torch.autograd, as float64 NumPy arrays."""
    import array_api_compat.torch as txp
    import torch

    ts = [torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True) for a in arrays]
    out = fn(txp, *ts)
    grads = torch.autograd.grad(out, ts, allow_unused=True, materialize_grads=True)
    return float(out.detach()), [g.numpy() for g in grads]


def fd_grads(fn_np, *arrays, eps=1e-6):
    """Central finite differences of a float64 NumPy scalar function, all coordinates."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    out = []
    for i, a in enumerate(arrays):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            g[idx] = (float(fn_np(*plus)) - float(fn_np(*minus))) / (2 * eps)
        out.append(g)
    return out
