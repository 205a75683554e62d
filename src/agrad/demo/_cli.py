"""``agrad demo``: argument parsing and the run over every installed backend."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from agrad.demo._data import init_mlp, load_digits_split
from agrad.demo._optimizers import default_lr, make_optimizer, optimizer_names
from agrad.demo._report import ProgressBar, format_table, max_param_difference, plot_losses
from agrad.demo._requirements import missing_message, missing_requirements
from agrad.demo._train import RunResult, train

__all__ = ["DemoRun", "main", "run_demo"]

#: Backends in the order the demo runs them; NumPy first, as the reference.
DEMO_BACKENDS = ("numpy", "array_api_strict", "torch", "jax", "dask", "cupy")
#: Final parameters further than this from NumPy's mean the trajectories differ.
AGREEMENT_TOLERANCE = 1e-8


class DemoRun:
    """The outcome of :func:`run_demo`: results per backend and the ones skipped, with why."""

    def __init__(self) -> None:
        self.results: list[RunResult] = []
        self.skipped: dict[str, str] = {}

    @property
    def reference(self) -> RunResult | None:
        """The NumPy run, if there was one."""
        return next((r for r in self.results if r.backend == "numpy"), None)

    def worst_difference(self) -> float:
        """Largest final-parameter difference of any backend from the NumPy run (0 without one)."""
        ref = self.reference
        if ref is None:
            return 0.0
        return max(max_param_difference(r.params, ref.params) for r in self.results)


def run_demo(
    backends: Sequence[str] = DEMO_BACKENDS,
    optimizer: str = "adam",
    lr: float | None = None,
    steps: int = 60,
    batch_size: int = 256,
    hidden: int = 32,
    seed: int = 0,
    stream: TextIO | None = None,
) -> DemoRun:
    """Train the same MLP from the same start on each of ``backends`` that runs here.

    Progress bars go to ``stream`` (stdout by default; pass ``io.StringIO()`` to
    discard them). Backends that cannot run are recorded in
    ``DemoRun.skipped`` with the reason.
    """
    from agrad.testing import load_backend

    out = sys.stdout if stream is None else stream
    data = load_digits_split(seed=seed)
    sizes = (data.n_features, hidden, data.n_classes)
    init_params = init_mlp(sizes, seed=seed)
    opt = make_optimizer(optimizer, lr)
    run = DemoRun()
    order = [b for b in DEMO_BACKENDS if b in backends]
    for name in order:
        xp, reason = load_backend(name)
        if xp is None:
            run.skipped[name] = reason or "not available"
            continue
        bar = ProgressBar(name, steps, out)
        result = train(xp, name, data, init_params, opt, steps, batch_size, bar.update)
        bar.close()
        run.results.append(result)
    return run


def _parse_backends(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEMO_BACKENDS]
    if unknown:
        msg = f"unknown backend {', '.join(unknown)}; choose from {', '.join(DEMO_BACKENDS)}"
        raise argparse.ArgumentTypeError(msg)
    return names


def build_parser() -> argparse.ArgumentParser:
    """The ``agrad demo`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="agrad demo",
        description=(
            "Train a small MLP classifier on scikit-learn's digits with one training loop "
            "written against the Array API, on every installed backend, and compare."
        ),
    )
    parser.add_argument(
        "--backend",
        type=_parse_backends,
        default=list(DEMO_BACKENDS),
        metavar="NAME[,NAME...]",
        help=f"backends to run (default: every installed one of {', '.join(DEMO_BACKENDS)})",
    )
    names = optimizer_names()
    parser.add_argument(
        "--optimizer",
        choices=names,
        default="adam",
        metavar="NAME",
        help=f"optimizer (default: adam): {', '.join(names)}",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: per optimizer)"
    )
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (default: 60)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="mini-batch size, 0 for full batch (default: 256)",
    )
    parser.add_argument("--hidden", type=int, default=32, help="hidden units (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="data split and initialisation seed")
    parser.add_argument("--plot", metavar="PATH", help="save the loss curves (e.g. loss.png)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``agrad demo`` with command-line arguments ``argv``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.steps < 1:
        print("agrad demo: --steps must be at least 1", file=sys.stderr)
        return 2
    missing = missing_requirements(plot=bool(args.plot))
    if missing:
        print(missing_message(missing), file=sys.stderr)
        return 2
    print("agrad demo: " + _describe(args))
    print("The same data, initial parameters and training loop on every backend.\n")
    run = run_demo(
        backends=args.backend,
        optimizer=args.optimizer,
        lr=args.lr,
        steps=args.steps,
        batch_size=args.batch_size,
        hidden=args.hidden,
        seed=args.seed,
    )
    for name, reason in run.skipped.items():
        print(f"{name:<17} skipped: {reason}")
    if not run.results:
        print("No backend could run.", file=sys.stderr)
        return 1
    print("\n" + format_table(run.results, run.reference) + "\n")
    status = 0
    if run.reference is not None and len(run.results) > 1:
        worst = run.worst_difference()
        if worst <= AGREEMENT_TOLERANCE:
            print(f"Identical trajectories: every backend ends within {worst:.1e} of NumPy.")
        else:
            print(f"Trajectories differ: a backend ends {worst:.1e} from NumPy.", file=sys.stderr)
            status = 1
    if args.plot:
        plot_losses(run.results, args.plot, "agrad demo: the same loop on every backend")
        print(f"Loss curves saved to {args.plot}")
    requested_default = args.backend == list(DEMO_BACKENDS)
    if not requested_default and run.skipped:
        status = status or 1
    return status


def _describe(args: argparse.Namespace) -> str:
    lr = default_lr(args.optimizer) if args.lr is None else args.lr
    batch = "full-batch" if args.batch_size <= 0 else f"mini-batches of {args.batch_size}"
    return (
        f"64-{args.hidden}-10 MLP, scikit-learn's digits, {args.optimizer} (lr {lr:g}), "
        f"{args.steps} steps on {batch}, float64."
    )
