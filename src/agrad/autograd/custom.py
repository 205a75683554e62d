"""``custom_vjp``: a function with a VJP of its own, honoured by every backend.

The forward and the VJP are written once. On the tape (NumPy, CuPy, Dask,
array-api-strict) the function becomes one primitive, recorded like the built-in ones
(:func:`~agrad.autograd.tape.traced.primitive`): its forward runs on the raw arrays of
the base library (so it may be any NumPy, SciPy or CuPy code), and its VJP rule calls
the user's VJP. On torch it is a ``torch.autograd.Function``, on JAX a
``jax.custom_vjp``. This is also the public way to add a primitive to the tape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agrad.autograd.adapters import adapter_for
from agrad.autograd.tape.traced import TracedArray
from agrad.namespace import array_namespace

__all__ = ["CustomVJP", "custom_vjp"]

Backward = Callable[..., Sequence[Any]]


def _array_args(args: tuple[Any, ...]) -> list[Any]:
    return [a for a in args if hasattr(a, "shape") and hasattr(a, "dtype")]


class CustomVJP:
    """A function ``fwd`` with the VJP ``bwd(g, ans, *args, **kwargs) -> cotangents``.

    ``bwd`` returns one cotangent per positional argument of ``fwd`` (``None``: no
    gradient), each shaped like its argument: ``bwd(g, ans, *args)[i] = g^T d ans / d
    args[i]``. Keyword arguments are passed to both and never differentiated.
    """

    def __init__(self, fwd: Callable[..., Any], bwd: Backward | None, once_differentiable: bool):
        self.fwd = fwd
        self.bwd = bwd
        self.once = once_differentiable
        self.name = getattr(fwd, "__name__", "custom_vjp")
        self.primitives: dict[Any, Any] = {}  # one per tracing namespace, or torch's Function
        self.__name__ = self.name
        self.__doc__ = getattr(fwd, "__doc__", None)

    def defvjp(self, bwd: Backward, *, once_differentiable: bool | None = None) -> Backward:
        """Set the VJP (usable as a decorator); returns ``bwd``."""
        self.bwd = bwd
        if once_differentiable is not None:
            self.once = once_differentiable
        self.primitives.clear()
        return bwd

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.bwd is None:
            msg = f"custom_vjp {self.name}: no VJP was given; set one with {self.name}.defvjp(bwd)"
            raise TypeError(msg)
        arrays = _array_args(args)
        if not arrays:
            return self.fwd(*args, **kwargs)
        if any(isinstance(a, TracedArray) for a in arrays):
            return adapter_for(
                type(next(a for a in arrays if isinstance(a, TracedArray)))._ns
            ).custom_vjp(self, args, kwargs)
        adapter = adapter_for(array_namespace(*arrays))
        if adapter.name in ("torch", "jax"):
            return adapter.custom_vjp(self, args, kwargs)
        return self.fwd(*args, **kwargs)  # nothing is being differentiated

    def call_bwd(
        self, g: Any, ans: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None, nargs: int
    ) -> list[Any]:
        """``bwd``'s cotangents, checked: one per argument, each of its argument's shape."""
        out = self.bwd(g, ans, *args, **(kwargs or {}))
        if not isinstance(out, (tuple, list)):
            out = (out,)
        if len(out) != nargs:
            msg = (
                f"custom_vjp {self.name}: its VJP returned {len(out)} cotangent(s) for "
                f"{nargs} positional argument(s); return one per argument (None for no gradient)"
            )
            raise ValueError(msg)
        for i, (c, a) in enumerate(zip(out, args)):
            want = tuple(getattr(a, "shape", ()))
            if c is not None and hasattr(a, "shape") and tuple(c.shape) != want:
                msg = (
                    f"custom_vjp {self.name}: the cotangent of argument {i} has shape "
                    f"{tuple(c.shape)}, but the argument has shape {want}"
                )
                raise ValueError(msg)
        return list(out)


def custom_vjp(
    fwd: Callable[..., Any] | None = None,
    bwd: Backward | None = None,
    *,
    once_differentiable: bool = False,
) -> Any:
    """Make ``fwd`` differentiable with its own VJP ``bwd(g, ans, *args, **kwargs)``.

    Usable as ``custom_vjp(fwd, bwd)`` or as a decorator followed by ``@f.defvjp``.
    For ``ans = fwd(x_0, ..., x_n)`` and the cotangent ``g`` of ``ans``, ``bwd`` returns
    ``(g^T d ans/d x_0, ..., g^T d ans/d x_n)``, ``None`` for an argument without a
    gradient. Written with ``array_namespace(g)``, ``bwd`` is itself differentiable
    (higher order); with ``once_differentiable=True`` differentiating it raises.
    ``fwd`` returns one array. On the tape it receives the base library's raw arrays.
    """
    if fwd is None:
        return lambda f: CustomVJP(f, bwd, once_differentiable)
    return CustomVJP(fwd, bwd, once_differentiable)
