"""The demo's output: a progress bar per backend, the results table, the loss plot."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from agrad.demo._train import RunResult

__all__ = ["ProgressBar", "format_table", "max_param_difference", "plot_losses"]


class ProgressBar:
    """A one-line progress bar redrawn with carriage returns (one final line when not a TTY)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, width: int = 24):
        self.label, self.total, self.width = label, max(total, 1), width
        self.stream = sys.stdout if stream is None else stream
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.every = max(1, self.total // 50)
        self.line = ""

    def update(self, done: int, loss: float) -> None:
        """Record that ``done`` steps are finished, the last with ``loss``."""
        elapsed = time.perf_counter() - self.start
        filled = round(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.line = (
            f"{self.label:<17} [{bar}] {done:>4}/{self.total}  loss {loss:8.4f}  "
            f"{1e3 * elapsed / max(done, 1):7.1f} ms/step"
        )
        if self.interactive and (done % self.every == 0 or done == self.total):
            self.stream.write("\r" + self.line)
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        self.stream.write(("\r" if self.interactive else "") + self.line + "\n")
        self.stream.flush()


def max_param_difference(params: dict[str, Any], reference: dict[str, Any]) -> float:
    """Largest absolute difference between two dicts of NumPy parameter arrays."""
    import numpy as np

    return max(float(np.max(np.abs(params[k] - reference[k]))) for k in reference)


def format_table(results: Sequence[RunResult], reference: RunResult | None) -> str:
    """The results as an aligned text table; the last column compares with ``reference``."""
    header = ("backend", "final loss", "test acc", "ms/step", "max |param - numpy|")
    rows = []
    for r in results:
        if reference is None:
            diff = "n/a (numpy not run)"
        elif r is reference:
            diff = "(reference)"
        else:
            diff = f"{max_param_difference(r.params, reference.params):.1e}"
        rows.append(
            (
                r.backend,
                f"{r.final_loss:.6f}",
                f"{r.test_accuracy:.4f}",
                f"{1e3 * r.seconds_per_step:.1f}",
                diff,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def plot_losses(results: Sequence[RunResult], path: str, title: str) -> None:
    """Save the loss curves of all runs on one figure (they should lie on top of each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))]
    for i, r in enumerate(results):
        steps = range(1, len(r.losses) + 1)
        width = 1.0 + 1.5 * (len(results) - 1 - i) / max(len(results) - 1, 1)
        ax.plot(
            steps, r.losses, linestyle=styles[i % len(styles)], linewidth=width, label=r.backend
        )
    ax.set_xlabel("step")
    ax.set_ylabel("mini-batch cross-entropy")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
