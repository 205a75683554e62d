"""All-or-nothing updates: when any leaf fails validation, no leaf is written.

Every update entry point (the seed's ``gradient_descent_update`` and ``adam_update``,
``agrad.optim`` steps, ``apply_updates``, a chained optimizer) is run on a pytree whose
*last* leaf is bad, the worst case for a writer that validates as it goes. Failures are
of every kind: a wrong shape, dtype, library or device in the gradients, and a write
that the array refuses (injected through the adapter's ``readonly_reason`` hook, so it
can be placed on any backend's last parameter or last state leaf). Afterwards every
parameter and state array must be exactly as before (values, variable bindings, torch
version counters). A control run without the failure shows the same call does write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import agrad
import agrad.optim as optim
from agrad.autograd.adapters import adapter_for
from agrad.namespace import library_name
from agrad.optim import fastpath
from agrad.pytree import flatten
from agrad.testing import to_numpy
from conftest import asarray
from test_bad_input_matrix import assert_unchanged, record_inputs

UPDATES = ["gradient_descent", "adam_update", "sgd", "adam", "chain", "apply_updates"]


def _tree(xp: Any) -> dict[str, Any]:
    """Mixed leaves: a variable, raw arrays in a list; ``'z'`` comes last when flattened."""
    return {
        "a": agrad.variable(asarray(xp, np.ones((2, 3)))),
        "b": [asarray(xp, [1.0, 2.0, 3.0]), asarray(xp, np.ones(4))],
        "z": asarray(xp, [5.0, 6.0]),
    }


def _grads(xp: Any) -> dict[str, Any]:
    return {
        "a": asarray(xp, np.full((2, 3), 0.5)),
        "b": [asarray(xp, [0.1, 0.2, 0.3]), asarray(xp, np.full(4, -0.5))],
        "z": asarray(xp, [1.0, -1.0]),
    }


class Update:
    """One update entry point with its state, prepared before any failure is injected."""

    def __init__(self, kind: str, xp: Any, params: Any):
        self.kind = kind
        self.state: Any = None
        self.opt: Any = None
        if kind == "adam_update":
            self.state = (
                {k: _zeros_like(xp, v) for k, v in params.items() if k != "b"}
                | {"b": [_zeros_like(xp, v) for v in params["b"]]},
                {k: _zeros_like(xp, v) for k, v in params.items() if k != "b"}
                | {"b": [_zeros_like(xp, v) for v in params["b"]]},
            )
        elif kind in ("sgd", "adam", "chain"):
            self.opt = {
                "sgd": lambda: optim.sgd(lr=0.1, momentum=0.9),
                "adam": lambda: optim.adam(lr=0.1),
                "chain": lambda: optim.chain(
                    optim.clip_by_global_norm(1.0),
                    optim.add_decayed_weights(0.01),
                    optim.adam(lr=0.1),
                ),
            }[kind]()
            self.state = self.opt.init(params)
            if kind != "chain":  # give momentum buffers a value, so a write would show
                self.state = self.opt.step(params, _grads(xp), self.state, inplace=False)[1]

    def __call__(self, params: Any, grads: Any) -> Any:
        if self.kind == "gradient_descent":
            return agrad.gradient_descent_update(params, grads, 0.1)
        if self.kind == "adam_update":
            return agrad.adam_update(params, grads, 0.1, *self.state, 1)
        if self.kind == "apply_updates":
            return optim.apply_updates(params, grads)
        return self.opt.step(params, grads, self.state)

    def last_state_array(self) -> Any:
        arrays = [x for x in flatten(self.state)[0] if hasattr(x, "shape")]
        return arrays[-1] if arrays else None


def _zeros_like(xp: Any, x: Any) -> Any:
    return xp.zeros_like(x.value if isinstance(x, agrad.Variable) else x)


def _other_library(xp: Any) -> Callable[[Any], Any]:
    if library_name(xp) == "numpy":
        torch = pytest.importorskip("torch")
        return lambda a: torch.asarray(np.asarray(a, dtype=np.float64))
    return lambda a: np.asarray(a, dtype=np.float64)


def _writes_in_place(xp: Any) -> bool:
    return library_name(xp) != "jax"


def _refuse_write_to(monkeypatch: pytest.MonkeyPatch, xp: Any, target: Any) -> None:
    # The injected refusal is the adapter's, which the generic path asks about every
    # write; the native fast paths check writability themselves (test_fastpath.py).
    monkeypatch.setattr(fastpath, "enabled", False)
    adapter = adapter_for(xp)
    original = adapter.readonly_reason

    def readonly_reason(dst: Any) -> str | None:
        return "injected failure" if dst is target else original(dst)

    monkeypatch.setattr(adapter, "readonly_reason", readonly_reason)


@pytest.mark.parametrize("kind", UPDATES)
@pytest.mark.parametrize("failure", ["shape", "dtype", "library", "refused-param", "refused-state"])
def test_a_bad_last_leaf_means_no_leaf_is_written(xp, kind, failure, monkeypatch) -> None:
    params = _tree(xp)
    update = Update(kind, xp, params)
    grads = _grads(xp)
    match = r"\['z'\]"
    if failure == "shape":
        grads["z"] = asarray(xp, [1.0, 2.0, 3.0])
    elif failure == "dtype":
        grads["z"] = asarray(xp, [1.0, 2.0], dtype=np.float32)
    elif failure == "library":
        grads["z"] = _other_library(xp)([1.0, 2.0])
    elif failure == "refused-param":
        if not _writes_in_place(xp):
            pytest.skip("JAX arrays are immutable: updates never write in place")
        _refuse_write_to(monkeypatch, xp, params["z"])
        match = r"cannot update .*\['z'\].* in place: injected failure"
    else:
        target = update.last_state_array()
        if target is None:
            pytest.skip(f"{kind} has no state arrays")
        if not _writes_in_place(xp):
            pytest.skip("JAX arrays are immutable: updates never write in place")
        _refuse_write_to(monkeypatch, xp, target)
        match = r"cannot update .* in place: injected failure"
    before = record_inputs((params, update.state))
    with pytest.raises((ValueError, TypeError), match=match):
        update(params, grads)
    assert_unchanged(before)


@pytest.mark.parametrize("kind", UPDATES)
def test_control_the_same_update_does_write(xp, kind) -> None:
    """Without a failure the very same call changes every parameter (the test above is not vacuous)."""
    params = _tree(xp)
    update = Update(kind, xp, params)
    old = [to_numpy(p).copy() for p in flatten(params)[0]]
    out = update(params, _grads(xp))
    new_params = out if kind in ("gradient_descent", "apply_updates") else out[0]
    for before, after in zip(old, flatten(new_params)[0]):
        assert not np.array_equal(before, to_numpy(after))
    if _writes_in_place(xp):
        for before, leaf in zip(old, flatten(params)[0]):
            assert not np.array_equal(before, to_numpy(leaf))


def test_two_strict_devices_in_the_last_leaf() -> None:
    strict = pytest.importorskip("array_api_strict")
    params = _tree(strict)
    grads = _grads(strict)
    grads["z"] = strict.asarray([1.0, 2.0], dtype=strict.float64, device=strict.Device("device1"))
    for kind in ("gradient_descent", "adam_update"):
        update = Update(kind, strict, params)
        before = record_inputs((params, update.state))
        with pytest.raises(
            ValueError,
            match=r"device mismatch at \['z'\]: ws is on .* but dcdws\['z'\] is on .*device1",
        ):
            update(params, grads)
        assert_unchanged(before)
