"""The training step on real distributed engines, against single-machine references.

- Dask: ``examples/distributed_dask.py`` trains on a ``LocalCluster`` with two worker
  processes on loopback; gradients and Adam state are lazy chunked Dask arrays, and the
  result equals a hand-written NumPy gradient + Adam run.
- torch: ``examples/distributed_torch.py`` trains with ``torch.distributed`` (gloo, two
  processes on loopback) and ``DistributedDataParallel``; the DDP gradients go to
  ``agrad.optim.adam``, and the result equals single-process ``torch.optim.Adam``.

Each example runs in its own subprocess with a timeout (clusters and process groups
never share the test process), and writes its result as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT_S = 150  # typically 10-30 s; generous for a loaded 2-core machine


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_example(name: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--json", str(out), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    print(proc.stdout)
    return json.loads(out.read_text())


def test_dask_cluster_training_equals_numpy(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    example = _load("distributed_dask")
    steps = 8
    result = _run_example("distributed_dask", tmp_path, "--steps", str(steps))
    ref = example.numpy_reference(steps)
    for key in ("w", "b", "exp_avg", "exp_avg_sq"):
        np.testing.assert_allclose(np.asarray(result[key]), ref[key], rtol=1e-10, atol=1e-14)
    assert result["count"] == steps
    assert result["losses"][-1] < result["losses"][0]
    # computed lazily, chunked, on the cluster's worker processes
    assert result["grad_lazy"] and result["state_lazy"]
    assert result["grad_type"] == "dask.array.core.Array"
    assert result["grad_chunks"] == [[4, 4]] and result["state_chunks"] == [[4, 4]]
    assert result["n_workers"] == 2 and result["workers_holding_w"] >= 1


def test_torch_ddp_gradients_with_agrad_adam_equal_single_process(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    example = _load("distributed_torch")
    steps = 15
    result = _run_example("distributed_torch", tmp_path, "--steps", str(steps))
    ref = example.single_process_reference(steps)
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    assert result["replicas_differ"] == 0.0
    assert result["count"] == steps
    for part in ("params", "exp_avg"):
        assert set(result[part]) == set(ref[part])
        for k, expected in ref[part].items():
            np.testing.assert_allclose(
                np.asarray(result[part][k]), expected, rtol=1e-10, atol=1e-13
            )
