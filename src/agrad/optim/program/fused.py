"""Recognise programs that are exactly one of torch's fused optimizer kernels.

torch ships one-pass kernels for four optimizers (``torch._fused_adam_``,
``_fused_adamw_``, ``_fused_sgd_``, ``_fused_adagrad_``: what
``torch.optim.<X>(fused=True)`` runs). :func:`recognise` decides whether a recorded
program computes what one of them computes: it takes the hyperparameters the
optimizer states (``opt.hyperparams``) as a *hint*, builds the reference rule of each
kernel with them, records it on the same leaves and compares the two programs node
for node, constants included. Only an exact match counts, so the decision rests on
the program: an optimizer called ``adam`` whose rule or hyperparameters differ from
what it states is not recognised (it runs as a multi-tensor program), and any rule,
a user's included, that records to Adam's exact program is.

The kernels compute float16 and bfloat16 in float32 and round once, as the generic
path does; they agree with the generic path to rounding (tests/test_fastpath.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agrad.optim.program.ir import Program
from agrad.optim.program.recorder import NotRecordable, record

__all__ = ["recognise"]

_ADAM_KEYS = {
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "amsgrad",
    "maximize",
    "decoupled_weight_decay",
}
_SGD_KEYS = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"}
_ADAGRAD_KEYS = {"lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps", "maximize"}


def _candidates(hp: dict[str, Any]) -> list[tuple[str, Any]]:
    from agrad.optim import torch_family

    keys = set(hp)
    if callable(hp.get("lr")) or type(hp.get("lr")) not in (int, float):
        return []
    out = []
    for name, allowed, make in (
        ("adam", _ADAM_KEYS, torch_family.adam),
        ("sgd", _SGD_KEYS, torch_family.sgd),
        ("adagrad", _ADAGRAD_KEYS, torch_family.adagrad),
    ):
        if keys <= allowed:
            try:
                out.append((name, make(**hp)))
            except (TypeError, ValueError):
                continue
    return out


def recognise(
    program: Program, opt: Any, xp: Any, params: list, grads: list, treedef: Any, state: Any
) -> Callable[..., None] | None:
    """A runner of the fused kernel that ``program`` is, or ``None``.

    The runner is called as ``run(groups, count)``: ``groups`` lists, per group of
    parameters of one dtype, the lists of its columns (parameters, gradients, state
    arrays in the state's order), ``count`` the state's step count before the step.
    """
    for name, ref in _candidates(opt.hyperparams):
        try:
            ref_program = record(ref, xp, params, grads, treedef, state)
        except NotRecordable:
            continue
        if ref_program == program:
            return _RUNNERS[name](ref.hyperparams)
    return None


def _steps(torch: Any, like: Any, t: int, n: int) -> list[Any]:
    return [torch.tensor(float(t), device=like.device)] * n


def _adam(hp: dict[str, Any]) -> Callable[..., None]:
    import torch

    beta1, beta2 = hp["betas"]
    amsgrad, wd = bool(hp["amsgrad"]), hp["weight_decay"]
    kernel = torch._fused_adamw_ if hp["decoupled_weight_decay"] and wd != 0 else torch._fused_adam_

    def run(groups: list[list[list[Any]]], count: int) -> None:
        for cols in groups:
            p, g, m, v = cols[:4]
            vmax = cols[4] if amsgrad else []
            kernel(
                p, g, m, v, vmax, _steps(torch, p[0], count + 1, len(p)),
                lr=hp["lr"], beta1=beta1, beta2=beta2, weight_decay=wd, eps=hp["eps"],
                amsgrad=amsgrad, maximize=bool(hp["maximize"]),
            )  # fmt: skip

    return run


def _sgd(hp: dict[str, Any]) -> Callable[..., None]:
    import torch

    momentum = hp["momentum"]

    def run(groups: list[list[list[Any]]], count: int) -> None:
        for cols in groups:
            p, g = cols[:2]
            torch._fused_sgd_(
                p, g, cols[2] if momentum != 0 else [], weight_decay=hp["weight_decay"],
                momentum=momentum, lr=hp["lr"], dampening=hp["dampening"],
                nesterov=bool(hp["nesterov"]), maximize=bool(hp["maximize"]),
                is_first_step=count == 0,
            )  # fmt: skip

    return run


def _adagrad(hp: dict[str, Any]) -> Callable[..., None]:
    import torch

    def run(groups: list[list[list[Any]]], count: int) -> None:
        for cols in groups:
            p, g, s = cols[:3]
            torch._fused_adagrad_(
                p, g, s, _steps(torch, p[0], count + 1, len(p)), lr=hp["lr"],
                lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"], eps=hp["eps"],
                maximize=bool(hp["maximize"]),
            )  # fmt: skip

    return run


_RUNNERS = {"adam": _adam, "sgd": _sgd, "adagrad": _adagrad}
