"""The backend support matrix, generated from agrad itself (a mkdocs hook and a script).

Each cell is found by running agrad: the adapter that ``adapter_for`` picks, what
``agrad.variable`` returns, whether ``gradient_descent_update(..., inplace=True)`` hands
back the same object, whether ``grad(grad(f))`` gives the second derivative, whether a
float32 gradient stays float32, whether ``agrad.optim.adam`` steps.

The table is the same on every machine, whatever is installed. A tape backend that is
not installed (CuPy without a GPU) is probed through NumPy, which shares its adapter
(agrad's tape). A native-autograd backend that is not installed (a docs build with only
the ``docs`` extra) is described by :data:`NATIVE_ROWS`, its probe on a full install;
``tests/test_docs.py`` checks that record against the probe wherever torch and JAX are
installed, and builds the table with them blocked.

- mkdocs: ``{{ backend_matrix }}`` in a page is replaced by the table.
- ``python docs/hooks/backend_matrix.py``: print the table;
  ``--write README.md`` replaces the block between the ``backend-matrix`` markers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

MARKER = "{{ backend_matrix }}"
START, END = "<!-- backend-matrix:start -->", "<!-- backend-matrix:end -->"
NATIVE_AUTOGRAD = {"torch": "`torch.autograd`", "jax": "`jax.vjp`"}
TESTED_HERE = {"cupy": "on a CUDA GPU (skipped without one)"}
#: What :func:`probe` finds for each native-autograd backend on a full install, used
#: where that backend is not installed (the ``tested`` row is added from ``TESTED_HERE``).
NATIVE_ROWS = {
    "torch": {
        "gradients by": NATIVE_AUTOGRAD["torch"],
        "tracing namespace": "—",
        "`agrad.variable(x)` is": "`torch.Tensor` leaf, `requires_grad`",
        "`inplace=True` updates": "write in place",
        "`grad(grad(f))`": "yes",
        "float32 stays float32": "yes",
        "`agrad.optim`": "yes",
    },
    "jax": {
        "gradients by": NATIVE_AUTOGRAD["jax"],
        "tracing namespace": "—",
        "`agrad.variable(x)` is": "the array itself",
        "`inplace=True` updates": "return new arrays",
        "`grad(grad(f))`": "yes",
        "float32 stays float32": "yes",
        "`agrad.optim`": "yes",
    },
}


def describe(name: str) -> dict[str, str]:
    """The column of backend ``name``: probed where it runs, else its full-install record."""
    from agrad.autograd.tape.tracing_namespace import BASE_MODULES
    from agrad.testing import load_backend

    if load_backend(name)[0] is None and name not in BASE_MODULES:
        if name not in NATIVE_ROWS:
            raise RuntimeError(f"cannot describe {name}: not installed and nothing recorded of it")
        return {**NATIVE_ROWS[name], "tested": TESTED_HERE.get(name, "yes")}
    return probe(name)


def probe(name: str) -> dict[str, str]:
    """Run agrad on backend ``name`` (or on NumPy, for a tape backend not installed here)."""
    import numpy as np

    import agrad
    from agrad.autograd.adapters import adapter_for
    from agrad.autograd.tape.tracing_namespace import BASE_MODULES
    from agrad.testing import load_backend

    xp, _ = load_backend(name)
    if xp is None:
        xp, _ = load_backend("numpy")
    adapter = adapter_for(xp)
    on_tape = name in BASE_MODULES
    x = xp.asarray(np.asarray([2.0, -1.0]))
    v = agrad.variable(xp.asarray(np.asarray([2.0, -1.0])))
    if agrad.variable(x) is x:
        variable = "the array itself"
    elif isinstance(v, agrad.Variable):
        variable = "an `agrad.Variable` box"
    else:
        variable = f"`{type(v).__module__.split('.')[0]}.{type(v).__name__}`"
        if getattr(v, "requires_grad", False):
            variable += " leaf, `requires_grad`"
    g = xp.asarray(np.asarray([1.0, 1.0]))
    inplace = agrad.gradient_descent_update(v, g, 0.1) is v

    def cube_sum(a: Any) -> Any:
        return agrad.array_namespace(a).sum(a**3.0)

    second = agrad.grad(lambda a: agrad.array_namespace(a).sum(agrad.grad(cube_sum)(a)))(x)
    x32 = xp.asarray(np.asarray([1.0, 2.0], dtype=np.float32))
    g32 = agrad.grad(cube_sum)(x32)
    row = {
        "gradients by": "agrad's tape"
        if on_tape
        else NATIVE_AUTOGRAD.get(adapter.name, adapter.name),
        "tracing namespace": f"`agrad.{name}`" if on_tape else "—",
        "`agrad.variable(x)` is": variable,
        "`inplace=True` updates": "write in place" if inplace else "return new arrays",
        "`grad(grad(f))`": "yes" if np.allclose(_numpy(second), [12.0, -6.0]) else "no",
        "float32 stays float32": "yes" if "float32" in str(g32.dtype) else "no",
    }
    import agrad.optim as optim

    opt = optim.adam(lr=0.1)
    optim_ok = opt.step(agrad.variable(x32), g32, opt.init(x32)) is not None
    row["`agrad.optim`"] = "yes" if optim_ok else "no"
    row["tested"] = TESTED_HERE.get(name, "yes")
    return row


def _numpy(x: Any) -> Any:
    from agrad.testing import to_numpy

    return to_numpy(x)


def backend_matrix() -> str:
    """The support matrix as a Markdown table: one column per backend."""
    from agrad.testing import BACKENDS

    names = list(BACKENDS)
    rows = {name: describe(name) for name in names}
    keys = list(rows[names[0]])
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += ["| " + " | ".join([k, *(rows[n][k] for n in names)]) + " |" for k in keys]
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between the backend-matrix markers replaced by ``table``."""
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise ValueError(f"no {START} marker found")
    return f"{head}{START}\n{table}\n{END}{tail}"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """mkdocs hook: put the generated matrix where a page says ``{{ backend_matrix }}``."""
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, backend_matrix())
    return markdown


if __name__ == "__main__":
    table = backend_matrix()
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        path.write_text(replace_block(path.read_text(), table))
    else:
        print(table)
