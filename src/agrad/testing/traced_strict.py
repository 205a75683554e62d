"""``agrad.array_api_strict`` with every array traced: the official suite's traced mode.

Used as ``ARRAY_API_TESTS_MODULE=agrad.testing.traced_strict`` together with
``-p agrad.testing.traced_strict`` (which makes it a pytest plugin as well), it runs the
Array API conformance suite as code inside a gradient computation sees the namespace:

- as a plugin it opens one trace (:class:`~agrad.autograd.tape.traced.Trace`) when
  pytest is configured, on pytest's thread, keeps it open for the whole run and ends it
  when pytest is done; it empties the trace's tape after each test, so the recorded
  nodes of one test do not pile up. Importing the module opens nothing, so it can be
  imported anywhere (arrays made while no trace is open are the namespace's own);
- every floating-point or complex array the creation functions make (``asarray``,
  ``zeros``, ``full``, ``linspace``, ``*_like``, ``fft.fftfreq`` ...) is a *leaf* of that
  trace, as the inputs of ``agrad.grad`` are: every function then takes its traced path
  (primitives record tape nodes, derived functions compose primitives). Integer and
  boolean arrays are what the namespace makes of them inside a trace;
- every other name is ``agrad.array_api_strict``'s own object, with its own signature.

The suite never runs a backward pass here; gradients are tested against torch, JAX and
finite differences in agrad's own tests.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import agrad.array_api_strict as _ns
from agrad.autograd.tape.signatures import with_signature
from agrad.autograd.tape.traced import CONSTANT, Node, Trace, TracedArray, strip

__all__ = [
    "CREATION",
    "leaf",
    "pytest_configure",
    "pytest_runtest_teardown",
    "pytest_unconfigure",
    "run_trace",
]

#: The functions whose floating/complex results become leaves of the open trace.
CREATION = (
    "arange",
    "asarray",
    "empty",
    "empty_like",
    "eye",
    "from_dlpack",
    "full",
    "full_like",
    "linspace",
    "ones",
    "ones_like",
    "zeros",
    "zeros_like",
    "fft.fftfreq",
    "fft.rfftfreq",
)

_open: list[Trace] = []  # the trace of the run, while pytest has it open


def run_trace() -> Trace | None:
    """The trace this namespace's leaves belong to, while one is open (else ``None``)."""
    return _open[-1] if _open and _open[-1].active else None


def pytest_configure(config: Any) -> None:
    """Pytest hook: open the trace of the run (on pytest's thread)."""
    _open.append(Trace())


def pytest_runtest_teardown(item: Any) -> None:
    """Pytest hook: forget the nodes the test recorded (the trace stays open)."""
    current = run_trace()
    if current is not None and current.tape is not None:
        current.tape.clear()


def pytest_unconfigure(config: Any) -> None:
    """Pytest hook: end the trace of the run."""
    if _open:
        _open.pop().end()


_DIFFERENTIABLE = tuple(getattr(_ns, d) for d in ("float32", "float64", "complex64", "complex128"))


def leaf(x: Any) -> Any:
    """``x`` as a leaf of the open :func:`run_trace` when it is a floating or complex array.

    Anything else, and everything while no trace is open, is returned as it is.
    """
    current = run_trace()
    if current is None:
        return x
    if isinstance(x, TracedArray) and x._trace is current and x._node is not CONSTANT:
        return x  # already traced: a leaf, or the result of a recorded function
    raw = strip(x)
    if getattr(raw, "dtype", None) not in _DIFFERENTIABLE:
        return x
    return _ns._Traced(raw, Node(None, ()), current)


def _leaf_maker(function: Callable[..., Any]) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        return leaf(function(*args, **kwargs))

    return make


def _populate(scope: dict[str, Any]) -> None:
    """Fill this module: the namespace's names, creation functions making leaves."""
    for name in dir(_ns):
        if not name.startswith("_") or name.startswith("__array"):
            scope[name] = getattr(_ns, name)
    fft = types.ModuleType(f"{__name__}.fft", "``fft`` of the namespace; fftfreq makes leaves.")
    for short in _ns.fft.__all__:
        setattr(fft, short, getattr(_ns.fft, short))
    fft.__all__ = list(_ns.fft.__all__)
    scope["fft"] = fft
    for name in CREATION:
        prefix, _, short = name.rpartition(".")
        target = vars(fft) if prefix else scope
        target[short] = with_signature(_leaf_maker(target[short]), name)


_populate(globals())
