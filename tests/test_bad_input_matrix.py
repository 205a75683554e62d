"""The bad-input matrix: one row per mistake a user can make, run on every backend it applies to.

Each row builds its inputs on one backend and names the call that should fail, the
exception type, and a pattern the message must contain: what is wrong and where (the
pytree key path, both namespaces, both shapes, dtypes or devices). After the call
every watched input (arrays, variables, optimizer state) must be exactly as before:
same values, a variable still bound to the same array, a torch tensor's version counter
unchanged (so not even an in-place write of identical values happened).

Rows that are not errors (a ``func`` that ignores ``xs``, NaN gradients) are documented
behaviours tested at the end of the module.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import agrad
import agrad.optim as optim
from agrad.namespace import library_name
from agrad.pytree import flatten
from agrad.testing import BACKENDS, load_backend, to_numpy
from conftest import asarray

TAPE = ("numpy", "array_api_strict", "dask", "cupy")
WRITABLE = ("numpy", "array_api_strict", "dask", "cupy", "torch")


@dataclass
class Setup:
    """What a row builds on one backend: the failing call, the inputs to watch, the message."""

    call: Callable[[], Any]
    watched: Any
    match: str


@dataclass
class Row:
    """One mistake: how to build it on a backend, the exception, where it applies."""

    id: str
    build: Callable[[Any], Setup]
    exc: type[BaseException] | tuple[type[BaseException], ...]
    backends: tuple[str, ...] = field(default_factory=lambda: tuple(BACKENDS))


ROWS: list[Row] = []


def row(
    id: str,
    exc: type[BaseException] | tuple[type[BaseException], ...],
    backends: tuple[str, ...] | None = None,
) -> Callable[[Callable[[Any], Setup]], Callable[[Any], Setup]]:
    """Register the decorated builder as a row of the matrix (every backend by default)."""

    def register(build: Callable[[Any], Setup]) -> Callable[[Any], Setup]:
        ROWS.append(Row(id, build, exc, backends or tuple(BACKENDS)))
        return build

    return register


def lib(xp: Any) -> str:
    return library_name(xp).removeprefix("agrad.")


def other_library(xp: Any) -> tuple[Any, str]:
    """An array factory of a second library, and that library's name."""
    if lib(xp) == "numpy":
        torch = pytest.importorskip("torch")
        return (lambda a: torch.asarray(np.asarray(a, dtype=np.float64))), "torch"
    return (lambda a: np.asarray(a, dtype=np.float64)), "numpy"


def a(xp: Any, data: Any, dtype: Any = None) -> Any:
    return asarray(xp, data, dtype=dtype)


def params(xp: Any) -> dict[str, Any]:
    return {"w": a(xp, np.ones((2, 3))), "b": a(xp, [1.0, 2.0, 3.0])}


def like(xp: Any, tree: dict[str, Any], value: float = 0.5) -> dict[str, Any]:
    return {k: a(xp, np.full(tuple(v.shape), value)) for k, v in tree.items()}


def _sum_sq(x: Any) -> Any:
    xp = agrad.array_namespace(x)
    return xp.sum(x * x)


DTYPE = r"\S*"  # dtype reprs differ: float64, torch.float64, dtype('float64')


# -- mixed frameworks -----------------------------------------------------------------
@row("update-mixed-frameworks", TypeError)
def _(xp):
    other, name = other_library(xp)
    ws = params(xp)
    gs = {"w": a(xp, np.ones((2, 3))), "b": other([1.0, 1.0, 1.0])}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        rf"ws\['w'\] is {lib(xp)} but dcdws\['b'\] is {name}",
    )


@row("adam-update-mixed-state", TypeError)
def _(xp):
    other, name = other_library(xp)
    ws, gs = params(xp), like(xp, params(xp))
    mw = like(xp, ws, 0.0)
    vw = {"w": a(xp, np.zeros((2, 3))), "b": other([0.0, 0.0, 0.0])}
    return Setup(
        lambda: agrad.adam_update(ws, gs, 0.1, mw, vw, 1),
        (ws, mw, vw),
        rf"ws\['w'\] is {lib(xp)} but vw\['b'\] is {name}",
    )


@row("execute-with-gradients-mixed", TypeError)
def _(xp):
    other, name = other_library(xp)
    xs = [a(xp, [1.0, 2.0]), other([3.0])]
    return Setup(
        lambda: agrad.execute_with_gradients(lambda v: _sum_sq(v[0]), xs),
        xs,
        rf"xs\[0\] is {lib(xp)} but xs\[1\] is {name}",
    )


@row("optim-step-mixed-frameworks", TypeError)
def _(xp):
    other, name = other_library(xp)
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init(ps)
    gs = {"w": a(xp, np.ones((2, 3))), "b": other([1.0, 1.0, 1.0])}
    return Setup(
        lambda: opt.step(ps, gs, state),
        (ps, state),
        rf"params\['w'\] is {lib(xp)} but grads\['b'\] is {name}",
    )


# -- pytree structure -----------------------------------------------------------------
def _layered(xp: Any) -> dict[str, Any]:
    return {
        "layer1": {"w": a(xp, [1.0]), "b": a(xp, [2.0])},
        "layer2": [a(xp, [3.0])],
    }


@row("update-structure-missing-key", ValueError)
def _(xp):
    ws = _layered(xp)
    gs = {"layer1": {"w": a(xp, [1.0])}, "layer2": [a(xp, [1.0])]}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        r"dcdws does not match the structure of ws at \['layer1'\]: keys missing \['b'\]",
    )


@row("update-structure-unexpected-key", ValueError)
def _(xp):
    ws = _layered(xp)
    gs = _layered(xp)
    gs["layer1"]["c"] = a(xp, [1.0])
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        r"at \['layer1'\]: unexpected keys \['c'\]",
    )


@row("update-structure-list-length", ValueError)
def _(xp):
    ws = _layered(xp)
    gs = _layered(xp)
    gs["layer2"].append(a(xp, [1.0]))
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        r"at \['layer2'\]: ws has a list of length 1, dcdws has a list of length 2",
    )


@row("update-structure-leaf-vs-container", ValueError)
def _(xp):
    ws = _layered(xp)
    gs = _layered(xp)
    gs["layer1"]["w"] = [a(xp, [1.0])]
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        r"at \['layer1'\]\['w'\]: ws has a leaf \(shape \(1,\)\), dcdws has a list of length 1",
    )


@row("adam-update-state-structure", ValueError)
def _(xp):
    ws = _layered(xp)
    mw = _layered(xp)
    vw = {"layer1": _layered(xp)["layer1"], "layer2": a(xp, [0.0])}
    return Setup(
        lambda: agrad.adam_update(ws, _layered(xp), 0.1, mw, vw, 1),
        (ws, mw, vw),
        r"vw does not match the structure of ws at \['layer2'\]: ws has a list of length 1, vw has a leaf",
    )


@row("optim-step-grads-structure", ValueError)
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init(ps)
    gs = {"w": a(xp, np.ones((2, 3)))}
    return Setup(
        lambda: opt.step(ps, gs, state),
        (ps, state),
        r"grads does not match the structure of params at <root>: keys missing \['b'\]",
    )


@row("optim-step-state-of-other-params", ValueError)
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init({"w": ps["w"]})
    return Setup(
        lambda: opt.step(ps, like(xp, ps), state),
        (ps, state),
        r"state does not belong to adam\(.*\) with these params: .*keys missing \['b'\]",
    )


# -- shapes and dtypes ----------------------------------------------------------------
@row("update-shape-mismatch", ValueError)
def _(xp):
    ws = params(xp)
    gs = {"w": a(xp, np.ones((2, 3))), "b": a(xp, np.ones(4))}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        r"shape mismatch at \['b'\]: ws has shape \(3,\) but dcdws has shape \(4,\)",
    )


@row("adam-update-state-shape-mismatch", ValueError)
def _(xp):
    ws = {"layer": [a(xp, [1.0]), a(xp, np.ones((2, 3)))]}
    gs = {"layer": [a(xp, [1.0]), a(xp, np.ones((2, 3)))]}
    mw = {"layer": [a(xp, [0.0]), a(xp, np.zeros((2, 3)))]}
    vw = {"layer": [a(xp, [0.0]), a(xp, np.zeros((3, 2)))]}
    return Setup(
        lambda: agrad.adam_update(ws, gs, 0.1, mw, vw, 1),
        (ws, mw, vw),
        r"state does not belong to adam\(.*\) with these params: vw\['layer'\]\[1\] has shape \(3, 2\), expected \(2, 3\)",
    )


@row("optim-step-grads-shape-mismatch", ValueError)
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init(ps)
    gs = {"w": a(xp, np.ones((3, 2))), "b": a(xp, np.ones(3))}
    return Setup(
        lambda: opt.step(ps, gs, state),
        (ps, state),
        r"shape mismatch at \['w'\]: params has shape \(2, 3\) but grads has shape \(3, 2\)",
    )


@row("optim-step-state-shape-mismatch", ValueError)
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init({"w": ps["w"], "b": a(xp, np.ones(4))})
    return Setup(
        lambda: opt.step(ps, like(xp, ps), state),
        (ps, state),
        r"state\.exp_avg\['b'\] has shape \(4,\), expected \(3,\)",
    )


@row("update-dtype-mismatch", TypeError)
def _(xp):
    ws = params(xp)
    gs = {"w": a(xp, np.ones((2, 3))), "b": a(xp, np.ones(3), dtype=np.float32)}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        rf"dtype mismatch at \['b'\]: ws has dtype {DTYPE}float64\S* but dcdws has dtype {DTYPE}float32",
    )


@row("adam-update-state-dtype-mismatch", TypeError)
def _(xp):
    ws, gs = params(xp), like(xp, params(xp))
    mw = {"w": a(xp, np.zeros((2, 3)), dtype=np.float32), "b": a(xp, np.zeros(3))}
    vw = like(xp, ws, 0.0)
    return Setup(
        lambda: agrad.adam_update(ws, gs, 0.1, mw, vw, 1),
        (ws, mw, vw),
        rf"mw\['w'\] has dtype {DTYPE}float32\S* but these params need {DTYPE}float64",
    )


@row("optim-step-grads-dtype-mismatch", TypeError)
def _(xp):
    opt = optim.sgd(lr=0.1, momentum=0.9)
    ps = params(xp)
    state = opt.init(ps)
    gs = {"w": a(xp, np.ones((2, 3)), dtype=np.float32), "b": a(xp, np.ones(3))}
    return Setup(
        lambda: opt.step(ps, gs, state),
        (ps, state),
        rf"dtype mismatch at \['w'\]: params has dtype {DTYPE}float64\S* but grads has dtype {DTYPE}float32",
    )


@row("optim-step-state-dtype-mismatch", TypeError)
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init({"w": a(xp, np.ones((2, 3)), dtype=np.float32), "b": ps["b"]})
    return Setup(
        lambda: opt.step(ps, like(xp, ps), state),
        (ps, state),
        rf"state\.exp_avg\['w'\] has dtype {DTYPE}float32 but these params need {DTYPE}float64",
    )


# -- integer and boolean variables ----------------------------------------------------
@row("variable-of-integers", TypeError)
def _(xp):
    x = xp.asarray([1, 2, 3])
    return Setup(
        lambda: agrad.variable(x), x, rf"array of dtype {DTYPE}int\S* cannot be differentiated"
    )


@row("variable-of-booleans", TypeError)
def _(xp):
    x = xp.asarray([True, False])
    return Setup(
        lambda: agrad.variable(x), x, rf"array of dtype {DTYPE}bool cannot be differentiated"
    )


@row("execute-with-gradients-integer-input", TypeError)
def _(xp):
    xs = {"f": a(xp, [1.0]), "i": xp.asarray([1, 2])}
    return Setup(
        lambda: agrad.execute_with_gradients(lambda d: _sum_sq(d["f"]), xs),
        xs,
        rf"xs\['i'\] has dtype {DTYPE}int\S*; only real or complex floating-point arrays can be differentiated",
    )


@row("execute-with-gradients-boolean-input", TypeError)
def _(xp):
    xs = [a(xp, [1.0]), xp.asarray([True])]
    return Setup(
        lambda: agrad.execute_with_gradients(lambda v: _sum_sq(v[0]), xs),
        xs,
        rf"xs\[1\] has dtype {DTYPE}bool; only real or complex floating-point",
    )


@row("update-integer-parameters", TypeError)
def _(xp):
    ws = {"w": xp.asarray([1, 2]), "b": a(xp, [1.0])}
    gs = {"w": xp.asarray([1, 1]), "b": a(xp, [1.0])}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        rf"ws\['w'\] has dtype {DTYPE}int\S*; optimizers need floating-point parameters",
    )


@row("optim-init-boolean-parameters", TypeError)
def _(xp):
    ps = {"w": a(xp, [1.0]), "mask": xp.asarray([True, False])}
    return Setup(
        lambda: optim.adam(lr=0.1).init(ps),
        ps,
        rf"params\['mask'\] has dtype {DTYPE}bool; optimizers need real floating-point parameters",
    )


# -- what func returns ----------------------------------------------------------------
@row("y-not-scalar", ValueError)
def _(xp):
    x = a(xp, [1.0, 2.0])
    return Setup(
        lambda: agrad.execute_with_gradients(lambda x: x * 2.0, x),
        x,
        r"y must be a scalar \(0-d or size 1\).*shape \(2,\)",
    )


@row("y-integer", TypeError)
def _(xp):
    x = a(xp, [1.0, 2.0])

    def f(x):
        ns = agrad.array_namespace(x)
        return ns.sum(ns.astype(x, ns.int64))

    return Setup(
        lambda: agrad.execute_with_gradients(f, x),
        x,
        rf"y must have a real floating-point dtype; func returned y of dtype {DTYPE}int64",
    )


@row("y-boolean", TypeError)
def _(xp):
    x = a(xp, [1.0, 2.0])

    def f(x):
        return agrad.array_namespace(x).all(x > 0.0)

    return Setup(lambda: agrad.execute_with_gradients(f, x), x, rf"returned y of dtype {DTYPE}bool")


@row("func-returns-none", TypeError)
def _(xp):
    x = a(xp, [1.0])
    return Setup(
        lambda: agrad.execute_with_gradients(lambda x: None, x),
        x,
        r"func must return an array y .* it returned NoneType",
    )


@row("func-returns-python-float", TypeError)
def _(xp):
    x = a(xp, [1.0])
    return Setup(
        lambda: agrad.execute_with_gradients(lambda x: 1.0, x),
        x,
        r"func must return an array y .* it returned float",
    )


@row("func-returns-empty-tuple", TypeError)
def _(xp):
    x = a(xp, [1.0])
    return Setup(
        lambda: agrad.execute_with_gradients(lambda x: (), x), x, r"func returned an empty tuple"
    )


@row("value-and-grad-tuple-without-has-aux", TypeError)
def _(xp):
    x = a(xp, [1.0])
    f = agrad.value_and_grad(lambda x: (_sum_sq(x), x))
    return Setup(lambda: f(x), x, r"func returned a tuple; pass has_aux=True")


@row("y-from-another-library", TypeError)
def _(xp):
    other, name = other_library(xp)
    x = a(xp, [1.0, 2.0])
    return Setup(
        lambda: agrad.execute_with_gradients(lambda x: other(3.0), x),
        x,
        rf"func returned y from {name} but xs are {lib(xp)} arrays",
    )


@row("value-and-grad-argnums-out-of-range", IndexError)
def _(xp):
    x = a(xp, [1.0])
    f = agrad.value_and_grad(lambda x: _sum_sq(x), argnums=2)
    return Setup(lambda: f(x), x, r"argnums=2 but <lambda> was called with 1 positional argument")


@row("xs-non-array-leaf", TypeError)
def _(xp):
    xs = {"w": a(xp, [1.0]), "name": "layer1"}
    return Setup(
        lambda: agrad.execute_with_gradients(lambda d: _sum_sq(d["w"]), xs),
        xs,
        r"xs\['name'\] is not an array of a supported library \(got str\)",
    )


@row("xs-without-arrays", ValueError)
def _(xp):
    return Setup(
        lambda: agrad.execute_with_gradients(lambda d: 0.0, {"a": [], "b": None}),
        a(xp, [1.0]),
        r"xs contains no arrays",
    )


# -- step and hyperparameters ---------------------------------------------------------
def _adam_call(xp: Any, **kwargs: Any) -> Setup:
    ws, gs = params(xp), like(xp, params(xp))
    mw, vw = like(xp, ws, 0.0), like(xp, ws, 0.0)
    args = {"lr": 0.1, "step": 1, **kwargs}
    return Setup(
        lambda: agrad.adam_update(ws, gs, mw=mw, vw=vw, **args),
        (ws, gs, mw, vw),
        "",
    )


def _with_match(s: Setup, match: str) -> Setup:
    s.match = match
    return s


for _step, _exc, _msg in (
    (0, ValueError, r"step is the 1-based step count and must be >= 1, got 0"),
    (-3, ValueError, r"step is the 1-based step count and must be >= 1, got -3"),
    (1.5, TypeError, r"step must be an integer \(the 1-based step count\), got 1\.5"),
    (True, TypeError, r"step must be an integer .*, got True"),
):

    def _build(xp, _step=_step, _msg=_msg):
        return _with_match(_adam_call(xp, step=_step), rf"adam_update: {_msg}")

    ROWS.append(Row(f"adam-update-step-{_step}", _build, _exc))

for _name, _value, _msg in (
    ("beta1", 1.0, r"invalid beta1: 1\.0 \(expected a number in \[0, 1\)\)"),
    ("beta2", -0.1, r"invalid beta2: -0\.1 \(expected a number in \[0, 1\)\)"),
    ("beta1", math.nan, r"invalid beta1: nan \(expected a number in \[0, 1\)\)"),
    ("epsilon", -1.0, r"invalid epsilon: -1\.0 \(expected a finite number >= 0\)"),
    ("epsilon", math.inf, r"invalid epsilon: inf \(expected a finite number >= 0\)"),
    ("lr", -0.1, r"invalid lr: -0\.1 \(expected a finite number >= 0\)"),
    ("lr", math.nan, r"invalid lr: nan \(expected a finite number >= 0\)"),
):

    def _build(xp, _name=_name, _value=_value, _msg=_msg):
        return _with_match(_adam_call(xp, **{_name: _value}), rf"adam_update: {_msg}")

    ROWS.append(Row(f"adam-update-{_name}-{_value}", _build, ValueError))


@row("gradient-descent-lr-not-0d", ValueError)
def _(xp):
    ws = {"w": a(xp, [1.0, 2.0])}
    lr = a(xp, [0.1, 0.2])
    return Setup(
        lambda: agrad.gradient_descent_update(ws, like(xp, ws), lr),
        ws,
        r"gradient_descent_update: invalid lr: an array of shape \(2,\) \(expected a 0-d array\)",
    )


@row("adam-update-beta-not-a-number", TypeError)
def _(xp):
    return _with_match(
        _adam_call(xp, beta1="0.9"),
        r"adam_update: beta1 must be a Python number or a 0-d array, got str",
    )


@row("gradient-descent-lr-inf", ValueError)
def _(xp):
    ws = params(xp)
    return Setup(
        lambda: agrad.gradient_descent_update(ws, like(xp, ws), math.inf),
        ws,
        r"gradient_descent_update: invalid lr: inf \(expected a finite number >= 0\)",
    )


for _ctor, _kwargs, _msg in (
    ("adam", {"lr": -1.0}, r"agrad\.optim\.adam: invalid lr: -1\.0"),
    ("adam", {"betas": (0.9, 1.0)}, r"agrad\.optim\.adam: invalid betas\[1\]: 1\.0"),
    ("adam", {"eps": -1e-8}, r"agrad\.optim\.adam: invalid eps: -1e-08"),
    ("adamw", {"weight_decay": -0.1}, r"agrad\.optim\.adamw: invalid weight_decay: -0\.1"),
    ("sgd", {"lr": 0.1, "momentum": -1.0}, r"agrad\.optim\.sgd: invalid momentum: -1\.0"),
    ("rmsprop", {"alpha": -0.5}, r"agrad\.optim\.rmsprop: invalid alpha: -0\.5"),
):

    def _build(xp, _ctor=_ctor, _kwargs=_kwargs, _msg=_msg):
        ps = params(xp)
        state = optim.adam(lr=0.1).init(ps)

        def call():
            opt = getattr(optim, _ctor)(**_kwargs)
            return opt.step(ps, like(xp, ps), state)

        return Setup(call, (ps, state), _msg)

    ROWS.append(Row(f"optim-{_ctor}-{'-'.join(map(str, _kwargs.values()))}", _build, ValueError))


# -- in-place writes that cannot happen -----------------------------------------------
def _readonly(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


@row("update-readonly-numpy-last-leaf", ValueError, ("numpy",))
def _(xp):
    ws = {"a": np.ones(2), "b": np.ones(3), "z": _readonly(np.ones(2))}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, like(xp, ws), 0.5),
        ws,
        r"cannot update ws\['z'\] in place: it is a read-only NumPy array",
    )


@row("adam-update-readonly-state", ValueError, ("numpy",))
def _(xp):
    ws = params(xp)
    mw, vw = like(xp, ws, 0.0), like(xp, ws, 0.0)
    vw["b"] = _readonly(vw["b"])
    return Setup(
        lambda: agrad.adam_update(ws, like(xp, ws), 0.1, mw, vw, 1),
        (ws, mw, vw),
        r"cannot update vw\['b'\] in place: it is a read-only NumPy array",
    )


@row("optim-step-readonly-parameter", ValueError, ("numpy",))
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = {"w": np.ones((2, 3)), "b": _readonly(np.ones(3))}
    state = opt.init(ps)
    return Setup(
        lambda: opt.step(ps, like(xp, ps), state),
        (ps, state),
        r"adam\.step: cannot update params\['b'\] in place: it is a read-only NumPy array",
    )


@row("optim-step-readonly-state", ValueError, ("numpy",))
def _(xp):
    opt = optim.adam(lr=0.1)
    ps = params(xp)
    state = opt.init(ps)
    state = state._replace(exp_avg_sq={"w": state.exp_avg_sq["w"], "b": _readonly(np.zeros(3))})
    return Setup(
        lambda: opt.step(ps, like(xp, ps), state),
        (ps, state),
        r"cannot update state\.exp_avg_sq\['b'\] in place: it is a read-only NumPy array",
    )


@row("apply-updates-readonly", ValueError, ("numpy",))
def _(xp):
    ps = {"w": np.ones(2), "b": _readonly(np.ones(3))}
    return Setup(
        lambda: optim.apply_updates(ps, like(xp, ps)),
        ps,
        r"cannot update params\['b'\] in place: it is a read-only NumPy array",
    )


@row("adam-update-same-array-as-mw-and-vw", ValueError, WRITABLE)
def _(xp):
    ws = params(xp)
    m = like(xp, ws, 0.0)
    return Setup(
        lambda: agrad.adam_update(ws, like(xp, ws), 0.1, m, m, 1),
        (ws, m),
        r"mw\['w'\] and vw\['w'\] are the same array, so in-place writes would overwrite each other",
    )


@row("update-same-array-at-two-key-paths", ValueError, WRITABLE)
def _(xp):
    shared = agrad.variable(a(xp, [1.0, 2.0]))
    ws = {"encoder": shared, "decoder": shared}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, like(xp, ws), 0.1),
        ws,
        r"ws\['encoder'\] and ws\['decoder'\] are the same array",
    )


# -- the tape: missing rules and escaped tracers --------------------------------------
def _function_without_rule(ns: Any) -> str:
    """A function of tracing namespace ``ns`` that has no VJP rule (found, not assumed).

    Such functions (the base library's extras beyond the standard) are wrapped so that
    they pass through on raw arrays and refuse traced ones; they are recognised by the
    wrapper's code object.
    """
    from agrad.autograd.tape import tracing_namespace

    refusing = tracing_namespace._unsupported("probe", None, None).__code__
    candidates = ["linalg.eig", "cumprod", "linalg.norm"]
    candidates += [f"{ext}.{n}" for ext in ("linalg", "fft") for n in dir(getattr(ns, ext))]
    candidates += dir(ns)
    for qualname in candidates:
        fn = ns
        for part in qualname.split("."):
            fn = getattr(fn, part, None)
        if getattr(fn, "__code__", None) is refusing:
            return qualname
    pytest.skip(f"every function of {ns.__name__} has a gradient rule")


@row("op-without-gradient-rule", NotImplementedError, TAPE)
def _(xp):
    x = a(xp, np.eye(2) * 2.0)
    qualname = _function_without_rule(importlib.import_module(f"agrad.{lib(xp)}"))

    def f(x):
        fn = agrad.array_namespace(x)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        return agrad.array_namespace(x).sum(fn(x))

    return Setup(
        lambda: agrad.execute_with_gradients(f, x),
        x,
        rf"agrad\.{lib(xp)}\.{re.escape(qualname)} has no gradient rule",
    )


def _escaped_tracer(xp: Any) -> Any:
    leaked = []

    def f(x):
        leaked.append(x)
        return _sum_sq(x)

    agrad.execute_with_gradients(f, a(xp, [1.0, 2.0]))
    return leaked[0]


def _escape_error() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (agrad.EscapedTracerError,)
    try:
        import jax

        errors += (jax.errors.UnexpectedTracerError,)
    except ImportError:
        pass
    return errors


@row("escaped-tracer-used-later", _escape_error(), (*TAPE, "jax"))
def _(xp):
    leaked = _escaped_tracer(xp)
    return Setup(lambda: _sum_sq(leaked * 2.0), (), r"escape")


@row("escaped-tracer-in-a-new-gradient", _escape_error(), (*TAPE, "jax"))
def _(xp):
    leaked = _escaped_tracer(xp)
    x = a(xp, [3.0, 4.0])

    def f(x):
        return agrad.array_namespace(x).sum(x * leaked)

    return Setup(lambda: agrad.execute_with_gradients(f, x), x, r"escape")


@row("escaped-from-an-inner-gradient-into-the-outer", _escape_error(), (*TAPE, "jax"))
def _(xp):
    x = a(xp, [1.0, 2.0])

    def outer(x):
        kept = []

        def inner(v):
            kept.append(v)
            return _sum_sq(v)

        agrad.execute_with_gradients(inner, x, retain_grads=True)
        return _sum_sq(kept[0] * x)  # the inner trace has ended; the outer one is live

    return Setup(lambda: agrad.execute_with_gradients(outer, x), x, r"escape")


@row("escaped-tracer-as-gradient-of-an-update", _escape_error(), TAPE)
def _(xp):
    leaked = _escaped_tracer(xp)
    w = agrad.variable(a(xp, [1.0, 1.0]))
    return Setup(
        lambda: agrad.gradient_descent_update(w, leaked, 0.1),
        w,
        r"after the gradient computation that created it had ended",
    )


# -- devices --------------------------------------------------------------------------
def _strict_devices() -> tuple[Any, Any, Any]:
    import array_api_strict as strict

    return strict, strict.Device("CPU_DEVICE"), strict.Device("device1")


@row("update-two-strict-devices", ValueError, ("array_api_strict",))
def _(xp):
    strict, d0, d1 = _strict_devices()
    ws = {"w": strict.ones(3, dtype=strict.float64, device=d0)}
    gs = {"w": strict.ones(3, dtype=strict.float64, device=d1)}
    return Setup(
        lambda: agrad.gradient_descent_update(ws, gs, 0.1),
        ws,
        r"device mismatch at \['w'\]: ws is on .*'CPU_DEVICE'.* but dcdws\['w'\] is on .*'device1'",
    )


@row("adam-update-state-on-another-strict-device", ValueError, ("array_api_strict",))
def _(xp):
    strict, d0, d1 = _strict_devices()
    ws = [strict.ones(3, dtype=strict.float64, device=d1)]
    gs = [strict.ones(3, dtype=strict.float64, device=d1)]
    mw = [strict.zeros(3, dtype=strict.float64, device=d1)]
    vw = [strict.zeros(3, dtype=strict.float64, device=d0)]
    return Setup(
        lambda: agrad.adam_update(ws, gs, 0.1, mw, vw, 1),
        (ws, mw, vw),
        r"device mismatch at \[0\]: ws is on .*'device1'.* but vw\[0\] is on .*'CPU_DEVICE'",
    )


@row("execute-with-gradients-two-strict-devices", ValueError, ("array_api_strict",))
def _(xp):
    strict, d0, d1 = _strict_devices()
    xs = {
        "a": strict.ones(2, dtype=strict.float64, device=d0),
        "b": strict.ones(2, dtype=strict.float64, device=d1),
    }

    def f(d):
        return agrad.array_namespace(d["a"]).sum(d["a"] * d["b"])

    return Setup(
        lambda: agrad.execute_with_gradients(f, xs),
        xs,
        r"two different devices \(.*'CPU_DEVICE'.* and .*'device1'.*\)",
    )


@row("optim-step-two-strict-devices", ValueError, ("array_api_strict",))
def _(xp):
    strict, d0, d1 = _strict_devices()
    opt = optim.adam(lr=0.1)
    ps = {"w": strict.ones(3, dtype=strict.float64, device=d0)}
    state = opt.init(ps)
    gs = {"w": strict.ones(3, dtype=strict.float64, device=d1)}
    return Setup(
        lambda: opt.step(ps, gs, state),
        (ps, state),
        r"'CPU_DEVICE'.*'device1'|'device1'.*'CPU_DEVICE'",
    )


# -- the harness ----------------------------------------------------------------------
def record_inputs(watched: Any) -> list[tuple[Any, ...]]:
    """Everything that identifies the current contents of every watched leaf."""
    leaves, _, _ = flatten(watched)
    out = []
    for leaf in leaves:
        if isinstance(leaf, agrad.Variable):
            out.append(("variable", leaf, leaf.value, to_numpy(leaf.value).copy()))
        elif hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            version = getattr(leaf, "_version", None)  # torch's in-place write counter
            out.append(("array", leaf, version, to_numpy(leaf).copy()))
        else:
            out.append(("other", leaf, copy.deepcopy(leaf)))
    return out


def assert_unchanged(before: list[tuple[Any, ...]]) -> None:
    for entry in before:
        kind, leaf = entry[0], entry[1]
        if kind == "variable":
            assert leaf.value is entry[2], "a variable was rebound"
            np.testing.assert_array_equal(to_numpy(leaf.value), entry[3])
        elif kind == "array":
            assert getattr(leaf, "_version", None) == entry[2], "a tensor was written in place"
            np.testing.assert_array_equal(to_numpy(leaf), entry[3])
        else:
            assert leaf == entry[2]


def _params() -> list[Any]:
    out = []
    for r in ROWS:
        for backend in r.backends:
            marks = getattr(pytest.mark, f"backend_{backend}")
            out.append(pytest.param(r, backend, id=f"{r.id}[{backend}]", marks=marks))
    return out


@pytest.mark.parametrize(("case", "backend"), _params())
def test_bad_input(case: Row, backend: str) -> None:
    xp, reason = load_backend(backend)
    if xp is None:
        pytest.skip(reason)
    setup = case.build(xp)
    before = record_inputs(setup.watched)
    with pytest.raises(case.exc) as info:
        setup.call()
    assert re.search(setup.match, str(info.value)), (
        f"message does not name the problem and its place:\n  {info.value}\n"
        f"expected to find: {setup.match}"
    )
    del info
    assert_unchanged(before)


def test_every_row_has_a_unique_id() -> None:
    ids = [r.id for r in ROWS]
    assert len(ids) == len(set(ids))


# -- documented behaviours that are not errors ----------------------------------------
def test_func_that_ignores_xs_gets_zero_gradients(xp) -> None:
    """Documented: an input that ``y`` does not depend on has a zero gradient, not an error."""
    xs = {"used": a(xp, [1.0, 2.0]), "unused": a(xp, np.ones((2, 2)), dtype=np.float32)}
    y, grads = agrad.execute_with_gradients(lambda d: _sum_sq(d["used"]), xs)
    np.testing.assert_array_equal(to_numpy(grads["used"]), [2.0, 4.0])
    np.testing.assert_array_equal(to_numpy(grads["unused"]), np.zeros((2, 2)))
    assert grads["unused"].dtype == xs["unused"].dtype
    _, grads = agrad.execute_with_gradients(lambda d: xp.asarray(3.0, dtype=xp.float64), xs)
    for k in xs:
        np.testing.assert_array_equal(to_numpy(grads[k]), np.zeros(tuple(xs[k].shape)))


def test_readonly_numpy_with_inplace_false_is_fine() -> None:
    w = _readonly(np.array([1.0, 2.0]))
    out = agrad.gradient_descent_update(w, np.array([1.0, 1.0]), 0.5, inplace=False)
    np.testing.assert_array_equal(out, [0.5, 1.5])
    np.testing.assert_array_equal(w, [1.0, 2.0])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy's own
def test_nan_and_inf_gradients_propagate_elementwise(xp) -> None:
    """Documented: NaN/Inf gradients are not checked; they reach exactly the affected elements.

    Reference: the same Adam step evaluated by NumPy with IEEE semantics.
    """
    w0 = np.array([1.0, -2.0, 0.5, 3.0])
    g0 = np.array([0.5, np.nan, np.inf, -1.0])
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-7
    with np.errstate(invalid="ignore"):
        m_ref = (1 - b1) * g0
        v_ref = (1 - b2) * g0 * g0
        w_ref = w0 - lr / (1 - b1) * m_ref / (np.sqrt(v_ref) / np.sqrt(1 - b2) + eps)
        gd_ref = w0 - lr * g0
    w, g = a(xp, w0), a(xp, g0)
    m, v = a(xp, np.zeros(4)), a(xp, np.zeros(4))
    gd = agrad.gradient_descent_update(w, g, lr, inplace=False)
    np.testing.assert_allclose(to_numpy(gd), gd_ref, rtol=1e-15)
    w2, m2, v2 = agrad.adam_update(w, g, lr, m, v, 1, b1, b2, eps, inplace=False)
    for got, ref in ((w2, w_ref), (m2, m_ref), (v2, v_ref)):
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-12)  # NaN == NaN here


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NumPy's own
def test_apply_if_finite_skips_steps_with_nan_gradients(xp) -> None:
    """A NaN step leaves parameters and Adam state alone; the result equals torch.optim.Adam
    run on the finite gradients only."""
    torch = pytest.importorskip("torch")
    steps = [
        np.array([0.5, -1.0, 2.0]),
        np.array([np.nan, 1.0, 1.0]),
        np.array([1.0, np.inf, 0.0]),
        np.array([-0.3, 0.2, 0.1]),
    ]
    ref = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    ref_opt = torch.optim.Adam([ref], lr=0.1)
    for g in steps:
        if np.all(np.isfinite(g)):
            ref.grad = torch.tensor(g)
            ref_opt.step()

    opt = optim.apply_if_finite(optim.adam(lr=0.1), max_consecutive_errors=5)
    ps = {"w": agrad.variable(a(xp, [1.0, 2.0, 3.0]))}
    state = opt.init(ps)
    for g in steps:
        before = to_numpy(ps["w"]).copy()
        ps, state = opt.step(ps, {"w": a(xp, g)}, state)
        if not np.all(np.isfinite(g)):
            np.testing.assert_array_equal(to_numpy(ps["w"]), before)
    np.testing.assert_allclose(to_numpy(ps["w"]), ref.detach().numpy(), rtol=1e-12)
    assert state.total_notfinite == 2


def test_torch_tensor_kept_from_an_earlier_gradient_is_a_constant() -> None:
    """On torch a tensor that outlives its computation is valid; the next gradient treats it
    as a constant and is exact (no silent mix-up with the old graph)."""
    torch = pytest.importorskip("torch")
    kept = []

    def f(x):
        kept.append(x * 3.0)
        return torch.sum(x * x)

    agrad.execute_with_gradients(f, torch.tensor([1.0, 2.0], dtype=torch.float64))
    x = torch.tensor([5.0, 7.0], dtype=torch.float64)
    _, g = agrad.execute_with_gradients(lambda x: torch.sum(x * kept[0]), x)
    np.testing.assert_array_equal(g.numpy(), [3.0, 6.0])
