"""Optimizers written once against the Array API standard: torch.optim's and optax's.

``opt = agrad.optim.adam(lr=1e-3)``; ``state = opt.init(params)``;
``updates, state = opt.update(grads, state, params)``;
``params = agrad.optim.apply_updates(params, updates)``, or both at once with
``params, state = opt.step(params, grads, state)``. Transforms compose with
:func:`chain`; learning rates may be schedules (:mod:`agrad.optim.schedules`);
states save and load across frameworks (:func:`save`, :func:`load`).
"""

from agrad.optim import schedules
from agrad.optim.base import (
    ChainState,
    GradientTransformation,
    Hyperparams,
    Optimizer,
    apply_updates,
    chain,
)
from agrad.optim.inject import InjectHyperparamsState, inject_hyperparams
from agrad.optim.optax_bridge import from_optax, to_optax
from agrad.optim.optax_family import (
    adafactor,
    clip_by_block_rms,
    lamb,
    lars,
    lion,
    scale_by_adam,
    scale_by_factored_rms,
    scale_by_lion,
    scale_by_param_block_rms,
    scale_by_trust_ratio,
)
from agrad.optim.packed import Packed, pack
from agrad.optim.schedules import (
    constant,
    constant_lr,
    cosine_annealing_lr,
    cosine_annealing_warm_restarts,
    exponential_lr,
    join,
    linear_lr,
    multistep_lr,
    one_cycle_lr,
    polynomial_lr,
    step_lr,
    warmup_cosine,
)
from agrad.optim.serialization import load, save
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
from agrad.optim.transforms import (
    EmaParamsState,
    add_decayed_weights,
    apply_if_finite,
    clip,
    clip_by_global_norm,
    ema_params,
    find_state,
    global_norm,
    masked,
    multi_steps,
    partition,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_values,
    trace,
)

__all__ = [
    "ChainState",
    "EmaParamsState",
    "GradientTransformation",
    "Hyperparams",
    "InjectHyperparamsState",
    "Optimizer",
    "Packed",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "add_decayed_weights",
    "apply_if_finite",
    "apply_updates",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "constant",
    "constant_lr",
    "cosine_annealing_lr",
    "cosine_annealing_warm_restarts",
    "ema_params",
    "exponential_lr",
    "find_state",
    "from_optax",
    "global_norm",
    "inject_hyperparams",
    "join",
    "lamb",
    "lars",
    "linear_lr",
    "lion",
    "load",
    "masked",
    "multi_steps",
    "multistep_lr",
    "nadam",
    "one_cycle_lr",
    "pack",
    "partition",
    "polynomial_lr",
    "radam",
    "rmsprop",
    "save",
    "scale_by_adam",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_param_block_rms",
    "scale_by_schedule",
    "scale_by_trust_ratio",
    "scale_values",
    "schedules",
    "sgd",
    "step_lr",
    "to_optax",
    "trace",
    "warmup_cosine",
]
