"""Command line: ``python -m agrad demo`` trains a small model with agrad."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import agrad

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 2))
    t = (x[:, :1] * x[:, 1:] > 0).astype(np.float64)  # XOR-like quadrants
    params = {
        "w1": agrad.variable(rng.standard_normal((2, 16)) * 0.5),
        "b1": agrad.variable(np.zeros(16)),
        "w2": agrad.variable(rng.standard_normal((16, 1)) * 0.5),
        "b2": agrad.variable(np.zeros(1)),
    }
    m = {k: np.zeros_like(v.value) for k, v in params.items()}
    v = {k: np.zeros_like(p.value) for k, p in params.items()}

    def loss(p):
        xp = agrad.array_namespace(p["w1"])
        h = xp.tanh(xp.matmul(x, p["w1"]) + p["b1"])
        logits = xp.matmul(h, p["w2"]) + p["b2"]
        # binary cross-entropy with logits, written with the standard's functions
        z = xp.abs(logits)
        return xp.mean(xp.maximum(logits, 0.0 * logits) - logits * t + xp.log(1.0 + xp.exp(-z)))

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        y, g = agrad.execute_with_gradients(loss, params)
        agrad.adam_update(params, g, 0.05, m, v, step)
        if step == 1 or step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {float(y):.4f}")
    elapsed = time.perf_counter() - start
    xp = agrad.array_namespace(x)
    h = np.tanh(x @ params["w1"].value + params["b1"].value)
    acc = float(np.mean(((h @ params["w2"].value + params["b2"].value) > 0) == (t > 0.5)))
    print(f"numpy: final loss {float(y):.4f}, accuracy {acc:.3f}, {1e3 * elapsed / args.steps:.2f} ms/step")
    del xp
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agrad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP with agrad on NumPy")
    demo.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
