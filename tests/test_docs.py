"""The documentation: the generated backend matrix is current, code blocks run, nav is complete.

The site itself is built with ``mkdocs build --strict`` by ``.ci/run``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from blocked_imports import run_without

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# A ```python block runs unless the line before it is "<!-- not run -->".
CODE_BLOCK = re.compile(r"(<!-- not run -->\n)?```python\n(.*?)```", re.S)
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
# What `pip install -e ".[docs]"` leaves out: every optional dependency of agrad but NumPy.
NOT_IN_DOCS_EXTRA = (
    "torch",
    "jax",
    "jaxlib",
    "dask",
    "distributed",
    "array_api_strict",
    "array_api_extra",
    "cupy",
    "sklearn",
    "matplotlib",
    "optax",
    "autograd",
    "psutil",
    "hypothesis",
)


def _load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCS / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_backend_matrix_is_generated_from_the_code():
    matrix = _load_hook("backend_matrix")
    readme = (ROOT / "README.md").read_text()
    table = matrix.backend_matrix()
    assert matrix.replace_block(readme, table) == readme, (
        "README.md's backend matrix is stale: run `python docs/hooks/backend_matrix.py --write README.md`"
    )
    assert "{{ backend_matrix }}" in (DOCS / "backends.md").read_text()
    # the table reflects the code: the tape backends have tracing namespaces, torch/JAX do not
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "`agrad.numpy`" in rows["tracing namespace"]
    assert "`jax.vjp`" in rows["gradients by"] and "`torch.autograd`" in rows["gradients by"]


def test_backend_matrix_is_the_same_with_only_the_docs_extra_installed():
    matrix = _load_hook("backend_matrix")
    readme = (ROOT / "README.md").read_text()
    full_install = readme.partition(matrix.START + "\n")[2].partition("\n" + matrix.END)[0]
    hook = DOCS / "hooks" / "backend_matrix.py"
    code = f"import runpy\nprint(runpy.run_path({str(hook)!r})['backend_matrix']())\n"
    proc = run_without(NOT_IN_DOCS_EXTRA, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == full_install


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_recorded_native_columns_are_what_the_probe_finds(name):
    pytest.importorskip(name)
    matrix = _load_hook("backend_matrix")
    assert matrix.probe(name) == {**matrix.NATIVE_ROWS[name], "tested": "yes"}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_python_code_blocks_run(page):
    blocks = [code for skip, code in CODE_BLOCK.findall(page.read_text()) if not skip]
    namespace: dict = {"__name__": f"doc_{page.stem}"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except ImportError as err:  # e.g. CuPy on a machine without a GPU
            pytest.skip(f"{page.name} block {i} needs {err.name}")


def _nav_files(nav) -> list[str]:
    files = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        files += _nav_files(value) if isinstance(value, list) else [value]
    return files


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    for name in _nav_files(config["nav"]):
        assert (DOCS / name).is_file(), f"mkdocs.yml lists {name}, which does not exist"
    hook = _load_hook("optional_pages")
    extended = hook.on_config({"docs_dir": str(DOCS), "nav": list(config["nav"])})
    files = _nav_files(extended["nav"])
    for page in DOCS.rglob("*.md"):  # no page is left out of the navigation
        assert page.relative_to(DOCS).as_posix() in files
