"""``agrad demo``: the trajectories against torch.optim driven by torch.autograd, and the CLI."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from agrad.__main__ import COMMANDS
from agrad.__main__ import main as agrad_main
from agrad.demo import (
    DEMO_BACKENDS,
    batch_slices,
    init_mlp,
    load_digits_split,
    main,
    optimizer_names,
    run_demo,
)
from agrad.testing import available_backends
from blocked_imports import run_without

STEPS = 4
BATCH = 128


def torch_reference(optimizer: str, lr: float, eps: float | None = None) -> dict[str, np.ndarray]:
    """The demo's run written directly in torch: torch.autograd and torch.optim."""
    import torch

    data = load_digits_split(seed=0)
    init = init_mlp((64, 32, 10), seed=0)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in init.items()}
    x = torch.tensor(data.x_train)
    labels = torch.tensor(data.onehot_train.argmax(axis=1))
    plist = list(params.values())
    if optimizer == "adam":
        opt = torch.optim.Adam(plist, lr=lr, eps=eps)
    else:
        opt = torch.optim.SGD(plist, lr=lr)
    for rows in batch_slices(x.shape[0], BATCH, STEPS):
        h = torch.tanh(x[rows] @ params["w1"] + params["b1"])
        loss = torch.nn.functional.cross_entropy(h @ params["w2"] + params["b2"], labels[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().numpy() for k, v in params.items()}


def _assert_params_close(actual: dict, desired: dict, backend: str) -> None:
    for key in desired:
        np.testing.assert_allclose(
            actual[key], desired[key], rtol=1e-10, atol=1e-12, err_msg=f"{backend}: {key}"
        )


@pytest.mark.parametrize(
    ("optimizer", "torch_name", "eps"),
    [("adam", "adam", 1e-8), ("adam_update", "adam", 1e-7), ("sgd", "sgd", None)],
)
def test_every_backend_follows_torch_optim(optimizer, torch_name, eps):
    lr = 0.02 if torch_name == "adam" else 0.5
    reference = torch_reference(torch_name, lr, eps)
    backends = available_backends() if optimizer == "adam" else ["numpy", "torch"]
    run = run_demo(backends, optimizer, lr, STEPS, BATCH, stream=io.StringIO())
    assert [r.backend for r in run.results] == [b for b in DEMO_BACKENDS if b in backends]
    for result in run.results:
        _assert_params_close(result.params, reference, result.backend)
        assert len(result.losses) == STEPS
        assert result.losses[-1] < result.losses[0]
    assert run.worst_difference() < 1e-12


def test_skipped_backends_are_reported_with_a_reason():
    if "cupy" in available_backends():
        pytest.skip("CuPy runs here, so nothing is skipped")
    run = run_demo(["numpy", "cupy"], steps=1, stream=io.StringIO())
    assert [r.backend for r in run.results] == ["numpy"]
    assert "GPU" in run.skipped["cupy"]


def test_batch_slices_cycle_through_whole_batches():
    assert batch_slices(10, 4, 5) == [slice(0, 4), slice(4, 8)] * 2 + [slice(0, 4)]
    assert batch_slices(10, 0, 2) == [slice(0, 10)] * 2
    assert batch_slices(10, 50, 1) == [slice(0, 10)]


def test_optimizer_choices_include_adam_and_sgd():
    names = optimizer_names()
    assert {"adam", "sgd", "adam_update", "gradient_descent_update"} <= set(names)


def test_cli_prints_the_table_and_saves_the_plot(tmp_path, capsys):
    plot = tmp_path / "loss.png"
    status = main(["--steps", "3", "--backend", "numpy,torch", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert status == 0
    assert "final loss" in out and "test acc" in out and "max |param - numpy|" in out
    assert "(reference)" in out and "Identical trajectories" in out
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_cli_rejects_unknown_backend_and_optimizer(capsys):
    with pytest.raises(SystemExit):
        main(["--backend", "tensorflow"])
    with pytest.raises(SystemExit):
        main(["--optimizer", "lbfgs-please"])
    assert "tensorflow" in capsys.readouterr().err


def test_dispatcher_runs_demo_and_explains_missing_bench(monkeypatch, capsys):
    assert agrad_main(["demo", "--steps", "1", "--backend", "numpy"]) == 0
    monkeypatch.setitem(sys.modules, "agrad.bench", None)
    assert agrad_main(["bench"]) == 2
    assert "agrad.bench" in capsys.readouterr().err
    assert agrad_main(["frobnicate"]) == 2
    assert agrad_main([]) == 2


def test_python_dash_m_agrad_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "agrad", "demo", "--steps", "2", "--backend", "numpy"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "numpy" in proc.stdout and "final loss" in proc.stdout


RUN_AGRAD = (
    "import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_module('agrad', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    ("blocked", "args", "named"),
    [
        (["sklearn"], ["demo"], "scikit-learn is not installed"),
        (["matplotlib"], ["demo", "--plot", "loss.png"], "matplotlib is not installed"),
        (["numpy", "sklearn"], ["demo"], "numpy and scikit-learn are not installed"),
    ],
)
def test_demo_without_an_optional_dependency_says_which_extra_to_install(blocked, args, named):
    proc = run_without(blocked, RUN_AGRAD.format(argv=["agrad", *args]), timeout=120)
    assert proc.returncode != 0
    assert proc.stdout == ""  # refused before anything runs
    assert proc.stderr.splitlines() == [
        f'agrad demo: {named}; install the demo extra: pip install "agrad[demo]"'
    ]


def test_dispatcher_names_the_extra_when_a_command_cannot_import(tmp_path, monkeypatch, capsys):
    (tmp_path / "needs_a_missing_package.py").write_text("import agrad_test_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "demo", ("needs_a_missing_package", "a command"))
    assert agrad_main(["demo"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "agrad demo: agrad_test_not_installed is not installed; "
        'install the demo extra: pip install "agrad[demo]"'
    ]
