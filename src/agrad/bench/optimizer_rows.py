"""Optimizer-step comparisons: agrad against torch.optim and a hand-written NumPy loop.

Three float32 parameter sets (4 x 4096x1024; 100 x 256x256 plus 100 biases; 1000 x
64) and two rules (Adam, SGD with momentum 0.9). Rows:

- ``torch``: ``agrad.optim.<rule>().step`` on torch tensors vs ``torch.optim.<Rule>(foreach=True)``;
- ``numpy``: the same call on NumPy arrays vs an in-place NumPy loop doing the same arithmetic;
- ``packed``: :func:`agrad.optim.pack` (one flat buffer) on torch vs torch foreach and fused;
- ``generic`` (full runs only): the namespace-generic reference path, fast paths off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from agrad.bench._harness import Row, Settings, timed_row

__all__ = ["optimizer_rows", "PARAM_SETS", "numpy_adam_loop", "numpy_sgd_loop"]

LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
MOMENTUM = 0.9

PARAM_SETS: dict[str, list[tuple[int, ...]]] = {
    "4 x 4096x1024": [(4096, 1024)] * 4,
    "100 x 256x256 + 100 biases": [(256, 256), (256,)] * 100,
    "1000 x 64": [(64,)] * 1000,
}
TINY_SETS: dict[str, list[tuple[int, ...]]] = {
    "4 x 4096x1024": [(64, 32)] * 2,
    "100 x 256x256 + 100 biases": [(16, 16), (16,)] * 3,
    "1000 x 64": [(8,)] * 20,
}


def numpy_adam_loop(params, grads, ms, vs, t: int) -> None:
    """The hand-written in-place NumPy Adam step the ``numpy`` rows compare against."""
    b1, b2 = BETAS
    step_size = LR / (1 - b1**t)
    bc2_sqrt = math.sqrt(1 - b2**t)
    for p, g, m, v in zip(params, grads, ms, vs):
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denom = np.sqrt(v)
        denom /= bc2_sqrt
        denom += EPS
        p -= step_size * m / denom


def numpy_sgd_loop(params, grads, bufs, t: int) -> None:
    """The hand-written in-place NumPy SGD-momentum step the ``numpy`` rows compare against."""
    for p, g, b in zip(params, grads, bufs):
        if t == 1:
            b[...] = g
        else:
            b *= MOMENTUM
            b += g
        p -= LR * b


def _arrays(shapes, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def _agrad_opt(rule: str):
    import agrad

    if rule == "adam":
        return agrad.optim.adam(lr=LR, betas=BETAS, eps=EPS)
    return agrad.optim.sgd(lr=LR, momentum=MOMENTUM)


def _agrad_step(rule: str, params: list[Any], grads: list[Any]) -> Callable[[], None]:
    opt = _agrad_opt(rule)
    box = [opt.init(params)]

    def step() -> None:
        _, box[0] = opt.step(params, grads, box[0])

    return step


def _torch_step(rule: str, params, grads, **flags) -> Callable[[], Any]:
    import torch

    ps = [torch.from_numpy(p.copy()).requires_grad_(True) for p in params]
    for p, g in zip(ps, grads):
        p.grad = torch.from_numpy(g.copy())
    if rule == "adam":
        opt = torch.optim.Adam(ps, lr=LR, betas=BETAS, eps=EPS, **flags)
    else:
        opt = torch.optim.SGD(ps, lr=LR, momentum=MOMENTUM, **flags)
    return opt.step


def _numpy_loop(rule: str, params, grads) -> Callable[[], None]:
    ps = [p.copy() for p in params]
    bufs = [[np.zeros_like(p) for p in ps] for _ in range(2 if rule == "adam" else 1)]
    count = [0]

    def step() -> None:
        count[0] += 1
        if rule == "adam":
            numpy_adam_loop(ps, grads, bufs[0], bufs[1], count[0])
        else:
            numpy_sgd_loop(ps, grads, bufs[0], count[0])

    return step


def _packed_step(rule: str, params, grads) -> Callable[[], None]:
    import torch

    import agrad

    packed = agrad.optim.pack([torch.from_numpy(p.copy()) for p in params])
    views = packed.grad_views()
    for v, g in zip(views, grads):
        v.copy_(torch.from_numpy(g))
    flat = packed.flatten(views)
    opt = _agrad_opt(rule)
    box = [opt.init(packed.buffers)]

    def step() -> None:
        _, box[0] = opt.step(packed.buffers, flat, box[0])

    return step


def _generic_step(rule: str, params, grads) -> Callable[[], None]:
    """The namespace-generic reference path (fast paths off) on a copy of ``params``."""
    from agrad.optim import fastpath

    step = _agrad_step(rule, [p.copy() for p in params], grads)

    def run() -> None:
        fastpath.enabled = False
        try:
            step()
        finally:
            fastpath.enabled = True

    return run


def optimizer_rows(settings: Settings) -> list[Row]:
    """Every optimizer-step row, one parameter set at a time (memory is freed between)."""
    import torch

    sets = TINY_SETS if settings.tiny else PARAM_SETS
    rows: list[Row] = []
    for set_name, shapes in sets.items():
        params, grads = _arrays(shapes, 0), _arrays(shapes, 1)
        t_params = [torch.from_numpy(p.copy()) for p in params]
        t_grads = [torch.from_numpy(g.copy()) for g in grads]
        large, small = set_name.startswith("4 "), set_name.startswith("1000")
        for rule, label in (("adam", "Adam"), ("sgd", "SGD-momentum")):
            torch_peer = ("torch foreach", partial(_torch_step, rule, params, grads, foreach=True))
            loop = ("numpy in-place loop", partial(_numpy_loop, rule, params, grads))
            packed = ("agrad packed (torch)", partial(_packed_step, rule, params, grads))
            specs = [
                (
                    "torch",
                    (f"agrad.optim.{rule} (torch)", partial(_agrad_step, rule, t_params, t_grads)),
                    torch_peer,
                    1.0,
                ),
                (
                    "numpy",
                    (f"agrad.optim.{rule} (numpy)", partial(_agrad_step, rule, params, grads)),
                    loop,
                    1.1,
                ),
                ("packed", packed, torch_peer, 0.1 if small else None),
                (
                    "packed",
                    packed,
                    ("torch fused", partial(_torch_step, rule, params, grads, fused=True)),
                    1.2 if large else None,
                ),
            ]
            if not settings.quick:
                generic = partial(_generic_step, rule, params, grads)
                specs.append(
                    ("generic", (f"agrad.optim.{rule} generic (numpy)", generic), loop, None)
                )
            for kind, (a_label, a_make), (p_label, p_make), target in specs:
                name = f"{label} step, {set_name}"
                if settings.filter and settings.filter not in f"{kind} {name}":
                    continue
                a_fn, p_fn = a_make(), p_make()
                rows.append(
                    timed_row(
                        f"optimizer/{kind}",
                        name,
                        (a_label, a_fn),
                        (p_label, p_fn),
                        target,
                        settings,
                    )
                )
                del a_fn, p_fn
    return rows
