"""MAML-style meta-learning on NumPy: second order through an optimizer step.

Each task is a sine wave ``a * sin(x + phase)``. MAML (Finn et al., 2017) looks for
initial parameters from which *one* gradient step on a task's support points fits its
query points. The outer gradient goes through that inner step, so it needs second
derivatives: the inner ``execute_with_gradients(..., retain_grads=True)`` keeps the
history of its gradients, ``gradient_descent_update(..., inplace=False)`` stays
differentiable inside the trace, and the outer ``execute_with_gradients`` differentiates
the whole thing with agrad's tape. Nothing here is NumPy-specific: pass torch or JAX
arrays and the same functions run there.

    python examples/maml.py --steps 600
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

import agrad
import agrad.optim


def mlp(params: dict[str, Any], x: Any) -> Any:
    """A 1-40-1 tanh network applied to a column of inputs."""
    xp = agrad.array_namespace(params["w1"], x)
    h = xp.tanh(xp.add(xp.matmul(x, params["w1"]), params["b1"]))
    return xp.add(xp.matmul(h, params["w2"]), params["b2"])


def mse(params: dict[str, Any], x: Any, y: Any) -> Any:
    """Mean squared error of the network on ``(x, y)``."""
    xp = agrad.array_namespace(params["w1"], x)
    err = xp.subtract(mlp(params, x), y)
    return xp.mean(xp.multiply(err, err))


def adapt(params: dict[str, Any], x: Any, y: Any, inner_lr: float) -> dict[str, Any]:
    """One differentiable gradient step on a task's support set."""
    _, grads = agrad.execute_with_gradients(lambda p: mse(p, x, y), params, retain_grads=True)
    return agrad.gradient_descent_update(params, grads, inner_lr, inplace=False)


def meta_loss(params: dict[str, Any], tasks: list[tuple[Any, ...]], inner_lr: float) -> Any:
    """Mean query loss after adapting to each task: the MAML objective."""
    losses = [mse(adapt(params, xs, ys, inner_lr), xq, yq) for xs, ys, xq, yq in tasks]
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total / len(losses)


def sample_tasks(rng: np.random.Generator, n_tasks: int, k_shot: int) -> list[tuple[Any, ...]]:
    """Sine-wave tasks: ``(x_support, y_support, x_query, y_query)`` as NumPy columns."""
    tasks = []
    for _ in range(n_tasks):
        amplitude, phase = rng.uniform(0.5, 2.0), rng.uniform(0.0, np.pi)
        x = rng.uniform(-5.0, 5.0, size=(2 * k_shot, 1))
        y = amplitude * np.sin(x + phase)
        tasks.append((x[:k_shot], y[:k_shot], x[k_shot:], y[k_shot:]))
    return tasks


def init_params(rng: np.random.Generator, hidden: int = 40) -> dict[str, Any]:
    """Initial network parameters as NumPy arrays."""
    return {
        "w1": rng.standard_normal((1, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.standard_normal((hidden, 1)) / np.sqrt(hidden),
        "b2": np.zeros(1),
    }


def adapted_query_loss(
    params: dict[str, Any], tasks: list[tuple[Any, ...]], inner_lr: float
) -> float:
    """Mean query loss after one inner step on each task (no outer gradient)."""
    return float(np.mean([float(mse(adapt(params, *t[:2], inner_lr), *t[2:])) for t in tasks]))


def main(
    steps: int = 600,
    tasks_per_step: int = 4,
    k_shot: int = 10,
    inner_lr: float = 0.01,
    seed: int = 0,
) -> list[float]:
    """Meta-train with Adam; returns the meta-loss at every step."""
    rng = np.random.default_rng(seed)
    start = init_params(rng)
    params = {k: agrad.variable(v.copy()) for k, v in start.items()}
    opt = agrad.optim.adam(lr=0.01)
    state = opt.init(params)
    history = []
    for step in range(1, steps + 1):
        tasks = sample_tasks(rng, tasks_per_step, k_shot)
        loss, grads = agrad.execute_with_gradients(
            lambda p, tasks=tasks: meta_loss(p, tasks, inner_lr), params
        )
        params, state = opt.step(params, grads, state)
        history.append(float(loss))
        if step % max(1, steps // 10) == 0:
            print(f"step {step:4d}  meta-loss {np.mean(history[-max(1, steps // 10) :]):.4f}")
    new_tasks = sample_tasks(np.random.default_rng(seed + 1), 50, k_shot)
    learned = {k: agrad.stop_gradient(v) for k, v in params.items()}
    print(
        "query loss on new tasks after one step: "
        f"from the initial parameters {adapted_query_loss(start, new_tasks, inner_lr):.4f}, "
        f"from the meta-learned ones {adapted_query_loss(learned, new_tasks, inner_lr):.4f}"
    )
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(steps=args.steps, seed=args.seed)
