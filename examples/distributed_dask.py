"""Training on a Dask cluster: the NumPy training step, unchanged, on chunked Dask arrays.

A ``dask.distributed`` ``LocalCluster`` with two worker processes (loopback only) holds
the data in row chunks. ``agrad.execute_with_gradients`` traces the loss through
``agrad.dask``, so the gradients are lazy Dask arrays with the parameters' chunks, and
``agrad.optim.adam`` builds the Adam update lazily too. Nothing is computed until
``persist``: after each step the new parameters and optimizer state are persisted on
the workers, which both runs the step there and cuts the lazy graph (without it the
graph of step ``t`` would contain every earlier step).

    python examples/distributed_dask.py [--steps 30] [--json result.json]

The result equals the same training done in NumPy (``--check`` compares, to 1e-10).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

N_SAMPLES, N_FEATURES = 512, 8
ROW_CHUNK, FEATURE_CHUNK = 128, 4


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linear-regression problem: ``y = X w* + 0.5 + noise``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_SAMPLES, N_FEATURES))
    w_true = rng.standard_normal(N_FEATURES)
    y = x @ w_true + 0.5 + 0.1 * rng.standard_normal(N_SAMPLES)
    return x, y


def loss(params: dict[str, Any], x: Any, y: Any) -> Any:
    """Mean squared error of ``x @ w + b``, written once against the Array API."""
    import agrad

    xp = agrad.array_namespace(params["w"], x)
    r = xp.matmul(x, params["w"]) + params["b"] - y
    return xp.mean(r * r)


def persist(tree: Any) -> Any:
    """Persist every Dask array of a pytree (variables' arrays included) in one call."""
    import dask

    import agrad
    from agrad.pytree import flatten, unflatten

    leaves, treedef, _ = flatten(tree)
    lazy = [i for i, x in enumerate(leaves) if hasattr(getattr(x, "value", x), "dask")]
    done = dask.persist(*[getattr(leaves[i], "value", leaves[i]) for i in lazy])
    for i, arr in zip(lazy, done):
        if isinstance(leaves[i], agrad.Variable):
            leaves[i].value = arr
        else:
            leaves[i] = arr
    return unflatten(treedef, leaves)


def train(steps: int = 30, lr: float = 0.05, workers: int = 2) -> dict[str, Any]:
    """Train on a local two-process cluster; return final parameters, state and facts."""
    import dask.array as da
    from distributed import Client, LocalCluster, futures_of, wait

    import agrad
    import agrad.optim

    x_np, y_np = make_data()
    started = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        startup = time.perf_counter() - started
        x = da.from_array(x_np, chunks=(ROW_CHUNK, FEATURE_CHUNK))
        y = da.from_array(y_np, chunks=ROW_CHUNK)
        x, y = client.persist([x, y])  # the data lives on the workers
        params = {
            "w": agrad.variable(da.zeros(N_FEATURES, chunks=FEATURE_CHUNK)),
            "b": agrad.variable(da.zeros((), dtype=np.float64)),
        }
        opt = agrad.optim.adam(lr=lr)
        state = opt.init(params)
        facts: dict[str, Any] = {}
        losses = []
        t0 = time.perf_counter()
        for step in range(steps):
            value, grads = agrad.execute_with_gradients(lambda p: loss(p, x, y), params)
            if step == 0:  # the gradients and the Adam state are lazy, chunked Dask arrays
                facts["grad_type"] = type(grads["w"]).__module__ + "." + type(grads["w"]).__name__
                facts["grad_chunks"] = [list(c) for c in grads["w"].chunks]
                facts["grad_lazy"] = hasattr(grads["w"], "dask")
            params, state = opt.step(params, grads, state)
            if step == 0:
                facts["state_lazy"] = all(
                    hasattr(a, "dask") for a in (state.exp_avg["w"], state.exp_avg_sq["w"])
                )
                facts["state_chunks"] = [list(c) for c in state.exp_avg["w"].chunks]
            params, state, value = persist((params, state, value))
            losses.append(value)
        losses = [float(v) for v in client.gather(client.compute(losses))]
        seconds = time.perf_counter() - t0
        futures = futures_of(params["w"].value)  # persisted: its chunks live on workers
        wait(futures)
        holders = client.who_has(futures)
        facts["workers_holding_w"] = len({w for ws in holders.values() for w in ws})
        facts["n_workers"] = len(client.scheduler_info()["workers"])
        out = {
            "w": params["w"].value.compute().tolist(),
            "b": float(params["b"].value.compute()),
            "exp_avg": state.exp_avg["w"].compute().tolist(),
            "exp_avg_sq": state.exp_avg_sq["w"].compute().tolist(),
            "count": int(state.count),
            "losses": losses,
            "startup_seconds": startup,
            "train_seconds": seconds,
            **facts,
        }
    return out


def numpy_reference(steps: int = 30, lr: float = 0.05) -> dict[str, np.ndarray]:
    """The same training in plain NumPy: hand-written gradient and Adam (torch's formula)."""
    x, y = make_data()
    n = x.shape[0]
    w, b = np.zeros(N_FEATURES), 0.0
    m = {"w": np.zeros(N_FEATURES), "b": 0.0}
    v = {"w": np.zeros(N_FEATURES), "b": 0.0}
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        r = x @ w + b - y
        g = {"w": 2.0 / n * (x.T @ r), "b": 2.0 * np.mean(r)}
        new = {}
        for k, p in (("w", w), ("b", b)):
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            denom = np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps
            new[k] = p - lr / (1 - b1**t) * m[k] / denom
        w, b = new["w"], new["b"]
    return {"w": w, "b": np.asarray(b), "exp_avg": m["w"], "exp_avg_sq": v["w"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--check", action="store_true", help="compare with NumPy")
    args = parser.parse_args()
    result = train(args.steps)
    print(
        f"{result['n_workers']} workers, cluster up in {result['startup_seconds']:.1f} s, "
        f"{args.steps} steps in {result['train_seconds']:.1f} s; "
        f"loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}"
    )
    print(f"gradients: {result['grad_type']} with chunks {result['grad_chunks']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    if args.check:
        ref = numpy_reference(args.steps)
        worst = max(
            float(np.max(np.abs(np.asarray(result[k]) - ref[k]) / (np.abs(ref[k]) + 1e-300)))
            for k in ("w", "b", "exp_avg", "exp_avg_sq")
        )
        print(f"largest relative difference from NumPy: {worst:.1e}")
        return 0 if worst < 1e-10 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
