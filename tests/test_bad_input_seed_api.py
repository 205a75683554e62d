"""Bad input to the seed's API: a clear exception naming the problem, and nothing modified.

``variable``, ``execute_with_gradients``, ``gradient_descent_update`` and ``adam_update``;
the same mistakes on every backend are rows of ``test_bad_input_matrix.py``.
"""

import numpy as np
import pytest

import agrad
from conftest import asarray


def _snapshot(*arrays):
    from agrad.testing import to_numpy

    return [to_numpy(a).copy() for a in arrays]


def _unchanged(arrays, snapshot):
    from agrad.testing import to_numpy

    for a, s in zip(arrays, snapshot):
        np.testing.assert_array_equal(to_numpy(a), s)


def test_mixed_frameworks_in_update_names_both_and_the_key_path():
    torch = pytest.importorskip("torch")
    ws = {"a": np.ones(2), "b": np.ones(2)}
    gs = {"a": np.ones(2), "b": torch.ones(2, dtype=torch.float64)}
    with pytest.raises(TypeError, match=r"ws\['a'\] is numpy but dcdws\['b'\] is torch"):
        agrad.gradient_descent_update(ws, gs, 0.1)
    np.testing.assert_array_equal(ws["a"], np.ones(2))


def test_mixed_frameworks_in_execute_with_gradients():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"xs\[0\] is numpy but xs\[1\] is torch"):
        agrad.execute_with_gradients(lambda xs: xs[0].sum(), [np.ones(2), torch.ones(2)])


def test_structure_mismatch_names_the_key_path(xp):
    ws = {
        "layer1": {"w": asarray(xp, [1.0]), "b": asarray(xp, [2.0])},
        "layer2": [asarray(xp, [3.0])],
    }
    snap = _snapshot(ws["layer1"]["w"], ws["layer1"]["b"], ws["layer2"][0])
    bad = {"layer1": {"w": asarray(xp, [1.0])}, "layer2": [asarray(xp, [3.0])]}
    with pytest.raises(
        ValueError,
        match=r"dcdws does not match the structure of ws at \['layer1'\]: keys missing \['b'\]",
    ):
        agrad.gradient_descent_update(ws, bad, 0.1)
    bad = {
        "layer1": {"w": asarray(xp, [1.0]), "b": asarray(xp, [1.0])},
        "layer2": [asarray(xp, [3.0]), asarray(xp, [3.0])],
    }
    with pytest.raises(
        ValueError,
        match=r"at \['layer2'\]: ws has a list of length 1, dcdws has a list of length 2",
    ):
        agrad.gradient_descent_update(ws, bad, 0.1)
    m = {"layer1": {"w": asarray(xp, [0.0]), "b": asarray(xp, [0.0])}, "layer2": asarray(xp, [0.0])}
    with pytest.raises(ValueError, match=r"mw does not match the structure of ws at \['layer2'\]"):
        agrad.adam_update(ws, ws, 0.1, m, m, 1)
    _unchanged([ws["layer1"]["w"], ws["layer1"]["b"], ws["layer2"][0]], snap)


def test_shape_mismatch_names_both_shapes_and_the_leaf(xp):
    ws = {"w": asarray(xp, np.ones((2, 3))), "b": asarray(xp, np.ones(3))}
    gs = {"w": asarray(xp, np.ones((2, 3))), "b": asarray(xp, np.ones(4))}
    snap = _snapshot(ws["w"], ws["b"])
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \['b'\]: ws has shape \(3,\) but dcdws has shape \(4,\)",
    ):
        agrad.gradient_descent_update(ws, gs, 0.1)
    _unchanged([ws["w"], ws["b"]], snap)


def test_y_not_scalar(xp):
    x = asarray(xp, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"y must be a scalar.*shape \(2,\)"):
        agrad.execute_with_gradients(lambda x: x * 2.0, x)


def test_func_returns_no_array(xp):
    with pytest.raises(TypeError, match="func must return an array y"):
        agrad.execute_with_gradients(lambda x: None, asarray(xp, [1.0]))


def test_step_below_one(xp):
    w, g = asarray(xp, [1.0]), asarray(xp, [1.0])
    m, v = asarray(xp, [0.0]), asarray(xp, [0.0])
    snap = _snapshot(w, m, v)
    with pytest.raises(ValueError, match=r"step .* must be >= 1, got 0"):
        agrad.adam_update(w, g, 0.1, m, v, 0)
    _unchanged([w, m, v], snap)


def test_integer_variables_are_refused(xp):
    ints = xp.asarray([1, 2, 3])
    with pytest.raises(TypeError, match="cannot be differentiated"):
        agrad.variable(ints)
    with pytest.raises(TypeError, match=r"xs\['i'\] has dtype .*int"):
        agrad.execute_with_gradients(lambda d: d["i"], {"i": ints})


def test_hyperparameters_out_of_range(xp):
    w, g = asarray(xp, [1.0]), asarray(xp, [1.0])
    m, v = asarray(xp, [0.0]), asarray(xp, [0.0])
    with pytest.raises(ValueError, match=r"invalid beta1: 1\.0 \(expected a number in \[0, 1\)\)"):
        agrad.adam_update(w, g, 0.1, m, v, 1, beta1=1.0)
    with pytest.raises(
        ValueError, match=r"invalid epsilon: -1\.0 \(expected a finite number >= 0\)"
    ):
        agrad.adam_update(w, g, 0.1, m, v, 1, epsilon=-1.0)


def test_readonly_numpy_refused_before_any_write():
    a = np.ones(2)
    b = np.ones(2)
    b.flags.writeable = False
    with pytest.raises(
        ValueError, match=r"cannot update ws\[1\] in place: it is a read-only NumPy array"
    ):
        agrad.gradient_descent_update([a, b], [np.ones(2), np.ones(2)], 0.5)
    np.testing.assert_array_equal(a, np.ones(2))  # the first leaf was not written either
