"""The byte-range overlap checks of the in-place steps (``agrad.optim._overlap``).

Both implementations of :func:`disjoint` (Python sweep, NumPy sort) and
:class:`WrittenRanges` (sorted written ranges, gradients checked by binary search)
against a brute-force check of all pairs.
"""

from __future__ import annotations

import numpy as np
import pytest

from agrad.optim._overlap import VECTOR_SORT, WrittenRanges, disjoint, disjoint_loop


def _meet(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether ranges ``(start, size)`` share a byte (an empty range reads and writes nothing)."""
    if not a[1] or not b[1]:
        return False
    return a[0] < b[0] + b[1] and b[0] < a[0] + a[1]


@pytest.mark.parametrize("n", [6, 40, VECTOR_SORT + 40])
def test_disjoint_matches_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(200 if n < 100 else 4):
        starts = [int(s) for s in rng.integers(0, 4 * n, n)]
        sizes = [int(s) for s in rng.integers(0, 6, n)]
        n_written = int(rng.integers(0, n + 1))
        ranges = list(zip(starts, sizes))
        truth = not any(
            _meet(ranges[i], ranges[j])
            for i in range(n)
            for j in range(i + 1, n)
            if i < n_written or j < n_written
        )
        assert disjoint(starts, sizes, n_written) == truth
        assert disjoint_loop(starts, sizes, n_written) == truth


@pytest.mark.parametrize("n_read", [3, VECTOR_SORT])
def test_written_ranges_meets_matches_brute_force(n_read):
    """Disjoint written ranges (some empty), random read ranges that may meet them."""
    rng = np.random.default_rng(n_read)
    for _ in range(60):
        n_w = int(rng.integers(1, 80))
        sizes = [int(s) for s in rng.integers(0, 5, n_w)]
        gaps = rng.integers(0, 4, n_w)
        starts = list(map(int, np.cumsum(gaps) + np.cumsum([0, *sizes[:-1]])))
        order = rng.permutation(n_w)  # the written ranges in any order
        w = [(starts[i], sizes[i]) for i in order]
        ranges = WrittenRanges([s for s, _ in w], [z for _, z in w])
        top = starts[-1] + sizes[-1] + 4
        r_starts = [int(s) for s in rng.integers(0, top, n_read)]
        r_sizes = [int(s) for s in rng.integers(0, 4, n_read)]
        truth = any(_meet(r, x) for r in zip(r_starts, r_sizes) for x in w)
        assert ranges.meets(r_starts, r_sizes) == truth


def test_huge_addresses_use_the_python_sweep():
    starts = [2**63 + 10 * i for i in range(VECTOR_SORT + 5)]
    sizes = [8] * len(starts)
    assert disjoint(starts, sizes, len(starts))
    sizes[3] = 11
    assert not disjoint(starts, sizes, len(starts))
    ranges = WrittenRanges(starts, [8] * len(starts))
    assert not ranges.meets([2**63 + 8] * VECTOR_SORT, [2] * VECTOR_SORT)
    assert ranges.meets([2**63 + 8] * VECTOR_SORT, [3] * VECTOR_SORT)
