"""pytest plugin: an ``xp`` fixture over every installed array namespace, with markers.

Installed with agrad (entry point ``pytest11: agrad``), so a library's test suite gets,
without any conftest code::

    def test_fit(xp):                                   # runs once per installed backend
        x = xp.asarray([1.0, 2.0])
        assert_close(mylib.fit(x), xp.asarray([...]))   # from agrad.testing

    @pytest.mark.skip_backend("dask", reason="needs eager shapes")
    @pytest.mark.xfail_backend("jax", reason="immutable arrays")
    def test_inplace(xp): ...

- ``xp``: the Array API namespace of one backend (numpy, array_api_strict, torch, jax,
  dask, cupy); a backend that cannot run here is skipped with the reason (CuPy without
  a CUDA GPU says so). ``xp_name`` gives the backend's name. JAX is put in 64-bit mode.
- ``skip_backend(*names, reason=...)`` and ``xfail_backend(*names, reason=...,
  strict=True)`` apply to those backends only.
- Every parametrisation carries a ``backend_<name>`` mark: ``-m "not backend_dask"``.
- ``--agrad-backends numpy,torch`` limits the run to those backends (the option is
  prefixed so that it cannot clash with another plugin's).

:func:`backend_fixture` makes further fixtures of the same kind over other backend
subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import pytest

from agrad.testing._compare import BACKENDS, load_backend

__all__ = ["backend_fixture", "backend_params", "namespace_for"]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--agrad-backends``: a comma-separated subset of the backends for the ``xp`` fixtures."""
    group = parser.getgroup("agrad", "agrad array backends")
    group.addoption(
        "--agrad-backends",
        default=None,
        metavar="NAME[,NAME...]",
        help=f"run the xp fixtures only on these backends (of {', '.join(BACKENDS)})",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (so ``--strict-markers`` accepts them)."""
    config.addinivalue_line(
        "markers",
        "skip_backend(*names, reason): skip this test on the named array backends",
    )
    config.addinivalue_line(
        "markers",
        "xfail_backend(*names, reason, strict=True): expect this test to fail on the named backends",
    )
    for name in BACKENDS:
        config.addinivalue_line("markers", f"backend_{name}: runs on the {name} backend")
    option = config.getoption("--agrad-backends", default=None)
    if option:
        unknown = sorted(set(option.split(",")) - set(BACKENDS))
        if unknown:
            msg = f"--agrad-backends: unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}"
            raise pytest.UsageError(msg)


def backend_params(names: Iterable[str] | None = None) -> list[Any]:
    """``pytest.param`` per backend (all by default), each with id and ``backend_<name>`` mark."""
    chosen = list(BACKENDS) if names is None else list(names)
    unknown = [n for n in chosen if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    return [pytest.param(n, id=n, marks=getattr(pytest.mark, f"backend_{n}")) for n in chosen]


def _names_of(marker: pytest.Mark) -> tuple[str, ...]:
    names = marker.args
    if len(names) == 1 and isinstance(names[0], (list, tuple)):
        names = tuple(names[0])
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        msg = (
            f"@pytest.mark.{marker.name} needs backend names from {', '.join(BACKENDS)}; "
            f"got {names!r}"
        )
        raise pytest.UsageError(msg)
    return tuple(names)


def namespace_for(request: pytest.FixtureRequest, name: str) -> ModuleType:
    """The namespace of backend ``name`` for the requesting test, applying the markers.

    Skips when the backend cannot run here, is excluded by ``--agrad-backends`` or by a
    ``skip_backend`` mark; adds an ``xfail`` for an ``xfail_backend`` mark.
    """
    option = request.config.getoption("--agrad-backends", default=None)
    if option and name not in option.split(","):
        pytest.skip(f"{name} is not among --agrad-backends {option}")
    for marker in request.node.iter_markers("skip_backend"):
        if name in _names_of(marker):
            pytest.skip(marker.kwargs.get("reason", f"skipped on {name}"))
    for marker in request.node.iter_markers("xfail_backend"):
        if name in _names_of(marker):
            reason = marker.kwargs.get("reason", f"expected to fail on {name}")
            strict = marker.kwargs.get("strict", True)
            request.applymarker(pytest.mark.xfail(reason=reason, strict=strict))
    xp, reason = load_backend(name)
    if xp is None:
        pytest.skip(reason or f"{name} cannot run here")
    return xp


def backend_fixture(
    names: Iterable[str] | None = None, *, name: str | None = None
) -> Callable[..., Any]:
    """A fixture like ``xp`` over the backends ``names`` (all by default).

    Assign it in a conftest: ``tape_xp = backend_fixture(["numpy", "dask"])``.
    """

    def fixture(request: pytest.FixtureRequest) -> ModuleType:
        return namespace_for(request, request.param)

    fixture.__doc__ = f"The Array API namespace of each of {', '.join(names or BACKENDS)}."
    return pytest.fixture(params=backend_params(names), name=name)(fixture)


@pytest.fixture(params=backend_params())
def xp_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend that ``xp`` is for (``numpy``, ``torch``, ...)."""
    return request.param


@pytest.fixture
def xp(request: pytest.FixtureRequest, xp_name: str) -> ModuleType:
    """The Array API namespace of one installed backend; absent ones skip with the reason."""
    return namespace_for(request, xp_name)
