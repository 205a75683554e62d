"""The CuPy executor, checked without a GPU, and on CuPy where there is one.

- The kernel text: every fused block's ``ElementwiseKernel`` operation, compiled for
  the host CPU by the C compiler (``HostElementwiseKernel``: CuPy's parameter and
  argument conventions, same text), run through the whole CuPy route on NumPy arrays
  and compared with the generic path on array-api-strict (the reference) for every
  optimizer: bit for bit (both round every ``+ - * / sqrt`` the same way).
- The complete CUDA source of every kernel, compiled by ``nvcc`` where it exists.
- On a machine with CuPy and a GPU (``scripts/gpu_check.sh``): ``step`` on CuPy arrays
  against the generic path on the same arrays.
"""

from __future__ import annotations

import types
from typing import ClassVar

import array_api_compat.numpy as np_xp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agrad.optim.program import kernel_route
from agrad.optim.program.c_codegen import CBlock, CInput, CStatement, cuda_source, kernel_body
from agrad.optim.program.cblock import c_block, scalar_types
from agrad.optim.program.cupy_exec import KERNEL_OPTIONS, CupyExecutor
from agrad.optim.program.fusion import Block, partition
from agrad.optim.program.host_c import (
    HostElementwiseKernel,
    compile_cuda,
    find_c_compiler,
    find_nvcc,
    host_kernel,
)
from agrad.optim.program.ir import evaluate_scalars
from agrad.optim.program.recorder import NotRecordable, record
from agrad.pytree import flatten_leaves
from agrad.testing import load_backend
from program_cases import (
    CASES,
    inputs_as_state,
    leaves,
    reference,
    state_arrays,
    state_numbers,
)

pytestmark = pytest.mark.skipif(find_c_compiler() is None, reason="no host C compiler")

#: Cases whose rule the recorder cannot hold yet: the route declines, nothing written.
KNOWN_DECLINES: dict[str, str] = {}

SHAPES = st.lists(
    st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=3
)


class RecordingKernel(HostElementwiseKernel):
    """The host stand-in of ``cupy.ElementwiseKernel``, keeping every kernel and call."""

    made: ClassVar[list[RecordingKernel]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingKernel.made.append(self)
        self.arg_ids: list[tuple[int, ...]] = []

    def __call__(self, *args):
        self.arg_ids.append(tuple(id(a) for a in args))
        return super().__call__(*args)


@pytest.fixture
def host_cupy(monkeypatch):
    """The CuPy route with NumPy arrays standing in for CuPy's and host-compiled kernels."""
    fake = types.SimpleNamespace(
        ElementwiseKernel=RecordingKernel, empty=np.empty, zeros=np.zeros, ndarray=np.ndarray
    )
    RecordingKernel.made = []
    executor = CupyExecutor(fake, np_xp)
    monkeypatch.setattr(
        kernel_route, "library", lambda x: "cupy" if type(x) is np.ndarray else None
    )
    monkeypatch.setattr(kernel_route, "_namespace", lambda lib: np_xp)
    monkeypatch.setitem(kernel_route._executors, "cupy", executor)
    return executor


@pytest.mark.parametrize("case", sorted(CASES))
@settings(
    max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(shapes=SHAPES, dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 99))
def test_host_kernels_match_generic_path(host_cupy, case, shapes, dtype, seed):
    params, grads = leaves(shapes, dtype, seed)
    expected = reference(CASES[case], params, grads)
    opt = CASES[case]()
    p = [x.copy() for x in params]
    s = opt.init(p)
    for k, g in enumerate(grads):
        got = kernel_route.try_step(opt, p, g, s)
        if got is None:
            assert case in KNOWN_DECLINES, f"{case}: the CuPy route declined"
            for x, y in zip(p, params if k == 0 else expected[k - 1][0]):
                np.testing.assert_array_equal(x, y)  # nothing written
            return
        assert got[0] is p
        s = got[1]
        want_p, want_s = expected[k]
        for x, y in zip(p, want_p):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y, err_msg=f"{case} step {k + 1}")
        for x, y in zip(state_arrays(s), state_arrays(want_s)):
            np.testing.assert_array_equal(x, y, err_msg=f"{case} state, step {k + 1}")
        assert state_numbers(s) == state_numbers(want_s)
    assert RecordingKernel.made, "no kernel was launched"
    assert all(k.options == KERNEL_OPTIONS for k in RecordingKernel.made)


def test_adam_is_one_kernel_per_shape_class_writing_in_place(host_cupy):
    """Adam on 3 matrices and 3 vectors: one kernel text for all six (the body does not
    depend on the shape), compiled once (one warm-up launch), then launched once per
    parameter with the parameter and its state buffers as outputs; the step count and
    bias corrections are computed before it (no kernel of their own) and passed as
    0-d arrays; the new count is written into the state's 0-d count."""
    opt = CASES["adam"]()
    params, grads = leaves([(4, 3), (3,)] * 3, np.float32, 0)
    s = opt.init(params)
    s = kernel_route.try_step(opt, params, grads[0], s)[1]
    launched = [k for k in RecordingKernel.made if k.arg_ids]
    warmups = sum(len(k.arg_ids) for k in launched) - len(params)
    assert len(launched) == 1 and warmups == 1
    m, v = s.exp_avg, s.exp_avg_sq
    for k in launched:
        # p, g, m, v and two per-step values (bias corrections, computed once per step
        # before the kernel, as 0-d float32 arrays)
        assert [d for d, _ in k.in_params] == ["float32"] * 6
        assert [d for d, _ in k.out_params] == ["float32"] * 3
        assert "sqrtf(" in k.operation and "sqrt(" not in k.operation.replace("sqrtf(", "")
    calls = [ids for k in launched for ids in k.arg_ids[1:]]
    written = {id(x) for x in (*params, *m, *v)}
    # the outputs are the parameter and state buffers themselves, each written once
    outputs = [i for ids in calls for i in ids[-3:]]
    assert sorted(outputs) == sorted(written)
    assert s.count.shape == () and s.count.dtype == np.int32 and int(s.count) == 1


def test_overlapping_buffers_decline_with_nothing_written(host_cupy):
    """A state buffer that is also the gradient: in-place kernels would read what they
    write, so the route declines (the generic path then raises its own error)."""
    opt = CASES["adam"]()
    params, grads = leaves([(5,)], np.float32, 1)
    s = opt.init(params)
    g = [s.exp_avg[0]]
    before = [x.copy() for x in (*params, s.exp_avg[0], s.exp_avg_sq[0])]
    assert kernel_route.try_step(opt, params, g, s) is None
    for x, y in zip((*params, s.exp_avg[0], s.exp_avg_sq[0]), before):
        np.testing.assert_array_equal(x, y)


def test_kernel_that_fails_to_compile_declines_before_writing(host_cupy, monkeypatch):
    opt = CASES["nadam"]()
    params, grads = leaves([(3,), (2, 2)], np.float64, 2)
    s = opt.init(params)
    before = [x.copy() for x in params]

    def broken(*args, **kwargs):
        raise RuntimeError("NVRTC_ERROR_COMPILATION")

    monkeypatch.setattr(host_cupy, "_shared_kernel", broken)
    assert kernel_route.try_step(opt, params, grads[0], s) is None
    for x, y in zip(params, before):
        np.testing.assert_array_equal(x, y)


def test_literals_and_nan_rules_match_numpy():
    """A block exercising literals (0.1 in float32), max/min/sign/clip NaN and signed
    zero rules, where and comparisons, against NumPy bit for bit."""
    x, y = CInput("x", "float32"), CInput("y", "float32")
    stmts = [
        CStatement("a", "maximum", ("x", "y"), "float32"),
        CStatement("b", "minimum", ("x", "y"), "float32"),
        CStatement("c", "sign", ("x",), "float32"),
        CStatement("d", "clip", ("x", -0.5, 0.5), "float32"),
        CStatement("e", "multiply", ("x", 0.1), "float32"),
        CStatement("f", "greater", ("x", "y"), "bool"),
        CStatement("h", "where", ("f", "e", "y"), "float32"),
        CStatement("k", "pow", ("y", 2), "float32"),
    ]
    outs = [(f"o_{n}", n) for n in "abcdehk"]
    run = host_kernel(CBlock([x, y], stmts, outs))
    vals = np.array([np.nan, -0.0, 0.0, 1.5, -2.0, 0.3, np.inf], dtype=np.float32)
    xs, ys = np.meshgrid(vals, vals)
    got = run(xs, ys)
    want = [
        np.maximum(xs, ys),
        np.minimum(xs, ys),
        np.sign(xs),
        np.clip(xs, -0.5, 0.5),
        xs * 0.1,
        np.where(xs > ys, xs * 0.1, ys),
        ys**2,
    ]
    for name, a, b in zip("abcdehk", got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert np.array_equal(np.signbit(a), np.signbit(b)), name


def _all_blocks(dtype):
    """Every distinct kernel of every case, as (name, CBlock)."""
    seen: dict[str, CBlock] = {}
    for case, factory in sorted(CASES.items()):
        opt = factory()
        params, grads = leaves([(4, 3), (3,)], dtype, 0)
        state = opt.init(params)
        try:
            program = record(opt, np_xp, params, grads[0], flatten_leaves(params)[1], state)
        except NotRecordable:
            assert case in KNOWN_DECLINES
            continue
        scalars = evaluate_scalars(program.scalars, [x for x in flatten_leaves(state)[0]])
        for step in partition(program):
            if isinstance(step, Block):
                cb = c_block(program, step, scalar_types(step, scalars))
                seen.setdefault(kernel_body(cb), cb)
    return [(f"agrad_k{i}", cb) for i, cb in enumerate(seen.values())]


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found (CUDA toolkit absent)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nvcc_compiles_every_kernel(dtype):
    blocks = _all_blocks(dtype)
    assert len(blocks) >= 10
    unit = "\n".join(
        cuda_source(name, cb).replace("#include <math.h>\n", "") for name, cb in blocks
    )
    ptx = compile_cuda("#include <math.h>\n" + unit)
    for name, _ in blocks:
        assert f".entry {name}(" in ptx


def test_cupy_step_matches_generic_path():
    """On CuPy (a GPU machine): every case, ``step`` on the kernel route against the
    generic path on the same device; skipped elsewhere."""
    namespace, reason = load_backend("cupy")
    if namespace is None:
        pytest.skip(reason)
    import cupy

    for _, factory in sorted(CASES.items()):
        for dtype in (np.float32, np.float64):
            params, grads = leaves([(33, 17), (17,), ()], dtype, 3)
            opt, ref = factory(), factory()
            p = [cupy.asarray(x) for x in params]
            r = [cupy.asarray(x) for x in params]
            s, rs = opt.init(p), ref.init(r)
            for g in grads:
                p, s = opt.step(p, [cupy.asarray(x) for x in g], s)
                kernel_route.enabled = False
                try:
                    r, rs = ref.step(r, [cupy.asarray(x) for x in g], rs)
                finally:
                    kernel_route.enabled = True
            for a, b in zip(p, r):
                rtol = 1e-5 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(cupy.asnumpy(a), cupy.asnumpy(b), rtol=rtol, atol=rtol)


def test_the_parameters_old_values_as_new_state(host_cupy):
    """A rule returning the parameters it was given as new state: the state gets their
    old values (the kernel no longer writes a parameter in place whose old value a
    state leaf receives; the final copies read before they write), as the reference."""
    params, grads = leaves([(4, 3), (5,)], np.float64, 12)
    expected = reference(inputs_as_state, params, grads)
    opt = inputs_as_state()
    p = [x.copy() for x in params]
    s = opt.init(p)
    for k, g in enumerate(grads):
        got = kernel_route.try_step(opt, p, g, s)
        assert got is not None
        s = got[1]
        for x, y in zip([*p, *state_arrays(s)], [*expected[k][0], *state_arrays(expected[k][1])]):
            np.testing.assert_array_equal(x, y, err_msg=f"step {k + 1}")
