"""Interleaved side-by-side timing: the only way to compare on a noisy machine.

Each comparison (a :class:`Row`) has two contenders, agrad and a peer, each a
zero-argument callable doing one unit of work. Both are warmed up, then timed in
alternating order (agrad first on even repetitions, the peer first on odd ones), a
block of calls per sample, and the row reports the median of each and their ratio.
As in ``timeit``, the cyclic garbage collector is paused during a sample; a full
collection before each sample keeps one contender's garbage off the other's clock.
Absolute times on a shared machine mean little; the ratio of two medians taken
side by side in the same minute means a lot more.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Row", "Settings", "calls_per_sample", "progress", "time_pair", "timed_row"]


@dataclass
class Settings:
    """How hard to measure: repetitions, seconds per sample, problem scale."""

    reps: int = 11
    sample_s: float = 0.2
    tiny: bool = False
    quick: bool = False
    growth_steps: int = 10_000
    filter: str = ""


@dataclass
class Row:
    """One comparison: agrad's median against a peer's, and the target on their ratio.

    ``ratio = agrad / peer``; the target is met when ``ratio <= target`` (``None``:
    reported for information). ``unit`` is ``"ms"`` for times, ``"MiB"`` for memory.
    """

    group: str
    name: str
    agrad: str
    peer: str
    agrad_value: float
    peer_value: float
    target: float | None
    unit: str = "ms"
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        if self.peer_value == 0:
            return float("inf") if self.agrad_value > 0 else 0.0
        return self.agrad_value / self.peer_value

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["met"] = self.met
        return d


def calls_per_sample(fn: Callable[[], Any], sample_s: float) -> tuple[int, float]:
    """How many calls of ``fn`` fill about ``sample_s`` seconds (at least 1), and one call's time.

    The first call is a warm-up and is not used: it pays one-time costs (imports,
    caches) that would make the estimate, and so every sample, far too short.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    if one < sample_s / 20:
        t0 = time.perf_counter()
        for _ in range(5):
            fn()
        one = (time.perf_counter() - t0) / 5
    return max(1, int(sample_s / max(one, 1e-9))), one


def _sample(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls, the cyclic collector paused.

    A full collection first (untimed): garbage the previous sample left behind (the
    collector was paused then too) is not billed to this one.
    """
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - t0) / number
    finally:
        if gc_was:
            gc.enable()


def time_pair(
    agrad_fn: Callable[[], Any], peer_fn: Callable[[], Any], settings: Settings
) -> tuple[float, float, dict[str, list[float]]]:
    """Medians (seconds per call) of ``agrad_fn`` and ``peer_fn``, timed interleaved."""
    n_a, _ = calls_per_sample(agrad_fn, settings.sample_s)
    n_p, _ = calls_per_sample(peer_fn, settings.sample_s)
    a_times: list[float] = []
    p_times: list[float] = []
    gc.collect()
    for rep in range(settings.reps):
        if rep % 2 == 0:
            a_times.append(_sample(agrad_fn, n_a))
            p_times.append(_sample(peer_fn, n_p))
        else:
            p_times.append(_sample(peer_fn, n_p))
            a_times.append(_sample(agrad_fn, n_a))
    samples = {"agrad": a_times, "peer": p_times}
    return statistics.median(a_times), statistics.median(p_times), samples


def timed_row(
    group: str,
    name: str,
    agrad: tuple[str, Callable[[], Any]],
    peer: tuple[str, Callable[[], Any]],
    target: float | None,
    settings: Settings,
    note: str = "",
) -> Row:
    """Time ``agrad`` against ``peer`` (``(label, fn)`` pairs) and make the row, in ms."""
    a, p, samples = time_pair(agrad[1], peer[1], settings)
    ms = {k: [1e3 * x for x in v] for k, v in samples.items()}
    row = Row(group, name, agrad[0], peer[0], 1e3 * a, 1e3 * p, target, "ms", note, ms)
    progress(row)
    return row


def progress(row: Row) -> None:
    """One line per finished row on stderr (the table goes to stdout at the end)."""
    flag = "" if row.met is None else ("  met" if row.met else "  NOT MET")
    print(
        f"  {row.group:18s} {row.name:44s} {row.agrad_value:10.3f} {row.peer_value:10.3f} "
        f"{row.unit:3s} {row.ratio:7.3f}{flag}",
        file=sys.stderr,
        flush=True,
    )
