"""Smoke test of ``agrad bench`` on tiny problems: every row runs; nothing about time."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("autograd")

from agrad import bench
from agrad.bench.optimizer_rows import AGRAD_ONLY, NUMPY_LOOPS, OPTIMIZERS
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


@pytest.mark.parametrize("name", sorted(NUMPY_LOOPS))
def test_reference_numpy_loops_match_agrad(name):
    """The hand-written loops the numpy rows compare against compute the same step."""
    import agrad

    loop, n_bufs = NUMPY_LOOPS[name]
    rng = np.random.default_rng(0)
    p = [rng.standard_normal(5)]
    g = [rng.standard_normal(5)]
    bufs = [[np.zeros(5)] for _ in range(n_bufs)]
    q = [p[0].copy()]
    opt = getattr(agrad.optim, name)(**OPTIMIZERS[name][0])
    state = opt.init(q)
    mu_product = [1.0]
    for t in (1, 2, 3):
        if name == "nadam":
            loop(p, g, bufs, t, mu_product)
        else:
            loop(p, g, bufs, t)
        q, state = opt.step(q, g, state)
    np.testing.assert_allclose(q[0], p[0], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(n for n, (_, cls) in OPTIMIZERS.items() if cls))
def test_bench_rows_compare_the_same_step_as_torch_optim(name):
    """Each ``optimizer/torch`` row runs agrad and torch.optim with options that give the
    same update: float64 with torch's scalar state in float64 too (step counts, NAdam's
    mu product), 2-D parameters, which every optimizer accepts. Muon's rows run the
    Newton-Schulz iteration in bfloat16 on both sides, as torch does: close, not equal."""
    import torch

    import agrad

    kw, cls = OPTIMIZERS[name]
    rng = np.random.default_rng(0)
    p0 = [rng.standard_normal((6, 4)) for _ in range(2)]
    grads = [[rng.standard_normal((6, 4)) for _ in range(2)] for _ in range(3)]
    mine = [torch.from_numpy(x.copy()) for x in p0]
    opt = getattr(agrad.optim, name)(**kw, **AGRAD_ONLY.get(name, {}))
    state = opt.init(mine)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs = [torch.from_numpy(x.copy()).requires_grad_(True) for x in p0]
        ref = getattr(torch.optim, cls)(theirs, **kw)
        for gs in grads:
            mine, state = opt.step(mine, [torch.from_numpy(g) for g in gs], state)
            for t, g in zip(theirs, gs):
                t.grad = torch.from_numpy(g.copy())
            ref.step()
    finally:
        torch.set_default_dtype(old)
    if name in AGRAD_ONLY:  # bfloat16 rounding: the two updates agree to a few percent
        for a, b, x0 in zip(mine, theirs, p0):
            moved = b.detach().numpy() - x0
            assert np.linalg.norm(a.numpy() - x0 - moved) < 0.05 * np.linalg.norm(moved)
        return
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-10, atol=1e-12)
