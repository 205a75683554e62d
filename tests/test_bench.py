"""Smoke test of ``agrad bench`` on tiny problems: every row runs; nothing about time."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("autograd")

from agrad import bench
from agrad.bench.optimizer_rows import numpy_adam_loop
from agrad.bench.tape_rows import chain_loss, mlp_loss, mlp_problem


def test_bench_tiny_json_and_plot(tmp_path, capsys):
    png = tmp_path / "bench.png"
    assert bench.main(["--tiny", "--json", "--plot", str(png), "--reps", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["rows"]
    groups = {r["group"] for r in rows}
    assert {
        "optimizer/torch",
        "optimizer/numpy",
        "optimizer/packed",
        "tape",
        "tape/memory",
        "jax",
    } <= groups
    assert len([r for r in rows if r["target"] is not None]) >= 20
    for r in rows:
        assert r["agrad_value"] >= 0 and r["peer_value"] > 0
        assert r["ratio"] == pytest.approx(r["agrad_value"] / r["peer_value"])
    assert out["meta"]["tiny"] is True
    assert png.stat().st_size > 1000


def test_table_lists_every_row():
    row = bench.Row("g", "n", "a", "p", 2.0, 4.0, 1.0)
    text = bench.table([row])
    assert "| g | n | a | p | 2.000 ms | 4.000 ms | 0.500 | <= 1 | yes |" in text


def test_bench_losses_agree_across_libraries():
    import autograd
    import autograd.numpy as anp

    import agrad

    params, x, onehot = mlp_problem(4, [5, 3, 2])
    ref = autograd.grad(lambda p: mlp_loss(p, x, onehot, anp))(params)
    got = agrad.grad(lambda p: mlp_loss(p, x, onehot, agrad.array_namespace(p["w0"])))(params)
    for k in params:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-12)
    v = np.linspace(0.1, 0.4, 4)
    np.testing.assert_allclose(
        agrad.grad(lambda z: chain_loss(z, agrad.array_namespace(z), 30))(v),
        autograd.grad(lambda z: chain_loss(z, anp, 30))(v),
        rtol=1e-10,
    )


def test_reference_numpy_loop_matches_agrad_adam():
    import agrad

    rng = np.random.default_rng(0)
    p = [rng.standard_normal(5)]
    g = [rng.standard_normal(5)]
    ms, vs = [np.zeros(5)], [np.zeros(5)]
    q = [p[0].copy()]
    opt = agrad.optim.adam(lr=1e-3, eps=1e-8)
    state = opt.init(q)
    for t in (1, 2, 3):
        numpy_adam_loop(p, g, ms, vs, t)
        q, state = opt.step(q, g, state)
    np.testing.assert_allclose(q[0], p[0], rtol=1e-12)
