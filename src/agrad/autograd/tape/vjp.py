"""How a primitive is differentiated: the entries of the rule tables.

A *VJP rule* maps the cotangent of a primitive's output to the cotangent of one of its
positional arguments. For ``ans = f(x_0, ..., x_n)``, a real loss ``L`` and
``g = dL/d ans``, the rule of argument ``i`` returns ``dL/dx_i = g . conj(df/dx_i)``
(torch's convention for complex inputs), with the signature::

    rule(ns, g, ans, *args, **kwargs) -> cotangent of args[i], or None (no gradient)

``ns`` is the namespace to compute with (the tracing namespace when an enclosing trace
records the backward pass, so a rule written with it is differentiable again), ``args``
and ``kwargs`` the forward inputs. Keyword arguments are never differentiated.

A rule table maps a primitive's name to one :class:`VJP`, made by one of:

- ``vjp(rule_0, rule_1, ...)``: one rule per positional argument (``None``: not
  differentiable in that argument, e.g. an index or a condition);
- ``vjp_argnum(rule)``: a variadic primitive (``concat``, ``stack``), one rule for every
  argument, told which by the keyword ``argnum``; with ``sequence=True`` the function
  takes its arrays as one sequence (``concat(arrays, /, *, axis)``);
- ``vjp(rule, outputs=(0, 1))``: a primitive returning a tuple (``linalg.svd``); ``g``
  is then the list of the outputs' cotangents (``None`` for an unused output), and only
  the outputs listed are traced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["VJP", "Rule", "vjp", "vjp_argnum"]

Rule = Callable[..., Any]


@dataclass(frozen=True)
class VJP:
    """The VJP rules of one primitive.

    ``rule_for(i)`` is the rule of positional argument ``i`` (``None``: no gradient);
    ``outputs`` lists the traced outputs of a tuple-returning primitive (``None``: one
    array out); ``sequence`` marks a variadic function that takes its arrays as one
    sequence, each of them a positional argument of the primitive.
    """

    rule_for: Callable[[int], Rule | None]
    outputs: tuple[int, ...] | None = None
    sequence: bool = False


def vjp(*rules: Rule | None, outputs: Sequence[int] | None = None) -> VJP:
    """One rule per positional argument, in order; arguments past the last get none."""
    return VJP(dict(enumerate(rules)).get, None if outputs is None else tuple(outputs))


def vjp_argnum(rule: Rule, *, sequence: bool = False, outputs: Sequence[int] | None = None) -> VJP:
    """One rule for every positional argument: ``rule(ns, g, ans, *args, argnum=i, **kwargs)``."""

    @functools.cache
    def rule_for(i: int) -> Rule:
        return functools.partial(rule, argnum=i)

    return VJP(rule_for, None if outputs is None else tuple(outputs), sequence)
