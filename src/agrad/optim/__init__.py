"""Optimizers written once against the Array API standard: torch.optim's and optax's.

``opt = agrad.optim.adam(lr=1e-3)``; ``state = opt.init(params)``;
``updates, state = opt.update(grads, state, params)``;
``params = agrad.optim.apply_updates(params, updates)``, or both at once with
``params, state = opt.step(params, grads, state)``. Transforms compose with
:func:`chain`; learning rates may be schedules (:mod:`agrad.optim.schedules`);
states save and load across frameworks (:func:`save`, :func:`load`). Any optimizer
is a ``torch.optim.Optimizer`` through :class:`TorchOptimizer`.
"""

from typing import TYPE_CHECKING

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
from agrad.optim.lbfgs import LBFGS, LBFGSState, lbfgs
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
from agrad.optim.optax_more import (
    LookaheadState,
    ScheduleFreeState,
    adabelief,
    adan,
    lookahead,
    novograd,
    scale_by_adan,
    scale_by_belief,
    scale_by_novograd,
    scale_by_rms,
    scale_by_sign,
    scale_by_yogi,
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    sign_sgd,
    signum,
    yogi,
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
from agrad.optim.serialization import load, save, state_types
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
from agrad.optim.torch_more import adafactor_torch, asgd, muon, rprop, sparse_adam
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

if TYPE_CHECKING:  # imported on first use (it imports torch): see __getattr__
    from agrad.optim.torch_frontend import TorchOptimizer

__all__ = [
    "ChainState",
    "EmaParamsState",
    "GradientTransformation",
    "Hyperparams",
    "InjectHyperparamsState",
    "LBFGS",
    "LBFGSState",
    "LookaheadState",
    "Optimizer",
    "Packed",
    "ScheduleFreeState",
    "adabelief",
    "adadelta",
    "adafactor",
    "adafactor_torch",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "adan",
    "add_decayed_weights",
    "apply_if_finite",
    "apply_updates",
    "asgd",
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
    "lbfgs",
    "linear_lr",
    "lion",
    "load",
    "lookahead",
    "masked",
    "multi_steps",
    "multistep_lr",
    "muon",
    "nadam",
    "novograd",
    "one_cycle_lr",
    "pack",
    "partition",
    "polynomial_lr",
    "radam",
    "rmsprop",
    "rprop",
    "save",
    "scale_by_adam",
    "scale_by_adan",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_novograd",
    "scale_by_param_block_rms",
    "scale_by_rms",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "scale_values",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedules",
    "sgd",
    "sign_sgd",
    "signum",
    "sparse_adam",
    "state_types",
    "step_lr",
    "to_optax",
    "trace",
    "warmup_cosine",
    "yogi",
    "TorchOptimizer",
]


def __getattr__(name: str):
    """``TorchOptimizer`` is imported on first use, so ``import agrad.optim`` never imports torch."""
    if name == "TorchOptimizer":
        from agrad.optim.torch_frontend import TorchOptimizer

        return TorchOptimizer
    raise AttributeError(f"module 'agrad.optim' has no attribute {name!r}")
