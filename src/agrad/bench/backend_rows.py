"""Optimizer steps on Dask and CuPy: the kernel route against its peers.

- ``dask``: ``step`` on a float32 parameter of 4 chunks (its gradient and state chunked
  alike, all persisted), under Dask's default threaded scheduler, against agrad's
  in-place NumPy step on the same data (target 1.5x), for every optimizer of the CuPy
  rows. On such inputs the kernel route runs the step when called and returns
  persisted arrays; where a step's results are still graphs (the generic path) they
  are persisted (``optimize_graph=False``, as the demo persists: Dask's graph
  optimisation costs more than a fused step). For adam, nadam and lamb, also against
  the generic path on the same Dask arrays (one task per operation), and the step
  followed by a ``dask.persist`` it does not need (what Dask's own ``persist`` of
  persisted arrays adds), for information.
- ``cupy`` (only where CuPy has a GPU): ``step`` on CuPy arrays (one generated
  ``ElementwiseKernel`` per fused block) against the generic path on the same arrays
  (one kernel and one temporary per operation), for several optimizers on the three
  parameter sets of the optimizer rows (target 1.0x: never slower). ``scripts/gpu_check.sh``
  runs these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from agrad.bench._harness import Row, Settings, timed_row
from agrad.bench.optimizer_rows import PARAM_SETS, TINY_SETS

__all__ = ["backend_rows", "CUPY_OPTIMIZERS", "DASK_OPTIMIZERS", "DASK_VS_GENERIC"]

CUPY_OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam", "radam", "adagrad", "adamax")
CUPY_OPTIMIZERS += ("adadelta", "lion", "lamb", "lars")
DASK_OPTIMIZERS = CUPY_OPTIMIZERS
#: Optimizers that also get a row against the generic path on the same Dask arrays.
DASK_VS_GENERIC = ("adam", "nadam", "lamb")
DASK_SHAPE, DASK_CHUNKS = (2048, 1024), (512, 1024)
TINY_DASK_SHAPE, TINY_DASK_CHUNKS = (64, 32), (16, 32)


def _optimizer(name: str) -> Any:
    import agrad.optim as ao

    if name == "sgd":
        return ao.sgd(lr=1e-3, momentum=0.9)
    if name in ("lion", "lamb", "lars"):
        return getattr(ao, name)(1e-3)
    return getattr(ao, name)(lr=1e-3)


def _generic(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with the kernel route off: the namespace-generic path."""
    from agrad.optim.program import kernel_route

    def run() -> Any:
        kernel_route.enabled = False
        try:
            return fn()
        finally:
            kernel_route.enabled = True

    return run


def _persist_each(state: Any) -> Any:
    """``state`` with each Dask array persisted on its own: persisting them together would
    make equal ones (the zero moments) one array, which a step cannot write twice."""
    from agrad.pytree import flatten_leaves, unflatten

    leaves, treedef = flatten_leaves(state)
    return unflatten(treedef, [x.persist() if hasattr(x, "dask") else x for x in leaves])


def _concrete(*trees: Any) -> bool:
    """Whether every Dask array among ``trees`` holds chunks only (no task to run)."""
    from agrad.pytree import flatten_leaves

    for x in flatten_leaves(trees)[0]:
        if hasattr(x, "dask"):
            for v in x.dask.layers[x.name].mapping.values() if len(x.dask.layers) == 1 else ():
                if not isinstance(getattr(v, "value", v), np.ndarray):
                    return False
            if len(x.dask.layers) != 1:
                return False
    return True


def _dask_rows(settings: Settings) -> list[Row]:
    import dask
    import dask.array as da

    shape, chunks = (
        (TINY_DASK_SHAPE, TINY_DASK_CHUNKS) if settings.tiny else (DASK_SHAPE, DASK_CHUNKS)
    )
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(shape, dtype=np.float32)
    g0 = rng.standard_normal(shape, dtype=np.float32)
    rows = []
    for name in DASK_OPTIMIZERS:
        label = f"{name}, {shape[0]}x{shape[1]} in 4 chunks"
        if settings.filter and settings.filter not in f"dask {label}":
            continue
        opt = _optimizer(name)
        box: dict[str, Any] = {"p": [da.from_array(p0.copy(), chunks=chunks)]}
        box["g"] = [da.from_array(g0, chunks=chunks).persist()]
        box["s"] = _persist_each(opt.init(box["p"]))
        np_box: dict[str, Any] = {"p": [p0.copy()], "g": [g0]}
        np_box["s"] = opt.init(np_box["p"])

        def dask_step(box: dict = box, opt: Any = opt) -> None:
            p, s = opt.step(box["p"], box["g"], box["s"])
            if not _concrete(p, s):
                p, s = dask.persist(p, s, scheduler="threads", optimize_graph=False)
            box["p"], box["s"] = p, s

        def persist_again(box: dict = box, opt: Any = opt) -> None:
            p, s = opt.step(box["p"], box["g"], box["s"])
            box["p"], box["s"] = dask.persist(p, s, scheduler="threads", optimize_graph=False)

        def numpy_step(b: dict = np_box, opt: Any = opt) -> None:
            b["p"], b["s"] = opt.step(b["p"], b["g"], b["s"])

        rows.append(
            timed_row(
                "backends/dask",
                label,
                ("agrad dask step", dask_step),
                ("agrad numpy step", numpy_step),
                1.5,
                settings,
                note="threaded scheduler, persisted",
            )
        )
        if name not in DASK_VS_GENERIC:
            continue
        rows.append(
            timed_row(
                "backends/dask",
                f"{label}, vs generic",
                ("kernel route", dask_step),
                ("generic path", _generic(dask_step)),
                None,
                settings,
                note="one task per chunk per block vs one per operation",
            )
        )
        rows.append(
            timed_row(
                "backends/dask",
                f"{label}, persisted again",
                ("step, dask.persist", persist_again),
                ("step", dask_step),
                None,
                settings,
                note="Dask's persist of persisted arrays",
            )
        )
    return rows


def _cupy_rows(settings: Settings) -> list[Row]:
    import cupy

    sets = TINY_SETS if settings.tiny else PARAM_SETS
    rows = []
    for set_name, shapes in sets.items():
        rng = np.random.default_rng(0)
        p0 = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        g = [cupy.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
        for name in CUPY_OPTIMIZERS:
            label = f"{name}, {set_name}"
            if settings.filter and settings.filter not in f"cupy {label}":
                continue
            opt = _optimizer(name)
            box: dict[str, Any] = {"p": [cupy.asarray(x) for x in p0]}
            box["s"] = opt.init(box["p"])

            def step(box: dict = box, opt: Any = opt, g: list = g) -> None:
                box["p"], box["s"] = opt.step(box["p"], g, box["s"])
                cupy.cuda.runtime.deviceSynchronize()

            rows.append(
                timed_row(
                    "backends/cupy",
                    label,
                    ("kernel route", step),
                    ("generic path", _generic(step)),
                    1.0,
                    settings,
                    note="float32, synchronised per step",
                )
            )
    return rows


def backend_rows(settings: Settings) -> list[Row]:
    """The Dask rows (where Dask is installed) and the CuPy rows (where CuPy has a GPU)."""
    from agrad.testing import load_backend

    rows: list[Row] = []
    if load_backend("dask")[0] is not None:
        rows += _dask_rows(settings)
    if load_backend("cupy")[0] is not None:
        rows += _cupy_rows(settings)
    return rows
