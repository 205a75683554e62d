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
import threading
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

from agrad._arrays import to_numpy
from agrad.autograd.adapters import adapter_for
from agrad.optim.base import is_array
from agrad.pytree import MAX_DEPTH, PyTreeDef, flatten, flatten_leaves, keystr, unflatten

__all__ = ["load", "save"]

_FORMAT = "agrad.optim.state/1"
_META = "__agrad_meta__"
_LEAF_KIND = flatten_leaves(0)[1].kind  # the kind of a leaf's PyTreeDef


def _encode(node: Any, arrays: list[Any], path: str, depth: int = 0) -> Any:
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
    if isinstance(node, (dict, list, tuple)) and depth >= MAX_DEPTH:
        msg = (
            f"agrad.optim.save: the state nests containers deeper than agrad's limit of "
            f"{MAX_DEPTH} levels (agrad.pytree.MAX_DEPTH): one more begins at "
            f"state{_prefix(path)}; nothing was written"
        )
        raise ValueError(msg)
    if isinstance(node, dict):
        for k in node:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                msg = f"agrad.optim.save: dict key {k!r} at {keystr(path)} is not a str or int"
                raise TypeError(msg)
        return {
            "t": "dict",
            "keys": list(node),
            "c": [_encode(v, arrays, f"{path}[{k!r}]", depth + 1) for k, v in node.items()],
        }
    if isinstance(node, tuple) and hasattr(type(node), "_fields"):
        cls = type(node)
        return {
            "t": "record",
            "cls": f"{cls.__module__}:{cls.__qualname__}",
            "fields": list(node._fields),
            "c": [
                _encode(getattr(node, f), arrays, f"{path}.{f}", depth + 1) for f in node._fields
            ],
        }
    if isinstance(node, (list, tuple)):
        return {
            "t": type(node).__name__ if type(node) in (list, tuple) else "list",
            "c": [_encode(v, arrays, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)],
        }
    if is_array(node):
        arrays.append(node)
        return {"t": "array", "i": len(arrays) - 1}
    msg = f"agrad.optim.save: cannot save {type(node).__qualname__} at state{path}"
    raise TypeError(msg)


def _prefix(path: str) -> str:
    """A key path cut short for a message (the paths of too-deep states are long)."""
    return path if len(path) <= 80 else path[:80] + "..."


def save(state: Any, path: str | os.PathLike) -> None:
    """Write ``state`` (any optimizer state of agrad.optim) to ``path`` as an ``.npz`` file.

    A state that cannot be saved is refused before ``path`` is opened. The file is
    written beside ``path`` and then renamed over it, so an interrupted save leaves
    the previous file (if any) whole, never a truncated one.

    Raises:
        TypeError: the state holds something that cannot be saved (the message names
            its key path).
        ValueError: the state nests containers more than ``agrad.pytree.MAX_DEPTH`` deep.
    """
    import numpy as np

    arrays: list[Any] = []
    spec = _encode(state, arrays, "")
    meta = json.dumps({"format": _FORMAT, "state": spec})
    payload = {f"a{i}": to_numpy(a) for i, a in enumerate(arrays)}
    path = os.fspath(path)
    partial = f"{path}.{os.getpid()}-{threading.get_ident()}.partial"  # umask's permissions
    f = open(partial, "xb")  # noqa: SIM115 (closed below; a failure here creates nothing)
    try:
        with f:
            np.savez(f, **{_META: np.array(meta)}, **payload)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise


def _record_class(name: str, fields: list[str], bad: Callable[[str], ValueError]) -> type:
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
    raise bad(
        f"it holds a state record {name!r} that agrad does not define (or whose fields "
        "changed); it cannot be rebuilt"
    )


# Errors of reading a file that is not (or no longer) an intact ``.npz`` archive of
# arrays, raised once the file is open: truncated (BadZipFile, EOFError), pickled or
# object data refused by ``allow_pickle=False`` and damaged array headers (ValueError),
# damaged zip headers (a seek to a bad offset: OSError; an unknown compression method
# or version: NotImplementedError; an "encrypted" flag: RuntimeError), damaged
# compressed data (zlib.error).
_READ_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    ValueError,
    OSError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    UnicodeDecodeError,
)


def _file_name(path: Any) -> str:
    try:
        return repr(os.fspath(path))
    except TypeError:
        return repr(path)


def _read(path: Any, fn: str, name: str) -> tuple[Any, dict[str, Any]]:
    """The JSON description and the arrays of the file, or a ValueError naming the file."""
    import numpy as np

    not_state = f"{fn}: {name} is not a state written by agrad.optim.save"

    def unreadable(err: Exception, member: str | None = None) -> ValueError:
        where = f" (its member {member!r})" if member is not None else ""
        return ValueError(
            f"{not_state}, or it is truncated or damaged{where}: {type(err).__name__}: {err}"
        )

    # The file is opened here, not by np.load: np.load leaks its own file handle when
    # the archive turns out to be damaged (BadZipFile from NpzFile's constructor).
    with open(path, "rb") as f:
        if not f.read(1):
            raise ValueError(f"{fn}: {name} is empty, not a state written by agrad.optim.save")
        f.seek(0)
        try:
            loaded = np.load(f, allow_pickle=False)
        except _READ_ERRORS as err:
            raise unreadable(err) from err
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{not_state} (it holds one array, not an .npz archive)")
        with loaded as data:
            if _META not in data.files:
                raise ValueError(not_state)
            raw: dict[str, Any] = {}
            for member in data.files:
                try:
                    raw[member] = data[member]
                except _READ_ERRORS as err:
                    raise unreadable(err, member) from err
    text = raw.pop(_META)
    if text.dtype.kind != "U" or text.shape != ():
        raise ValueError(f"{fn}: {name} is damaged: its state description is not a string")
    try:
        meta = json.loads(str(text))
    except json.JSONDecodeError as err:
        msg = f"{fn}: {name} is damaged: its state description is not valid JSON ({err})"
        raise ValueError(msg) from err
    except RecursionError:
        msg = (
            f"{fn}: {name} is damaged: its state description nests far deeper than agrad's "
            f"limit of {MAX_DEPTH} levels (agrad.pytree.MAX_DEPTH); agrad.optim.save "
            "never writes such a file"
        )
        raise ValueError(msg) from None
    if not isinstance(meta, dict) or "state" not in meta:
        raise ValueError(not_state)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{fn}: {name} has an unsupported state format {meta.get('format')!r}")
    return meta["state"], raw


_CONTAINERS = ("dict", "record", "tuple", "list")
_SCALARS = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
}


def _decode(spec: Any, arrays: dict[str, Any], fn: str, name: str) -> tuple[Any, int]:
    """Rebuild the state described by ``spec``: ``(state, number of arrays)``.

    Iterative and linear in the size of the description; every node is checked (its
    kind, its fields, its array's presence, no array used twice, at most ``MAX_DEPTH``
    containers deep) and a failure names the file and the key path in the state.
    """
    used: dict[str, str] = {}
    values: list[Any] = []
    # (spec, key path, depth, container spec whose children are built) — post order.
    work: list[tuple[Any, str, int, Any]] = [(spec, "", 0, None)]
    while work:
        node, path, depth, done = work.pop()

        def bad(detail: str, path: str = path) -> ValueError:
            return ValueError(f"{fn}: {name} is damaged at state{_prefix(path)}: {detail}")

        if done is not None:
            n = len(done["c"])
            children = values[len(values) - n :] if n else []
            del values[len(values) - n :]
            t = done["t"]
            if t == "dict":
                values.append(dict(zip(done["keys"], children)))
            elif t == "record":
                values.append(_record_class(done["cls"], done["fields"], bad)(*children))
            elif t == "tuple":
                values.append(tuple(children))
            else:
                values.append(children)
            continue
        t = node.get("t") if isinstance(node, dict) else None
        if not isinstance(t, str):
            raise bad(f"a node of no kind: {_prefix(repr(node))}")
        if t == "none":
            values.append(None)
        elif t in _SCALARS:
            v = node.get("v")
            if not _SCALARS[t](v):
                raise bad(
                    f"an {t!r} node holds {v!r}" if t == "int" else f"a {t!r} node holds {v!r}"
                )
            values.append(float(v) if t == "float" else v)
        elif t == "array":
            i = node.get("i")
            key = f"a{i}"
            if not isinstance(i, int) or isinstance(i, bool) or key not in arrays:
                raise bad(
                    f"it refers to array {i!r}, which the file does not hold (it holds "
                    f"{len(arrays)} arrays)"
                )
            if key in used:
                raise bad(
                    f"array {i} is used here and at state{_prefix(used[key])} too; a state "
                    "written by agrad.optim.save never shares an array"
                )
            if arrays[key].dtype.kind not in "biufc":
                raise bad(f"array {i} has dtype {arrays[key].dtype}, not numbers")
            used[key] = path
            values.append(arrays[key])
        elif t in _CONTAINERS:
            c = node.get("c")
            if not isinstance(c, list):
                raise bad(f"a {t} node without its list of children")
            if depth >= MAX_DEPTH:
                raise ValueError(
                    f"{fn}: {name} is damaged: its state nests containers deeper than "
                    f"agrad's limit of {MAX_DEPTH} levels (agrad.pytree.MAX_DEPTH); one more "
                    f"begins at state{_prefix(path)}"
                )
            if t == "dict":
                keys = node.get("keys")
                if (
                    not isinstance(keys, list)
                    or len(keys) != len(c)
                    or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys)
                    or len(set(keys)) != len(keys)
                ):
                    raise bad(
                        "a dict node whose keys are not as many distinct str or int as its children"
                    )
                labels = [f"[{k!r}]" for k in keys]
            elif t == "record":
                fields = node.get("fields")
                if (
                    not isinstance(node.get("cls"), str)
                    or not isinstance(fields, list)
                    or len(fields) != len(c)
                    or not all(isinstance(f, str) for f in fields)
                ):
                    raise bad("a record node whose class or fields are malformed")
                labels = [f".{f}" for f in fields]
            else:
                labels = [f"[{i}]" for i in range(len(c))]
            work.append((node, path, depth, node))
            work.extend(
                (child, path + label, depth + 1, None)
                for child, label in zip(reversed(c), reversed(labels))
            )
        else:
            raise bad(f"unknown node {t!r}")
    return values[0], len(used)


def load(path: str | os.PathLike, like: Any) -> Any:
    """Read a state written by :func:`save`, with arrays of ``like``'s namespace.

    ``like`` is the parameters (an array or a pytree) the state will be used with.
    Every subtree of the state shaped like ``like`` must match its shapes; its arrays
    take the dtype and device of the matching parameter. Other arrays take ``like``'s
    namespace and device and keep their saved dtype. Loading takes time linear in the
    size of the file.

    Raises:
        ValueError: the file is not an agrad state (empty, truncated, damaged, or
            another kind of file; the message names the file, and the key path in the
            state where a part of it is wrong), or it was saved for parameters of
            another structure or shape (the message names the key path).
    """
    import array_api_compat
    import numpy as np

    from agrad.namespace import array_namespace

    fn = "agrad.optim.load"
    name = _file_name(path)
    spec, raw = _read(path, fn, name)
    state, n_arrays = _decode(spec, raw, fn, name)

    like_leaves, like_def, like_paths = flatten(like)
    if not like_leaves:
        raise ValueError(f"{fn}: like contains no arrays")
    xp = array_namespace(*like_leaves)
    adapter = adapter_for(xp)
    like_raw = [adapter.read(x) for x in like_leaves]
    like_index = {p: i for i, p in enumerate(like_paths)}  # the state may keep another key order
    matched = [0]
    other = f"{fn}: {name} was saved for other parameters"

    def convert(a: Any, ref: Any | None) -> Any:
        if ref is None:
            return _scalar_record(a, xp, like_raw[0])
        return xp.asarray(a, dtype=ref.dtype, device=array_api_compat.device(ref))

    def rebuild(node: Any, where: str, factored: bool) -> Any:
        if isinstance(node, np.ndarray):
            return convert(node, None)
        if isinstance(node, (dict, list, tuple)) and _matches(node, like_def):
            leaves, treedef, paths = flatten(node)
            matched[0] += 1
            out = []
            for leaf, p in zip(leaves, paths):
                ref, lp = like_raw[like_index[p]], p
                if not isinstance(leaf, np.ndarray):
                    msg = (
                        f"{other}: state{where}{p} holds {type(leaf).__name__} where "
                        f"like{keystr(lp)} holds an array"
                    )
                    raise ValueError(msg)
                if tuple(leaf.shape) != tuple(ref.shape) and not factored:
                    msg = (
                        f"{other}: state{where}{p} has shape {tuple(leaf.shape)} but "
                        f"like{keystr(lp)} has shape {tuple(ref.shape)}"
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
        return _rebuild_single(state, like_raw[0], xp, other)
    result = rebuild(state, "", False)
    if n_arrays and matched[0] == 0:
        msg = f"{other}: no part of the state has the structure of like ({like_def!r})"
        raise ValueError(msg)
    return result


def _matches(node: Any, td: PyTreeDef) -> bool:
    """Whether ``flatten(node)`` has structure ``td``, lists and tuples alike (partition
    groups leaves in lists); named tuples must match exactly.

    Stops at the first difference, so testing every node of a state costs time linear in
    its size (flattening every node to compare, as before, was quadratic in its depth).
    """
    kind = td.kind
    if kind is _LEAF_KIND:
        return node is not None and not isinstance(node, (dict, list, tuple))
    if kind is None:
        return node is None
    if kind is dict:
        return (
            isinstance(node, dict)
            and len(node) == len(td.meta)
            and all(k in node and _matches(node[k], c) for k, c in zip(td.meta, td.children))
        )
    if kind is list or kind is tuple:
        return (
            type(node) in (list, tuple)
            and len(node) == len(td.children)
            and all(_matches(x, c) for x, c in zip(node, td.children))
        )
    # a named tuple (or another sequence type): exactly this type and structure
    return type(node) is kind and flatten_leaves(node)[1] == td


def _rebuild_single(state: Any, ref: Any, xp: Any, other: str) -> Any:
    """``like`` is one array: every array of the state belongs to it."""
    import array_api_compat
    import numpy as np

    leaves, treedef, paths = flatten(state)
    factored_paths = _factored_paths(state)
    out = []
    for leaf, p in zip(leaves, paths):
        if isinstance(leaf, np.ndarray) and leaf.dtype.kind in "iub":  # a count or a flag
            out.append(_scalar_record(leaf, xp, ref))
            continue
        if isinstance(leaf, np.ndarray) and leaf.ndim == 0 and len(ref.shape):
            out.append(_scalar_record(leaf, xp, ref))  # a per-step scalar (NAdam's mu_product)
            continue
        if isinstance(leaf, np.ndarray):
            if tuple(leaf.shape) != tuple(ref.shape) and p not in factored_paths:
                msg = (
                    f"{other}: state{p} has shape {tuple(leaf.shape)} but like has shape "
                    f"{tuple(ref.shape)}"
                )
                raise ValueError(msg)
            leaf = xp.asarray(leaf, dtype=ref.dtype, device=array_api_compat.device(ref))
        out.append(leaf)
    return unflatten(treedef, out)


def _scalar_record(a: Any, xp: Any, like: Any) -> Any:
    """A saved array that belongs to no parameter, on ``like``'s device: counts and flags
    keep their dtype; a 0-d float (a per-step scalar) takes the dtype the optimizers
    compute such scalars in there (:func:`~agrad.optim.numerics.scalar_dtype`)."""
    import array_api_compat

    from agrad.optim.numerics import scalar_dtype

    device = array_api_compat.device(like)
    if a.ndim == 0 and a.dtype.kind == "f":
        return xp.asarray(a, dtype=scalar_dtype(xp, like), device=device)
    return xp.asarray(a, device=device)


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
