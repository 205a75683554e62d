"""Run the official Array API conformance suite on agrad and on array_api_strict, and compare.

``python -m agrad.testing.array_api_suite --suite ../shared/array-api-tests`` runs
data-apis/array-api-tests (not on PyPI: a checkout of it, with the spec it reads) as
pytest subprocesses, in parallel:

- the reference, ``ARRAY_API_TESTS_MODULE=array_api_strict``, once;
- ``passthrough``: ``agrad.array_api_strict`` with no trace active;
- ``traced``: :mod:`agrad.testing.traced_strict`, the same namespace with a trace open
  and every floating array a leaf of it.

Each with the same settings (``ARRAY_API_TESTS_VERSION``, ``--max-examples``,
``--derandomize``, ``--disable-deadline``). Outcomes are read from each run's JUnit XML.
Every run also loads this module as a pytest plugin: before each test it seeds Python's
global ``random`` (:func:`pytest_runtest_setup`), which the suite's special-case tests
reach through hypothesis's ``.example()`` (it shuffles its draws with ``random``, so
the one input they test otherwise depends on what ran before in that process, and the
reference and agrad would test different inputs).
A *regression* is a test the reference passes and an agrad mode does not; the exit
status is 1 when any mode has one, else 0. ``SKIPS`` lists the tests deselected from
the agrad runs, each with the reason (the suite itself is wrong or flaky there).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "MODES",
    "SKIPS",
    "Run",
    "compare",
    "main",
    "outcomes",
    "suite_command",
    "pytest_runtest_setup",
    "run_all",
]

#: Mode -> (ARRAY_API_TESTS_MODULE, extra pytest arguments).
MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "reference": ("array_api_strict", ()),
    "passthrough": ("agrad.array_api_strict", ()),
    "traced": ("agrad.testing.traced_strict", ("-p", "agrad.testing.traced_strict")),
}

#: Test node ids (relative to the suite's root) deselected from agrad's runs: the reason.
#: Empty: the special-case tests that drew their input differently in each process (and
#: so passed or failed with the draw, array_api_strict too) are made the same in every
#: run by :func:`pytest_runtest_setup`.
SKIPS: dict[str, str] = {}


class Run:
    """One finished pytest run of the suite: its mode, outcomes, seconds and exit status."""

    def __init__(self, mode: str, outcomes: dict[str, str], seconds: float, status: int):
        self.mode = mode
        self.outcomes = outcomes
        self.seconds = seconds
        self.status = status

    def count(self, outcome: str) -> int:
        """How many tests ended with ``outcome`` (``passed``, ``failed``, ``skipped``)."""
        return sum(1 for o in self.outcomes.values() if o == outcome)


def suite_command(
    suite: Path, junit: Path, *, max_examples: int, extra: Sequence[str], deselect: Sequence[str]
) -> list[str]:
    """The pytest command line for one run of the suite at ``suite``."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(suite / "array_api_tests"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--max-examples={max_examples}",
        "--derandomize",
        "--disable-deadline",
        f"--junitxml={junit}",
        "-p",
        "agrad.testing.array_api_suite",  # pytest_runtest_setup, also under -m
        *extra,
    ]
    for nodeid in deselect:
        cmd.append(f"--deselect={nodeid}")  # node ids are relative to the suite root
    return cmd


def pytest_runtest_setup(item: object) -> None:
    """Pytest hook (this module is a plugin of every run): the same ``random`` state per test."""
    random.seed(0)


def outcomes(junit: Path) -> dict[str, str]:
    """``{"array_api_tests/test_x.py::test_y[id]": outcome}`` from a JUnit XML report.

    ``failed`` (a failure or an error, in setup, call or teardown), ``skipped`` or
    ``passed``; a test reported twice (an error in teardown) keeps its worst outcome.
    """
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    result: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        key = f"{module}.py::{case.get('name')}"
        tags = {child.tag for child in case}
        outcome = (
            "failed"
            if tags & {"failure", "error"}
            else "skipped"
            if "skipped" in tags
            else "passed"
        )
        if rank[outcome] >= rank[result.get(key, "passed")]:
            result[key] = outcome
    return result


def compare(reference: Run, run: Run) -> list[str]:
    """The tests ``reference`` passes and ``run`` does not (skipped, failed or missing)."""
    return sorted(
        t
        for t, o in reference.outcomes.items()
        if o == "passed" and run.outcomes.get(t) != "passed" and t not in SKIPS
    )


def _environment(module: str, version: str) -> dict[str, str]:
    import agrad

    env = dict(os.environ)
    src = str(Path(agrad.__file__).resolve().parents[1])  # agrad importable from any folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.update(ARRAY_API_TESTS_MODULE=module, ARRAY_API_TESTS_VERSION=version)
    return env


def run_all(
    suite: Path, modes: Sequence[str], *, version: str, max_examples: int, jobs: int, workdir: Path
) -> dict[str, Run]:
    """Run the suite once per mode, at most ``jobs`` at a time; pytest's output goes to files."""
    pending = list(modes)
    running: dict[str, tuple[subprocess.Popen[bytes], float, Path]] = {}
    done: dict[str, Run] = {}
    while pending or running:
        while pending and len(running) < max(jobs, 1):
            mode = pending.pop(0)
            module, extra = MODES[mode]
            junit = workdir / f"{mode}.xml"
            deselect = list(SKIPS) if mode != "reference" else []
            cmd = suite_command(
                suite, junit, max_examples=max_examples, extra=extra, deselect=deselect
            )
            with open(workdir / f"{mode}.log", "wb") as log:
                proc = subprocess.Popen(
                    cmd,
                    cwd=workdir,
                    env=_environment(module, version),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            running[mode] = (proc, time.perf_counter(), junit)
        time.sleep(0.2)
        for mode, (proc, start, junit) in list(running.items()):
            status = proc.poll()
            if status is None:
                continue
            del running[mode]
            seconds = time.perf_counter() - start
            found = outcomes(junit) if junit.exists() else {}
            done[mode] = Run(mode, found, seconds, status)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the counts, timings and regressions; 1 if any regression."""
    parser = argparse.ArgumentParser(prog="python -m agrad.testing.array_api_suite")
    parser.add_argument("--suite", type=Path, default=Path("../shared/array-api-tests"))
    parser.add_argument("--modes", default="passthrough,traced", help="comma-separated")
    parser.add_argument("--version", default="2024.12", help="ARRAY_API_TESTS_VERSION")
    parser.add_argument("--max-examples", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=min(3, os.cpu_count() or 1))
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and XML here")
    args = parser.parse_args(argv)
    suite = args.suite.resolve()
    if not (suite / "array_api_tests").is_dir():
        print(f"array_api_suite: no array-api-tests checkout at {suite}", file=sys.stderr)
        return 2
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES or m == "reference"]
    if unknown:
        print(f"array_api_suite: unknown modes {unknown}; choose from passthrough, traced")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep.resolve() if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        runs = run_all(
            suite,
            ["reference", *modes],
            version=args.version,
            max_examples=args.max_examples,
            jobs=args.jobs,
            workdir=workdir,
        )
        return _report(runs, modes, workdir, args)


def _report(runs: dict[str, Run], modes: list[str], workdir: Path, args: argparse.Namespace) -> int:
    print(
        f"Array API suite {args.version}, {args.max_examples} examples, derandomized, "
        f"{args.jobs} runs at a time:"
    )
    for run in runs.values():
        module = MODES[run.mode][0]
        print(
            f"  {run.mode:<12} {module:<30} {run.count('passed'):5d} passed "
            f"{run.count('failed'):4d} failed {run.count('skipped'):3d} skipped "
            f"in {run.seconds:6.1f} s"
        )
    reference = runs["reference"]
    if not reference.outcomes:
        print(f"the reference run reported nothing; see {workdir / 'reference.log'}")
        return 1
    for nodeid, reason in SKIPS.items():
        print(f"  deselected from agrad's runs: {nodeid}: {reason}")
    bad = 0
    for mode in modes:
        lost = compare(reference, runs[mode])
        gained = sorted(
            t
            for t, o in runs[mode].outcomes.items()
            if o == "passed" and reference.outcomes.get(t) != "passed"
        )
        print(f"{mode}: {len(lost)} tests array_api_strict passes and agrad does not")
        for t in lost:
            print(f"  {runs[mode].outcomes.get(t, 'missing'):<8} {t}")
        if gained:
            print(f"{mode}: {len(gained)} tests agrad passes and array_api_strict does not")
        bad += len(lost)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
