"""Build C and CUDA text with the machine's compilers: the CuPy kernels checked without a GPU,
and, optionally, the host kernels of NumPy and torch CPU steps.

:func:`host_kernel` compiles :func:`~agrad.optim.program.c_codegen.host_source`
(the CuPy kernel's body in a C loop) into a shared library with the host C compiler
and returns a callable over NumPy arrays, so the kernel text CuPy would compile runs,
and is compared, on the CPU. :func:`compile_cuda` hands a complete CUDA source to
``nvcc`` (to a PTX file: the whole front end and code generator, no GPU needed).
These are tools for tests and for the GPU check script; their builds are cached by
the hash of the source in one temporary directory per process.

At run time a C compiler is *optional*: :func:`load_library` is how
:mod:`agrad.optim.program.host_exec` builds the fused kernels of a NumPy or torch CPU
step (flags :data:`RUNTIME_CFLAGS`). Each library is built once per source text,
compiler and flags into a per-user disk cache (:func:`cache_dir`:
``$XDG_CACHE_HOME/agrad/host-kernels``, else ``~/.cache/agrad/host-kernels``),
written under a temporary name and renamed into place, so parallel processes
(pytest workers) never see half a file; a later process loads it without compiling.
Where there is no compiler, or it fails, the caller gets an exception and the step
runs on the executors that need none.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from agrad.optim.program.c_codegen import C_TYPES, CBlock, host_source

__all__ = [
    "HOST_CFLAGS",
    "RUNTIME_CFLAGS",
    "builds",
    "cache_dir",
    "load_library",
    "HostElementwiseKernel",
    "NVCC_FLAGS",
    "compile_cuda",
    "find_c_compiler",
    "find_nvcc",
    "host_kernel",
]

HOST_CFLAGS = ("-O2", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math")
NVCC_FLAGS = ("--ptx", "--fmad=false", "-std=c++17")


def _vector_flags() -> tuple[str, ...]:
    """``("-mavx2",)`` on an x86-64 Linux CPU that has AVX2, else ``()``.

    AVX2 doubles the vector width of the baseline x86-64 ISA (SSE2): 8 float32 lanes
    instead of 4, and twice the ``sqrt`` and division throughput, which is what a
    fused optimizer step is bound by after memory (measured: Adam on 4 x 2048x1024
    float32, 8.4 ms -> 5.4 ms). ``+ - * / sqrt`` are correctly rounded in SSE and AVX
    alike and FMA stays off (no ``-mfma``, ``-ffp-contract=off``), so no result changes.
    The flag is part of each library's cache key: a cache shared with a CPU without
    AVX2 never hands it a library built with it.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return ("-mavx2",) if "avx2" in line.split() else ()
    except OSError:
        pass
    return ()


#: Flags of the run-time host kernels: optimised and vectorised for the baseline ISA
#: (no ``-march=native``; AVX2 where the CPU has it, see :func:`_vector_flags`), no
#: contraction into fused multiply-adds, no fast math, so ``+ - * / sqrt`` round as
#: NumPy and torch round them. ``-fno-math-errno`` only stops ``sqrt`` from setting
#: ``errno`` (which lets it vectorise); no result changes.
RUNTIME_CFLAGS = (
    "-O3",
    "-std=c99",
    "-fPIC",
    "-shared",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-math-errno",
    *_vector_flags(),
)
#: How many libraries this process compiled (not loaded from the disk cache).
builds = 0
_compiler_ids: dict[str, str] = {}
_loaded: dict[str, Any] = {}

_CTYPES = {
    "float32": ctypes.c_float,
    "float64": ctypes.c_double,
    "bool": ctypes.c_bool,
    "int64": ctypes.c_longlong,
}
_NUMPY = {"float32": "float32", "float64": "float64", "bool": "bool"}
_build_dir: str | None = None
_libraries: dict[str, Any] = {}


def find_c_compiler() -> str | None:
    """The host C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang`` on ``PATH``), or None."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def find_nvcc() -> str | None:
    """``nvcc`` (``$NVCC``, ``PATH``, or ``$CUDA_HOME/bin``), or None where CUDA is absent."""
    cands = [os.environ.get("NVCC"), "nvcc"]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "nvcc"))
    for cand in cands:
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _workdir() -> str:
    global _build_dir
    if _build_dir is None:
        _build_dir = tempfile.mkdtemp(prefix="agrad-kernels-")
    return _build_dir


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed ({' '.join(cmd)}):\n{res.stderr or res.stdout}")


def compile_cuda(source: str, *, arch: str | None = None) -> str:
    """Compile a complete CUDA source with ``nvcc`` to PTX; returns the PTX text.

    Raises ``RuntimeError`` with the compiler's message when it does not compile, and
    ``FileNotFoundError`` when there is no ``nvcc``.
    """
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (PATH, $NVCC, $CUDA_HOME/bin)")
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    src = os.path.join(_workdir(), f"k{key}.cu")
    out = os.path.join(_workdir(), f"k{key}.ptx")
    with open(src, "w") as f:
        f.write(source)
    cmd = [nvcc, *NVCC_FLAGS, *([f"-arch={arch}"] if arch else []), src, "-o", out]
    _run(cmd, "nvcc")
    with open(out) as f:
        return f.read()


def _library(source: str) -> Any:
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    if key not in _libraries:
        cc = find_c_compiler()
        if cc is None:
            raise FileNotFoundError("no C compiler found ($CC, cc, gcc, clang)")
        src = os.path.join(_workdir(), f"h{key}.c")
        lib = os.path.join(_workdir(), f"h{key}.so")
        with open(src, "w") as f:
            f.write(source)
        _run([cc, *HOST_CFLAGS, src, "-o", lib, "-lm"], "the host C compiler")
        _libraries[key] = ctypes.CDLL(lib)
    return _libraries[key]


def cache_dir() -> str:
    """The per-user directory of compiled host kernels (``$XDG_CACHE_HOME/agrad/host-kernels``,
    else ``~/.cache/agrad/host-kernels``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "agrad", "host-kernels")


def _compiler_id(cc: str) -> str:
    """The first line of ``cc --version``: part of the cache key (an upgraded compiler
    builds anew)."""
    got = _compiler_ids.get(cc)
    if got is None:
        res = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
        got = _compiler_ids[cc] = (
            (res.stdout or res.stderr).splitlines()[0] if res.stdout or res.stderr else ""
        )
    return got


def load_library(source: str, flags: tuple[str, ...] = RUNTIME_CFLAGS) -> Any:
    """``source`` compiled by the host C compiler into a shared library, loaded (``ctypes.CDLL``).

    Cached on disk by the hash of the source, the compiler (path and ``--version``) and
    ``flags`` (see the module), and in the process. Raises ``FileNotFoundError`` where
    there is no compiler and ``RuntimeError`` with its message where it fails.
    """
    global builds
    cc = find_c_compiler()
    if cc is None:
        raise FileNotFoundError("no C compiler found ($CC, cc, gcc, clang)")
    text = "\0".join([source, cc, _compiler_id(cc), " ".join(flags)])
    key = hashlib.sha256(text.encode()).hexdigest()[:32]
    lib = _loaded.get(key)
    if lib is not None:
        return lib
    folder = cache_dir()
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.access(folder, os.W_OK)
    except OSError:
        probe = False
    if not probe:
        folder = _workdir()  # an unwritable home: this process's temporary directory
    path = os.path.join(folder, f"k{key}.so")
    try:
        lib = ctypes.CDLL(path) if os.path.exists(path) else None
    except OSError:
        lib = None  # unreadable or truncated by a crash: built again below
    if lib is None:
        fd, src = tempfile.mkstemp(prefix=f"k{key}-", suffix=".c", dir=folder)
        tmp = src[:-2] + ".so"
        try:
            with os.fdopen(fd, "w") as f:
                f.write(source)
            _run([cc, *flags, src, "-o", tmp, "-lm"], "the host C compiler")
            os.replace(tmp, path)
            builds += 1
        finally:
            for leftover in (src, tmp):
                if os.path.exists(leftover):
                    os.unlink(leftover)
        lib = ctypes.CDLL(path)
    _loaded[key] = lib
    return lib


def host_kernel(block: CBlock, name: str = "agrad_block") -> Callable[..., list[Any]]:
    """``block`` compiled for the host CPU: ``fn(*inputs) -> [outputs]`` over NumPy arrays.

    Array inputs are broadcast to one shape and made contiguous; scalar inputs are
    Python or NumPy numbers; the outputs are new arrays of that shape, in
    ``block.outputs`` order.
    """
    import numpy as np

    fn = getattr(_library(host_source(name, block)), name)

    def run(*inputs: Any) -> list[Any]:
        if len(inputs) != len(block.inputs):
            raise TypeError(f"{name} takes {len(block.inputs)} inputs, got {len(inputs)}")
        arrays = [x for x, spec in zip(inputs, block.inputs) if not spec.scalar]
        shape = np.broadcast_shapes(*(np.shape(a) for a in arrays)) if arrays else ()
        args: list[Any] = [ctypes.c_longlong(int(np.prod(shape, dtype=np.int64)))]
        keep = []
        for x, spec in zip(inputs, block.inputs):
            if spec.scalar:
                args.append(_CTYPES[spec.dtype](x))
                continue
            a = np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=spec.dtype), shape))
            keep.append(a)
            args.append(a.ctypes.data_as(ctypes.c_void_p))
        outs = [np.empty(shape, dtype=_NUMPY[block.output_dtype(v)]) for _, v in block.outputs]
        args += [o.ctypes.data_as(ctypes.c_void_p) for o in outs]
        fn(*args)
        return outs

    return run


def _parse_params(text: str) -> list[tuple[str, str]]:
    """``"float32 x, float64 s"`` -> ``[("float32", "x"), ("float64", "s")]``."""
    out = []
    for part in text.split(","):
        if part.strip():
            dtype, name = part.split()
            out.append((dtype, name))
    return out


class HostElementwiseKernel:
    """``cupy.ElementwiseKernel`` on the host CPU: the same parameters and operation text,
    compiled by the host C compiler, called on NumPy arrays.

    As in CuPy, an argument that is a Python or NumPy number is passed by value, an array
    is read element by element (broadcast to the output's shape); outputs are arrays
    given after the inputs (or new ones of the broadcast shape), readable in the body
    (``T &out`` in CuPy, a local initialised from the buffer here) and written back.
    Each ``(in_params, operation, which inputs are numbers)`` compiles once. The calls
    are recorded in :attr:`calls` (the kernel's name and the arguments' kinds), so a
    test sees the marshalling the CuPy executor does.
    """

    def __init__(
        self,
        in_params: str,
        out_params: str,
        operation: str,
        name: str = "kernel",
        options: tuple[str, ...] = (),
        **kwargs: Any,
    ):
        self.in_params = _parse_params(in_params)
        self.out_params = _parse_params(out_params)
        self.operation = operation
        self.name = name
        self.options = tuple(options)
        self.calls: list[tuple[str, ...]] = []
        self._fns: dict[tuple[bool, ...], Any] = {}

    def _source(self, scalar: tuple[bool, ...]) -> str:
        params = ["long long n"]
        reads = []
        for (dtype, nm), by_value in zip(self.in_params, scalar):
            ctype = C_TYPES[dtype]
            if by_value:
                params.append(f"const {ctype} {nm}")
            else:
                params.append(f"const {ctype} *{nm}_p")  # may alias an output, as in CuPy
                reads.append(f"const {ctype} {nm} = {nm}_p[i];")
        outs = []
        for dtype, nm in self.out_params:
            ctype = C_TYPES[dtype]
            params.append(f"{ctype} *{nm}_p")
            reads.append(f"{ctype} {nm} = {nm}_p[i];")
            outs.append(f"{nm}_p[i] = {nm};")
        body = "\n".join([*reads, self.operation, *outs]).replace("\n", "\n        ")
        return (
            "#include <math.h>\n#include <stdbool.h>\n\n"
            f"void {self.name}({', '.join(params)}) {{\n"
            f"    for (long long i = 0; i < n; ++i) {{\n        {body}\n    }}\n}}\n"
        )

    def __call__(self, *args: Any) -> Any:
        import numpy as np

        n_in = len(self.in_params)
        ins, outs = list(args[:n_in]), list(args[n_in:])
        scalar = tuple(np.ndim(x) == 0 and not isinstance(x, np.ndarray) for x in ins)
        self.calls.append(tuple("scalar" if s else "array" for s in scalar))
        if scalar not in self._fns:
            self._fns[scalar] = getattr(_library(self._source(scalar)), self.name)
        shapes = [np.shape(x) for x, s in zip(ins, scalar) if not s]
        shape = np.broadcast_shapes(*shapes, *(np.shape(o) for o in outs))
        c_args: list[Any] = [ctypes.c_longlong(int(np.prod(shape, dtype=np.int64)))]
        keep = []
        for (dtype, _), x, by_value in zip(self.in_params, ins, scalar):
            if by_value:
                c_args.append(_CTYPES.get(dtype, ctypes.c_longlong)(x))
            else:
                a = np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=dtype), shape))
                keep.append(a)
                c_args.append(a.ctypes.data_as(ctypes.c_void_p))
        if not outs:
            outs = [np.empty(shape, dtype=dtype) for dtype, _ in self.out_params]
        staged = []
        for (dtype, _), o in zip(self.out_params, outs):
            if o.shape != shape or o.dtype != np.dtype(dtype):
                raise ValueError(
                    f"{self.name}: output of shape {o.shape} {o.dtype}, not {shape} {dtype}"
                )
            buf = o if o.flags.c_contiguous else np.ascontiguousarray(o)
            staged.append(buf)
            c_args.append(buf.ctypes.data_as(ctypes.c_void_p))
        self._fns[scalar](*c_args)
        for o, buf in zip(outs, staged):
            if buf is not o:
                o[...] = buf
        return outs[0] if len(outs) == 1 else tuple(outs)
