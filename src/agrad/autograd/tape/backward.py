"""The reverse pass: walk the tape from the output back to the inputs, once.

Nodes are visited in reverse creation order (``Node.seq``; a node's parents are always
older than it), so a node runs only after every node that uses it has sent its
cotangent, and only nodes that received a cotangent are visited at all. Cotangents
reaching one node are summed with ``ns``: the tracing namespace when an enclosing trace
records the backward pass, so that it is differentiable again. The node of a
multi-output primitive receives a :class:`TupleCotangent` (summed output-wise).
"""

from __future__ import annotations

from collections.abc import Sequence
from heapq import heappop, heappush
from typing import Any

from agrad.autograd.tape.traced import Node, RuleNode, TupleCotangent

__all__ = ["backward"]


def backward(ns: Any, output: Node, seed: Any, inputs: Sequence[Node]) -> list[Any | None]:
    """Cotangents of ``inputs`` given the cotangent ``seed`` of ``output`` (``None``: unreached).

    ``ns`` is the namespace the VJP rules and the sums compute with.
    """
    cotangents: dict[Node, Any] = {output: seed}
    leaves: dict[Node, Any] = {}
    heap = [(-output.seq, output)]
    pop, push, get = heappop, heappush, cotangents.get
    while heap:
        node = pop(heap)[1]
        g = cotangents.pop(node)
        if type(node) is RuleNode:
            rules = node.rules
            if node.kwargs is None and len(rules) == 1:
                # One parent, one rule: nearly every node. The sending below is the loop's
                # body for this case, written out (a 1-tuple and zip cost ~20% of a node).
                pg = rules[0](ns, g, node.ans, *node.args)
                if pg is not None:
                    parent = node.parents[0]
                    prev = get(parent)
                    if prev is None:
                        cotangents[parent] = pg
                        push(heap, (-parent.seq, parent))
                    else:
                        cotangents[parent] = _accumulate(ns, prev, pg)
                continue
            grads = node.cotangents(g, ns)
        else:
            vjp = node.vjp
            if vjp is None:
                leaves[node] = g
                continue
            grads = vjp(g, ns)
        for parent, pg in zip(node.parents, grads):
            if pg is None:
                continue
            prev = get(parent)
            if prev is None:
                cotangents[parent] = pg
                push(heap, (-parent.seq, parent))
            else:
                cotangents[parent] = _accumulate(ns, prev, pg)
    return [leaves.get(node) for node in inputs]


def _accumulate(ns: Any, prev: Any, pg: Any) -> Any:
    """The sum of two cotangents reaching one node."""
    if isinstance(prev, TupleCotangent):
        return prev.accumulate(ns, pg)
    return ns.add(prev, pg)
