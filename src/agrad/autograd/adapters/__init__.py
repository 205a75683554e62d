"""One adapter per autograd: torch's, JAX's, and agrad's tape for everything else.

An adapter supplies only the primitives that differ between libraries: ``variable``,
``is_variable``, ``stop_gradient``, ``value_and_grad`` and how to write an update in
place. Lookup is by the namespace's library name; an adapter module imports its
framework only when it is used, so importing agrad never imports torch, JAX or CuPy.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType
from typing import Any

from agrad.namespace import library_name

__all__ = ["Adapter", "adapter_by_name", "adapter_for"]


class Adapter:
    """The autograd primitives of one array library."""

    name = "base"

    def variable(self, x: Any) -> Any:
        raise NotImplementedError

    def is_variable(self, x: Any) -> bool:
        raise NotImplementedError

    def stop_gradient(self, x: Any) -> Any:
        raise NotImplementedError

    def value_and_grad(
        self, flat_func: Any, leaves: list[Any], retain: bool
    ) -> tuple[Any, list[Any], tuple[Any, ...]]:
        """Call ``flat_func(leaves) -> (y, extras)`` once; return ``(y, grads, extras)``."""
        raise NotImplementedError

    def vjp(self, flat_func: Any, leaves: list[Any], retain: bool) -> tuple[list[Any], Any]:
        """Call ``flat_func(leaves) -> outs`` once; return ``(outs, vjp_fn)``.

        ``vjp_fn(cotangents, retain, batched=False)`` returns one cotangent per leaf
        (zeros where unreached); with ``batched`` every cotangent has a leading batch
        axis, and so do the results. With ``retain`` the results keep their history.
        """
        msg = f"agrad has no vjp for {self.name}: its adapter does not implement one"
        raise NotImplementedError(msg)

    def custom_vjp(self, spec: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``spec.fwd(*args, **kwargs)`` so that its VJP is ``spec.bwd`` (``agrad.custom_vjp``)."""
        msg = f"agrad.custom_vjp has no {self.name} implementation in its adapter"
        raise NotImplementedError(msg)

    def checkpoint(self, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``f`` so that the backward pass recomputes its inside (``agrad.checkpoint``)."""
        msg = f"agrad.checkpoint has no {self.name} implementation in its adapter"
        raise NotImplementedError(msg)

    def read(self, x: Any) -> Any:
        """The array a parameter holds (a variable box's value, or the array itself)."""
        return x

    def writable(self, dst: Any, new: Any) -> bool:
        """Whether ``new`` can be written into ``dst`` in place (else the update is functional)."""
        return False

    def readonly_reason(self, dst: Any) -> str | None:
        """Why ``dst`` refuses an in-place write that it should accept (e.g. read-only NumPy)."""
        return None

    def write(self, dst: Any, new: Any) -> Any:
        """Write ``new`` into ``dst``; return the object the caller should keep."""
        raise NotImplementedError

    def unsupported_reason(self, x: Any) -> str | None:
        """Why ``x`` cannot take part in an update at all (a sparse or meta tensor), or ``None``."""
        return None

    def memory_span(self, dst: Any) -> tuple[Any, int, int] | None:
        """``(buffer, start, end)``: the bytes an in-place write to ``dst`` touches.

        ``buffer`` names the address space (a device); ``None`` where the library cannot
        say, and then no overlap check is made.
        """
        return None

    def shares_memory(self, a: Any, b: Any) -> bool:
        """Whether writes to ``a`` and ``b`` touch a common byte (their spans overlap)."""
        return True


_ADAPTER_MODULES = {"torch": "torch", "jax": "jax"}


@cache
def adapter_by_name(key: str) -> Adapter:
    """The adapter of the library called ``key`` (``"torch"``, ``"numpy"`` ...)."""
    if key in _ADAPTER_MODULES:
        mod = importlib.import_module(f"agrad.autograd.adapters.{_ADAPTER_MODULES[key]}")
        return mod.ADAPTER
    from agrad.autograd.adapters.tape import TapeAdapter

    return TapeAdapter(key)


# Namespace -> adapter, filled by ``adapter_for`` (namespaces are long-lived modules).
_ADAPTER_BY_NAMESPACE: dict[int, tuple[ModuleType, Adapter]] = {}


def adapter_for(xp: ModuleType) -> Adapter:
    """The adapter for namespace ``xp`` (a tracing namespace maps to its base's tape adapter)."""
    hit = _ADAPTER_BY_NAMESPACE.get(id(xp))
    if hit is not None and hit[0] is xp:
        return hit[1]
    adapter = _find_adapter(xp)
    _ADAPTER_BY_NAMESPACE[id(xp)] = (xp, adapter)
    return adapter


def _find_adapter(xp: ModuleType) -> Adapter:
    base = getattr(xp, "_agrad_base_name", None)
    if base is not None:
        return adapter_by_name(base)
    name = library_name(xp)
    from agrad.autograd.tape.tracing_namespace import BASE_MODULES

    if name not in _ADAPTER_MODULES and name not in BASE_MODULES:
        msg = (
            f"agrad has no autograd adapter for the namespace {name!r}; supported: "
            "numpy, array_api_strict, cupy, dask (agrad's tape), torch, jax (native)"
        )
        raise NotImplementedError(msg)
    return adapter_by_name(name)
