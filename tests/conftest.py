"""Shared fixtures: one ``xp`` fixture over every installed array namespace."""

from __future__ import annotations

import os

os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import pytest

from agrad.testing import BACKENDS, load_backend

ALL_BACKENDS = list(BACKENDS)
TAPE_BACKENDS = ["numpy", "array_api_strict", "dask", "cupy"]


def _backend_param(name: str):
    return pytest.param(name, id=name, marks=getattr(pytest.mark, f"backend_{name}"))


def pytest_configure(config):
    for name in ALL_BACKENDS:
        config.addinivalue_line("markers", f"backend_{name}: runs on the {name} backend")


@pytest.fixture(params=[_backend_param(n) for n in ALL_BACKENDS])
def xp(request):
    """The Array API namespace of one installed backend (skips with the reason if absent)."""
    ns, reason = load_backend(request.param)
    if ns is None:
        pytest.skip(reason)
    return ns


@pytest.fixture(params=[_backend_param(n) for n in TAPE_BACKENDS])
def tape_xp(request):
    """Namespaces differentiated by agrad's own tape."""
    ns, reason = load_backend(request.param)
    if ns is None:
        pytest.skip(reason)
    return ns


def asarray(xp, a, dtype=None, device=None):
    """An array of namespace ``xp`` from NumPy data (float64 unless ``dtype``)."""
    a = np.asarray(a, dtype=np.float64 if dtype is None else dtype)
    if device is not None:
        return xp.asarray(a, device=device)
    return xp.asarray(a)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
