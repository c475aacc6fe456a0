"""The import graph of the project: every module imports, and no import cycle hides anywhere.

Python runs module-level imports when a module is first imported, so a cycle among them is a
load-order bug waiting to happen; the usual dodge is a function-level (or ``TYPE_CHECKING``)
import, which hides the cycle instead of removing it. So the graph checked here holds every
import of a project module, wherever it stands: module level, inside a function, or under
``if TYPE_CHECKING:``. A function-level import stays allowed for what it is good for (keeping
sklearn out of the API, keeping the CLI's start fast), never to break a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Import name -> folder. The rooms api/, worker/ and shared/ are installed as predq.api,
#: predq.worker and predq.shared (predq/api and friends are links to them).
PACKAGES = {"predq": "predq", "predq.api": "api", "predq.worker": "worker",
            "predq.shared": "shared"}


def _modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).parts[:2] in {("predq", r) for r in ("api", "worker",
                                                                            "shared")}:
                continue  # the links; their modules are listed under their own folder
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module ``name`` refers to (itself, or the package that holds it)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> list[tuple[str, int, str]]:
    """(imported project module, line, where: "module" | "function" | "type-checking")."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, int, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = where
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                inner = "function"
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                if where == "module":
                    inner = "type-checking"
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from shared import metrics`` imports the module
                # predq.shared.observability.metrics.
                names = [f"{base}.{alias.name}" for alias in child.names] or [base]
            else:
                visit(child, inner)
                continue
            for name in names:
                target = _target(name)
                if target is not None and target != module:
                    found.append((target, child.lineno, inner))

    visit(tree, "module")
    return sorted(set(found))


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return components


def _describe(component: list[str]) -> str:
    members = set(component)
    lines = [f"{module}:{line} imports {target} ({where})"
             for module in component for target, line, where in GRAPH[module]
             if target in members]
    return "cycle among " + ", ".join(component) + ":\n  " + "\n  ".join(lines)


def test_the_graph_sees_the_project() -> None:
    # Guards the checks below against passing vacuously (e.g. after a package moves).
    assert {"predq.api.app", "predq.worker.app", "predq.shared.errors", "predq.cli"} <= set(MODULES)
    assert ("predq.api.problems", "module") in {(t, w) for t, _, w in GRAPH["predq.api.app"]}
    assert any(w == "function" for edges in GRAPH.values() for _, _, w in edges)


def test_no_cycle_among_module_level_imports() -> None:
    edges = {m: {t for t, _, w in imports if w == "module"} for m, imports in GRAPH.items()}
    assert not [_describe(c) for c in _cycles(edges)]


def test_no_function_level_or_type_checking_import_hides_a_cycle() -> None:
    edges = {m: {t for t, _, _ in imports} for m, imports in GRAPH.items()}
    assert not [_describe(c) for c in _cycles(edges)]


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports(package: str) -> None:
    """Every module of ``package`` imports, in a fresh interpreter."""
    # predq.__main__ runs the CLI when imported.
    modules = sorted(m for m in MODULES if m.split(".")[0] == package and m != "predq.__main__")
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _room(module: str) -> str:
    """api, worker, shared, client, or cli (the rest of predq/)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("api", "worker", "shared", "client"):
        return parts[1]
    return "cli"


#: Which rooms each room may import (ARCHITECTURE.md: shared imports third-party only; the API
#: and the workers speak only through Redis; the client needs nothing of the server).
ALLOWED = {"shared": {"shared"}, "api": {"api", "shared"}, "worker": {"worker", "shared"},
           "client": {"client"}, "cli": {"cli", "api", "worker", "shared", "client"}}


def test_each_room_imports_only_what_it_may() -> None:
    wrong = [f"{module}:{line} ({where}) imports {target}"
             for module, imports in GRAPH.items() for target, line, where in imports
             if _room(target) not in ALLOWED[_room(module)]
             and target != "predq"]  # the package itself holds only __version__
    assert not wrong, "\n".join(wrong)


#: Modules that must import nothing framework-bound (no Celery, kombu, billiard or Redis; not
#: even another project module): only the standard library. So they run, and are tested,
#: without a broker or a worker (docs/design.md, "Batching").
FRAMEWORK_FREE = {"predq.worker.batching.policy", "predq.worker.batching.group"}
FRAMEWORKS = {"celery", "celery_batches", "kombu", "billiard", "redis"}


def _top_level_imports(path: Path) -> set[str]:
    """The top-level name of every import in the file, wherever it stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." if node.level else (node.module or "").partition(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(FRAMEWORK_FREE))
def test_framework_free_modules_import_only_the_standard_library(module: str) -> None:
    imported = _top_level_imports(MODULES[module])
    assert imported, "no import found: the check would pass vacuously"
    assert not imported & FRAMEWORKS, f"{module} imports {sorted(imported & FRAMEWORKS)}"
    wrong = sorted(n for n in imported if n not in sys.stdlib_module_names and n != "__future__")
    assert not wrong, f"{module} imports {wrong}: only the standard library may be"


def test_the_framework_check_sees_a_framework() -> None:
    assert "celery_batches" in _top_level_imports(MODULES["predq.worker.batching.consumer"])
