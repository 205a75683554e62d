"""Comparison helpers and backend discovery for tests (re-exported by ``agrad.testing``)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from agrad import _arrays

__all__ = [
    "BACKENDS",
    "assert_close",
    "assert_same_kind",
    "available_backends",
    "default_tolerance",
    "load_backend",
    "to_numpy",
]

#: Backend name -> (module that must import, Array API namespace module).
BACKENDS: dict[str, tuple[str, str]] = {
    "numpy": ("numpy", "array_api_compat.numpy"),
    "array_api_strict": ("array_api_strict", "array_api_strict"),
    "torch": ("torch", "array_api_compat.torch"),
    "jax": ("jax", "jax.numpy"),
    "dask": ("dask.array", "array_api_compat.dask.array"),
    "cupy": ("cupy", "array_api_compat.cupy"),
}


def load_backend(name: str) -> tuple[ModuleType | None, str | None]:
    """``(namespace, None)`` if backend ``name`` runs here, else ``(None, reason)``."""
    module, namespace = BACKENDS[name]
    try:
        importlib.import_module(module)
    except ImportError as err:
        if name == "cupy":
            return None, "CuPy is not installed (it needs a CUDA GPU, and this machine has none)"
        return None, f"{name} is not installed ({err})"
    if name == "cupy":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                return None, "CuPy needs a CUDA GPU and this machine has none"
        except Exception as err:  # no driver, no device
            return (
                None,
                f"CuPy needs a CUDA GPU and none is usable here ({type(err).__name__}: {err})",
            )
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    return importlib.import_module(namespace), None


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [name for name in BACKENDS if load_backend(name)[0] is not None]


def to_numpy(x: Any) -> Any:
    """A NumPy copy of any supported array (variables and traced arrays included)."""
    from agrad.autograd.tape.traced import strip
    from agrad.autograd.variable import Variable

    if isinstance(x, Variable):
        x = x.value
    return _arrays.to_numpy(strip(x))


def default_tolerance(dtype: Any) -> tuple[float, float]:
    """``(rtol, atol)`` for a dtype: tight for 64-bit floats, looser for 32 and 16 bit."""
    name = str(dtype)
    if "float16" in name or "bfloat16" in name:
        return 1e-2, 1e-3
    if "float32" in name or "complex64" in name:
        return 1e-5, 1e-6
    return 1e-10, 1e-12


def assert_same_kind(
    actual: Any,
    desired: Any,
    *,
    check_namespace: bool = True,
    check_dtype: bool = True,
    check_device: bool = True,
    err_msg: str = "",
) -> None:
    """Assert ``actual`` has ``desired``'s namespace, dtype, device and shape (not values)."""
    import numpy as np

    from agrad.namespace import array_namespace, library_name

    prefix = f"{err_msg}: " if err_msg else ""
    a_ns = array_namespace(actual)
    d_is_array = hasattr(desired, "shape") and not isinstance(desired, (np.ndarray, np.generic))
    if check_namespace and d_is_array:
        d_ns = array_namespace(desired)
        if library_name(a_ns) != library_name(d_ns):
            msg = f"{prefix}namespaces differ: actual is {library_name(a_ns)}, desired is {library_name(d_ns)}"
            raise AssertionError(msg)
    if check_dtype and hasattr(desired, "dtype"):
        if str(actual.dtype).rsplit(".", 1)[-1] != str(desired.dtype).rsplit(".", 1)[-1]:
            raise AssertionError(
                f"{prefix}dtypes differ: actual {actual.dtype}, desired {desired.dtype}"
            )
    if check_device and d_is_array:
        import array_api_compat

        da, dd = array_api_compat.device(actual), array_api_compat.device(desired)
        if str(da) != str(dd):
            raise AssertionError(f"{prefix}devices differ: actual {da}, desired {dd}")
    a_shape = tuple(actual.shape)
    d_shape = tuple(getattr(desired, "shape", np.shape(desired)))
    if a_shape != d_shape:
        raise AssertionError(f"{prefix}shapes differ: actual {a_shape}, desired {d_shape}")


def assert_close(
    actual: Any,
    desired: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    check_namespace: bool = True,
    check_dtype: bool = True,
    check_device: bool = True,
    err_msg: str = "",
) -> None:
    """Assert ``actual`` matches ``desired``: namespace, dtype, device, shape, then values.

    ``desired`` may be an array of any library (or a NumPy array / Python number, in
    which case only shape and values are compared). The default tolerance follows
    ``actual``'s dtype (:func:`default_tolerance`).
    """
    import numpy as np

    assert_same_kind(
        actual,
        desired,
        check_namespace=check_namespace,
        check_dtype=check_dtype,
        check_device=check_device,
        err_msg=err_msg,
    )
    a_np = to_numpy(actual)
    d_np = to_numpy(desired) if hasattr(desired, "shape") else np.asarray(desired)
    r, a = default_tolerance(actual.dtype)
    np.testing.assert_allclose(
        a_np,
        d_np,
        rtol=r if rtol is None else rtol,
        atol=a if atol is None else atol,
        err_msg=err_msg,
    )
