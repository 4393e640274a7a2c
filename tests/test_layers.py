"""The import graph is one-way: no cycle between modules or packages, no layer importing a higher one.

The layers, bottom up (the README's table of parts says the same)::

    settings -> events -> runtime -> bridge | workers | gateway -> fechatter_notify (the command-line shell)

A package imports only packages of lower layers; the three process packages do not import each other.
Another package's names come from its face (``from bridge import X``: what its ``__init__`` lists in
``__all__``), never from its modules, so a package can reorganise its modules without breaking others.
Imports under ``if TYPE_CHECKING:`` are left out of the cycle check (they never run) but not out of
the layer check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Each package and its layer (higher may import lower, never the other way; equal layers are siblings).
LAYERS: dict[str, int] = {
    "settings": 0,
    "events": 1,
    "runtime": 2,
    "bridge": 3,
    "workers": 3,
    "gateway": 3,
    "fechatter_notify": 4,
}


@dataclass(frozen=True)
class Import:
    importer: str  # module name, e.g. bridge.app
    imported: str  # module name as written, e.g. settings.model
    names: tuple[str, ...]  # for `from x import a, b`; empty for `import x`
    line: int
    type_checking: bool

    @property
    def where(self) -> str:
        return f"{self.importer.replace('.', '/')}.py:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(node: ast.AST, module: str, type_checking: bool) -> Iterator[Import]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]), module, True)
            for stmt in child.orelse:
                yield from _imports(ast.Module(body=[stmt], type_ignores=[]), module, type_checking)
            continue
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield Import(module, alias.name, (), child.lineno, type_checking)
        elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
            yield Import(module, child.module, tuple(a.name for a in child.names), child.lineno, type_checking)
        else:
            yield from _imports(child, module, type_checking)


def project_imports() -> list[Import]:
    """Every import of a project module by a project module (also those inside functions)."""
    found = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            found += [i for i in _imports(tree, module, False) if i.imported.split(".")[0] in LAYERS]
    return found


def modules() -> set[str]:
    return {module_name(p) for package in LAYERS for p in (ROOT / package).rglob("*.py")}


def resolve(imp: Import, known: set[str]) -> set[str]:
    """The project modules an import needs: the module, or for ``from pkg import sub`` the submodule.

    (A package's ``__init__`` runs before any of its submodules whatever imports them, so that
    implicit step is no edge of its own.)
    """
    submodules = {f"{imp.imported}.{name}" for name in imp.names} & known
    names_from_module = len(submodules) < len(imp.names) or not imp.names
    return submodules | ({imp.imported} & known if names_from_module else set())


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package(module: str) -> str:
    return module.split(".")[0]


def test_every_package_has_a_layer() -> None:
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in ("tests", "bench")}
    assert tops == set(LAYERS), "add the new package to LAYERS here and to the README's table of parts"


def test_no_layer_imports_a_higher_or_sibling_one() -> None:
    wrong = [f"{i.where}: {package(i.importer)} (layer {LAYERS[package(i.importer)]}) imports {i.imported} "
             f"(layer {LAYERS[package(i.imported)]})"
             for i in project_imports()
             if package(i.importer) != package(i.imported)
             and LAYERS[package(i.imported)] >= LAYERS[package(i.importer)]]
    assert not wrong, "\n".join(wrong)


def test_other_packages_are_imported_through_their_face() -> None:
    deep = [f"{i.where}: from {i.imported} import ...: import it from {package(i.imported)} (its __all__)"
            for i in project_imports()
            if package(i.importer) != package(i.imported) and i.imported != package(i.imported)]
    assert not deep, "\n".join(deep)


def test_packages_import_no_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for i in project_imports():
        if not i.type_checking and package(i.importer) != package(i.imported):
            graph.setdefault(package(i.importer), set()).add(package(i.imported))
    assert not cycles(graph)


def test_modules_import_no_cycle() -> None:
    known = modules()
    graph: dict[str, set[str]] = {}
    for i in project_imports():
        if not i.type_checking:
            graph.setdefault(i.importer, set()).update(resolve(i, known) - {i.importer})
    assert not cycles(graph), "module import cycles (each line one cycle):\n" + "\n".join(
        " <-> ".join(c) for c in cycles(graph))


def test_gateway_modules_import_no_cycle_even_for_the_type_checker() -> None:
    """The check above leaves out ``if TYPE_CHECKING:`` imports; inside the gateway they count too.

    Its application keys (gateway/state.py) name the resources' types for the type checker only,
    and a module holding a resource's type must not use the keys itself (as the ``GET /events``
    handler once shared a module with the stream registry it reads from ``state.STREAMS``).
    """
    known = modules()
    graph: dict[str, set[str]] = {}
    for i in project_imports():
        if package(i.importer) == "gateway":
            graph.setdefault(i.importer, set()).update(
                {m for m in resolve(i, known) if package(m) == "gateway"} - {i.importer})
    assert not cycles(graph), "gateway module import cycles (each line one cycle):\n" + "\n".join(
        " <-> ".join(c) for c in cycles(graph))


@pytest.mark.parametrize("name", ["runtime", "bridge", "workers", "gateway"])
def test_a_face_loads_its_names_on_first_use(name: str) -> None:
    """Importing a package (and so any of its submodules) must not import its process: ``import
    gateway.frames`` first runs ``gateway/__init__.py``, which must not import the app."""
    code = f"import sys, {name}; print(sorted(m for m in sys.modules if m.startswith('{name}.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() in ("[]", "['runtime.faces']"), out.stdout
