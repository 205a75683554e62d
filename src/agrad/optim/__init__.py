"""Optimizers written once against the Array API standard: torch.optim's and optax's.

``opt = agrad.optim.adam(lr=1e-3)``; ``state = opt.init(params)``;
``updates, state = opt.update(grads, state, params)``;
``params = agrad.optim.apply_updates(params, updates)``, or both at once with
``params, state = opt.step(params, grads, state)``.
"""

from agrad.optim.base import ChainState, GradientTransformation, Optimizer, apply_updates, chain
from agrad.optim.packed import Packed, pack
from agrad.optim.torch_family import (
    adadelta,
    adagrad,
    adam,
    adamax,
    adamw,
    nadam,
    radam,
    rmsprop,
    sgd,
)

__all__ = [
    "ChainState",
    "GradientTransformation",
    "Optimizer",
    "Packed",
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "apply_updates",
    "chain",
    "nadam",
    "pack",
    "radam",
    "rmsprop",
    "sgd",
]
