"""Data-parallel training with ``torch.distributed``: DDP gradients, agrad's optimizer.

Two processes on loopback (gloo backend) each hold a replica of a small MLP wrapped in
``DistributedDataParallel`` and half of every batch. ``loss.backward()`` averages the
gradients across the processes (DDP's all-reduce); ``agrad.optim.adam`` then updates
the replica's parameters in place, exactly as ``torch.optim.Adam`` would. Both
replicas stay identical, and the result equals single-process training on the whole
batch with ``torch.optim.Adam``.

    python examples/distributed_torch.py [--steps 20] [--json result.json] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from typing import Any

import numpy as np

WORLD_SIZE = 2
N_SAMPLES, N_FEATURES, HIDDEN = 128, 8, 16


def make_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth regression problem: ``y = sin(X a) + noise``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N_SAMPLES, N_FEATURES))
    y = np.sin(x @ rng.standard_normal(N_FEATURES))[:, None] + 0.05 * rng.standard_normal(
        (N_SAMPLES, 1)
    )
    return x, y


def make_model() -> Any:
    """The same initial MLP in every process (seeded), in float64."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)
    ).double()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, steps: int, lr: float, out_path: str) -> None:
    """One process of the data-parallel job."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import agrad.optim

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        torch.set_num_threads(1)
        x, y = make_data()
        x_local = torch.from_numpy(x[rank::WORLD_SIZE])  # this process's half of the batch
        y_local = torch.from_numpy(y[rank::WORLD_SIZE])
        model = DistributedDataParallel(make_model())
        params = dict(model.module.named_parameters())
        opt = agrad.optim.adam(lr=lr)
        state = opt.init(params)
        t0 = time.perf_counter()
        for _ in range(steps):
            for p in params.values():
                p.grad = None
            loss = torch.mean((model(x_local) - y_local) ** 2)
            loss.backward()  # DDP: every p.grad is now the mean over both processes
            grads = {k: p.grad for k, p in params.items()}
            params, state = opt.step(params, grads, state)  # in place, under no_grad
        seconds = time.perf_counter() - t0
        flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
        spread = flat.clone()
        dist.all_reduce(spread, op=dist.ReduceOp.MAX)
        differ = torch.max(spread - flat).reshape(1)  # 0 on every rank: replicas equal
        dist.all_reduce(differ, op=dist.ReduceOp.MAX)
        replicas_differ = float(differ)
        if rank == 0:
            result = {
                "params": {k: p.detach().tolist() for k, p in params.items()},
                "exp_avg": {k: v.tolist() for k, v in state.exp_avg.items()},
                "count": int(state.count),
                "replicas_differ": replicas_differ,
                "train_seconds": seconds,
                "world_size": dist.get_world_size(),
                "backend": dist.get_backend(),
            }
            with open(out_path, "w") as f:
                json.dump(result, f)
        # Both ranks leave together: a rank that tears gloo down while its peer is still
        # sending can abort ("terminate called without an active exception").
        del model, params, grads, state  # DDP's reducer goes while the group is alive
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without interpreter finalization: gloo's worker threads can still hold
    # objects whose destruction at that point aborts the process (SIGABRT), seen about
    # once in ten runs with torch 2.13 (pytorch/pytorch#179291). Everything this
    # process had to do is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def train(steps: int = 20, lr: float = 0.01) -> dict[str, Any]:
    """Run the two-process job; return rank 0's result."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "result.json")
        t0 = time.perf_counter()
        mp.spawn(_worker, args=(_free_port(), steps, lr, out_path), nprocs=WORLD_SIZE, join=True)
        with open(out_path) as f:
            result = json.load(f)
        result["total_seconds"] = time.perf_counter() - t0
    return result


def single_process_reference(steps: int = 20, lr: float = 0.01) -> dict[str, Any]:
    """The same training in one process on the whole batch with ``torch.optim.Adam``."""
    import torch

    x, y = make_data()
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        torch.mean((model(x_t) - y_t) ** 2).backward()
        opt.step()
    named = dict(model.named_parameters())
    return {
        "params": {k: p.detach().numpy() for k, p in named.items()},
        "exp_avg": {k: opt.state[p]["exp_avg"].numpy() for k, p in named.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--check", action="store_true", help="compare with one process")
    args = parser.parse_args()
    result = train(args.steps)
    print(
        f"{result['world_size']} processes ({result['backend']}), {args.steps} steps in "
        f"{result['train_seconds']:.2f} s ({result['total_seconds']:.1f} s with start-up); "
        f"replicas differ by {result['replicas_differ']:.1e}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    if args.check:
        ref = single_process_reference(args.steps)
        worst = max(
            float(np.max(np.abs(np.asarray(result[part][k]) - ref[part][k])))
            for part in ("params", "exp_avg")
            for k in ref[part]
        )
        print(f"largest difference from single-process torch.optim.Adam: {worst:.1e}")
        return 0 if worst < 1e-10 and result["replicas_differ"] == 0.0 else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
