"""Shared test helpers; the ``xp`` fixture and backend markers come from ``agrad.testing.plugin``."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from agrad.testing import plugin
from agrad.testing.plugin import backend_fixture

TAPE_BACKENDS = ["numpy", "array_api_strict", "dask", "cupy"]


def pytest_configure(config):
    # The `xp` fixture, the markers and --agrad-backends come from agrad's pytest plugin,
    # registered by its `pytest11` entry point; register it here if agrad was installed
    # without entry points (e.g. the source tree on sys.path only).
    if not config.pluginmanager.is_registered(plugin):
        config.pluginmanager.register(plugin, "agrad")


tape_xp = backend_fixture(TAPE_BACKENDS, name="tape_xp")


def asarray(xp, a, dtype=None, device=None):
    """An array of namespace ``xp`` from NumPy data (float64 unless ``dtype``)."""
    a = np.asarray(a, dtype=np.float64 if dtype is None else dtype)
    if device is not None:
        return xp.asarray(a, device=device)
    return xp.asarray(a)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
