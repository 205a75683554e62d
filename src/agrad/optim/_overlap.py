"""Memory overlap between the arrays of one in-place step, from their byte ranges.

An in-place step may write an array only where no other array of the step (another
written one, or a gradient it reads) shares that memory. Each array is a byte range
``[start, start + size)``; :func:`disjoint` sorts and sweeps them, O(n log n);
:class:`WrittenRanges` keeps the written ranges of a step sorted, so that a later step
with the same written arrays checks only its new gradients, O(m log n).
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["WrittenRanges", "disjoint", "disjoint_loop"]

# Above this many ranges the sort runs in NumPy instead of Python.
VECTOR_SORT = 256


def disjoint(starts: list[int], sizes: list[int], n_written: int, tile: int = 1) -> bool:
    """Whether the byte ranges ``[start, start + size)`` overlap nowhere that matters.

    ``sizes`` is given once for every ``len(starts) // tile`` ranges (``tile`` lists of
    arrays with the same shapes and dtypes). The first ``n_written`` ranges are
    written, the others only read: a written range may meet no other range, two read
    ones may; empty ones meet nothing (nothing is read or written there). Sorted by
    start, O(n log n); NumPy sorts long lists when it is loaded.
    """
    n = len(starts)
    np = sys.modules.get("numpy")
    if n > VECTOR_SORT and np is not None:
        try:
            st = np.array(starts, dtype=np.int64)
            en = st + np.tile(np.array(sizes, dtype=np.int64), tile)
        except OverflowError:  # an address over 2**63: the loop below
            return disjoint_loop(starts, sizes * tile, n_written)
        order = np.argsort(st, kind="stable")
        st, en = st[order], en[order]
        if (st[1:] >= en[:-1]).all():
            return True  # sorted, each range ends before the next begins: none meet
        keep = en > st  # empty ranges meet nothing
        w = (order < n_written)[keep]
        st, en = st[keep], en[keep]
        prev_any = np.maximum.accumulate(en)[:-1]
        prev_w = np.maximum.accumulate(np.where(w, en, 0))[:-1]
        return not np.where(w[1:], st[1:] < prev_any, st[1:] < prev_w).any()
    return disjoint_loop(starts, sizes * tile, n_written)


def disjoint_loop(starts: list[int], sizes: list[int], n_written: int) -> bool:
    """:func:`disjoint` in Python: one sweep over the ranges sorted by start."""
    max_any = max_w = 0
    for i in sorted(range(len(starts)), key=starts.__getitem__):
        s = starts[i]
        e = s + sizes[i]
        if e <= s:
            continue  # an empty range meets nothing
        if i < n_written:
            if s < max_any:
                return False
            max_w = max(max_w, e)
        elif s < max_w:
            return False
        max_any = max(max_any, e)
    return True


class WrittenRanges:
    """The byte ranges of a step's written arrays, already known to be disjoint, sorted.

    :meth:`meets` answers whether any of a list of read ranges (gradients) meets one of
    them: for a read range ``[s, e)``, the last written range that starts before ``e``
    is the only one that can reach past ``s`` (the written ranges are disjoint, so
    their ends rise with their starts). NumPy's ``searchsorted`` answers for all read
    ranges at once; without NumPy, or with addresses over ``2**63``, the full sort.
    """

    __slots__ = ("ends", "sizes", "starts", "w_sizes", "w_starts")

    def __init__(self, starts: list[int], sizes: list[int]):
        self.w_starts, self.w_sizes = starts, sizes
        self.starts = self.ends = None
        np = sys.modules.get("numpy")
        if np is None:
            return
        try:
            st = np.array(starts, dtype=np.int64)
            en = st + np.array(sizes, dtype=np.int64)
        except OverflowError:
            return
        keep = en > st  # empty ranges meet nothing
        order = np.argsort(st[keep], kind="stable")
        self.starts, self.ends = st[keep][order], en[keep][order]

    def meets(self, starts: list[int], sizes: list[int]) -> bool:
        """Whether a read range ``[start, start + size)`` meets a written one."""
        if self.starts is None or len(starts) <= VECTOR_SORT // 4:
            n = len(self.w_starts)
            return not disjoint(self.w_starts + starts, self.w_sizes + sizes, n)
        np: Any = sys.modules["numpy"]
        try:
            gs = np.array(starts, dtype=np.int64)
            ge = gs + np.array(sizes, dtype=np.int64)
        except OverflowError:
            n = len(self.w_starts)
            return not disjoint(self.w_starts + starts, self.w_sizes + sizes, n)
        i = np.searchsorted(self.starts, ge, side="left") - 1  # the last one starting before e
        hit = (i >= 0) & (self.ends[np.maximum(i, 0)] > gs) & (ge > gs)
        return bool(hit.any())
