"""Saving an optimizer state and loading it into any framework.

``save(state, path)`` writes one ``.npz`` file: every array of the state as a NumPy
array, and the state's structure (records, dicts, lists, step counts) as JSON.
``load(path, like=params)`` rebuilds the state with arrays of ``like``'s namespace;
arrays in a subtree shaped like ``params`` take the dtype and device of the matching
parameter, so a state saved from torch tensors continues on NumPy, JAX or
array-api-strict. Nothing is unpickled: record types are looked up in agrad only.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

from agrad._arrays import to_numpy
from agrad.autograd.adapters import adapter_for
from agrad.optim.base import is_array
from agrad.pytree import PyTreeDef, flatten, keystr, unflatten

__all__ = ["load", "save"]

_FORMAT = "agrad.optim.state/1"
_META = "__agrad_meta__"


def _encode(node: Any, arrays: list[Any], path: str) -> Any:
    if node is None:
        return {"t": "none"}
    if isinstance(node, bool):
        return {"t": "bool", "v": node}
    if isinstance(node, int):
        return {"t": "int", "v": node}
    if isinstance(node, float):
        return {"t": "float", "v": node}
    if isinstance(node, str):
        return {"t": "str", "v": node}
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                msg = f"agrad.optim.save: dict key {k!r} at {keystr(path)} is not a str or int"
                raise TypeError(msg)
        return {
            "t": "dict",
            "keys": list(node),
            "c": [_encode(v, arrays, f"{path}[{k!r}]") for k, v in node.items()],
        }
    if isinstance(node, tuple) and hasattr(type(node), "_fields"):
        cls = type(node)
        return {
            "t": "record",
            "cls": f"{cls.__module__}:{cls.__qualname__}",
            "fields": list(node._fields),
            "c": [_encode(getattr(node, f), arrays, f"{path}.{f}") for f in node._fields],
        }
    if isinstance(node, (list, tuple)):
        return {
            "t": type(node).__name__ if type(node) in (list, tuple) else "list",
            "c": [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(node)],
        }
    if is_array(node):
        arrays.append(node)
        return {"t": "array", "i": len(arrays) - 1}
    msg = f"agrad.optim.save: cannot save {type(node).__qualname__} at state{path}"
    raise TypeError(msg)


def save(state: Any, path: str | os.PathLike) -> None:
    """Write ``state`` (any optimizer state of agrad.optim) to ``path`` as an ``.npz`` file."""
    import numpy as np

    arrays: list[Any] = []
    spec = _encode(state, arrays, "")
    meta = json.dumps({"format": _FORMAT, "state": spec})
    payload = {f"a{i}": to_numpy(a) for i, a in enumerate(arrays)}
    with open(path, "wb") as f:
        np.savez(f, **{_META: np.array(meta)}, **payload)


def _record_class(name: str, fields: list[str]) -> type:
    module, _, qualname = name.partition(":")
    if module == "agrad" or module.startswith("agrad."):
        try:
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
            if isinstance(cls, type) and list(getattr(cls, "_fields", ())) == fields:
                return cls
        except (ImportError, AttributeError):
            pass
    msg = (
        f"agrad.optim.load: the file holds a state record {name!r} that agrad does not "
        "define (or whose fields changed); it cannot be rebuilt"
    )
    raise ValueError(msg)


def _decode(spec: dict, arrays: Any) -> Any:
    t = spec["t"]
    if t == "none":
        return None
    if t in ("bool", "int", "float", "str"):
        return spec["v"]
    if t == "array":
        return arrays[f"a{spec['i']}"]
    children = [_decode(c, arrays) for c in spec["c"]]
    if t == "dict":
        return dict(zip(spec["keys"], children))
    if t == "record":
        return _record_class(spec["cls"], spec["fields"])(*children)
    if t == "tuple":
        return tuple(children)
    if t == "list":
        return children
    raise ValueError(f"agrad.optim.load: unknown node kind {t!r} in the file")


def load(path: str | os.PathLike, like: Any) -> Any:
    """Read a state written by :func:`save`, with arrays of ``like``'s namespace.

    ``like`` is the parameters (an array or a pytree) the state will be used with.
    Every subtree of the state shaped like ``like`` must match its shapes; its arrays
    take the dtype and device of the matching parameter. Other arrays take ``like``'s
    namespace and device and keep their saved dtype.

    Raises:
        ValueError: the file is not an agrad state, or it was saved for parameters of
            another structure or shape (the message names the key path).
    """
    import array_api_compat
    import numpy as np

    from agrad.namespace import array_namespace

    fn = "agrad.optim.load"
    with np.load(path, allow_pickle=False) as data:
        if _META not in data.files:
            raise ValueError(
                f"{fn}: {os.fspath(path)!r} is not a state written by agrad.optim.save"
            )
        meta = json.loads(str(data[_META]))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{fn}: unsupported state format {meta.get('format')!r}")
        raw = {k: data[k] for k in data.files if k != _META}
    state = _decode(meta["state"], raw)

    like_leaves, like_def, like_paths = flatten(like)
    if not like_leaves:
        raise ValueError(f"{fn}: like contains no arrays")
    xp = array_namespace(*like_leaves)
    adapter = adapter_for(xp)
    like_raw = [adapter.read(x) for x in like_leaves]
    device = array_api_compat.device(like_raw[0])
    matched = [0]

    def convert(a: Any, ref: Any | None) -> Any:
        if ref is None:
            return xp.asarray(a, device=device)
        return xp.asarray(a, dtype=ref.dtype, device=array_api_compat.device(ref))

    def rebuild(node: Any, where: str, factored: bool) -> Any:
        if isinstance(node, np.ndarray):
            return convert(node, None)
        leaves, treedef, paths = flatten(node)
        if isinstance(node, (dict, list, tuple)) and _same_def(treedef, like_def) and leaves:
            matched[0] += 1
            out = []
            for leaf, ref, p, lp in zip(leaves, like_raw, paths, like_paths):
                if tuple(leaf.shape) != tuple(ref.shape) and not factored:
                    msg = (
                        f"{fn}: the file was saved for other parameters: state{where}{p} has "
                        f"shape {tuple(leaf.shape)} but like{keystr(lp)} has shape {tuple(ref.shape)}"
                    )
                    raise ValueError(msg)
                out.append(convert(leaf, ref))
            return unflatten(treedef, out)
        if isinstance(node, dict):
            return {k: rebuild(v, f"{where}[{k!r}]", factored) for k, v in node.items()}
        if isinstance(node, tuple) and hasattr(type(node), "_fields"):
            inner = factored or type(node).__name__ == "FactoredState"
            return type(node)(
                *(rebuild(getattr(node, f), f"{where}.{f}", inner) for f in node._fields)
            )
        if isinstance(node, (list, tuple)):
            return type(node)(rebuild(v, f"{where}[{i}]", factored) for i, v in enumerate(node))
        return node

    if like_def.kind == "leaf":
        return _rebuild_single(state, like_raw[0], xp, fn)
    result = rebuild(state, "", False)
    has_arrays = any(isinstance(x, np.ndarray) for x in flatten(state)[0])
    if has_arrays and matched[0] == 0:
        msg = (
            f"{fn}: the file was saved for other parameters: no part of the state has the "
            f"structure of like ({like_def!r})"
        )
        raise ValueError(msg)
    return result


def _same_def(a: PyTreeDef, b: PyTreeDef) -> bool:
    """Same structure, with lists and tuples alike (partition groups leaves in lists)."""
    if a.kind is dict and b.kind is dict:
        return set(a.meta) == set(b.meta) and all(
            _same_def(a.children[a.meta.index(k)], b.children[b.meta.index(k)]) for k in b.meta
        )
    if a.kind in (list, tuple) and b.kind in (list, tuple):
        return len(a.children) == len(b.children) and all(
            _same_def(x, y) for x, y in zip(a.children, b.children)
        )
    return a == b


def _rebuild_single(state: Any, ref: Any, xp: Any, fn: str) -> Any:
    """``like`` is one array: every array of the state belongs to it."""
    import array_api_compat
    import numpy as np

    leaves, treedef, paths = flatten(state)
    factored_paths = _factored_paths(state)
    out = []
    for leaf, p in zip(leaves, paths):
        if isinstance(leaf, np.ndarray):
            if tuple(leaf.shape) != tuple(ref.shape) and p not in factored_paths:
                msg = (
                    f"{fn}: the file was saved for other parameters: state{p} has shape "
                    f"{tuple(leaf.shape)} but like has shape {tuple(ref.shape)}"
                )
                raise ValueError(msg)
            leaf = xp.asarray(leaf, dtype=ref.dtype, device=array_api_compat.device(ref))
        out.append(leaf)
    return unflatten(treedef, out)


def _factored_paths(state: Any) -> set[str]:
    out: set[str] = set()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, tuple) and type(node).__name__ == "FactoredState":
            out.update(path + p for p in flatten(node)[2])
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}[{k!r}]")
        elif isinstance(node, tuple) and hasattr(type(node), "_fields"):
            for f in node._fields:
                walk(getattr(node, f), f"{path}.{f}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(state, "")
    return out
