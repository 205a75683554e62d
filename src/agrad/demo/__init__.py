"""``agrad demo``: one namespace-generic training loop, run on every installed backend.

A 64-32-10 tanh MLP learns scikit-learn's handwritten digits (shipped inside
scikit-learn: no network). Data and initial parameters are made once in NumPy (float64)
and converted with ``xp.asarray``; the model, loss and loop take their namespace from
their inputs, so NumPy, array-api-strict, torch, JAX, Dask and CuPy run the very same
code. The table compares each backend's final parameters with NumPy's: the
trajectories are identical to rounding.

``python -m agrad demo --help`` lists the options; :func:`run_demo` is the same run
from Python.
"""

from agrad.demo._cli import DEMO_BACKENDS, DemoRun, build_parser, main, run_demo
from agrad.demo._data import Digits, init_mlp, load_digits_split
from agrad.demo._model import accuracy, cross_entropy, mlp_logits
from agrad.demo._optimizers import DemoOptimizer, make_optimizer, optimizer_names
from agrad.demo._train import RunResult, batch_slices, settle, train

__all__ = [
    "DEMO_BACKENDS",
    "DemoOptimizer",
    "DemoRun",
    "Digits",
    "RunResult",
    "accuracy",
    "batch_slices",
    "build_parser",
    "cross_entropy",
    "init_mlp",
    "load_digits_split",
    "main",
    "make_optimizer",
    "mlp_logits",
    "optimizer_names",
    "run_demo",
    "settle",
    "train",
]
