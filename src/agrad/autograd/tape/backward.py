"""The reverse pass: walk a trace's tape from its end back to its start, once.

The tape lists nodes in creation order (a node's parents are always older than it), so
walking it backwards, a node runs only after every node that uses it has sent its
cotangent; a node that received no cotangent (it does not lead to the output) is
skipped. Cotangents reaching one node are summed with ``ns``: the tracing namespace
when an enclosing trace records the backward pass, so that it is differentiable again.
The node of a tuple-returning primitive receives a :class:`TupleCotangent` (summed
output-wise) from the nodes of its outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agrad.autograd.tape.traced import Node, RuleNode, TupleCotangent

__all__ = ["backward"]

_NO_KEYWORDS: dict[str, Any] = {}


def backward(
    ns: Any, tape: Sequence[Node], output: Node, seed: Any, inputs: Sequence[Node]
) -> list[Any | None]:
    """Cotangents of ``inputs`` given the cotangent ``seed`` of ``output`` (``None``: unreached).

    ``tape`` is the trace's list of nodes in creation order; ``ns`` is the namespace the
    VJP rules and the sums compute with.
    """
    cotangents: dict[Node, Any] = {output: seed}
    pop, get = cotangents.pop, cotangents.get
    for node in reversed(tape):
        g = pop(node, None)
        if g is None:
            continue
        if type(node) is not RuleNode:
            for parent, pg in zip(node.parents, node.vjp(g, ns)):
                if pg is not None:
                    prev = get(parent)
                    cotangents[parent] = pg if prev is None else _accumulate(ns, prev, pg)
        elif node.kwargs is None and len(node.rules) == 1:  # the next branch, for one rule
            pg = node.rules[0](ns, g, node.ans, *node.args)
            if pg is not None:
                parent = node.parents[0]
                prev = get(parent)
                cotangents[parent] = pg if prev is None else _accumulate(ns, prev, pg)
        else:
            ans, args, kwargs = node.ans, node.args, node.kwargs or _NO_KEYWORDS
            for parent, rule in zip(node.parents, node.rules):
                pg = rule(ns, g, ans, *args, **kwargs)
                if pg is not None:
                    prev = get(parent)
                    cotangents[parent] = pg if prev is None else _accumulate(ns, prev, pg)
    return [get(node) for node in inputs]


def _accumulate(ns: Any, prev: Any, pg: Any) -> Any:
    """The sum of two cotangents reaching one node."""
    if isinstance(prev, TupleCotangent):
        return prev.accumulate(ns, pg)
    return ns.add(prev, pg)
