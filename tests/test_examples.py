"""The examples in ``examples/``, run on small settings and checked against references."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import agrad
import agrad.optim
from agrad.testing import assert_close, load_backend, to_numpy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_meta_gradient(params, tasks, inner_lr, second_order=True):
    """MAML's outer gradient by torch.autograd (``create_graph`` for the inner step)."""
    import torch

    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}

    def mse(q, x, y):
        pred = torch.tanh(torch.tensor(x) @ q["w1"] + q["b1"]) @ q["w2"] + q["b2"]
        return ((pred - torch.tensor(y)) ** 2).mean()

    total = 0.0
    for xs, ys, xq, yq in tasks:
        inner = torch.autograd.grad(mse(p, xs, ys), list(p.values()), create_graph=second_order)
        adapted = {k: p[k] - inner_lr * g for k, g in zip(p, inner)}
        total = total + mse(adapted, xq, yq)
    grads = torch.autograd.grad(total / len(tasks), list(p.values()))
    return {k: g.numpy() for k, g in zip(p, grads)}


def test_maml_meta_gradient_matches_torch_second_order():
    maml = load_example("maml")
    rng = np.random.default_rng(3)
    params = maml.init_params(rng, hidden=8)
    tasks = maml.sample_tasks(rng, n_tasks=3, k_shot=5)
    _, grads = agrad.execute_with_gradients(lambda p: maml.meta_loss(p, tasks, 0.1), params)
    full = torch_meta_gradient(params, tasks, 0.1)
    first_order = torch_meta_gradient(params, tasks, 0.1, second_order=False)
    for k in params:
        np.testing.assert_allclose(to_numpy(grads[k]), full[k], rtol=1e-9, atol=1e-12)
    # the second-order terms matter here, so the comparison above would catch their loss
    assert max(np.max(np.abs(full[k] - first_order[k])) for k in params) > 1e-3


def test_maml_main_meta_trains(capsys):
    maml = load_example("maml")
    history = maml.main(steps=20, tasks_per_step=2, k_shot=5)
    assert len(history) == 20 and all(np.isfinite(history))
    assert "meta-learned" in capsys.readouterr().out


@pytest.mark.parametrize("library", ["numpy", "torch", "jax"])
def test_library_fit_matches_least_squares_in_the_callers_library(library):
    fit_example = load_example("library_fit")
    xp, reason = load_backend(library)
    if xp is None:
        pytest.skip(reason)
    init, x, y = fit_example.make_problem()
    design = np.hstack([x, np.ones((x.shape[0], 1))])
    solution = np.linalg.lstsq(design, y, rcond=None)[0]
    user_params = {k: xp.asarray(v) for k, v in init.items()}
    # plain gradient descent contracts fast on this well-conditioned problem
    opt = agrad.optim.sgd(lr=0.4)
    params, loss = fit_example.fit(
        fit_example.linear, user_params, xp.asarray(x), xp.asarray(y), steps=80, optimizer=opt
    )
    assert_close(params["w"], xp.asarray(solution[:3]), rtol=1e-8, atol=1e-10)
    assert_close(params["b"], xp.asarray(solution[3]), rtol=1e-8, atol=1e-10)
    residual = design @ solution - y
    assert loss == pytest.approx(float(np.mean(residual**2)), rel=1e-9)
    for k in init:  # the caller's arrays are untouched
        assert_close(user_params[k], xp.asarray(init[k]), rtol=0, atol=0)


def test_library_fit_main_reports_every_library(capsys):
    results = load_example("library_fit").main(steps=5)
    assert set(results) == {"numpy", "torch", "jax"}
    assert "torch" in capsys.readouterr().out


def test_cupy_training_runs_on_a_gpu_or_skips_clearly(capsys):
    example = load_example("cupy_training")
    _, reason = load_backend("cupy")
    difference = example.main(steps=5)
    if reason is not None:
        assert difference is None
        assert f"skipped: {reason}" in capsys.readouterr().out
        pytest.skip(f"cupy example not run: {reason}")
    assert difference < 1e-8
