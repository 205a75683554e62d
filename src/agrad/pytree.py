"""Nested containers of arrays ("pytrees"): flatten, rebuild, compare.

A pytree is an array (or any non-container leaf), or a ``dict``, ``list`` or ``tuple``
(named tuples included) of pytrees. ``None`` is an empty subtree, as in JAX. Every leaf
has a *key path* such as ``['layer1']['w']`` or ``[0][1]`` used in error messages.

Containers may nest at most :data:`MAX_DEPTH` deep: the walks here recurse, and a deeper
tree is refused with a ``ValueError`` naming the limit and the start of the key path
that goes too deep, not left to overflow Python's stack with a bare ``RecursionError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "PyTreeDef",
    "flatten",
    "flatten_leaves",
    "key_paths",
    "unflatten",
    "tree_map",
    "keystr",
    "check_same_structure",
    "leaves_like",
]

_LEAF = "leaf"

#: How many containers may nest inside one another (a leaf's key path has at most this
#: many keys). The walks here and on a ``PyTreeDef`` (``==``, ``hash``, ``repr``, rebuilding)
#: take two to four Python frames per level, so this keeps every one of them well inside
#: Python's default recursion limit of 1000, whatever the caller's own depth; real models
#: nest a few tens of levels at most.
MAX_DEPTH = 100


class _TooDeep(Exception):
    """Raised inside a recursive walk past :data:`MAX_DEPTH`; the public function reports it."""


def _too_deep(tree: Any, what: str) -> ValueError:
    """The error for ``tree`` nested past :data:`MAX_DEPTH`, naming the start of the key path.

    The path is found again here without recursion (the walks that give up carry none):
    the first container, in leaf order, that sits ``MAX_DEPTH`` containers deep.
    """
    stack: list[tuple[Any, int, Any]] = [(tree, 0, None)]
    while stack:
        node, depth, link = stack.pop()
        spec = _children(node)
        if spec is None:
            continue
        if depth >= MAX_DEPTH:
            keys: list[str] = []
            while link is not None:
                key, link = link
                keys.append(key)
            keys.reverse()
            shown = "".join(keys[:8]) + ("..." if len(keys) > 8 else "")
            msg = (
                f"{what} nests containers deeper than agrad's limit of {MAX_DEPTH} levels "
                f"(agrad.pytree.MAX_DEPTH): one more begins at key path {keystr(shown)} "
                f"({len(keys)} keys down); flatten such a structure yourself (or store it "
                "as one array) before handing it to agrad"
            )
            return ValueError(msg)
        stack.extend((c, depth + 1, (k, link)) for k, c in reversed(spec[2]))
    return ValueError(
        f"{what} nests containers deeper than agrad's limit of {MAX_DEPTH} levels "
        "(agrad.pytree.MAX_DEPTH)"
    )


class PyTreeDef:
    """The shape of a pytree without its leaves; equality means same structure."""

    __slots__ = ("_hash", "children", "kind", "meta")

    def __init__(self, kind: Any, meta: Any = None, children: tuple = ()):
        self.kind = kind
        self.meta = meta
        self.children = children
        self._hash: int | None = None  # computed once: a deep structure hashes in O(size)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, PyTreeDef)
            and self.kind == other.kind
            and self.meta == other.meta
            and self.children == other.children
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Without the cached hash: str hashes differ between processes.
        return (PyTreeDef, (self.kind, self.meta, self.children))

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = self._hash = hash((self.kind, self.meta, self.children))
        return h

    def __repr__(self) -> str:
        if self.kind is _LEAF:
            return "*"
        if self.kind is None:
            return "None"
        # Each child's repr once: computing it twice per dict level was exponential in depth.
        if self.kind is dict:
            inner = ", ".join(f"{k!r}: {c!r}" for k, c in zip(self.meta, self.children))
            return "{" + inner + "}"
        inner = ", ".join(map(repr, self.children))
        return f"{self.kind.__name__}({inner})"

    @property
    def num_leaves(self) -> int:
        if self.kind is _LEAF:
            return 1
        return sum(c.num_leaves for c in self.children)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _children(node: Any) -> tuple[Any, Any, list[tuple[str, Any]]] | None:
    """(kind, meta, [(key_string, child), ...]) for a container, ``None`` for a leaf."""
    if isinstance(node, dict):
        keys = tuple(node)
        return dict, keys, [(f"[{k!r}]", node[k]) for k in keys]
    if _is_namedtuple(node):
        return type(node), None, [(f".{f}", getattr(node, f)) for f in node._fields]
    if isinstance(node, (list, tuple)):
        return type(node), None, [(f"[{i}]", c) for i, c in enumerate(node)]
    return None


# Shared, immutable definitions of a leaf and of an empty (``None``) subtree.
_LEAF_DEF = PyTreeDef(_LEAF)
_NONE_DEF = PyTreeDef(None)
# Exact container types, tested first; subclasses take the general path of ``_flatten_into``.
_PLAIN_SEQUENCES = (list, tuple)

# The recursive walks are module-level functions, not closures: a recursive closure is a
# reference cycle (function -> cell -> function) that would keep the leaves it saw (traced
# arrays and their tape) alive until the cyclic garbage collector happens to run.


# Types seen to be leaves (neither None nor a dict, list or tuple, subclasses included):
# a property of the type, so children of these types are taken without a recursive call.
_LEAF_TYPES: set[type] = set()


def _children_into(children: Any, leaves: list[Any], depth: int) -> tuple[PyTreeDef, ...]:
    """Flatten the children of a container that sits ``depth - 1`` containers deep."""
    if depth > MAX_DEPTH:
        raise _TooDeep
    defs = []
    for c in children:
        if type(c) in _LEAF_TYPES:
            leaves.append(c)
            defs.append(_LEAF_DEF)
        else:
            defs.append(_flatten_into(c, leaves, depth))
    return tuple(defs)


def _flatten_into(node: Any, leaves: list[Any], depth: int = 0) -> PyTreeDef:
    cls = type(node)
    if cls is dict:
        return PyTreeDef(dict, tuple(node), _children_into(node.values(), leaves, depth + 1))
    if cls in _PLAIN_SEQUENCES:
        return PyTreeDef(cls, None, _children_into(node, leaves, depth + 1))
    if node is None:
        return _NONE_DEF
    if isinstance(node, dict):
        keys = tuple(node)
        return PyTreeDef(dict, keys, _children_into([node[k] for k in keys], leaves, depth + 1))
    if isinstance(node, (list, tuple)):  # subclasses, named tuples included
        return PyTreeDef(cls, None, _children_into(node, leaves, depth + 1))
    _LEAF_TYPES.add(cls)
    leaves.append(node)
    return _LEAF_DEF


def flatten_leaves(tree: Any) -> tuple[list[Any], PyTreeDef]:
    """Return ``(leaves, treedef)``, leaves in depth-first order (:func:`flatten` without paths).

    Raises:
        ValueError: ``tree`` nests containers more than :data:`MAX_DEPTH` deep.
    """
    leaves: list[Any] = []
    try:
        treedef = _flatten_into(tree, leaves)
    except _TooDeep:
        raise _too_deep(tree, "the pytree") from None
    return leaves, treedef


def _paths_into(td: PyTreeDef, path: str, out: list[str]) -> None:
    kind = td.kind
    if kind is _LEAF:
        out.append(path)
    elif kind is dict:
        for k, c in zip(td.meta, td.children):
            _paths_into(c, f"{path}[{k!r}]", out)
    elif kind is not None:
        fields = getattr(kind, "_fields", None) if issubclass(kind, tuple) else None
        for i, c in enumerate(td.children):
            _paths_into(c, f"{path}.{fields[i]}" if fields else f"{path}[{i}]", out)


def key_paths(treedef: PyTreeDef) -> list[str]:
    """The key path of every leaf of ``treedef``, in leaf order (``"['w']"``, ``"[0].mu"``)."""
    out: list[str] = []
    _paths_into(treedef, "", out)
    return out


def flatten(tree: Any) -> tuple[list[Any], PyTreeDef, list[str]]:
    """Return ``(leaves, treedef, key_paths)``, leaves in depth-first order."""
    leaves, treedef = flatten_leaves(tree)
    return leaves, treedef, key_paths(treedef)


def _build(td: PyTreeDef, it: Iterator[Any]) -> Any:
    kind = td.kind
    if kind is _LEAF:
        return next(it)
    if kind is None:
        return None
    children = [_build(c, it) for c in td.children]
    if kind is dict:
        return dict(zip(td.meta, children))
    if kind is list:
        return children
    if kind is tuple:
        return tuple(children)
    if issubclass(kind, tuple) and hasattr(kind, "_fields"):
        return kind(*children)
    return kind(children)


def unflatten(treedef: PyTreeDef, leaves: list[Any] | tuple[Any, ...]) -> Any:
    """Inverse of :func:`flatten`."""
    if treedef.kind is dict and all(c is _LEAF_DEF for c in treedef.children):
        return dict(zip(treedef.meta, leaves))  # the common case: a flat dict of arrays
    return _build(treedef, iter(leaves))


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leafwise over trees of the same structure.

    The leaves of ``rest`` are matched to ``tree``'s by position in the structure (dict
    keys by name, whatever their order), as :func:`leaves_like` aligns them.
    """
    leaves, treedef = flatten_leaves(tree)
    if not rest:
        return unflatten(treedef, [fn(x) for x in leaves])
    others = [leaves_like(r, tree) for r in rest]
    return unflatten(treedef, [fn(*args) for args in zip(leaves, *others)])


def keystr(path: str) -> str:
    """Human form of a key path: the root is written ``<root>``."""
    return path if path else "<root>"


def _describe(node: Any) -> str:
    spec = _children(node)
    if node is None:
        return "None"
    if spec is None:
        shape = getattr(node, "shape", None)
        return (
            f"a leaf (shape {tuple(shape)})"
            if shape is not None
            else f"a leaf ({type(node).__name__})"
        )
    kind, meta, items = spec
    if kind is dict:
        return f"a dict with keys [{', '.join(sorted(map(repr, meta)))}]"
    return f"a {kind.__name__} of length {len(items)}"


def check_same_structure(reference: Any, other: Any, *, names: tuple[str, str]) -> None:
    """Raise ``ValueError`` naming the first key path where ``other`` differs from ``reference``.

    ``names`` are how the two trees are called in the message, e.g. ``("ws", "dcdws")``.
    Dict key order is ignored; everything else (container types, lengths) must match.
    Both trees nesting past :data:`MAX_DEPTH` at the same place is refused too.
    """
    try:
        _compare(reference, other, "", names)
    except _TooDeep:
        raise _too_deep(reference, f"{names[0]} (as does {names[1]})") from None


def _compare(a: Any, b: Any, path: str, names: tuple[str, str], depth: int = 0) -> None:
    sa, sb = _children(a), _children(b)
    if a is None or b is None:
        if a is None and b is None:
            return
    elif sa is None and sb is None:
        return
    elif sa is not None and sb is not None:
        ka, kb = sa[0], sb[0]
        same_kind = ka is kb or (
            issubclass(ka, (list, tuple))
            and issubclass(kb, (list, tuple))
            and not hasattr(ka, "_fields")
            and not hasattr(kb, "_fields")
        )
        if depth >= MAX_DEPTH:
            raise _TooDeep
        if ka is dict and kb is dict:
            if set(a) == set(b):
                for k in a:
                    _compare(a[k], b[k], f"{path}[{k!r}]", names, depth + 1)
                return
            missing = ", ".join(sorted(map(repr, set(a) - set(b))))
            extra = ", ".join(sorted(map(repr, set(b) - set(a))))
            parts = [
                f"keys missing [{missing}]" if missing else "",
                f"unexpected keys [{extra}]" if extra else "",
            ]
            msg = (
                f"{names[1]} does not match the structure of {names[0]} at "
                f"{keystr(path)}: {', '.join(p for p in parts if p)}"
            )
            raise ValueError(msg)
        if same_kind and ka is not dict and kb is not dict and len(sa[2]) == len(sb[2]):
            for (k, ca), (_, cb) in zip(sa[2], sb[2]):
                _compare(ca, cb, path + k, names, depth + 1)
            return
    msg = (
        f"{names[1]} does not match the structure of {names[0]} at {keystr(path)}: "
        f"{names[0]} has {_describe(a)}, {names[1]} has {_describe(b)}"
    )
    raise ValueError(msg)


def leaves_like(tree: Any, like: Any) -> list[Any]:
    """Leaves of ``tree`` in the order :func:`flatten` gives for ``like`` (same structure).

    Dicts are read in ``like``'s key order, so ``{'a', 'b'}`` and ``{'b', 'a'}`` line up.

    Raises:
        ValueError: ``like`` nests containers more than :data:`MAX_DEPTH` deep.
    """
    out: list[Any] = []
    try:
        _leaves_like_into(tree, like, out, 0)
    except _TooDeep:
        raise _too_deep(like, "the pytree") from None
    return out


def _leaves_like_into(a: Any, b: Any, out: list[Any], depth: int) -> None:
    if type(b) in _LEAF_TYPES:
        out.append(a)
        return
    if b is None:
        return
    spec = _children(b)
    if spec is None:
        out.append(a)
        return
    if depth >= MAX_DEPTH:
        raise _TooDeep
    if spec[0] is dict:
        for k in b:
            _leaves_like_into(a[k], b[k], out, depth + 1)
    else:
        for ca, cb in zip(a, b):
            _leaves_like_into(ca, cb, out, depth + 1)
