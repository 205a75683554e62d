"""mkdocs hook: add the pages other parts of agrad contribute, when they exist.

``docs/optim*.md`` (the optimizers), ``differentiability.md``, ``reliability.md``,
``distributed.md`` and ``benchmarks.md`` are written alongside the code they describe;
a nav entry for a missing file would fail ``mkdocs build --strict``, so they are added
here instead. Any other page that no nav entry names is appended by its title, so no
page is left out of the navigation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Optimizer pages in reading order; any other ``optim*.md`` follows alphabetically.
OPTIM_ORDER = (
    "optim",
    "optim-torch-family",
    "optim-optax-family",
    "optim-transforms",
    "optim-schedules",
    "optim-save-load",
)


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("-", " ").replace("_", " ").capitalize()


def _insert_after(nav: list[Any], key: str, entry: dict[str, Any]) -> None:
    for i, item in enumerate(nav):
        if isinstance(item, dict) and key in item:
            nav.insert(i + 1, entry)
            return
    nav.append(entry)


def on_config(config: Any, **kwargs: Any) -> Any:
    """Put the optional pages that exist into the navigation."""
    docs = Path(config["docs_dir"])
    nav = config["nav"]
    rank = {name: i for i, name in enumerate(OPTIM_ORDER)}
    optim = sorted(docs.glob("optim*.md"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    if len(optim) == 1:
        _insert_after(nav, "Concepts", {"Optimizers": optim[0].name})
    elif optim:
        _insert_after(nav, "Concepts", {"Optimizers": [{_title(p): p.name} for p in optim]})
    placed = [
        ("Backends", "Differentiability", "differentiability.md"),
        ("Differentiability", "Reliability", "reliability.md"),
        ("Examples", "Distributed training", "distributed.md"),
    ]
    for after, title, name in placed:
        if (docs / name).exists():
            _insert_after(nav, after, {title: name})
    if (docs / "benchmarks.md").exists():
        nav.append({"Benchmarks": "benchmarks.md"})
    listed = set(_files(nav))
    for page in sorted(docs.rglob("*.md")):
        name = page.relative_to(docs).as_posix()
        if name not in listed and not name.startswith("hooks/"):
            nav.append({_title(page): name})
    return config


def _files(nav: list[Any]) -> list[str]:
    out: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        out += _files(value) if isinstance(value, list) else [value]
    return out
