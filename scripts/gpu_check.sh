#!/usr/bin/env bash
# The CuPy checks that need a GPU: run on a machine with an NVIDIA GPU and CuPy installed
# (pip install cupy-cuda12x, or the build for its CUDA), from anywhere in the repository:
#
#   scripts/gpu_check.sh            # tests + CuPy bench rows (a few minutes)
#   scripts/gpu_check.sh --quick    # tests + a quick bench
#
# 1. the CuPy executor's tests: every optimizer's generated ElementwiseKernels on the
#    GPU against the generic path (tests/test_program_cupy.py), the host-C and nvcc
#    checks beside them, and the optimizer tests on the cupy backend;
# 2. the CuPy rows of `python -m agrad bench` (kernel route vs the generic path on
#    CuPy, per optimizer and parameter set), saved to gpu-bench.json.
# Extra arguments go to the bench. Exit status: non-zero if a test fails or CuPy has
# no GPU to run on.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF'
import sys
try:
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
except Exception as err:  # no CuPy, no driver
    sys.exit(f"gpu_check: CuPy cannot run here ({type(err).__name__}: {err})")
if n < 1:
    sys.exit("gpu_check: CuPy sees no GPU")
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"gpu_check: CuPy {cupy.__version__}, {props['name'].decode()}, CUDA runtime "
      f"{cupy.cuda.runtime.runtimeGetVersion()}")
PYEOF

"$PY" -m pytest -q -p no:cacheprovider tests/test_program_cupy.py
"$PY" -m pytest -q -p no:cacheprovider --agrad-backends cupy \
    tests/test_optim_behaviour.py tests/test_optim_transforms.py tests/test_optim_optax.py
"$PY" -m agrad bench --groups backends --only cupy --save gpu-bench.json "$@"
