"""Command line: ``agrad demo`` trains on every backend, ``agrad bench`` runs the benchmarks.

``python -m agrad <command> [options]`` and the ``agrad`` console script are the same.
Each command lives in its own module, imported only when it runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Command -> (module, summary); a command's optional dependencies are the extra of its name.
COMMANDS = {
    "demo": ("agrad.demo", "train a small MLP with one loop on every installed backend"),
    "bench": ("agrad.bench", "benchmark agrad against native autograd and other libraries"),
}

USAGE = "usage: agrad {demo,bench} [options]   (agrad <command> --help for its options)"


def _help() -> str:
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name:<8}{summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to a command's ``main``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_help())
        return 0 if args else 2
    if args[0] == "--version":
        from agrad import __version__

        print(f"agrad {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"{USAGE}\nagrad: unknown command {command!r}", file=sys.stderr)
        return 2
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            msg = (
                f"agrad {command}: this installation has no {module_name} module yet "
                f"(the '{command}' command is not part of agrad {_version()})"
            )
        elif err.name and err.name.partition(".")[0] != "agrad":
            msg = (
                f"agrad {command}: {err.name.partition('.')[0]} is not installed; "
                f'install the {command} extra: pip install "agrad[{command}]"'
            )
        else:
            raise
        print(msg, file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


def _version() -> str:
    from agrad import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
