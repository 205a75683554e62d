"""A known pytree structure, compiled: its leaves taken out and put back without a walk.

The fast route (:mod:`agrad.optim.fastpath`) sees the same tree structure every
step: a list or dict of parameters, a state record whose fields hold lists of
arrays. :func:`agrad.pytree.flatten_leaves` rediscovers that structure on every call
(one Python call per leaf); a :class:`TreePlan`, made once from the
:class:`~agrad.pytree.PyTreeDef`, instead checks each *container* (type, length,
dict keys) and takes or builds the leaves of a container of leaves with one slice
or ``extend``: O(number of containers) Python work plus C-level copies.

``plan.leaves(tree)`` returns exactly what ``flatten_leaves(tree)[0]`` would, or
``None`` where ``tree``'s containers differ from the plan's (the caller then
flattens it the slow way); it does not inspect the leaves themselves, so the caller
checks them (by identity, by type). ``plan.build(leaves)`` returns exactly what
``unflatten(treedef, leaves)`` would: new containers of the same types.
"""

from __future__ import annotations

from typing import Any

from agrad.pytree import PyTreeDef, flatten_leaves

__all__ = ["TreePlan"]

_LEAF = flatten_leaves(0)[1].kind  # the kind pytree gives a leaf


class _Node:
    """One container of the plan: ``kind`` (its exact type), its dict keys, its children."""

    __slots__ = ("children", "flat", "keys", "kind", "n", "named", "size")

    def __init__(self, td: PyTreeDef):
        self.kind = td.kind
        self.keys = td.meta if td.kind is dict else None
        self.n = len(td.children)
        self.flat = all(c.kind is _LEAF for c in td.children)
        self.children = [_plan(c) for c in td.children]
        self.named = isinstance(td.kind, type) and hasattr(td.kind, "_fields")
        self.size = td.num_leaves


def _plan(td: PyTreeDef) -> Any:
    if td.kind is _LEAF or td.kind is None:
        return td.kind
    return _Node(td)


def _take(node: Any, x: Any, out: list[Any]) -> bool:
    if node is None:  # an empty subtree
        return x is None
    if type(x) is not node.kind:  # a subclass took pytree's general path: decline
        return False
    if node.kind is dict:
        if len(x) != node.n or tuple(x) != node.keys:
            return False
        children = x.values()
    else:
        if len(x) != node.n:
            return False
        children = x
    if node.flat:
        out.extend(children)
        return True
    for child, c in zip(node.children, children):
        if child is _LEAF:
            out.append(c)
        elif not _take(child, c, out):
            return False
    return True


def _make(node: Any, leaves: list[Any], i: int) -> tuple[Any, int]:
    if node is None:
        return None, i
    if node.flat:
        children = leaves[i : i + node.n]
        i += node.n
    else:
        children = []
        for child in node.children:
            if child is _LEAF:
                children.append(leaves[i])
                i += 1
            else:
                value, i = _make(child, leaves, i)
                children.append(value)
    kind = node.kind
    if kind is dict:
        return dict(zip(node.keys, children)), i
    if kind is list:
        return children, i
    if kind is tuple:
        return tuple(children), i
    if node.named:
        return kind(*children), i
    return kind(children), i


class TreePlan:
    """The containers of one :class:`~agrad.pytree.PyTreeDef`, for fast flatten/unflatten."""

    __slots__ = ("_root", "treedef")

    def __init__(self, treedef: PyTreeDef):
        self.treedef = treedef
        self._root = _plan(treedef)

    def leaves(self, tree: Any) -> list[Any] | None:
        """``flatten_leaves(tree)[0]`` when ``tree`` has the plan's containers, else ``None``."""
        if self._root is _LEAF:
            return [tree]
        out: list[Any] = []
        return out if _take(self._root, tree, out) else None

    def build(self, leaves: list[Any]) -> Any:
        """``unflatten(treedef, leaves)``: new containers holding ``leaves``."""
        if self._root is _LEAF:
            return leaves[0]
        return _make(self._root, leaves, 0)[0]
