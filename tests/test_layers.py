"""The package's layers point down (the import-linter contract in pyproject.toml).

namespace, pytree and _arrays at the bottom know nothing of autograd; autograd knows
nothing of optim; optim and the seed API know nothing of testing, demo, bench or the CLI.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept():
    pytest.importorskip("importlinter")
    code = (
        "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True, no_logo=True))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout
