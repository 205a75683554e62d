"""Array conversions shared by ``agrad.optim``, the seed API and ``agrad.testing``.

Bottom layer: it knows array libraries (by module name, never importing one that is
not already loaded) and nothing of agrad's own objects. Callers unbox variables and
traced arrays before they get here.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat

__all__ = ["as_array", "device_or_none", "to_numpy"]


def as_array(x: Any) -> Any:
    """``x``, with a NumPy scalar (what NumPy returns for 0-d operands) made a 0-d array."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.generic):
        return np.asarray(x)
    return x


def device_or_none(x: Any) -> Any:
    """The device of ``x``, or ``None`` where the library cannot say (a JAX tracer)."""
    np = sys.modules.get("numpy")
    if np is not None and type(x) is np.ndarray:
        return "cpu"  # what array_api_compat.device says of every NumPy array
    try:
        return array_api_compat.device(x)
    except Exception:
        return None


def to_numpy(x: Any) -> Any:
    """A NumPy copy (or view) of an array of any supported library, copied to the host."""
    import numpy as np

    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if mod.startswith("array_api_strict"):
        return np.asarray(x._array)
    if mod.startswith("dask"):
        return np.asarray(x.compute())
    if mod.startswith("cupy"):
        return x.get()
    return np.asarray(x)
