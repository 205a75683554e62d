"""Bad input to ``agrad.optim``: a clear exception naming the problem, nothing modified.

Constructors refuse bad hyperparameters and schedule arguments; ``step``, ``update`` and
``apply_updates`` refuse state, gradients and parameters that do not belong together
(another optimizer's state, another structure, shape, dtype, library or device), naming
the key path, before anything is written; ``save`` and ``load`` refuse what they cannot
round-trip. The same mistakes on every backend are rows of ``test_bad_input_matrix.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from agrad import optim
from agrad.optim import schedules as S
from agrad.testing import to_numpy
from conftest import asarray
from test_optim_behaviour import _grads, _np_tree, _state_arrays, _tree

# ---- constructors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        # torch family
        (lambda: optim.sgd(lr=-0.1), "lr"),
        (lambda: optim.sgd(lr=0.1, momentum=-1.0), "momentum"),
        (lambda: optim.sgd(lr=0.1, nesterov=True), "nesterov"),
        (lambda: optim.adam(lr=-1e-3), "lr"),
        (lambda: optim.adam(betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda: optim.adam(betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda: optim.adam(eps=-1e-8), "eps"),
        (lambda: optim.adamw(weight_decay=-0.1), "weight_decay"),
        (lambda: optim.nadam(betas=(0.9, 1.5)), "betas"),
        (lambda: optim.radam(eps=-1e-8), "eps"),
        (lambda: optim.rmsprop(eps=0.0), "eps"),
        (lambda: optim.rmsprop(alpha=-0.5), "alpha"),
        (lambda: optim.adagrad(lr_decay=-1.0), "lr_decay"),
        (lambda: optim.adadelta(rho=1.5), "rho"),
        (lambda: optim.adamax(lr=float("nan")), "lr"),
        (lambda: optim.adam(lr=float("inf")), "lr"),
        # optax family
        (lambda: optim.lion(-1.0), "lr"),
        (lambda: optim.lion(1e-3, b1=1.0), "b1"),
        (lambda: optim.lamb(1e-3, eps=0.0), "eps"),
        (lambda: optim.lars(1e-3, momentum=-0.1), "momentum"),
        (lambda: optim.adafactor(eps=-1.0), "eps"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_betas_type():
    with pytest.raises(ValueError, match="pair"):
        optim.adam(betas=0.9)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: S.step_lr(0.1, 0), "step_size"),
        (lambda: S.cosine_annealing_lr(0.1, 0), "T_max"),
        (lambda: S.join([S.constant(1.0), S.constant(2.0)], []), "milestones"),
        (lambda: S.one_cycle_lr(0.1, 10, anneal_strategy="exp"), "anneal_strategy"),
        (lambda: S.warmup_cosine(0.1, 10, 5), "warmup_steps"),
    ],
)
def test_bad_schedule_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_partition_unknown_label_names_the_key_path():
    opt = optim.partition({"a": optim.sgd(lr=0.1)}, {"w": "a", "b": "zzz"})
    with pytest.raises(ValueError, match=r"labels\['b'\].*'zzz'"):
        opt.init(_np_tree(0))


def test_chain_rejects_non_transforms():
    with pytest.raises(TypeError, match="argument 1"):
        optim.chain(optim.sgd(lr=0.1), lambda g: g)


# ---- step, update, apply_updates, pack -----------------------------------------------


def _snapshot(params, state):
    return [to_numpy(x).copy() for x in list(params.values()) + _state_arrays(state)]


def _unchanged(params, state, snap):
    for x, s in zip(list(params.values()) + _state_arrays(state), snap):
        np.testing.assert_array_equal(to_numpy(x), s)


def _trained(xp, opt):
    params = _tree(xp)
    state = opt.init(params)
    params, state = opt.step(params, _grads(xp, params), state)
    return params, state


def test_state_from_another_optimizer(xp):
    params, adam_state = _trained(xp, optim.adam(lr=0.1))
    sgd = optim.sgd(lr=0.1, momentum=0.9)
    snap = _snapshot(params, adam_state)
    with pytest.raises(ValueError, match=r"state does not belong to sgd.*AdamState|SGDState"):
        sgd.step(params, _grads(xp, params), adam_state)
    with pytest.raises(ValueError, match="state does not belong"):
        sgd.update(_grads(xp, params), adam_state, params)
    _unchanged(params, adam_state, snap)


def test_state_for_another_parameter_structure_names_key_path(xp):
    opt = optim.adam(lr=0.1)
    params, state = _trained(xp, opt)
    other = {"w": params["w"], "c": params["b"]}
    snap = _snapshot(params, state)
    with pytest.raises(
        ValueError, match=r"\.exp_avg.*keys missing \['c'\].*unexpected keys \['b'\]"
    ):
        opt.step(other, _grads(xp, other), state)
    _unchanged(params, state, snap)


def test_state_for_other_shapes_names_key_path(xp):
    opt = optim.adam(lr=0.1)
    params, state = _trained(xp, opt)
    bigger = {"w": params["w"], "b": asarray(xp, np.zeros(5))}
    with pytest.raises(
        ValueError, match=r"state\.exp_avg\['b'\] has shape \(4,\), expected \(5,\)"
    ):
        opt.step(bigger, _grads(xp, bigger), state)


def test_grads_of_wrong_shape(xp):
    opt = optim.adam(lr=0.1)
    params, state = _trained(xp, opt)
    snap = _snapshot(params, state)
    grads = dict(_grads(xp, params), b=asarray(xp, np.ones(3)))
    with pytest.raises(
        ValueError, match=r"\['b'\].*params has shape \(4,\) but grads has shape \(3,\)"
    ):
        opt.step(params, grads, state)
    with pytest.raises(ValueError, match=r"\['b'\]"):
        opt.update(grads, state, params)
    _unchanged(params, state, snap)


def test_grads_of_wrong_structure(xp):
    opt = optim.sgd(lr=0.1)
    params, state = _trained(xp, opt)
    with pytest.raises(ValueError, match=r"grads does not match the structure of params"):
        opt.step(params, {"w": _grads(xp, params)["w"]}, state)


def test_grads_from_another_namespace():
    torch = pytest.importorskip("torch")
    import array_api_compat.numpy as npx

    opt = optim.adam(lr=0.1)
    params, state = _trained(npx, opt)
    snap = _snapshot(params, state)
    grads = {k: torch.ones(tuple(v.shape), dtype=torch.float64) for k, v in params.items()}
    with pytest.raises(TypeError, match=r"params\['w'\] is numpy but grads\['w'\] is torch"):
        opt.step(params, grads, state)
    _unchanged(params, state, snap)


def test_grads_of_wrong_dtype(xp):
    opt = optim.sgd(lr=0.1)
    params, state = _trained(xp, opt)
    grads = {k: asarray(xp, np.ones(tuple(v.shape)), np.float32) for k, v in params.items()}
    with pytest.raises(TypeError, match="dtype mismatch"):
        opt.step(params, grads, state)


def test_readonly_leaf_refuses_before_writing():
    params = _np_tree()
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    params["b"].flags.writeable = False
    snap = _snapshot(params, state)
    with pytest.raises(ValueError, match=r"params\['b'\].*read-only"):
        opt.step(params, _grads(np, params), state)
    _unchanged(params, state, snap)
    new, _ = opt.step(params, _grads(np, params), state, inplace=False)
    assert not np.array_equal(new["w"], params["w"])


def test_integer_params_refused():
    opt = optim.sgd(lr=0.1)
    with pytest.raises(TypeError, match=r"params\['w'\] has dtype int64"):
        opt.init({"w": np.zeros(3, dtype=np.int64)})


def test_update_without_params_when_needed():
    opt = optim.adamw(lr=0.1)
    params = _np_tree()
    state = opt.init(params)
    with pytest.raises(ValueError, match="pass params"):
        opt.update(_grads(np, params), state)
    sgd = optim.sgd(lr=0.1)
    updates, _ = sgd.update(_grads(np, params), sgd.init(params))
    np.testing.assert_allclose(updates["w"], -0.1 * _grads(np, params)["w"])


def test_apply_updates_validates_first():
    params = _np_tree()
    snap = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        optim.apply_updates(params, {"w": np.ones((3, 4)), "b": np.ones(5)})
    for k in params:
        np.testing.assert_array_equal(params[k], snap[k])
    out = optim.apply_updates(params, {"w": np.ones((3, 4)), "b": np.ones(4)})
    assert out["w"] is params["w"]
    np.testing.assert_array_equal(out["w"], snap["w"] + 1.0)


def test_state_of_another_dtype():
    opt = optim.adam(lr=0.1)
    p64 = _np_tree()
    state = opt.init({k: v.astype(np.float32) for k, v in p64.items()})
    with pytest.raises(TypeError, match=r"state\.exp_avg\['w'\] has dtype float32"):
        opt.step(p64, _grads(np, p64), state)


def test_device_mismatch_names_key_path_before_anything_runs():
    """params, grads and state arrays on different devices: a clear error naming the key
    path and both devices, raised before anything is computed or written."""
    xs = pytest.importorskip("array_api_strict")
    dev = xs.Device("device1")
    default = xs.asarray(0.0).device
    opt = optim.adam(lr=0.1)
    params = _tree(xs)
    state = opt.init(params)
    grads = _grads(xs, params)
    grads["b"] = xs.asarray(to_numpy(grads["b"]), device=dev)
    before = [to_numpy(x).copy() for x in list(params.values()) + _state_arrays(state)]
    match = (
        rf"device mismatch at \['b'\]: params is on {re.escape(repr(default))} "
        rf"but (grads|updates)\['b'\] is on {re.escape(repr(dev))}"
    )
    for call in (
        lambda: opt.step(params, grads, state),
        lambda: opt.step(params, grads, state, inplace=False),
        lambda: opt.update(grads, state, params),
        lambda: optim.apply_updates(params, grads),
    ):
        with pytest.raises(ValueError, match=match):
            call()
    after = [to_numpy(x) for x in list(params.values()) + _state_arrays(state)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # a state array on another device than its parameter
    bad_state = state._replace(
        exp_avg={**state.exp_avg, "w": xs.zeros((3, 4), dtype=xs.float64, device=dev)}
    )
    good_grads = _grads(xs, params)
    with pytest.raises(
        ValueError,
        match=r"device mismatch at \['w'\]: params is on .* but state\.exp_avg\['w'\] is on .*device1",
    ):
        opt.step(params, good_grads, bad_state)
    for a, b in zip(before, [to_numpy(x) for x in list(params.values()) + _state_arrays(state)]):
        np.testing.assert_array_equal(a, b)
    # the same on one device works
    on_dev = _tree(xs, device=dev)
    opt.step(on_dev, _grads(xs, on_dev), opt.init(on_dev))


def test_pack_rejects_empty():
    with pytest.raises(ValueError, match="no arrays"):
        optim.pack({})


# ---- save and load -------------------------------------------------------------------


def test_load_for_different_parameters(tmp_path):
    opt = optim.adam(lr=0.1)
    p = {k: np.array(v) for k, v in _np_tree(0).items()}
    s = opt.init(p)
    optim.save(s, tmp_path / "s.npz")
    with pytest.raises(
        ValueError,
        match=r"state\.exp_avg\['w'\] has shape \(3, 4\) but like\['w'\] has shape \(3, 5\)",
    ):
        optim.load(tmp_path / "s.npz", like={"w": np.zeros((3, 5)), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="no part of the state has the structure of like"):
        optim.load(tmp_path / "s.npz", like={"w": np.zeros((3, 4))})
    with pytest.raises(ValueError, match="no part of the state"):
        optim.load(
            tmp_path / "s.npz", like={"w": np.zeros((3, 4)), "b": np.zeros(4), "c": np.zeros(1)}
        )


def test_load_rejects_foreign_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match=r"not a state written by agrad\.optim\.save"):
        optim.load(tmp_path / "x.npz", like=np.zeros(3))


def test_save_rejects_unknown_leaves(tmp_path):
    with pytest.raises(TypeError, match=r"cannot save object at state\['x'\]"):
        optim.save({"x": object()}, tmp_path / "s.npz")
