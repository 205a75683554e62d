"""L-BFGS, as ``torch.optim.LBFGS``: a closure-driven optimizer on the flattened parameters.

L-BFGS evaluates the loss several times per step (a line search, several inner
iterations) and decides on the host after each evaluation, as torch's does; so it is
not a :class:`~agrad.optim.GradientTransformation` (whose ``update`` sees one gradient)
but an object with ``init`` and ``step(params, closure, state)``, where
``closure(params) -> (loss, grads)`` (``agrad.value_and_grad(loss_fn)`` is one). The
arithmetic is the Array API on one flat vector of every parameter, in torch 2.13's
order (float64: equal to ``torch.optim.LBFGS`` to 1e-10 relative, tested). It runs
eagerly: the scalars its decisions read are brought to the host, so it does not run
under ``jax.jit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from agrad.autograd.adapters import adapter_for
from agrad.optim.base import TreeNames, check_call
from agrad.optim.numerics import check_lr, check_nonnegative, is_scalar, python_numbers
from agrad.pytree import flatten_leaves, key_paths, keystr, unflatten

__all__ = ["LBFGS", "LBFGSState", "lbfgs"]


class LBFGSState(NamedTuple):
    """torch's ``LBFGS.state`` for the flat parameter vector (``None`` before the first step)."""

    func_evals: int
    n_iter: int
    d: Any
    t: Any
    old_dirs: tuple
    old_stps: tuple
    ro: tuple
    H_diag: Any
    prev_flat_grad: Any
    prev_loss: Any


def _cubic_interpolate(
    x1: float,
    f1: float,
    g1: float,
    x2: float,
    f2: float,
    g2: float,
    bounds: tuple[float, float] | None = None,
) -> float:
    """The minimizer of the cubic through two points with their slopes, clamped to ``bounds``."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


class _Flat:
    """The parameters as one flat vector: ``dot``, ``amax``, and back to a tree."""

    def __init__(self, xp: ModuleType, leaves: list[Any], treedef: Any):
        self.xp = xp
        self.treedef = treedef
        self.shapes = [tuple(p.shape) for p in leaves]
        self.sizes = [math.prod(s) for s in self.shapes]

    def flat(self, leaves: list[Any]) -> Any:
        return self.xp.concat([self.xp.reshape(x, (-1,)) for x in leaves])

    def tree(self, flat: Any) -> Any:
        out, offset = [], 0
        for shape, n in zip(self.shapes, self.sizes):
            out.append(self.xp.reshape(flat[offset : offset + n], shape))
            offset += n
        return unflatten(self.treedef, out)

    def dot(self, a: Any, b: Any) -> float:
        return float(self.xp.sum(self.xp.multiply(a, b)))

    def amax(self, a: Any) -> float:
        return float(self.xp.max(self.xp.abs(a)))


def _strong_wolfe(
    obj_func: Callable[[Any, float, Any], tuple[float, Any]],
    flat: _Flat,
    x: Any,
    t: float,
    d: Any,
    f: float,
    g: Any,
    gtd: float,
    c1: float = 1e-4,
    c2: float = 0.9,
    tolerance_change: float = 1e-9,
    max_ls: int = 25,
) -> tuple[float, Any, float, int]:
    """A line search for a step satisfying the strong Wolfe conditions (torch's ``_strong_wolfe``).

    .. math::
        f(x + t d) \\le f(x) + c_1 t\\, g^T d,\\qquad |g(x + t d)^T d| \\le -c_2\\, g^T d

    Brackets a step by cubic interpolation, then zooms into the bracket. Returns
    ``(loss, flat_grad, t, evaluations)``.
    """
    d_norm = flat.amax(d)
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = flat.dot(g_new, d)
    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list[float] = []
    bracket_f: list[float] = []
    bracket_g: list[Any] = []
    bracket_gtd: list[float] = []
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(
            t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step)
        )
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = flat.dot(g_new, d)
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(
            bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1]
        )
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = flat.dot(g_new, d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new
    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


class LBFGS:
    """L-BFGS with an optional strong-Wolfe line search, as ``torch.optim.LBFGS``.

    Use ``state = opt.init(params)`` and
    ``params, state, loss = opt.step(params, closure, state)`` with
    ``closure(params) -> (loss, grads)``; ``loss`` is the closure's first value in the
    step, as torch's ``step`` returns. Build it with :func:`lbfgs`.
    """

    def __init__(
        self,
        lr: float,
        max_iter: int,
        max_eval: int,
        tolerance_grad: float,
        tolerance_change: float,
        history_size: int,
        line_search_fn: str | None,
    ):
        self.hyperparams = dict(
            lr=lr,
            max_iter=max_iter,
            max_eval=max_eval,
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history_size,
            line_search_fn=line_search_fn,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"lbfgs({args})"

    def init(self, params: Any) -> LBFGSState:
        """The empty state (no direction or history yet); checks ``params``."""
        self._checked("lbfgs.init", params)
        return LBFGSState(0, 0, None, None, (), (), (), None, None, None)

    def _checked(self, fn: str, params: Any) -> tuple[ModuleType, list[Any], Any]:
        c = check_call(fn, params, None)
        dtypes = {str(p.dtype) for p in c.raw_params}
        if len(dtypes) > 1:
            msg = f"{fn}: L-BFGS works on one flat vector, so every parameter needs one dtype; got {sorted(dtypes)}"
            raise TypeError(msg)
        return c.xp, c.raw_params, c.treedef

    def step(
        self,
        params: Any,
        closure: Callable[[Any], tuple[Any, Any]],
        state: LBFGSState,
        inplace: bool = True,
    ) -> tuple[Any, LBFGSState, Any]:
        """One step of up to ``max_iter`` iterations: ``(new_params, new_state, first_loss)``.

        Each iteration finds the L-BFGS direction from the last ``history_size``
        curvature pairs (two-loop recursion),

        .. math::
            s_k = \\theta_{k+1}-\\theta_k,\\ y_k = g_{k+1}-g_k,\\ \\rho_k = 1/(y_k^T s_k),\\
            d = -H g,\\ H_0 = \\frac{y^T s}{y^T y} I,

        and moves :math:`\\theta \\leftarrow \\theta + t d` with :math:`t` the learning
        rate (the first iteration: :math:`\\min(1, 1/\\lVert g\\rVert_1)\\gamma`) or the
        strong-Wolfe line search's step. With ``inplace`` the final parameters are
        written into ``params`` where the library allows it (nothing is written if the
        closure raises). Reference: Nocedal & Wright, "Numerical Optimization", 2006,
        algorithms 7.4 and 3.5.
        """
        fn = "lbfgs.step"
        if not isinstance(state, LBFGSState):
            msg = f"{fn}: state must be the LBFGSState of lbfgs.init, got {type(state).__name__}"
            raise TypeError(msg)
        xp, leaves, treedef = self._checked(fn, params)
        flat = _Flat(xp, leaves, treedef)
        h = self.hyperparams
        lr, max_iter, max_eval = h["lr"], h["max_iter"], h["max_eval"]
        tolerance_grad, tolerance_change = h["tolerance_grad"], h["tolerance_change"]
        history_size = h["history_size"]

        def evaluate(x: Any) -> tuple[Any, float, Any]:
            tree = flat.tree(x)
            out = closure(tree)
            try:
                loss, grads = out
            except (TypeError, ValueError):
                msg = f"{fn}: closure(params) must return (loss, grads), got {type(out).__name__}"
                raise TypeError(msg) from None
            c = check_call(fn, tree, grads, names=_NAMES)
            return loss, float(loss), flat.flat(c.raw_grads)

        x = flat.flat(leaves)
        orig_loss, loss, flat_grad = evaluate(x)
        current_evals = 1
        func_evals = state.func_evals + 1
        if flat.amax(flat_grad) <= tolerance_grad:
            return params, state._replace(func_evals=func_evals), orig_loss
        s = state
        d, t, H_diag = s.d, s.t, s.H_diag
        old_dirs, old_stps, ro = list(s.old_dirs), list(s.old_stps), list(s.ro)
        prev_flat_grad, prev_loss = s.prev_flat_grad, s.prev_loss
        state_n_iter = s.n_iter
        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state_n_iter += 1
            if state_n_iter == 1:
                d = xp.negative(flat_grad)
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1.0
            else:
                y = xp.subtract(flat_grad, prev_flat_grad)
                step = d * t
                ys = flat.dot(y, step)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(step)
                    ro.append(1.0 / ys)
                    H_diag = ys / flat.dot(y, y)
                num_old = len(old_dirs)
                al = [0.0] * num_old
                q = xp.negative(flat_grad)
                for i in range(num_old - 1, -1, -1):
                    al[i] = flat.dot(old_stps[i], q) * ro[i]
                    q = xp.add(q, old_dirs[i] * -al[i])
                r = q * H_diag
                for i in range(num_old):
                    be_i = flat.dot(old_dirs[i], r) * ro[i]
                    r = xp.add(r, old_stps[i] * (al[i] - be_i))
                d = r
            prev_flat_grad = flat_grad
            prev_loss = loss
            first = state_n_iter == 1
            t = min(1.0, 1.0 / float(xp.sum(xp.abs(flat_grad)))) * lr if first else lr
            gtd = flat.dot(flat_grad, d)
            if gtd > -tolerance_change:
                break
            ls_func_evals = 0
            if h["line_search_fn"] is not None:

                def obj_func(x0: Any, t: float, d: Any) -> tuple[float, Any]:
                    return evaluate(xp.add(x0, d * t))[1:]

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, flat, x, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals
                )
                x = xp.add(x, d * t)
                opt_cond = flat.amax(flat_grad) <= tolerance_grad
            else:
                x = xp.add(x, d * t)
                opt_cond = False
                if n_iter != max_iter:
                    _, loss, flat_grad = evaluate(x)
                    opt_cond = flat.amax(flat_grad) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            func_evals += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if flat.amax(d * t) <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break
        new_state = LBFGSState(
            func_evals,
            state_n_iter,
            d,
            t,
            tuple(old_dirs),
            tuple(old_stps),
            tuple(ro),
            H_diag,
            prev_flat_grad,
            prev_loss,
        )
        new_leaves = flatten_leaves(flat.tree(x))[0]
        if inplace:
            new_leaves = _write(fn, xp, flatten_leaves(params)[0], new_leaves, treedef)
        return unflatten(treedef, new_leaves), new_state, orig_loss


_NAMES = TreeNames(grads="closure(params)[1]")


def _write(fn: str, xp: ModuleType, dst: list[Any], new: list[Any], treedef: Any) -> list[Any]:
    """``new`` written into ``dst`` where the library allows it, every write checked first."""
    adapter = adapter_for(xp)
    plan = [adapter.writable(d, n) for d, n in zip(dst, new)]
    for i, (d, w) in enumerate(zip(dst, plan)):
        reason = adapter.readonly_reason(d) if w else None
        if reason is not None:
            where = keystr(key_paths(treedef)[i])
            msg = f"{fn}: cannot update params{where} in place: {reason}; pass inplace=False or a writable array"
            raise ValueError(msg)
    return [adapter.write(d, n) if w else n for d, n, w in zip(dst, new, plan)]


@python_numbers
def lbfgs(
    lr: float = 1.0,
    max_iter: int = 20,
    max_eval: int | None = None,
    tolerance_grad: float = 1e-7,
    tolerance_change: float = 1e-9,
    history_size: int = 100,
    line_search_fn: str | None = None,
) -> LBFGS:
    """L-BFGS as ``torch.optim.LBFGS`` (torch's names and defaults; ``max_eval`` defaults to ``max_iter * 5 // 4``).

    ``opt = lbfgs(history_size=10, line_search_fn="strong_wolfe")``;
    ``state = opt.init(params)``; then each step
    ``params, state, loss = opt.step(params, closure, state)`` with
    ``closure(params) -> (loss, grads)``, e.g.
    ``closure = agrad.value_and_grad(loss_fn)``. See :meth:`LBFGS.step` for the math.
    Reference: Liu & Nocedal, "On the limited memory BFGS method for large scale
    optimization", Math. Programming 1989.
    """
    fn = "agrad.optim.lbfgs"
    if not is_scalar(lr):
        raise TypeError(f"{fn}: lr must be a Python number, got {type(lr).__name__}")
    check_lr(fn, lr)
    check_nonnegative(fn, tolerance_grad=tolerance_grad, tolerance_change=tolerance_change)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    for name, v in (("max_iter", max_iter), ("max_eval", max_eval), ("history_size", history_size)):
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"{fn}: {name} must be an integer >= 1, got {v!r}")
    if line_search_fn not in (None, "strong_wolfe"):
        msg = f"{fn}: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}"
        raise ValueError(msg)
    return LBFGS(
        float(lr),
        max_iter,
        max_eval,
        tolerance_grad,
        tolerance_change,
        history_size,
        line_search_fn,
    )
