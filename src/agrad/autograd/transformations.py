"""Function transformations beyond ``grad``: vjp, jvp, Jacobians, Hessians, HVPs.

Each is written once over two adapter hooks: ``adapter.vjp(flat_func, leaves, retain)
-> (outs, vjp_fn)`` (the tape, ``torch.autograd.grad``, ``jax.vjp``) and, where the
library has it, ``adapter.linearize`` (``jax.linearize``). Without a native forward mode
the JVP is the transpose of the VJP: ``u -> vjp(f)(u) = J^T u`` is linear in ``u``, and
its own VJP with cotangent ``v`` is ``J v``. That needs no JVP rule per primitive, stays
exact (the same rules as reverse mode) and composes in any order with ``grad``, because
the backward pass is itself recorded. Pytrees go in and out as ``grad`` takes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from agrad.autograd.adapters import Adapter, adapter_for
from agrad.autograd.api import _depth, _is_differentiable, _is_real_floating, _local, grad
from agrad.namespace import array_namespace, base_library, common_namespace
from agrad.pytree import PyTreeDef, flatten_leaves, key_paths, unflatten

__all__ = ["elementwise_grad", "hessian", "hvp", "jacobian", "jvp", "vjp"]

Argnums = int | Sequence[int]


@contextmanager
def _nested() -> Iterator[None]:
    """Mark user code run inside a transformation, so an inner ``grad`` keeps its history."""
    _local.depth = _depth() + 1
    try:
        yield
    finally:
        _local.depth -= 1


class _Linearized:
    """``f`` at the differentiated leaves: outputs, output structure and the pullback."""

    def __init__(self, name: str, f: Callable[..., Any], args: tuple[Any, ...], nums, xp):
        self.name = name
        selected = tuple(args[i] for i in nums)
        leaves, self.in_tree = flatten_leaves(selected)
        if not leaves:
            raise ValueError(f"{name}: the differentiated arguments contain no arrays")

        def labels() -> list[str]:
            return [f"args{_arg_path(nums, p)}" for p in key_paths(self.in_tree)]

        self.xp = common_namespace(leaves, labels, name, xp)
        self.adapter: Adapter = adapter_for(self.xp)
        self.leaves = [self.adapter.read(x) for x in leaves]
        for x, label in zip(self.leaves, labels()):
            if not _is_differentiable(self.xp, x):
                msg = f"{name}: {label} has dtype {x.dtype}; only floating-point arrays can be differentiated"
                raise TypeError(msg)
        self.retain = _depth() > 0
        self.out_tree: PyTreeDef | None = None

        def flat_func(inputs: list[Any]) -> list[Any]:
            new = list(args)
            for i, sub in zip(nums, unflatten(self.in_tree, inputs)):
                new[i] = sub
            outs, self.out_tree = flatten_leaves(f(*new))
            self._check_outputs(outs)
            return outs

        self.flat_func = flat_func

    def _check_outputs(self, outs: list[Any]) -> None:
        if not outs:
            raise ValueError(f"{self.name}: the function returned no arrays")
        for o, p in zip(outs, key_paths(self.out_tree)):
            try:
                lib = base_library(array_namespace(o))
            except TypeError:
                lib = type(o).__module__
            if lib != base_library(self.xp) or not hasattr(o, "shape"):
                msg = (
                    f"{self.name}: output{p} is {type(o).__qualname__} from {lib}, but the "
                    f"inputs are {base_library(self.xp)} arrays; compute it from them with "
                    "their namespace"
                )
                raise TypeError(msg)

    def pullback(self) -> tuple[list[Any], Callable[..., list[Any]]]:
        with _nested():
            return self.adapter.vjp(self.flat_func, self.leaves, self.retain)

    def pushforward(self) -> tuple[list[Any], Callable[..., list[Any]]]:
        """``(outs, jvp_fn(tangents, retain, batched=False))``: native, or the transpose of the VJP.

        JAX's forward mode stops at a ``jax.custom_vjp`` (so at an ``agrad.custom_vjp``);
        there, when JAX says so, the transpose of the VJP is used instead.
        """
        if not hasattr(self.adapter, "linearize"):
            return self._transpose()
        with _nested():
            try:
                outs, native = self.adapter.linearize(self.flat_func, self.leaves, self.retain)
            except TypeError as err:
                if "custom_vjp" not in str(err):
                    raise
                return self._transpose()

        def jvp_fn(tangents: list[Any], retain_out: bool = False, batched: bool = False):
            try:
                return native(tangents, retain_out, batched)
            except TypeError as err:
                if "custom_vjp" not in str(err):
                    raise
                return self._transpose()[1](tangents, retain_out, batched)

        jvp_fn.batches = True  # type: ignore[attr-defined]
        return outs, jvp_fn

    def _transpose(self) -> tuple[list[Any], Callable[..., list[Any]]]:
        """Forward mode as the VJP of ``u -> vjp(f)(u)`` (see the module docstring)."""
        with _nested():
            outs, vjp_fn = self.adapter.vjp(self.flat_func, self.leaves, True)
        for o in outs:
            if not _is_real_floating(self.xp, o):
                msg = (
                    f"{self.name}: forward mode on {base_library(self.xp)} is the transpose of "
                    f"reverse mode and needs real floating outputs; got dtype {o.dtype}"
                )
                raise TypeError(msg)
        adapter = self.adapter
        units = [self.xp.zeros_like(adapter.read(o)) for o in outs]
        with _nested():
            _, transposed = adapter.vjp(lambda us: vjp_fn(us, True), units, True)
        retain = self.retain

        def jvp_fn(tangents: list[Any], retain_out: bool = retain, batched: bool = False):
            if batched and adapter.name in ("torch", "jax"):
                return transposed(tangents, retain_out, batched=True)
            if batched:
                return _loop_rows(self.xp, lambda ts: transposed(ts, retain_out), tangents)
            return transposed(tangents, retain_out)

        jvp_fn.batches = True  # type: ignore[attr-defined]
        values = outs if retain else [_plain(adapter, o) for o in outs]
        return values, jvp_fn


def _plain(adapter: Adapter, x: Any) -> Any:
    return adapter.stop_gradient(x) if adapter.name != "jax" else x


def _arg_path(nums: tuple[int, ...], path: str) -> str:
    """``[0]['w']`` of the selected arguments as the key path in the call's arguments."""
    if not path.startswith("["):
        return path
    end = path.index("]")
    return f"[{nums[int(path[1:end])]}]{path[end + 1 :]}"


def _argnums(name: str, argnums: Argnums, nargs: int) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    bad = [i for i in nums if not -nargs <= i < nargs]
    if bad or not nums:
        msg = f"{name}: argnums={argnums!r} but the function was called with {nargs} positional argument(s)"
        raise IndexError(msg)
    return tuple(i % nargs for i in nums)


def _loop_rows(xp: ModuleType, fn: Callable[[list[Any]], list[Any]], batch: list[Any]) -> list[Any]:
    """``fn`` applied to each row of a batch of leaves (a leading axis), results stacked."""
    rows = [fn([b[k, ...] for b in batch]) for k in range(batch[0].shape[0])]
    return [xp.stack([r[j] for r in rows]) for j in range(len(rows[0]))]


def _check_like(name: str, what: str, given: list[Any], like: list[Any], tree: PyTreeDef) -> None:
    if len(given) != len(like):
        msg = f"{name}: {what} has {len(given)} array(s) but {len(like)} are expected"
        raise ValueError(msg)
    for g, x, p in zip(given, like, key_paths(tree)):
        if tuple(getattr(g, "shape", ())) != tuple(x.shape) or getattr(g, "dtype", None) != x.dtype:
            msg = (
                f"{name}: {what}{p} has shape {tuple(getattr(g, 'shape', ()))} and dtype "
                f"{getattr(g, 'dtype', type(g).__qualname__)}; expected shape {tuple(x.shape)} "
                f"and dtype {x.dtype}"
            )
            raise ValueError(msg)


def vjp(f: Callable[..., Any], *primals: Any, xp: ModuleType | None = None) -> tuple[Any, Callable]:
    """``(f(*primals), vjp_fn)`` with ``vjp_fn(v) = v^T J``, one entry per primal.

    For ``y = f(x_1, ..., x_k)`` and a cotangent ``v`` shaped like ``y`` (a pytree like
    it), ``vjp_fn(v)[i] = sum_j v_j * dy_j/dx_i`` (the conjugate convention of ``grad``
    for complex inputs). ``f`` runs once; ``vjp_fn`` can be called any number of times.
    """
    lin = _Linearized("vjp", f, primals, tuple(range(len(primals))), xp)
    outs, pull = lin.pullback()

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        cots, _ = flatten_leaves(cotangent)
        _check_like("vjp_fn", "cotangent", cots, outs, lin.out_tree)
        cots = [lin.adapter.read(c) for c in cots]
        return unflatten(lin.in_tree, pull(cots, _depth() > 0))

    return unflatten(lin.out_tree, outs), vjp_fn


def jvp(
    f: Callable[..., Any],
    primals: Sequence[Any],
    tangents: Sequence[Any],
    *,
    xp: ModuleType | None = None,
) -> tuple[Any, Any]:
    """``(f(*primals), J v)``: the directional derivative of ``f`` along ``tangents``.

    ``tangents`` has the structure, shapes and dtypes of ``primals``;
    ``(J v)_j = sum_i dy_j/dx_i v_i``. JAX: ``jax.linearize``; elsewhere the transpose
    of the VJP (see the module docstring), which keeps it exact and differentiable.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    lin = _Linearized("jvp", f, primals, tuple(range(len(primals))), xp)
    tans, _ = flatten_leaves(tangents)
    _check_like("jvp", "tangents", tans, lin.leaves, lin.in_tree)
    outs, push = lin.pushforward()
    return unflatten(lin.out_tree, outs), unflatten(
        lin.out_tree, push([lin.adapter.read(t) for t in tans])
    )


def _basis(xp: ModuleType, like: list[Any], total: int) -> list[Any]:
    """Rows of the identity of size ``total``, split into leaves shaped like ``like``."""
    out, start = [], 0
    for x in like:
        n = math.prod(x.shape)
        dev = getattr(x, "device", None)
        eye = xp.eye(total, n, k=-start, dtype=x.dtype, device=dev)
        out.append(xp.reshape(eye, (total, *x.shape)))
        start += n
    return out


def jacobian(
    f: Callable[..., Any],
    argnums: Argnums = 0,
    mode: str = "rev",
    *,
    xp: ModuleType | None = None,
) -> Callable[..., Any]:
    """Return ``jac(*args)``: ``d f(*args) / d args[argnums]``, leaf shapes ``out.shape + in.shape``.

    ``J[i..., j...] = d y[i...] / d x[j...]`` for every output leaf ``y`` and input leaf
    ``x`` (an output pytree of input pytrees, as ``jax.jacobian``). ``mode="rev"`` pulls
    back the rows of the identity (one per output element), ``mode="fwd"`` pushes
    forward its columns; batched where the library allows (``jax.vmap``, torch's
    ``is_grads_batched``), else one pass per row or column over one recorded tape.
    """
    if mode not in ("rev", "fwd"):
        raise ValueError(f"jacobian: mode must be 'rev' or 'fwd', got {mode!r}")

    def jac(*args: Any) -> Any:
        nums = _argnums("jacobian", argnums, len(args))
        lin = _Linearized("jacobian", f, args, nums, xp)
        if mode == "rev":
            outs, pull = lin.pullback()
            rows = _basis(lin.xp, outs, sum(math.prod(o.shape) for o in outs))
            flat = _batched(lin, pull, rows)
            blocks = _rev_blocks(lin.xp, flat, outs, lin.leaves)
        else:
            outs, push = lin.pushforward()
            cols = _basis(lin.xp, lin.leaves, sum(math.prod(x.shape) for x in lin.leaves))
            flat = _batched(lin, push, cols)
            blocks = _fwd_blocks(lin.xp, flat, outs, lin.leaves)
        per_out = [unflatten(lin.in_tree, row) for row in blocks]
        if isinstance(argnums, int):
            per_out = [p[0] for p in per_out]
        return unflatten(lin.out_tree, per_out)

    jac.__name__ = f"jacobian({getattr(f, '__name__', 'f')})"
    return jac


def _batched(lin: _Linearized, fn: Callable[..., list[Any]], batch: list[Any]) -> list[Any]:
    """``fn`` over a leading batch axis: natively batched, else one call per row."""
    if lin.adapter.name in ("torch", "jax") or getattr(fn, "batches", False):
        return fn(batch, lin.retain, batched=True)
    return _loop_rows(lin.xp, lambda rows: fn(rows, lin.retain), batch)


def _rev_blocks(
    xp: ModuleType, flat: list[Any], outs: list[Any], ins: list[Any]
) -> list[list[Any]]:
    """Cut the stacked rows ``(M, *in.shape)`` into blocks ``out.shape + in.shape``."""
    blocks, start = [], 0
    for o in outs:
        m = math.prod(o.shape)
        blocks.append(
            [xp.reshape(g[start : start + m, ...], (*o.shape, *x.shape)) for g, x in zip(flat, ins)]
        )
        start += m
    return blocks


def _fwd_blocks(
    xp: ModuleType, flat: list[Any], outs: list[Any], ins: list[Any]
) -> list[list[Any]]:
    """Cut the stacked columns ``(N, *out.shape)`` into blocks ``out.shape + in.shape``."""
    blocks = []
    for j, o in enumerate(outs):
        m, row, start = math.prod(o.shape), [], 0
        for x in ins:
            n = math.prod(x.shape)
            cols = xp.reshape(flat[j][start : start + n, ...], (n, m))
            row.append(xp.reshape(xp.matrix_transpose(cols), (*o.shape, *x.shape)))
            start += n
        blocks.append(row)
    return blocks


def hessian(
    f: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    xp: ModuleType | None = None,
) -> Callable[..., Any]:
    """Return ``hess(*args)``: ``H[i..., j...] = d^2 f / dx[i...] dx[j...]`` of a scalar ``f``.

    The reverse-mode Jacobian of ``grad(f)`` (reverse over reverse; ``H`` is symmetric,
    so it equals ``jax.hessian``'s forward over reverse).
    """
    g = grad(f, argnums, xp=xp)
    h = jacobian(g, argnums, mode="rev", xp=xp)
    h.__name__ = f"hessian({getattr(f, '__name__', 'f')})"
    return h


def hvp(
    f: Callable[..., Any],
    primals: Sequence[Any],
    tangents: Sequence[Any],
    *,
    xp: ModuleType | None = None,
) -> tuple[Any, ...]:
    """The Hessian-vector product ``H v`` of a scalar ``f`` at ``primals``, one per primal.

    ``(H v)_i = sum_j d^2 f / dx_i dx_j v_j``. JAX: forward over reverse
    (``jvp(grad(f))``). Elsewhere reverse over reverse, ``grad(x -> <grad f(x), v>)``,
    which equals it because ``H`` is symmetric and costs two backward passes instead of
    three.
    """
    primals, tangents = tuple(primals), tuple(tangents)
    nums = tuple(range(len(primals)))
    leaves, _ = flatten_leaves(primals)
    space = common_namespace(leaves, lambda: ["primals"] * len(leaves), "hvp", xp)
    if adapter_for(space).name == "jax":
        return jvp(grad(f, nums, xp=xp), primals, tangents, xp=xp)[1]
    tans, _ = flatten_leaves(tangents)

    def inner(*xs: Any) -> Any:
        gs, _ = flatten_leaves(grad(f, nums, xp=xp)(*xs))
        ns = array_namespace(*gs)
        total = ns.sum(ns.multiply(gs[0], tans[0]))
        for g, t in zip(gs[1:], tans[1:]):
            total = ns.add(total, ns.sum(ns.multiply(g, t)))
        return total

    lin = _Linearized("hvp", f, primals, nums, xp)
    _check_like("hvp", "tangents", tans, lin.leaves, lin.in_tree)
    return grad(inner, nums, xp=xp)(*primals)


def elementwise_grad(
    f: Callable[..., Any],
    argnums: Argnums = 0,
    *,
    xp: ModuleType | None = None,
) -> Callable[..., Any]:
    """Return ``df(*args)``: the VJP of ``f`` with a cotangent of ones, ``sum_i dy_i/dx``.

    For an elementwise ``f`` this is its derivative at every element (HIPS autograd's
    ``elementwise_grad``); for any other ``f`` it is the gradient of ``sum(f)``.
    """

    def df(*args: Any) -> Any:
        nums = _argnums("elementwise_grad", argnums, len(args))
        lin = _Linearized("elementwise_grad", f, args, nums, xp)
        outs, pull = lin.pullback()
        ones = [lin.xp.ones_like(lin.adapter.read(o)) for o in outs]
        grads = unflatten(lin.in_tree, pull(ones, lin.retain))
        return grads[0] if isinstance(argnums, int) else grads

    df.__name__ = f"elementwise_grad({getattr(f, '__name__', 'f')})"
    return df
