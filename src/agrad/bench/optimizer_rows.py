"""Optimizer-step comparisons: every agrad optimizer against its peers, on three sets.

Three float32 parameter sets (4 x 2048x1024; 100 x 256x256 plus 100 biases; 1000 x
64). Each row times ``opt.step(params, grads, state)`` (in place) against a peer:

- ``torch``: every optimizer with a ``torch.optim`` counterpart against
  ``torch.optim.<X>(foreach=True)`` with the same options (target 1.0; Muon, which
  torch implements without foreach, against its default, on a set's matrices of at
  most 256x256 only);
- ``torch fused``: Adam, AdamW, SGD and Adagrad against ``torch.optim.<X>(fused=True)``
  (target 1.1);
- ``torch frontend`` and ``torch frontend fused``: SGD-momentum and Adam through
  :class:`agrad.optim.TorchOptimizer` (``opt.step()`` on parameters with ``.grad``, as a
  training loop calls it) against ``torch.optim.<X>(foreach=True)`` and
  ``torch.optim.<X>(fused=True)`` (for information);
- ``numpy``: Adam, SGD-momentum, RMSprop and NAdam against a hand-written in-place
  NumPy loop carried here (target 1.0);
- ``numpy vs generic``: every other optimizer against its own generic path (the
  reference, fast route off; target 0.5: at least 2x faster);
- ``torch vs generic``: the optimizers without a torch.optim counterpart (for
  information);
- ``user rule``: a user's AdaBelief, written as docs/custom-optimizer.md shows,
  against the built-in Adam (target 1.3);
- ``packed``: :func:`agrad.optim.pack` (one flat buffer) against torch foreach;
- ``numpy host kernels``: every optimizer's NumPy step against the same step with the
  compiled host kernels off (:mod:`agrad.optim.program.host_exec`; for information).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from agrad.bench._harness import Row, Settings, timed_row

__all__ = [
    "AGRAD_ONLY",
    "NUMPY_LOOPS",
    "OPTIMIZERS",
    "PARAM_SETS",
    "adabelief",
    "numpy_adam_loop",
    "numpy_nadam_loop",
    "numpy_rmsprop_loop",
    "numpy_sgd_loop",
    "optimizer_rows",
]

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
MOMENTUM = 0.9
ALPHA = 0.99
MOMENTUM_DECAY = 4e-3

PARAM_SETS: dict[str, list[tuple[int, ...]]] = {
    "4 x 2048x1024": [(2048, 1024)] * 4,
    "100 x 256x256 + 100 biases": [(256, 256), (256,)] * 100,
    "1000 x 64": [(64,)] * 1000,
}
TINY_SETS: dict[str, list[tuple[int, ...]]] = {
    "4 x 2048x1024": [(64, 32)] * 2,
    "100 x 256x256 + 100 biases": [(16, 16), (16,)] * 3,
    "1000 x 64": [(8,)] * 20,
}

#: name -> (agrad options, torch.optim class name or None, torch options)
OPTIMIZERS: dict[str, tuple[dict[str, Any], str | None]] = {
    "adam": ({"lr": LR, "betas": BETAS, "eps": EPS}, "Adam"),
    "adamw": ({"lr": LR, "betas": BETAS, "eps": EPS, "weight_decay": 1e-2}, "AdamW"),
    "sgd": ({"lr": LR, "momentum": MOMENTUM}, "SGD"),
    "rmsprop": ({"lr": LR, "alpha": ALPHA, "eps": EPS}, "RMSprop"),
    "nadam": ({"lr": LR, "betas": BETAS, "eps": EPS}, "NAdam"),
    "radam": ({"lr": LR, "betas": BETAS, "eps": EPS}, "RAdam"),
    "adagrad": ({"lr": LR}, "Adagrad"),
    "adamax": ({"lr": LR}, "Adamax"),
    "adadelta": ({"lr": 1.0}, "Adadelta"),
    "rprop": ({"lr": LR}, "Rprop"),
    "asgd": ({"lr": LR}, "ASGD"),
    "adafactor_torch": ({"lr": LR}, "Adafactor"),
    "muon": ({"lr": LR}, "Muon"),
    "lion": ({"lr": LR}, None),
    "lamb": ({"lr": LR}, None),
    "lars": ({"lr": LR}, None),
    "adafactor": ({"lr": LR}, None),
}
FUSED = ("adam", "adamw", "sgd", "adagrad")
#: optimizers the ``torch frontend`` rows run through agrad.optim.TorchOptimizer
FRONTEND = ("sgd", "adam")
#: torch.optim classes without a foreach implementation (compared with their default)
NO_FOREACH = ("Muon",)
#: agrad options the torch class has no name for: what torch does by default
#: (torch.optim.Muon runs its Newton-Schulz iteration in bfloat16)
AGRAD_ONLY: dict[str, dict[str, Any]] = {"muon": {"ns_dtype": "bfloat16"}}
#: optimizers for 2-D parameters only: their rows take the set's 2-D arrays of at most
#: MATRIX_MAX elements (a Newton-Schulz step on 2048x1024 takes minutes on one thread)
MATRIX_ONLY = ("muon",)
MATRIX_MAX = 65536


# -- the hand-written NumPy loops the ``numpy`` rows compare against -------------------
def numpy_adam_loop(params, grads, bufs, t: int) -> None:
    """In-place NumPy Adam: ``bufs = (exp_avg, exp_avg_sq)``."""
    b1, b2 = BETAS
    step_size = LR / (1 - b1**t)
    bc2_sqrt = math.sqrt(1 - b2**t)
    for p, g, m, v in zip(params, grads, *bufs):
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denom = np.sqrt(v)
        denom /= bc2_sqrt
        denom += EPS
        p -= step_size * m / denom


def numpy_sgd_loop(params, grads, bufs, t: int) -> None:
    """In-place NumPy SGD with momentum: ``bufs = (momentum_buffer,)``."""
    for p, g, b in zip(params, grads, *bufs):
        if t == 1:
            b[...] = g
        else:
            b *= MOMENTUM
            b += g
        p -= LR * b


def numpy_rmsprop_loop(params, grads, bufs, t: int) -> None:
    """In-place NumPy RMSprop: ``bufs = (square_avg,)``."""
    for p, g, v in zip(params, grads, *bufs):
        v *= ALPHA
        v += (1 - ALPHA) * g * g
        avg = np.sqrt(v)
        avg += EPS
        p -= LR * g / avg


def numpy_nadam_loop(params, grads, bufs, t: int, mu_product: list[float]) -> None:
    """In-place NumPy NAdam: ``bufs = (exp_avg, exp_avg_sq)``; ``mu_product`` a 1-list."""
    b1, b2 = BETAS
    mu = b1 * (1.0 - 0.5 * 0.96 ** (t * MOMENTUM_DECAY))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * MOMENTUM_DECAY))
    mu_product[0] *= mu
    s1 = LR * (1.0 - mu) / (1.0 - mu_product[0])
    s2 = LR * mu_next / (1.0 - mu_product[0] * mu_next)
    bc2 = 1 - b2**t
    for p, g, m, v in zip(params, grads, *bufs):
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denom = v / bc2
        np.sqrt(denom, out=denom)
        denom += EPS
        p -= s1 * g / denom
        p -= s2 * m / denom


#: optimizer -> (loop, number of state buffers)
NUMPY_LOOPS: dict[str, tuple[Callable[..., None], int]] = {
    "adam": (numpy_adam_loop, 2),
    "sgd": (numpy_sgd_loop, 1),
    "rmsprop": (numpy_rmsprop_loop, 1),
    "nadam": (numpy_nadam_loop, 2),
}


# -- a user's rule -----------------------------------------------------------------------
class AdaBeliefState(NamedTuple):
    count: int
    m: Any
    s: Any


def adabelief(lr: float = LR, b1: float = BETAS[0], b2: float = BETAS[1], eps: float = EPS):
    """AdaBelief (Zhuang et al., 2020) as a user writes it (docs/custom-optimizer.md).

    .. math:: m_t = \\beta_1 m + (1-\\beta_1) g,\\quad
              s_t = \\beta_2 s + (1-\\beta_2)(g - m_t)^2,\\quad
              \\theta_t = \\theta - \\frac{\\gamma}{1-\\beta_1^t}
                  \\frac{m_t}{\\sqrt{s_t/(1-\\beta_2^t)} + \\epsilon}
    """
    import agrad
    from agrad.pytree import tree_map

    def init(params):
        zeros = lambda p: agrad.array_namespace(p).zeros_like(p)  # noqa: E731
        return AdaBeliefState(0, tree_map(zeros, params), tree_map(zeros, params))

    def update(grads, state, params=None):
        t = state.count + 1
        m = tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state.m, grads)
        s = tree_map(lambda s, g, m: b2 * s + (1.0 - b2) * (g - m) * (g - m), state.s, grads, m)

        def direction(m, s):
            xp = agrad.array_namespace(m)
            return (-lr / (1 - b1**t)) * m / (xp.sqrt(s / (1 - b2**t)) + eps)

        return tree_map(direction, m, s), AdaBeliefState(t, m, s)

    hyper = {"lr": lr, "b1": b1, "b2": b2, "eps": eps}
    return agrad.optim.GradientTransformation("adabelief", init, update, hyper, needs_params=False)


# -- contenders -----------------------------------------------------------------------
def _arrays(shapes, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def _agrad_opt(name: str, torch_side: bool = False):
    import agrad

    if name == "adabelief":
        return adabelief()
    extra = AGRAD_ONLY.get(name, {}) if torch_side else {}
    return getattr(agrad.optim, name)(**OPTIMIZERS[name][0], **extra)


def _agrad_step(
    name: str, params: list[Any], grads: list[Any], fast: bool = True, host: bool = True
):
    from agrad.optim import fastpath
    from agrad.optim.program import host_exec

    torch_side = hasattr(params[0], "clone")
    params = [p.clone() if torch_side else p.copy() for p in params]
    opt = _agrad_opt(name, torch_side)
    box = [opt.init(params)]

    def step() -> None:
        fastpath.enabled = fast
        on = host_exec.enabled
        host_exec.enabled = on and host
        try:
            _, box[0] = opt.step(params, grads, box[0])
        finally:
            fastpath.enabled = True
            host_exec.enabled = on

    return step


def _torch_step(name: str, params, grads, **flags) -> Callable[[], Any]:
    import torch

    kw, cls = OPTIMIZERS[name]
    return getattr(torch.optim, cls)(_torch_params(params, grads), **kw, **flags).step


def _torch_params(params, grads) -> list[Any]:
    """Leaf tensors that require grad, with ``.grad`` set, as a training loop has them."""
    import torch

    ps = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
    for p, g in zip(ps, grads):
        p.grad = torch.from_numpy(g.copy())
    return ps


def _frontend_step(name: str, params, grads) -> Callable[[], Any]:
    """``agrad.optim.TorchOptimizer(params, agrad.optim.<name>, ...).step``."""
    import agrad

    kw, _ = OPTIMIZERS[name]
    factory = getattr(agrad.optim, name)
    return agrad.optim.TorchOptimizer(_torch_params(params, grads), factory, **kw).step


def _numpy_loop(name: str, params, grads) -> Callable[[], None]:
    loop, n_bufs = NUMPY_LOOPS[name]
    ps = [p.copy() for p in params]
    bufs = [[np.zeros_like(p) for p in ps] for _ in range(n_bufs)]
    count, mu_product = [0], [1.0]

    def step() -> None:
        count[0] += 1
        if name == "nadam":
            loop(ps, grads, bufs, count[0], mu_product)
        else:
            loop(ps, grads, bufs, count[0])

    return step


def _packed_step(name: str, params, grads) -> Callable[[], None]:
    import torch

    import agrad

    packed = agrad.optim.pack([torch.from_numpy(p.copy()) for p in params])
    views = packed.grad_views()
    for v, g in zip(views, grads):
        v.copy_(torch.from_numpy(g))
    flat = packed.flatten(views)
    opt = _agrad_opt(name)
    box = [opt.init(packed.buffers)]

    def step() -> None:
        _, box[0] = opt.step(packed.buffers, flat, box[0])

    return step


def _specs(set_name: str, params, grads, t_params, t_grads, settings: Settings) -> list:
    """``(group, name, (label, make), (label, make), target)`` for one parameter set."""
    specs = []
    keep = [i for i, p in enumerate(params) if p.ndim == 2 and p.size <= MATRIX_MAX]
    for name, (_, cls) in OPTIMIZERS.items():
        if name in MATRIX_ONLY:
            if not keep:
                continue
            ps, gs = [params[i] for i in keep], [grads[i] for i in keep]
            tps, tgs = [t_params[i] for i in keep], [t_grads[i] for i in keep]
        else:
            ps, gs, tps, tgs = params, grads, t_params, t_grads
        mine_t = (f"agrad.optim.{name} (torch)", partial(_agrad_step, name, tps, tgs))
        mine_n = (f"agrad.optim.{name} (numpy)", partial(_agrad_step, name, ps, gs))
        if cls is not None:
            if cls in NO_FOREACH:
                peer = (
                    f"torch.optim.{cls} (no foreach)",
                    partial(_torch_step, name, ps, gs),
                )
            else:
                flags = {"foreach": True}
                peer = (
                    f"torch.optim.{cls} foreach",
                    partial(_torch_step, name, ps, gs, **flags),
                )
            specs.append(("torch", name, mine_t, peer, 1.0))
            if name in FUSED:
                fused = partial(_torch_step, name, ps, gs, fused=True)
                specs.append(
                    ("torch fused", name, mine_t, (f"torch.optim.{cls} fused", fused), 1.1)
                )
            if name in FRONTEND:
                specs += _frontend_specs(name, cls, ps, gs)
        else:
            generic_t = partial(_agrad_step, name, tps, tgs, fast=False)
            specs.append(
                ("torch vs generic", name, mine_t, ("generic path (torch)", generic_t), None)
            )
        off = partial(_agrad_step, name, ps, gs, host=False)
        specs.append(("numpy host kernels", name, mine_n, ("host kernels off (numpy)", off), None))
        if name in NUMPY_LOOPS:
            loop = ("numpy in-place loop", partial(_numpy_loop, name, ps, gs))
            specs.append(("numpy", name, mine_n, loop, 1.0))
        else:
            generic = partial(_agrad_step, name, ps, gs, fast=False)
            specs.append(("numpy vs generic", name, mine_n, ("generic path (numpy)", generic), 0.5))
    for lib, ps, gs in (("numpy", params, grads), ("torch", t_params, t_grads)):
        user = ("user AdaBelief", partial(_agrad_step, "adabelief", ps, gs))
        adam = ("built-in adam", partial(_agrad_step, "adam", ps, gs))
        specs.append((f"user rule ({lib})", "adabelief", user, adam, 1.3))
    packed = ("agrad packed (torch)", partial(_packed_step, "adam", params, grads))
    foreach = (
        "torch.optim.Adam foreach",
        partial(_torch_step, "adam", params, grads, foreach=True),
    )
    specs.append(("packed", "adam", packed, foreach, None))
    return specs


def _frontend_specs(name: str, cls: str, params, grads) -> list[tuple]:
    """The ``torch frontend`` rows: TorchOptimizer against torch.optim foreach and fused."""
    front = (f"agrad TorchOptimizer({name})", partial(_frontend_step, name, params, grads))
    specs = []
    for flag, group in (("foreach", "torch frontend"), ("fused", "torch frontend fused")):
        peer = partial(_torch_step, name, params, grads, **{flag: True})
        specs.append((group, name, front, (f"torch.optim.{cls} {flag}", peer), None))
    return specs


def optimizer_rows(settings: Settings) -> list[Row]:
    """Every optimizer-step row, one parameter set at a time (memory is freed between)."""
    import torch

    sets = TINY_SETS if settings.tiny else PARAM_SETS
    rows: list[Row] = []
    for set_name, shapes in sets.items():
        params, grads = _arrays(shapes, 0), _arrays(shapes, 1)
        t_params = [torch.from_numpy(p.copy()) for p in params]
        t_grads = [torch.from_numpy(g.copy()) for g in grads]
        for group, name, (a_label, a_make), (p_label, p_make), target in _specs(
            set_name, params, grads, t_params, t_grads, settings
        ):
            row_name = f"{name} step, {set_name}"
            if settings.filter and settings.filter not in f"optimizer/{group} {row_name}":
                continue
            a_fn, p_fn = a_make(), p_make()
            rows.append(
                timed_row(
                    f"optimizer/{group}",
                    row_name,
                    (a_label, a_fn),
                    (p_label, p_fn),
                    target,
                    settings,
                )
            )
            del a_fn, p_fn
        rows += _memory_rows(set_name, params, grads, t_params, t_grads, settings)
    return rows


def _memory_rows(set_name, params, grads, t_params, t_grads, settings: Settings) -> list[Row]:
    """Peak extra memory of one step over the parameters' size (NumPy and torch).

    NumPy: :mod:`tracemalloc` (NumPy reports its buffers to it). torch: its CPU
    allocator is not traced by :mod:`tracemalloc`, so the step is run twice, once under
    :mod:`tracemalloc` (Python objects) and once under ``torch.profiler`` with
    ``profile_memory=True`` (every allocation and free of torch's allocator, replayed in
    time order for the peak); the row is the sum of the two peaks, an upper bound.
    """
    rows = []
    param_mib = sum(p.nbytes for p in params) / 2**20
    for lib, ps, gs in (("numpy", params, grads), ("torch", t_params, t_grads)):
        for name in ("adam", "rmsprop", "nadam", "lion", "sgd"):
            where = "" if lib == "numpy" else " (torch)"
            row_name = f"{name} step peak memory{where}, {set_name}"
            if settings.filter and settings.filter not in f"optimizer/memory {row_name}":
                continue
            step = _agrad_step(name, ps, gs)
            step()
            step()  # recorded, scratch made
            peak, growth = _python_peak(step)
            note = f"growth {growth / 2**20:.3f} MiB over the step"
            if lib == "torch":
                allocator = _torch_allocator_peak(step)
                note = (
                    f"Python {peak / 2**20:.3f} + torch allocator {allocator / 2**20:.3f} MiB; "
                    + note
                )
                peak += allocator
            rows.append(
                Row(
                    "optimizer/memory",
                    row_name,
                    f"agrad.optim.{name} ({lib}) peak extra",
                    "one parameter-sized buffer",
                    peak / 2**20,
                    param_mib,
                    1.0,
                    "MiB",
                    note,
                )
            )
    return rows


def _python_peak(step: Callable[[], None]) -> tuple[int, int]:
    """Peak and net bytes that ``step`` allocates through Python's allocators."""
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        step()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, current - base


def _torch_allocator_peak(step: Callable[[], None]) -> int:
    """Peak bytes that ``step`` holds from torch's CPU allocator (``torch.profiler``)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.profiler.kineto_results.events()
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    current = peak = 0
    for _, n in deltas:
        current += n
        peak = max(peak, current)
    return peak
