"""The reverse pass: walk the tape from the output back to the inputs, once.

Nodes are visited in reverse topological order (a node runs only after every node
that uses it has sent its cotangent); cotangents reaching one node are summed with the
tracing namespace, so the reverse pass is recorded on any enclosing trace. The node of
a multi-output primitive receives a :class:`TupleCotangent` (summed output-wise). An
input rebound in place by ``x[key] = v`` reports the gradient of its original leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agrad.autograd.tape.traced import Node, TupleCotangent

__all__ = ["backward"]


def backward(ns: Any, output: Node, seed: Any, inputs: Sequence[Node]) -> list[Any | None]:
    """Cotangents of ``inputs`` given the cotangent ``seed`` of ``output`` (``None``: unreached)."""
    children: dict[Node, int] = {output: 0}
    stack = [output]
    while stack:
        node = stack.pop()
        for parent in node.parents:
            if parent in children:
                children[parent] += 1
            else:
                children[parent] = 1
                stack.append(parent)

    cotangents: dict[Node, Any] = {output: seed}
    leaves: dict[Node, Any] = {}
    ready = [output]
    while ready:
        node = ready.pop()
        g = cotangents.pop(node, None)
        if node.vjp is None:
            if g is not None:
                leaves[node] = g
            continue
        parent_grads = node.vjp(g) if g is not None else (None,) * len(node.parents)
        for parent, pg in zip(node.parents, parent_grads):
            if pg is not None:
                prev = cotangents.get(parent)
                if prev is None:
                    cotangents[parent] = pg
                elif isinstance(prev, TupleCotangent):
                    cotangents[parent] = prev.accumulate(ns, pg)
                else:
                    cotangents[parent] = ns.add(prev, pg)
            children[parent] -= 1
            if children[parent] == 0:
                ready.append(parent)
    return [leaves.get(getattr(node, "origin", node)) for node in inputs]
