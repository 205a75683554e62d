"""Per-leaf checks of agrad.optim (the seed API runs through them too): raised before any write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["check_leaf_matches", "has_unknown_size"]


def check_leaf_matches(
    fn: str, where: str | Callable[[], str], ref_name: str, ref: Any, name: str, x: Any
) -> None:
    """Raise if ``x`` (one leaf of tree ``name``) differs in shape or dtype from ``ref``.

    ``where`` is the leaf's key path, or a function giving it (called only for a
    message); the message names both trees and both values.

    Raises:
        ValueError: the shapes differ; when one has a dimension of unknown size (a Dask
            array after boolean indexing, ``None`` in the Array API's terms), the message
            says so and how to make it known.
        TypeError: the dtypes differ.
    """
    ref_shape, shape = tuple(ref.shape), tuple(x.shape)
    if ref_shape != shape:
        where = where() if callable(where) else where
        # A Dask array after boolean indexing has NaN sizes (the Array API says None),
        # and NaN is unequal to itself: the shapes differ only because they are unknown.
        for tree, s in ((ref_name, ref_shape), (name, shape)):
            if has_unknown_size(s):
                msg = (
                    f"{fn}: {tree} at {where} has unknown chunk sizes (shape {s}), so its "
                    "shape cannot be checked against the other trees; call "
                    "x.compute_chunk_sizes() on that Dask array (or give it known sizes) "
                    "before the step"
                )
                raise ValueError(msg)
        msg = (
            f"{fn}: shape mismatch at {where}: {ref_name} has shape {ref_shape} "
            f"but {name} has shape {shape}"
        )
        raise ValueError(msg)
    if ref.dtype != x.dtype:
        where = where() if callable(where) else where
        msg = (
            f"{fn}: dtype mismatch at {where}: {ref_name} has dtype {ref.dtype} "
            f"but {name} has dtype {x.dtype}"
        )
        raise TypeError(msg)


def has_unknown_size(shape: tuple[Any, ...]) -> bool:
    """Whether a dimension of ``shape`` is unknown: NaN (Dask) or ``None`` (Array API)."""
    try:
        total = sum(shape)
    except TypeError:  # None
        return True
    return total != total  # NaN
