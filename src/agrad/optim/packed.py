"""Packed parameters: one flat buffer per dtype and device, parameters are views of it.

Many small parameters make every optimizer Python-bound: a dozen array operations
per parameter per step. :func:`pack` copies the parameters into one contiguous 1-D
buffer per (dtype, device) group and hands back views of it shaped like the
originals, so a model keeps using ``packed.params`` as before while the optimizer
runs on ``packed.buffers``: a list of one or two arrays, so the update is a few
whole-buffer operations whatever the number of parameters, and the optimizer state
(``opt.init(packed.buffers)``) is flat too. Gradients are packed the same way, by
copy (:meth:`Packed.flatten`) or for free when they are written into
:meth:`Packed.grad_views` (for example as torch ``.grad`` attributes).

Written against the Array API standard: the views are ``reshape(buffer[a:b], shape)``,
which are views on NumPy, torch and CuPy. A parameter that was a variable (an agrad
variable, a torch tensor with ``requires_grad``) comes back as a variable viewing the
buffer; the buffers themselves carry no gradient history. On libraries with immutable arrays (JAX) the
"views" are copies; call :meth:`Packed.unflatten` after each step there.

Example::

    packed = agrad.optim.pack({"w": w, "b": b})
    opt = agrad.optim.adam(lr=1e-3)
    state = opt.init(packed.buffers)
    for batch in data:
        grads = agrad.grad(loss)(packed.params, batch)
        _, state = opt.step(packed.buffers, packed.flatten(grads), state)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from agrad.autograd.adapters import adapter_for
from agrad.namespace import array_namespace
from agrad.pytree import check_same_structure, flatten_leaves, leaves_like, unflatten

__all__ = ["Packed", "pack"]


def _group_key(x: Any) -> tuple[str, str]:
    return str(x.dtype), str(getattr(x, "device", "cpu"))


class Packed:
    """Parameters packed into flat buffers (see :func:`pack`).

    Attributes: ``buffers`` (list of 1-D arrays, one per dtype/device group, in order
    of first appearance), ``params`` (the parameter pytree, leaves are views of the
    buffers), ``xp`` (the namespace).
    """

    __slots__ = (
        "_grad_buffers",
        "_grad_views",
        "_slots",
        "_variables",
        "buffers",
        "params",
        "treedef",
        "xp",
    )

    def __init__(self, params: Any, *, xp: ModuleType | None = None):
        leaves, treedef = flatten_leaves(params)
        if not leaves:
            raise ValueError("agrad.optim.pack: params contains no arrays")
        xp = array_namespace(*leaves) if xp is None else xp
        adapter = adapter_for(xp)
        variables = [adapter.is_variable(x) for x in leaves]
        leaves = [adapter.stop_gradient(x) for x in leaves]
        groups: dict[tuple[str, str], list[int]] = {}
        for i, x in enumerate(leaves):
            groups.setdefault(_group_key(x), []).append(i)
        # slot i: (group number, start, stop, shape)
        slots: list[tuple[int, int, int, tuple[int, ...]]] = [None] * len(leaves)  # type: ignore[list-item]
        buffers = []
        for gi, idx in enumerate(groups.values()):
            start = 0
            for i in idx:
                n = 1
                for d in leaves[i].shape:
                    n *= int(d)
                slots[i] = (gi, start, start + n, tuple(leaves[i].shape))
                start += n
            buffers.append(xp.concat([xp.reshape(leaves[i], (-1,)) for i in idx]))
        self.xp = xp
        self.treedef = treedef
        self._slots = slots
        self.buffers = buffers
        self._variables = variables
        self.params = self._param_views(buffers)
        self._grad_buffers: list[Any] | None = None
        self._grad_views: Any = None

    def __repr__(self) -> str:
        sizes = ", ".join(f"{b.shape[0]} x {b.dtype}" for b in self.buffers)
        return f"Packed({len(self._slots)} arrays in {len(self.buffers)} buffers: {sizes})"

    def unflatten(self, buffers: list[Any]) -> Any:
        """The pytree of views ``reshape(buffers[g][a:b], shape)``, one per parameter."""
        xp = self.xp
        leaves = [xp.reshape(buffers[g][a:b], shape) for g, a, b, shape in self._slots]
        return unflatten(self.treedef, leaves)

    def _param_views(self, buffers: list[Any]) -> Any:
        """Views of ``buffers``; a leaf that was a variable is a variable again."""
        adapter = adapter_for(self.xp)
        leaves, treedef = flatten_leaves(self.unflatten(buffers))
        leaves = [adapter.variable(x) if v else x for x, v in zip(leaves, self._variables)]
        return unflatten(treedef, leaves)

    def flatten(self, tree: Any) -> list[Any]:
        """``tree`` (shaped like the parameters) as flat buffers, one per group.

        Free for the pytree returned by :meth:`grad_views` (its buffers are returned);
        otherwise one concatenation per group.
        """
        if tree is self._grad_views and self._grad_buffers is not None:
            return self._grad_buffers
        check_same_structure(self.params, tree, names=("packed params", "tree"))
        leaves = leaves_like(tree, self.params)
        xp = self.xp
        per_group: list[list[Any]] = [[] for _ in self.buffers]
        for leaf, (g, _, _, shape) in zip(leaves, self._slots):
            if tuple(leaf.shape) != shape:
                msg = f"agrad.optim.Packed.flatten: leaf of shape {tuple(leaf.shape)} where the parameter has shape {shape}"
                raise ValueError(msg)
            per_group[g].append(xp.reshape(leaf, (-1,)))
        return [xp.concat(parts) for parts in per_group]

    def grad_views(self) -> Any:
        """A zeroed gradient pytree whose leaves are views of flat gradient buffers.

        Write gradients into it (or make them torch ``.grad`` attributes, which torch
        accumulates into in place); :meth:`flatten` then costs nothing.
        """
        if self._grad_buffers is None:
            self._grad_buffers = [self.xp.zeros_like(b) for b in self.buffers]
            self._grad_views = self.unflatten(self._grad_buffers)
        return self._grad_views

    def step(self, opt: Any, grads: Any, state: Any) -> Any:
        """``opt.step`` on the buffers with ``grads`` packed; returns the new state.

        On libraries whose arrays cannot be written in place the buffers and
        ``params`` are replaced by the new values.
        """
        new, state = opt.step(self.buffers, self.flatten(grads), state)
        if any(n is not b for n, b in zip(new, self.buffers)):
            self.buffers = list(new)
            self.params = self._param_views(self.buffers)
        return state


def pack(params: Any, *, xp: ModuleType | None = None) -> Packed:
    """Copy ``params`` into one flat buffer per dtype and device; see :class:`Packed`.

    The optimizer then runs on ``packed.buffers`` (a handful of whole-buffer
    operations per step, whatever the number of parameters) with flat state, while
    ``packed.params`` keeps the original structure as views of the buffers.
    """
    return Packed(params, xp=xp)
