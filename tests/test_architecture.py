"""The package's floors: a module imports only from its own floor and the floors below it, and
no two modules import each other, however indirectly. Imports inside functions count: a lazy
import is still a dependency. The order is the one docs/architecture.md draws."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "headway"

# bottom to top; a module belongs to the first floor with a prefix that names it
FLOORS = [
    ("ground", ["headway.errors", "headway.stats", "headway.storage", "headway.progress",
                "headway.distributed", "headway.locks", "headway.stopping", "headway.hub"]),
    ("models", ["headway.models"]),
    ("data", ["headway.data"]),
    ("patterns", ["headway.patterns", "headway.pattern_views"]),
    ("scoring", ["headway.scoring"]),
    ("training", ["headway.training"]),
    ("analysis", ["headway.analysis"]),
    ("report", ["headway.report"]),
    ("experiments", ["headway.experiments"]),
    ("app", ["headway.settings", "headway.cli", "headway.commands", "headway.demo",
             "headway.estimate"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def floor(module: str) -> int:
    for i, (_, prefixes) in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and docs/architecture.md")


def imports(module: str) -> set[str]:
    """The headway modules ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import stats` imports a module; `from .x import name` the module x
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem
                     for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "headway" and n in MODULES)
    found.discard(module)
    return found


GRAPH = {m: imports(m) for m in MODULES if m != "headway"}  # the API's lazy table: on top


def test_every_module_imports_only_its_floor_and_below():
    upward = [f"{m} ({FLOORS[floor(m)][0]}) imports {t} ({FLOORS[floor(t)][0]})"
              for m, targets in sorted(GRAPH.items()) for t in sorted(targets)
              if t != "headway" and floor(t) > floor(m)]
    assert not upward, "imports that look up a floor:\n" + "\n".join(upward)


def test_no_import_circles():
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [module, target]))
            elif target not in state:
                visit(target, stack + [module])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_floors_are_the_documented_ones():
    doc = (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
    positions = [doc.find(f"`{prefixes[0].removeprefix('headway.')}") for _, prefixes in FLOORS]
    assert all(p >= 0 for p in positions), "docs/architecture.md names every floor"
