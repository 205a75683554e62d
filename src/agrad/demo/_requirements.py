"""What ``agrad demo`` needs beyond agrad (the ``demo`` extra), and the line that says so.

The command checks these before it trains, so a missing one costs one line naming the
extra to install instead of a traceback halfway through (``--plot`` after training).
"""

from __future__ import annotations

import importlib

__all__ = ["INSTALL_DEMO_EXTRA", "missing_message", "missing_requirements"]

INSTALL_DEMO_EXTRA = 'pip install "agrad[demo]"'
#: Module the demo imports -> the distribution that provides it.
REQUIREMENTS = {"numpy": "numpy", "sklearn": "scikit-learn"}
PLOT_REQUIREMENTS = {"matplotlib": "matplotlib"}


def missing_requirements(plot: bool = False) -> list[str]:
    """The distributions the demo (with ``plot``: and ``--plot``) needs that do not import."""
    needed = {**REQUIREMENTS, **(PLOT_REQUIREMENTS if plot else {})}
    missing = []
    for module, distribution in needed.items():
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            top = (err.name or module).partition(".")[0]
            missing.append(distribution if top == module else f"{distribution} (needs {top})")
    return missing


def missing_message(missing: list[str]) -> str:
    """One line: what is missing and the command that installs it."""
    names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    verb = "is" if len(missing) == 1 else "are"
    return f"agrad demo: {names} {verb} not installed; install the demo extra: {INSTALL_DEMO_EXTRA}"
