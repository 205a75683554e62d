"""``python -m agrad bench``: agrad side by side with torch.optim, NumPy and HIPS autograd.

Every comparison runs in one process, agrad and its peer interleaved, several
repetitions each; the table gives the medians and the ratio agrad/peer, and the
target each ratio is held to. Benchmarks assert nothing: a missed target is
reported, not raised. Options: ``--quick`` (under a minute; 18 s here), ``--json`` (machine
readable on stdout), ``--plot PATH`` (a PNG of the ratios against their targets),
``--profile`` (cProfile of the tape engine), ``--only TEXT`` (rows whose name
contains TEXT), ``--threads N`` (torch's intra-op threads; default 1, so torch and
NumPy compare like for like on a shared machine).

Needs the ``bench`` extra: ``pip install agrad[bench]`` (numpy, torch, HIPS autograd,
psutil; matplotlib for ``--plot``).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from typing import Any

from agrad.bench._harness import Row, Settings

__all__ = ["Row", "Settings", "main", "run"]


def run(settings: Settings, groups: tuple[str, ...] = ("optimizer", "tape", "jax")) -> list[Row]:
    """Run the selected groups of rows and return them."""
    from agrad.bench.jax_rows import jax_rows
    from agrad.bench.optimizer_rows import optimizer_rows
    from agrad.bench.tape_rows import tape_rows

    rows: list[Row] = []
    if "optimizer" in groups:
        rows += optimizer_rows(settings)
    if "tape" in groups:
        rows += tape_rows(settings)
    if "jax" in groups:
        rows += jax_rows(settings)
    return rows


def _fmt(v: float, unit: str) -> str:
    return f"{v:.3f} {unit}" if v < 100 else f"{v:.1f} {unit}"


def table(rows: list[Row]) -> str:
    """The Markdown table of ``rows``: medians, ratio agrad/peer, target, met."""
    lines = [
        "| group | comparison | agrad | peer | agrad median | peer median | agrad/peer | target | met |",
        "|---|---|---|---|---:|---:|---:|---:|:-:|",
    ]
    for r in rows:
        target = "" if r.target is None else f"<= {r.target:.3g}"
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(
            f"| {r.group} | {r.name} | {r.agrad} | {r.peer} | {_fmt(r.agrad_value, r.unit)} | "
            f"{_fmt(r.peer_value, r.unit)} | {r.ratio:.3f} | {target} | {met} |"
        )
    return "\n".join(lines)


def plot(rows: list[Row], path: str) -> None:
    """A horizontal bar chart of agrad/peer per row (log scale), targets marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.name} — {r.agrad} vs {r.peer}" for r in rows]
    ratios = [max(r.ratio, 1e-4) for r in rows]
    colors = ["tab:gray" if r.met is None else ("tab:green" if r.met else "tab:red") for r in rows]
    fig, ax = plt.subplots(figsize=(14, 0.32 * len(rows) + 1.5))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, ratios, color=colors)
    for yi, r in zip(y, rows):
        if r.target is not None:
            ax.plot([r.target, r.target], [yi - 0.4, yi + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="tab:blue", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("agrad / peer (lower is better; black tick: target; green met, red not met)")
    ax.set_title("agrad benchmark: ratio of medians, measured side by side")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _meta(settings: Settings, threads: int) -> dict[str, Any]:
    import numpy

    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "torch_threads": threads,
        "reps": settings.reps,
        "sample_s": settings.sample_s,
        "quick": settings.quick,
        "tiny": settings.tiny,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("torch", "autograd", "psutil"):
        try:
            meta[dist] = version(dist)
        except PackageNotFoundError:
            meta[dist] = None
    return meta


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m agrad bench``; returns the exit status (0)."""
    parser = argparse.ArgumentParser(prog="agrad bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="under a minute: fewer reps, shorter samples"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the ratios")
    parser.add_argument("--save", metavar="PATH", help="also write the JSON to PATH")
    parser.add_argument(
        "--profile", action="store_true", help="append a cProfile of the tape engine"
    )
    parser.add_argument("--only", default="", metavar="TEXT", help="rows whose name contains TEXT")
    parser.add_argument(
        "--groups", default="optimizer,tape,jax", help="comma-separated: optimizer,tape,jax"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per row")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    settings = Settings(filter=args.only, tiny=args.tiny, quick=args.quick or args.tiny)
    if settings.quick:
        settings.reps, settings.sample_s, settings.growth_steps = 3, 0.05, 1000
    if args.tiny:
        settings.reps, settings.sample_s, settings.growth_steps = 2, 0.002, 50
    if args.reps is not None:
        settings.reps = args.reps
    import torch
    import torch._dynamo

    torch.set_num_threads(args.threads)
    gc.collect()
    gc.freeze()  # the import-time objects are permanent: later collections stay cheap
    meta = _meta(settings, torch.get_num_threads())
    print(
        f"agrad bench: {meta['platform']}, torch threads {meta['torch_threads']}", file=sys.stderr
    )
    start = time.perf_counter()
    profile = None
    try:
        rows = run(settings, tuple(g.strip() for g in args.groups.split(",") if g.strip()))
        meta["seconds"] = round(time.perf_counter() - start, 1)
        if args.profile:
            from agrad.bench.tape_rows import profile_tape

            profile = profile_tape(settings)
    finally:
        gc.unfreeze()
    if args.plot:
        plot(rows, args.plot)
    out: dict[str, Any] = {"meta": meta, "rows": [r.as_dict() for r in rows]}
    if profile is not None:
        out["profile"] = profile
    if args.save:
        with open(args.save, "w") as f:
            json.dump(out, f, indent=2)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(table(rows))
        met = [r.met for r in rows if r.met is not None]
        print(f"\n{sum(met)} of {len(met)} targets met in {meta['seconds']} s ({meta['started']}).")
        if profile is not None:
            print(profile)
    return 0
