"""Tape-engine comparisons: agrad on NumPy against HIPS autograd, torch and plain NumPy.

The same loss functions, written once against the Array API (``xp`` is agrad's
tracing namespace, ``autograd.numpy``, ``array_api_compat.torch`` or NumPy), are
differentiated by each library. Rows:

- gradient of a small MLP loss (batch 32, layers 64-64-64-10) vs HIPS autograd and torch;
- gradient of a large MLP loss (batch 256, 784-512-512-10) vs the plain NumPy forward pass;
- gradient of a chain of 300 elementwise operations on 4-element arrays vs HIPS autograd;
- peak traced memory (``tracemalloc``) of the large gradient vs HIPS autograd;
- memory growth (resident set size) over 10,000 gradient-and-Adam steps.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from agrad.bench._harness import Row, Settings, progress, timed_row

__all__ = ["chain_loss", "mlp_loss", "mlp_problem", "tape_rows"]

SMALL_MLP = (32, [64, 64, 64, 10])
LARGE_MLP = (256, [784, 512, 512, 10])
TINY_MLP = (8, [16, 16, 4])


def mlp_loss(params: dict[str, Any], x: Any, onehot: Any, xp: Any) -> Any:
    """Mean softmax cross-entropy of a tanh MLP: ``params`` has ``w0, b0, w1, b1, ...``."""
    n = len(params) // 2
    h = x
    for i in range(n):
        h = xp.matmul(h, params[f"w{i}"]) + params[f"b{i}"]
        if i < n - 1:
            h = xp.tanh(h)
    z = h - xp.max(h, axis=1, keepdims=True)
    logp = z - xp.log(xp.sum(xp.exp(z), axis=1, keepdims=True))
    return -xp.mean(xp.sum(onehot * logp, axis=1))


def chain_loss(x: Any, xp: Any, n_ops: int = 300) -> Any:
    """``n_ops`` elementwise operations (sin, scale, shift, repeated), then a sum."""
    for _ in range(n_ops // 3):
        x = xp.sin(x)
        x = x * 1.01
        x = x + 0.1
    return xp.sum(x)


def mlp_problem(batch: int, sizes: list[int], seed: int = 0):
    """``(params, x, onehot)``: float64 NumPy arrays, Glorot-scaled weights."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        params[f"w{i}"] = rng.standard_normal((a, b)) / np.sqrt(a)
        params[f"b{i}"] = np.zeros(b)
    x = rng.standard_normal((batch, sizes[0]))
    onehot = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]
    return params, x, onehot


def _agrad_grad(params, x, onehot) -> Callable[[], Any]:
    import agrad

    def loss(p):
        return mlp_loss(p, x, onehot, agrad.array_namespace(p["w0"]))

    g = agrad.grad(loss)
    return lambda: g(params)


def _hips_grad(params, x, onehot) -> Callable[[], Any]:
    import autograd
    import autograd.numpy as anp

    g = autograd.grad(lambda p: mlp_loss(p, x, onehot, anp))
    return lambda: g(params)


def _torch_grad(params, x, onehot) -> Callable[[], Any]:
    import array_api_compat.torch as tx
    import torch

    tp = {k: torch.from_numpy(v.copy()).requires_grad_(True) for k, v in params.items()}
    tx_, tt = torch.from_numpy(x), torch.from_numpy(onehot)
    leaves = list(tp.values())

    def run():
        return torch.autograd.grad(mlp_loss(tp, tx_, tt, tx), leaves)

    return run


def _numpy_forward(params, x, onehot) -> Callable[[], Any]:
    return lambda: mlp_loss(params, x, onehot, np)


def _chain_fns(x: np.ndarray) -> dict[str, Callable[[], Any]]:
    import array_api_compat.torch as tx
    import autograd
    import autograd.numpy as anp
    import torch

    import agrad

    ag = agrad.grad(lambda v: chain_loss(v, agrad.array_namespace(v)))
    hg = autograd.grad(lambda v: chain_loss(v, anp))
    tv = torch.from_numpy(x.copy()).requires_grad_(True)
    return {
        "agrad": lambda: ag(x),
        "hips": lambda: hg(x),
        "torch": lambda: torch.autograd.grad(chain_loss(tv, tx), [tv]),
    }


def peak_memory_mib(fn: Callable[[], Any]) -> float:
    """Peak ``tracemalloc`` memory (MiB) allocated while ``fn()`` runs, above the start."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del out
    return (peak - base) / 2**20


def _memory_row(a_fn, p_fn, settings: Settings) -> Row:
    a_vals, p_vals = [], []
    for rep in range(max(3, settings.reps // 2)):
        if rep % 2 == 0:
            a_vals.append(peak_memory_mib(a_fn))
            p_vals.append(peak_memory_mib(p_fn))
        else:
            p_vals.append(peak_memory_mib(p_fn))
            a_vals.append(peak_memory_mib(a_fn))
    row = Row(
        "tape/memory",
        "peak memory, large MLP gradient",
        "agrad (numpy)",
        "HIPS autograd",
        statistics.median(a_vals),
        statistics.median(p_vals),
        1.2,
        "MiB",
        "tracemalloc peak above the start of the call",
        {"agrad": a_vals, "peer": p_vals},
    )
    progress(row)
    return row


def _rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def _growth_row(settings: Settings) -> Row:
    """Resident memory after 10% of the steps vs at the end; 1 MiB of slack allowed."""
    import agrad

    batch, sizes = TINY_MLP if settings.tiny else SMALL_MLP
    params, x, onehot = mlp_problem(batch, sizes)
    g = agrad.grad(lambda p: mlp_loss(p, x, onehot, agrad.array_namespace(p["w0"])))
    opt = agrad.optim.adam(lr=1e-3)
    state = opt.init(params)
    steps = settings.growth_steps
    checkpoint = max(1, steps // 10)
    start_rss = start_objs = 0.0
    for i in range(1, steps + 1):
        params, state = opt.step(params, g(params), state)
        if i == checkpoint:
            gc.collect()
            start_rss, start_objs = _rss_mib(), len(gc.get_objects())
    gc.collect()
    growth = _rss_mib() - start_rss
    objs = len(gc.get_objects()) - start_objs
    row = Row(
        "tape/memory",
        f"RSS growth over {steps} grad+Adam steps",
        "agrad (numpy)",
        "1 MiB allowance",
        max(growth, 0.0),
        1.0,
        1.0,
        "MiB",
        f"measured from step {checkpoint}; gc-tracked objects grew by {objs}",
    )
    progress(row)
    return row


def tape_rows(settings: Settings) -> list[Row]:
    """Every tape-engine row."""
    rows: list[Row] = []
    small = TINY_MLP if settings.tiny else SMALL_MLP
    large = TINY_MLP if settings.tiny else LARGE_MLP
    want = settings.filter

    def keep(name: str) -> bool:
        return not want or want in name

    sp, sx, st = mlp_problem(small[0], small[1])
    name = "grad, small MLP (32; 64-64-64-10)"
    if keep(f"tape {name}"):
        a = ("agrad (numpy)", _agrad_grad(sp, sx, st))
        rows.append(
            timed_row("tape", name, a, ("HIPS autograd", _hips_grad(sp, sx, st)), 0.5, settings)
        )
        rows.append(
            timed_row(
                "tape", name, a, ("torch autograd (CPU)", _torch_grad(sp, sx, st)), None, settings
            )
        )
    lp, lx, lt = mlp_problem(large[0], large[1])
    name = "grad, large MLP (256; 784-512-512-10)"
    if keep(f"tape {name}"):
        a = ("agrad (numpy)", _agrad_grad(lp, lx, lt))
        rows.append(
            timed_row(
                "tape", name, a, ("NumPy forward only", _numpy_forward(lp, lx, lt)), 3.5, settings
            )
        )
        rows.append(
            timed_row("tape", name, a, ("HIPS autograd", _hips_grad(lp, lx, lt)), None, settings)
        )
        rows.append(
            timed_row(
                "tape", name, a, ("torch autograd (CPU)", _torch_grad(lp, lx, lt)), None, settings
            )
        )
    name = "grad, chain of 300 elementwise ops on 4 elements"
    if keep(f"tape {name}"):
        fns = _chain_fns(np.linspace(0.1, 0.4, 4))
        a = ("agrad (numpy)", fns["agrad"])
        rows.append(timed_row("tape", name, a, ("HIPS autograd", fns["hips"]), 1 / 3, settings))
        rows.append(
            timed_row("tape", name, a, ("torch autograd (CPU)", fns["torch"]), None, settings)
        )
    if keep("tape/memory peak memory"):
        rows.append(_memory_row(_agrad_grad(lp, lx, lt), _hips_grad(lp, lx, lt), settings))
    if keep("tape/memory RSS growth"):
        rows.append(_growth_row(settings))
    return rows


def profile_tape(settings: Settings, top: int = 15) -> str:
    """cProfile of agrad's small-MLP and chain gradients: the top functions by own time."""
    import cProfile
    import io
    import pstats

    import agrad

    out = io.StringIO()
    sp, sx, st = mlp_problem(*(TINY_MLP if settings.tiny else SMALL_MLP))
    lp, lx, lt = mlp_problem(*(TINY_MLP if settings.tiny else LARGE_MLP))
    x = np.linspace(0.1, 0.4, 4)
    cases = {
        "small MLP gradient, 200 calls": (_agrad_grad(sp, sx, st), 200),
        "large MLP gradient, 5 calls": (_agrad_grad(lp, lx, lt), 5),
        "chain of 300 ops, 50 calls": (
            lambda: agrad.grad(lambda v: chain_loss(v, agrad.array_namespace(v)))(x),
            50,
        ),
    }
    for title, (fn, n) in cases.items():
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            fn()
        prof.disable()
        out.write(f"\n### {title}\n")
        stats = pstats.Stats(prof, stream=out)
        stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()
