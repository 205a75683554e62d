"""Training on the GPU with CuPy: agrad's tape gives CuPy the gradients it lacks.

The demo's model and loop (``agrad.demo``) run on CuPy arrays exactly as on NumPy; the
result is compared with the NumPy run. Without a CUDA GPU (or without CuPy) the example
says so and exits without training.

    pip install cupy-cuda12x && python examples/cupy_training.py
"""

from __future__ import annotations

import io
import sys


def main(steps: int = 60) -> float | None:
    """Train on CuPy and NumPy; returns the largest final-parameter difference (``None``: no GPU)."""
    from agrad.demo import DEMO_BACKENDS, run_demo
    from agrad.testing import load_backend

    assert "cupy" in DEMO_BACKENDS
    xp, reason = load_backend("cupy")
    if xp is None:
        print(f"skipped: {reason}")
        return None
    run = run_demo(["numpy", "cupy"], steps=steps, stream=io.StringIO())
    for result in run.results:
        print(
            f"{result.backend:<6} final loss {result.final_loss:.6f}  test accuracy "
            f"{result.test_accuracy:.4f}  {1e3 * result.seconds_per_step:.1f} ms/step"
        )
    worst = run.worst_difference()
    print(f"largest difference in final parameters between CuPy and NumPy: {worst:.1e}")
    return worst


if __name__ == "__main__":
    difference = main()
    sys.exit(0 if difference is None or difference < 1e-8 else 1)
