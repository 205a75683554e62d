"""Per-leaf checks of agrad.optim (the seed API runs through them too): raised before any write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["check_leaf_matches"]


def check_leaf_matches(
    fn: str, where: str | Callable[[], str], ref_name: str, ref: Any, name: str, x: Any
) -> None:
    """Raise if ``x`` (one leaf of tree ``name``) differs in shape or dtype from ``ref``.

    ``where`` is the leaf's key path, or a function giving it (called only for a
    message); the message names both trees and both values.

    Raises:
        ValueError: the shapes differ.
        TypeError: the dtypes differ.
    """
    if tuple(ref.shape) != tuple(x.shape):
        where = where() if callable(where) else where
        msg = (
            f"{fn}: shape mismatch at {where}: {ref_name} has shape {tuple(ref.shape)} "
            f"but {name} has shape {tuple(x.shape)}"
        )
        raise ValueError(msg)
    if ref.dtype != x.dtype:
        where = where() if callable(where) else where
        msg = (
            f"{fn}: dtype mismatch at {where}: {ref_name} has dtype {ref.dtype} "
            f"but {name} has dtype {x.dtype}"
        )
        raise TypeError(msg)
