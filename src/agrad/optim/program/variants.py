"""Pick the recorded program that fits a step: one cache of variants per optimizer.

A rule with Python branches on per-step numbers (a schedule's phase, RAdam's
rectification) records one program per combination of branch outcomes; each program
carries ``guards``, the values its branches saw. :func:`choose` finds the cached
program whose guards hold for this step's numbers, or records a new one, for every
executor's dispatcher (:mod:`agrad.optim.fastpath` for NumPy and torch,
:mod:`agrad.optim.program.kernel_route` for CuPy and Dask).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agrad.optim.program.ir import evaluate_scalars

__all__ = ["DECLINED", "MAX_VARIANTS", "choose", "generic_checks_pass"]

#: the cache's mark for a key whose step the route cannot run (nothing is recorded again)
DECLINED = object()
#: programs kept per key (one per combination of guard outcomes)
MAX_VARIANTS = 8


def choose(
    cache: Any,
    key: Any,
    numbers: list[Any],
    program_of: Callable[[Any], Any],
    build: Callable[[], Any],
    valid: Callable[[], bool],
) -> tuple[Any, list[Any]] | None:
    """The cached entry for ``key`` whose program's guards hold, and the step's scalars.

    ``numbers``: what the program's scalars are evaluated from (the state's leaves);
    ``program_of(entry)``: an entry's program; ``build()``: a new entry (``None`` where
    the route cannot run the step); ``valid()``: whether the inputs pass the generic
    path's checks, asked before the first recording. ``None`` where nothing fits: a
    schedule's bad value (the generic path raises its message), invalid input, or a
    step the route declines (remembered as :data:`DECLINED` for a new key).
    """
    variants = cache.get(key)
    if variants is DECLINED:
        return None
    for entry in variants or ():
        program = program_of(entry)
        try:
            values = evaluate_scalars(program.scalars, numbers)
        except Exception:  # a schedule's bad value: the generic path raises its message
            return None
        if all(values[i] == v for i, v in program.guards):
            return entry, values
    if variants is None and not valid():
        return None
    entry = build()
    if entry is None:
        if variants is None:
            cache[key] = DECLINED
        return None
    cache[key] = [*list(variants or ())[-(MAX_VARIANTS - 1) :], entry]
    try:
        return entry, evaluate_scalars(program_of(entry).scalars, numbers)
    except Exception:
        return None


def generic_checks_pass(opt: Any, params: Any, grads: Any, state: Any) -> bool:
    """Whether the generic path's checks accept the call (asked once per cache key, so
    that bad input always gets the generic path's message)."""
    try:
        opt._check(f"{opt.name}.step", params, grads, state, None)
    except Exception:
        return False
    return True
