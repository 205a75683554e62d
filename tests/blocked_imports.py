"""Run Python in a subprocess where some installed packages count as not installed.

A finder placed first on ``sys.meta_path`` refuses the blocked packages (and their
submodules) with the ``ModuleNotFoundError`` a missing package gives, so the code under
test sees exactly what a machine without them shows: ``import sklearn`` fails and
``"sklearn" in sys.modules`` is false.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

_BLOCKER = """\
import sys

class _NotInstalled:
    blocked = {blocked!r}

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
"""


def run_without(
    blocked: Sequence[str], code: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the packages ``blocked`` cannot be imported."""
    prelude = _BLOCKER.format(blocked=frozenset(blocked))
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
