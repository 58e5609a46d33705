"""The package's modules import each other without a cycle, counting every import of a project module
anywhere in a file: at module level, under ``TYPE_CHECKING`` and inside functions.

An edge goes from a module to the module it names: ``from .x import y`` names ``x`` (or the submodule
``x.y`` when ``y`` is one), ``from . import y`` names the submodule ``y`` or else the package itself.
Importing a submodule also runs its package's ``__init__``; that implicit edge is not counted, so a
package may re-export its submodules while they import their siblings directly, never the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "pytest_int8gate"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` names its package)."""
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path, known: set[str]) -> Iterator[str]:
    """Every project module ``module`` imports, wherever in the file the import statement sits."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in known else base


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in imported_names(module, path, known):
            assert name in known, f"{path}: imports {name}, which is not a module of the package"
            targets.add(name)
        graph[module] = targets
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative), components in no particular order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    self_imports = sorted(module for module, targets in graph.items() if module in targets)
    assert not self_imports, f"modules that import themselves: {self_imports}"
    cycles = [c for c in strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, "import cycles (each line one strongly connected component):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


#: What the result types must never load: the model and runtime libraries, and pytest itself.
HEAVY = ("onnx", "onnxruntime", "tensorrt", "pytest")


def external_imports(path: Path) -> set[str]:
    """Top-level names of the non-project packages a file imports anywhere."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition(".")[0])
    return found - {PACKAGE}


def test_result_modules_import_no_algorithm() -> None:
    """Reports, the codec and the plugin read results without loading an algorithm: nothing the result
    types and the names users choose among reach, directly or through each other, imports a model or
    runtime library (or pytest)."""
    graph = import_graph()
    files = module_files()
    for root in (f"{PACKAGE}.results", f"{PACKAGE}.budget", f"{PACKAGE}.choices"):
        reached, pending = {root}, [root]
        while pending:
            for target in graph[pending.pop()] - reached:
                reached.add(target)
                pending.append(target)
        for module in sorted(reached):
            heavy = sorted(external_imports(files[module]) & set(HEAVY))
            assert not heavy, f"{root} reaches {module}, which imports {heavy}"


def test_diagnostics_and_the_search_never_see_the_pipeline() -> None:
    graph = import_graph()
    for module, targets in graph.items():
        if module.startswith((f"{PACKAGE}.diagnostics", f"{PACKAGE}.bisect")):
            assert f"{PACKAGE}.pipeline" not in targets, f"{module} imports the pipeline"


# ---- the checker itself finds what it must -----------------------------------------------------------


def test_cycles_are_found_whichever_import_closes_them() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    components = strongly_connected_components(graph)
    assert sorted(c for c in components if len(c) > 1) == [["a", "b", "c"]]
    assert sorted(len(c) for c in components) == [1, 1, 3]


P = PACKAGE
TYPE_CHECKED = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import GatePipeline\n"


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (f"{P}.example", "from . import gate\n", {f"{P}.gate"}),
        (f"{P}.example", "from .backends import onnxruntime\n", {f"{P}.backends.onnxruntime"}),
        (f"{P}.example", "from .backends import Runner\n", {f"{P}.backends"}),
        (f"{P}.backends.example", "from . import onnxruntime\n", {f"{P}.backends.onnxruntime"}),
        (f"{P}.backends.example", "from .. import errors\n", {f"{P}.errors"}),
        (f"{P}.backends.example", "from ..errors import DataError\n", {f"{P}.errors"}),
        (f"{P}.example", TYPE_CHECKED, {f"{P}.pipeline"}),
        (f"{P}.example", "def f():\n    import pytest_int8gate.bisect\n", {f"{P}.bisect"}),
        (f"{P}.example", "from . import __version__\n", {P}),
        (f"{P}.example", "import numpy\nfrom os import path\n", set()),
    ],
)
def test_every_kind_of_import_is_an_edge(
    tmp_path: Path, module: str, source: str, expected: set[str]
) -> None:
    path = tmp_path / "example.py"
    path.write_text(source)
    assert set(imported_names(module, path, set(module_files()))) == expected
