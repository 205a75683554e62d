"""Gradient transformations to compose with :func:`agrad.optim.chain`, optax-style.

Each function returns a :class:`~agrad.optim.base.GradientTransformation` whose
``update`` maps incoming updates (gradients, at the start of a chain) to outgoing
ones. Transforms that wrap another (``multi_steps``, ``apply_if_finite``, ``masked``,
``partition``) keep the inner state inside their own record. Everything is written
against the Array API; Python-float hyperparameters keep the leaves' dtype. Counts
and flags in the states are 0-d arrays and decisions on array values are
``xp.where`` selections, so every transform runs under ``jax.jit`` and
``jax.lax.scan``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from array_api_compat import device as _device

from agrad.optim.base import GradientTransformation, is_array, namespace_of
from agrad.optim.numerics import (
    as_count,
    check_nonnegative,
    check_positive,
    count_like,
    count_value,
    is_hyper_array,
    leaf_scalar,
    lerp,
    next_count,
    python_numbers,
    resolve,
    scale,
    static_int,
)
from agrad.pytree import flatten, flatten_leaves, keystr, leaves_like, tree_map, unflatten

__all__ = [
    "select_tree",
    "ApplyIfFiniteState",
    "CountState",
    "EmaParamsState",
    "EmptyState",
    "MaskedState",
    "MultiStepsState",
    "PartitionState",
    "TraceState",
    "add_decayed_weights",
    "apply_if_finite",
    "clip",
    "clip_by_global_norm",
    "ema_params",
    "find_state",
    "global_norm",
    "masked",
    "multi_steps",
    "partition",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_values",
    "trace",
]


class EmptyState(NamedTuple):
    """The state of a stateless transformation."""


class CountState(NamedTuple):
    count: Any


class TraceState(NamedTuple):
    trace: Any


class EmaParamsState(NamedTuple):
    count: Any
    ema: Any


class MultiStepsState(NamedTuple):
    mini_step: Any
    gradient_step: Any
    inner_state: Any
    acc_grads: Any


class ApplyIfFiniteState(NamedTuple):
    notfinite_count: Any
    last_finite: Any
    total_notfinite: Any
    inner_state: Any


class MaskedState(NamedTuple):
    inner_state: Any


class PartitionState(NamedTuple):
    inner_states: dict


def _wrapping(
    name: str, init: Callable, update: Callable, inner: GradientTransformation, **hyper: Any
) -> GradientTransformation:
    """A transformation around ``inner``: it reads the parameters where ``inner`` does."""
    hyper = {"inner": inner, **hyper}
    return GradientTransformation(name, init, update, hyper, needs_params=inner.needs_params)


def _empty_init(params: Any) -> EmptyState:
    return EmptyState()


def _first_leaf(tree: Any) -> Any:
    """The first array leaf of ``tree`` (the device and namespace of new counts), or ``None``."""
    for x in flatten_leaves(tree)[0]:
        if is_array(x):
            return x
    return None


def _new_count(tree: Any, value: int = 0) -> Any:
    """A 0-d ``int32`` count on the device of ``tree``'s arrays (an int for an empty tree)."""
    like = _first_leaf(tree)
    return value if like is None else count_like(namespace_of(like), like, value)


def select_tree(xp: Any, cond: Any, a: Any, b: Any) -> Any:
    """``a`` where the 0-d bool ``cond`` holds, else ``b``, leaf by leaf (trees of one structure).

    Array leaves are selected with ``xp.where``; equal non-array leaves (``None``, a
    Python number both sides share) are kept. This is the branch on an array value
    written so that it traces under ``jax.jit``.
    """
    a_leaves, treedef = flatten_leaves(a)
    b_leaves = leaves_like(b, a)
    out = []
    for x, y in zip(a_leaves, b_leaves):
        if is_array(x) or is_array(y):
            out.append(xp.where(cond, x, y))
        else:
            out.append(x)
    return unflatten(treedef, out)


def _stateless(name: str, fn: Callable[[Any, Any], Any], hyper: dict, needs_params: bool):
    def update(updates: Any, state: EmptyState, params: Any) -> tuple[Any, EmptyState]:
        return fn(updates, params), state

    return GradientTransformation(name, _empty_init, update, hyper, needs_params=needs_params)


def global_norm(tree: Any) -> Any:
    """:math:`\\sqrt{\\sum_i \\lVert u_i \\rVert_2^2}` over every leaf, a 0-d array."""
    leaves = [x for x in flatten_leaves(tree)[0] if is_array(x)]
    xp = namespace_of(leaves)
    total = None
    for u in leaves:
        s = xp.sum(xp.multiply(u, u))
        total = s if total is None else xp.add(total, s)
    return xp.sqrt(total)


@python_numbers
def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale all updates together when their global norm exceeds ``max_norm`` (``optax.clip_by_global_norm``).

    .. math:: u \\leftarrow u \\text{ if } \\lVert u\\rVert < c \\text{ else } \\frac{u}{\\lVert u\\rVert} c

    Reference: Pascanu et al., "On the difficulty of training recurrent neural
    networks", ICML 2013.
    """
    check_positive("agrad.optim.clip_by_global_norm", max_norm=max_norm)

    def fn(updates: Any, params: Any) -> Any:
        xp = namespace_of(updates)
        norm = global_norm(updates)
        trigger = norm < leaf_scalar(xp, max_norm, norm)
        # where the clipped branch is not taken (a zero norm included), divide by 1 instead
        safe_norm = xp.where(trigger, xp.ones_like(norm), norm)
        return tree_map(
            lambda u: xp.where(trigger, u, scale(xp, xp.divide(u, safe_norm), max_norm)), updates
        )

    return _stateless("clip_by_global_norm", fn, {"max_norm": max_norm}, False)


@python_numbers
def clip(max_delta: float) -> GradientTransformation:
    """Clip every element to ``[-max_delta, max_delta]`` (``optax.clip``).

    .. math:: u \\leftarrow \\min(\\max(u, -\\delta), \\delta)
    """
    check_nonnegative("agrad.optim.clip", max_delta=max_delta)

    def fn(updates: Any, params: Any) -> Any:
        xp = namespace_of(updates)
        if is_hyper_array(max_delta):  # injected: a 0-d bound in each leaf's dtype
            return tree_map(
                lambda u: xp.minimum(
                    xp.maximum(u, -leaf_scalar(xp, max_delta, u)), leaf_scalar(xp, max_delta, u)
                ),
                updates,
            )
        return tree_map(lambda u: xp.clip(u, min=-float(max_delta), max=float(max_delta)), updates)

    return _stateless("clip", fn, {"max_delta": max_delta}, False)


def _mask_leaves(fn: str, mask: Any, params: Any) -> list[bool]:
    """One bool per leaf of ``params`` from a bool, a pytree of bools, or a callable."""
    leaves, _, paths = flatten(params)
    if callable(mask):
        mask = mask(params)
    if isinstance(mask, bool):
        return [mask] * len(leaves)
    from agrad.pytree import check_same_structure

    try:
        check_same_structure(params, mask, names=("params", "mask"))
    except ValueError as err:
        raise ValueError(f"{fn}: {err}") from None
    out = leaves_like(mask, params)
    for m, p in zip(out, paths):
        if not isinstance(m, bool):
            msg = f"{fn}: mask{keystr(p)} must be a bool, got {type(m).__name__}"
            raise TypeError(msg)
    return out


@python_numbers
def add_decayed_weights(weight_decay: float = 0.0, mask: Any = None) -> GradientTransformation:
    """Add :math:`\\lambda\\theta` to the updates of the masked leaves (``optax.add_decayed_weights``).

    .. math:: u \\leftarrow u + \\lambda \\theta

    ``mask``: ``None`` (every leaf), a bool, a pytree of bools shaped like the
    parameters, or a callable ``params -> mask``. Reference: Loshchilov & Hutter,
    "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    fn_name = "agrad.optim.add_decayed_weights"
    check_nonnegative(fn_name, weight_decay=weight_decay)

    def fn(updates: Any, params: Any) -> Any:
        if not is_hyper_array(weight_decay) and weight_decay == 0:
            return updates
        use = (
            [True] * len(flatten_leaves(params)[0])
            if mask is None
            else _mask_leaves(fn_name, mask, params)
        )
        xp = namespace_of(updates)
        u_leaves, treedef = flatten_leaves(updates)
        p_leaves = leaves_like(params, updates)
        out = [
            xp.add(u, scale(xp, p, weight_decay)) if m else u
            for u, p, m in zip(u_leaves, p_leaves, use)
        ]
        return unflatten(treedef, out)

    return _stateless("add_decayed_weights", fn, {"weight_decay": weight_decay, "mask": mask}, True)


@python_numbers
def scale_values(step_size: float) -> GradientTransformation:
    """Multiply every update by a constant (``optax.scale``): :math:`u \\leftarrow \\alpha u`."""

    def fn(updates: Any, params: Any) -> Any:
        xp = namespace_of(updates, extra=(step_size,))
        return tree_map(lambda u: scale(xp, u, step_size), updates)

    return _stateless("scale", fn, {"step_size": step_size}, False)


@python_numbers
def scale_by_schedule(step_size_fn: Callable[[int], Any]) -> GradientTransformation:
    """Multiply the updates by ``step_size_fn(count)`` (``optax.scale_by_schedule``).

    .. math:: u_t \\leftarrow s(t-1)\\, u_t
    """

    def init(params: Any) -> CountState:
        return CountState(_new_count(params))

    def update(updates: Any, state: CountState, params: Any) -> tuple[Any, CountState]:
        known = count_value(state.count)
        factor = step_size_fn(state.count if known is None else known)
        xp = namespace_of(updates, extra=(factor,))
        like = _first_leaf(updates)
        new = CountState(next_count(xp, state.count, like))
        return tree_map(lambda u: scale(xp, u, factor), updates), new

    return GradientTransformation(
        "scale_by_schedule", init, update, {"step_size_fn": step_size_fn}, needs_params=False
    )


@python_numbers
def scale_by_learning_rate(lr: Any, *, flip_sign: bool = True) -> GradientTransformation:
    """Multiply by :math:`-\\gamma` (a float or a schedule), ``optax.scale_by_learning_rate``."""
    if callable(lr):
        fn = "agrad.optim.scale_by_learning_rate"
        if flip_sign:
            return scale_by_schedule(lambda count: -resolve(lr, count, fn))
        return scale_by_schedule(lambda count: resolve(lr, count, fn))
    if flip_sign:
        return scale_values(-lr if not is_array(lr) else lr * -1.0)
    return scale_values(lr)


@python_numbers
def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum (``optax.trace``): :math:`m_t = u_t + \\beta m_{t-1}`, output :math:`m_t` (or :math:`u_t + \\beta m_t`)."""

    def init(params: Any) -> TraceState:
        xp = namespace_of(params)
        return TraceState(tree_map(xp.zeros_like, params))

    def update(updates: Any, state: TraceState, params: Any) -> tuple[Any, TraceState]:
        xp = namespace_of(updates)
        new_trace = tree_map(lambda g, t: xp.add(g, scale(xp, t, decay)), updates, state.trace)
        if nesterov:
            updates = tree_map(lambda g, t: xp.add(g, scale(xp, t, decay)), updates, new_trace)
        else:
            updates = new_trace
        return updates, TraceState(new_trace)

    return GradientTransformation(
        "trace", init, update, {"decay": decay, "nesterov": nesterov}, needs_params=False
    )


@python_numbers
def ema_params(decay: float) -> GradientTransformation:
    """An exponential moving average of the parameters after each step; put it last in a chain.

    .. math:: \\bar\\theta_1 = \\theta_1,\\quad \\bar\\theta_t = \\bar\\theta_{t-1} + (1-\\beta)(\\theta_t - \\bar\\theta_{t-1})

    where :math:`\\theta_t = \\theta_{t-1} + u_t`, as ``torch.optim.swa_utils.AveragedModel``
    with ``get_ema_multi_avg_fn(decay)``. Updates pass through unchanged; read the
    average with ``find_state(state, EmaParamsState).ema``. Reference: Polyak &
    Juditsky, "Acceleration of stochastic approximation by averaging", 1992.
    """
    from agrad.optim.numerics import check_unit_interval

    check_unit_interval("agrad.optim.ema_params", closed=True, decay=decay)

    def init(params: Any) -> EmaParamsState:
        return EmaParamsState(_new_count(params), tree_map(lambda p: p * 1.0, params))

    def update(updates: Any, state: EmaParamsState, params: Any) -> tuple[Any, EmaParamsState]:
        xp = namespace_of(updates, params)
        like = _first_leaf(updates)
        new_p = tree_map(xp.add, params, updates)
        known = count_value(state.count)
        if known == 0:
            ema = new_p
        else:
            ema = tree_map(lambda e, p: lerp(xp, e, p, 1.0 - decay), state.ema, new_p)
            if known is None:  # a traced count: the first step selects the parameters
                ema = select_tree(xp, as_count(xp, state.count, like) == 0, new_p, ema)
        return updates, EmaParamsState(next_count(xp, state.count, like), ema)

    return GradientTransformation("ema_params", init, update, {"decay": decay})


def find_state(state: Any, kind: type) -> Any:
    """The first record of type ``kind`` inside a (nested) optimizer state, depth first."""
    if isinstance(state, kind):
        return state
    children: Any = ()
    if isinstance(state, dict):
        children = state.values()
    elif isinstance(state, (list, tuple)):
        children = state
    for c in children:
        found = find_state(c, kind)
        if found is not None:
            return found
    return None


@python_numbers
def multi_steps(inner: GradientTransformation, every_k: int) -> GradientTransformation:
    """Accumulate gradients over ``every_k`` calls, then apply ``inner`` to their mean (``optax.MultiSteps``).

    .. math::
        u_t = 0 \\text{ for the first } k-1 \\text{ calls},\\quad
        u_t = \\mathrm{inner}\\Big(\\tfrac1k \\sum_{i=1}^{k} g_i\\Big) \\text{ on the } k\\text{-th}
    """
    static_int("agrad.optim.multi_steps", "every_k", every_k)
    if not (isinstance(every_k, int) and every_k >= 1):
        raise ValueError(
            f"agrad.optim.multi_steps: every_k must be an integer >= 1, got {every_k!r}"
        )

    def init(params: Any) -> MultiStepsState:
        xp = namespace_of(params)
        zeros = tree_map(xp.zeros_like, params)
        return MultiStepsState(
            _new_count(params), _new_count(params), inner.inner_init(params), zeros
        )

    def update(updates: Any, state: MultiStepsState, params: Any) -> tuple[Any, MultiStepsState]:
        xp = namespace_of(updates)
        like = _first_leaf(updates)
        acc = tree_map(xp.add, state.acc_grads, updates)
        mini = as_count(xp, state.mini_step, like)
        known = count_value(state.mini_step)
        if known is not None and known + 1 < every_k:  # known to accumulate: skip the inner rule
            zeros = tree_map(xp.zeros_like, updates)
            return zeros, state._replace(mini_step=mini + 1, acc_grads=acc)
        mean = tree_map(lambda a: a / float(every_k), acc)
        out, inner_state = inner.inner_update(mean, state.inner_state, params)
        zeros = tree_map(xp.zeros_like, acc)
        step = as_count(xp, state.gradient_step, like)
        if known is not None:  # known to emit
            return out, MultiStepsState(mini * 0, step + 1, inner_state, zeros)
        emit = mini + 1 >= every_k  # a traced count: both outcomes, one selected
        new_state = MultiStepsState(
            xp.where(emit, mini * 0, mini + 1),
            xp.where(emit, step + 1, step),
            select_tree(xp, emit, inner_state, state.inner_state),
            select_tree(xp, emit, zeros, acc),
        )
        return select_tree(xp, emit, out, tree_map(xp.zeros_like, out)), new_state

    return _wrapping("multi_steps", init, update, inner, every_k=every_k)


@python_numbers
def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skip steps whose updates are not all finite (``optax.apply_if_finite``).

    A step whose incoming updates (the gradients) hold a NaN or an infinity gives zero
    updates and keeps ``inner``'s state, unless more than ``max_consecutive_errors``
    such steps came in a row (then it is applied). The state counts consecutive and
    total skips. As in optax, the incoming updates are checked, so a non-finite
    gradient is caught on a mini-step of :func:`multi_steps` that emits nothing
    (instead of poisoning its accumulator).
    """
    static_int("agrad.optim.apply_if_finite", "max_consecutive_errors", max_consecutive_errors)

    def init(params: Any) -> ApplyIfFiniteState:
        like = _first_leaf(params)
        flag = True if like is None else namespace_of(like).asarray(True, device=_device(like))
        count = _new_count(params)
        return ApplyIfFiniteState(count, flag, _new_count(params), inner.inner_init(params))

    def update(updates: Any, state: ApplyIfFiniteState, params: Any):
        xp = namespace_of(updates)
        like = _first_leaf(updates)
        new_updates, inner_state = inner.inner_update(updates, state.inner_state, params)
        finite = None
        for u in flatten_leaves(updates)[0]:
            ok = xp.all(xp.isfinite(u))
            finite = ok if finite is None else xp.logical_and(finite, ok)
        nf_old = as_count(xp, state.notfinite_count, like)
        nf = xp.where(finite, nf_old * 0, nf_old + 1)
        total = as_count(xp, state.total_notfinite, like)
        total = xp.where(finite, total, total + 1)
        apply = xp.logical_or(finite, nf > max_consecutive_errors)
        zeros = tree_map(xp.zeros_like, new_updates)
        out = select_tree(xp, apply, new_updates, zeros)
        kept = select_tree(xp, apply, inner_state, state.inner_state)
        return out, ApplyIfFiniteState(nf, finite, total, kept)

    return _wrapping(
        "apply_if_finite", init, update, inner, max_consecutive_errors=max_consecutive_errors
    )


def _leaf_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Each leaf's path as a tuple of (kind, key), in :func:`flatten_leaves` order."""
    if isinstance(node, dict):
        out: list[tuple] = []
        for k in node:
            out += _leaf_paths(node[k], (*prefix, (1, type(k).__name__, k)))
        return out
    if isinstance(node, (list, tuple)):
        out = []
        for i, c in enumerate(node):
            out += _leaf_paths(c, (*prefix, (0, "", i)))
        return out
    return [prefix]


def _canonical_order(tree: Any) -> list[int]:
    """The leaves of ``tree`` in sorted-key order: indices into :func:`flatten_leaves`.

    A dict's insertion order is not part of its structure: ``jax.jit`` returns dicts
    with sorted keys, and optax's states follow the tree, not an order. Transforms that
    keep a list of some leaves (:func:`masked`, :func:`partition`) list them in this
    order, so a state made for ``{"w": ..., "b": ...}`` fits ``{"b": ..., "w": ...}``.
    Falls back to the flattening order where keys cannot be sorted.
    """
    n = len(flatten_leaves(tree)[0])
    paths = _leaf_paths(tree)
    if len(paths) != n:
        return list(range(n))
    try:
        return sorted(range(n), key=paths.__getitem__)
    except TypeError:  # keys of types that do not compare
        return list(range(n))


@python_numbers
def masked(inner: GradientTransformation, mask: Any) -> GradientTransformation:
    """Apply ``inner`` to the masked leaves only; the others pass through (``optax.masked``).

    ``inner`` sees the masked leaves as a list, in sorted-key order
    (:func:`_canonical_order`), whatever the insertion order of the dicts; with no
    leaf masked, the updates pass through and ``inner``'s state is kept.
    """
    fn_name = "agrad.optim.masked"

    def select(tree: Any, use: list[bool], like: Any) -> list[Any]:
        leaves = leaves_like(tree, like)
        return [leaves[i] for i in _canonical_order(like) if use[i]]

    def init(params: Any) -> MaskedState:
        use = _mask_leaves(fn_name, mask, params)
        return MaskedState(inner.inner_init(select(params, use, params)))

    def update(updates: Any, state: MaskedState, params: Any) -> tuple[Any, MaskedState]:
        ref = params if params is not None else updates
        use = _mask_leaves(fn_name, mask, ref)
        if not any(use):  # nothing for the inner transformation (optax: its state advances)
            return updates, state
        sub_p = None if params is None else select(params, use, ref)
        sub_u, inner_state = inner.inner_update(select(updates, use, ref), state.inner_state, sub_p)
        out = list(leaves_like(updates, ref))
        for i, u in zip([i for i in _canonical_order(ref) if use[i]], sub_u):
            out[i] = u
        return unflatten(flatten_leaves(ref)[1], out), MaskedState(inner_state)

    return _wrapping("masked", init, update, inner, mask=mask)


@python_numbers
def partition(
    transforms: Mapping[str, GradientTransformation], labels: Any
) -> GradientTransformation:
    """A different transformation per group of leaves, like torch's param groups (``optax.partition``).

    ``labels`` is a pytree shaped like the parameters whose leaves are keys of
    ``transforms`` (or a callable ``params -> labels``). Each transformation sees the
    list of its leaves, in sorted-key order (dict insertion order does not matter, as under ``jax.jit``).
    """
    fn_name = "agrad.optim.partition"
    transforms = dict(transforms)

    def label_leaves(params: Any) -> list[Any]:
        lab = labels(params) if callable(labels) else labels
        leaves, _, paths = flatten(params)
        if not isinstance(lab, str):
            from agrad.pytree import check_same_structure

            try:
                check_same_structure(params, lab, names=("params", "labels"))
            except ValueError as err:
                raise ValueError(f"{fn_name}: {err}") from None
            out = leaves_like(lab, params)
        else:
            out = [lab] * len(leaves)
        for label, path in zip(out, paths):
            if label not in transforms:
                msg = (
                    f"{fn_name}: labels{keystr(path)} is {label!r}, which has no "
                    f"transformation (known labels: {sorted(transforms)})"
                )
                raise ValueError(msg)
        return out

    def groups(tree: Any, labs: list[Any], like: Any) -> dict[str, list[Any]]:
        """Each label's leaves in sorted-key order (:func:`_canonical_order`)."""
        out: dict[str, list[Any]] = {k: [] for k in transforms}
        leaves = leaves_like(tree, like)
        for i in _canonical_order(like):
            out[labs[i]].append(leaves[i])
        return out

    def init(params: Any) -> PartitionState:
        labs = label_leaves(params)
        g = groups(params, labs, params)
        return PartitionState({k: t.inner_init(g[k]) for k, t in transforms.items()})

    def update(updates: Any, state: PartitionState, params: Any) -> tuple[Any, PartitionState]:
        ref = params if params is not None else updates
        labs = label_leaves(ref)
        gu = groups(updates, labs, ref)
        gp = groups(params, labs, ref) if params is not None else dict.fromkeys(transforms)
        new_states, outs = {}, {}
        for k, t in transforms.items():
            outs[k], new_states[k] = t.inner_update(gu[k], state.inner_states[k], gp[k])
        iters = {k: iter(v) for k, v in outs.items()}
        leaves: list[Any] = [None] * len(labs)
        for i in _canonical_order(ref):
            leaves[i] = next(iters[labs[i]])
        return unflatten(flatten_leaves(ref)[1], leaves), PartitionState(new_states)

    needs = any(t.needs_params for t in transforms.values())
    hyper: dict[str, Any] = {"transforms": transforms, "labels": labels}
    for t in transforms.values():
        hyper.update({k: v for k, v in t.hyperparams.items() if is_array(v)})
    return GradientTransformation("partition", init, update, hyper, needs_params=needs)
