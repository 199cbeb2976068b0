"""Architecture rules checked on the source: no import cycle between omnifuse modules, no ``find_spec`` loops.

The import graph is read from the source with :mod:`ast`, without importing anything, so the test sees the
imports that run late too:

- every ``import omnifuse.x`` / ``from omnifuse.x import y`` / relative import, at module level or inside a
  function or method (a function-level import of a module that imports you back is a cycle all the same:
  it only moves the failure to the first call);
- ``from p import y`` is an import of the submodule ``p.y`` when ``y`` is a submodule, else of the package
  ``p`` (its ``__init__``), whose names are what it reads;
- ``importlib.import_module("omnifuse....")`` with a literal name counts as an import of that module;
- imports under ``if TYPE_CHECKING:`` never run and are left out.

Python also initialises a module's parent packages before the module itself (``import p.q`` runs
``p/__init__.py`` first). Those implicit edges are not counted: a package ``__init__`` that re-exports its
submodules would otherwise form a "cycle" with each of them although none can fail. An explicit import of a
package's names from inside that package (``p/q.py`` doing ``from p import Name`` while ``p/__init__.py``
imports ``p.q``) is counted, since it does fail when ``p.q`` is imported first.

No allow-list: every cycle is reported.
"""

from __future__ import annotations

import ast
import textwrap
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "omnifuse"


@dataclass(frozen=True)
class ImportSite:
    """Where ``source`` imports ``target``: file, line, and whether the import runs inside a function."""

    source: str
    target: str
    path: Path
    line: int
    in_function: bool

    def describe(self, root: Path) -> str:
        where = "function-level" if self.in_function else "module-level"
        return f"{self.path.relative_to(root.parent)}:{self.line} ({where})"


def discover_modules(package_dir: Path) -> dict[str, Path]:
    """Module name -> source file for every module of the package at ``package_dir`` (packages by __init__)."""
    root_name = package_dir.name
    modules: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([root_name, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (the guard of imports for annotations only)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _walk_runtime(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node`` that can run, with whether it sits inside a function; skips TYPE_CHECKING bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other, in_function
                yield from _walk_runtime(other, in_function)
            continue
        inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield child, inside
        yield from _walk_runtime(child, inside)


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module named by ``from <level dots><name> import ...`` written in ``module``."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, name] if name else parts)


def _imported_modules(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement (or literal ``import_module`` call) brings in."""
    root = module.split(".")[0]
    found: list[str] = []
    if isinstance(node, ast.Import):
        found = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve_relative(module, is_package, node.level, node.module) if node.level else node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append(sub if sub in modules else base)
    elif isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            value = node.args[0].value
            if isinstance(value, str) and not value.startswith("."):
                found = [value]
    return [m for m in found if m.split(".")[0] == root]


@dataclass
class ImportGraph:
    """``edges``: module -> the package modules it imports; ``sites``: where each edge is written;
    ``missing``: ``file:line: message`` for each import of a package module that does not exist."""

    edges: dict[str, set[str]]
    sites: dict[tuple[str, str], list[ImportSite]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def import_graph(package_dir: Path) -> ImportGraph:
    """The import graph of the package at ``package_dir``, read from its source."""
    modules = discover_modules(package_dir)
    graph = ImportGraph({m: set() for m in modules})
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, in_function in _walk_runtime(tree):
            for target in _imported_modules(node, module, is_package, modules):
                line = getattr(node, "lineno", 0)
                if target not in modules:
                    where = path.relative_to(package_dir.parent)
                    graph.missing.append(f"{where}:{line}: {module} imports {target}, which is not a module")
                elif target != module:  # a module importing its own names reads itself: nothing to initialise
                    graph.edges[module].add(target)
                    site = ImportSite(module, target, path, line, in_function)
                    graph.sites.setdefault((module, target), []).append(site)
    return graph


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of ``graph``, each sorted, in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
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
    return sorted(components)


def _shortest_path(graph: dict[str, set[str]], source: str, target: str, members: set[str]) -> list[str]:
    """The shortest chain ``source -> ... -> target`` inside one component (breadth first, sorted neighbours)."""
    previous: dict[str, str] = {source: source}
    queue = deque([source])
    while queue:
        node = queue.popleft()
        if node == target:
            chain = [target]
            while chain[-1] != source:
                chain.append(previous[chain[-1]])
            return chain[::-1]
        for child in sorted(graph[node] & members):
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"no path {source} -> {target} inside a component")  # cannot happen in a component


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles covering every import that lies on a cycle, each a chain ``a -> b -> ... -> a``.

    Per component of two or more modules, for each import ``u -> v`` inside it not yet on a reported cycle
    (in sorted order), the shortest cycle through it: ``u -> v``, then the shortest way back to ``u``.
    """
    cycles: list[list[str]] = []
    for component in strongly_connected_components(graph):
        if len(component) < 2:
            continue  # self-imports are dropped when the graph is built
        members = set(component)
        covered: set[tuple[str, str]] = set()
        for source in component:
            for target in sorted(graph[source] & members):
                if (source, target) not in covered:
                    cycle = [source, *_shortest_path(graph, target, source, members)]
                    cycles.append(cycle)
                    covered.update(pairwise(cycle))
    return cycles


def format_cycles(cycles: list[list[str]], sites: dict[tuple[str, str], list[ImportSite]], root: Path) -> str:
    """One paragraph per cycle: the chain, then the file and line of each import along it."""
    out = []
    for cycle in cycles:
        lines = [" -> ".join(cycle)]
        for source, target in pairwise(cycle):
            where = ", ".join(dict.fromkeys(site.describe(root) for site in sites[(source, target)]))
            lines.append(f"    {source} imports {target} at {where}")
        out.append("\n".join(lines))
    return "\n".join(out)


def find_spec_calls(package_dir: Path) -> list[str]:
    """``file:line`` of every use of ``find_spec`` (registration by probing for modules) in the package."""
    hits = []
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            named = (isinstance(node, ast.Attribute) and node.attr == "find_spec") or (
                isinstance(node, ast.ImportFrom) and any(alias.name == "find_spec" for alias in node.names)
            )
            if named:
                hits.append(f"{path.relative_to(package_dir.parent)}:{node.lineno}")
    return hits


# ---------------------------------------------------------------------------------------------------- the rules


def test_no_import_cycle_between_omnifuse_modules():
    graph = import_graph(PACKAGE_ROOT)
    cycles = import_cycles(graph.edges)
    assert not cycles, (
        f"{len(cycles)} import cycle(s) between omnifuse modules (function-level imports count; move the shared "
        "code to a module both can import, or pass a callback):\n" + format_cycles(cycles, graph.sites, PACKAGE_ROOT)
    )


def test_every_omnifuse_import_names_an_existing_module():
    missing = import_graph(PACKAGE_ROOT).missing
    assert not missing, "imports of omnifuse modules that do not exist:\n" + "\n".join(missing)


def test_no_find_spec_registration_loops():
    hits = find_spec_calls(PACKAGE_ROOT)
    assert not hits, (
        "importlib.util.find_spec in omnifuse/ (register entries with explicit imports instead): " + ", ".join(hits)
    )


# ---------------------------------------------------------------------------------------------------- the finder


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root / "toy"


TOY = {
    "toy/__init__.py": "from toy.a import f\n",
    # a <-> b through a function-level import in a and a relative import in b
    "toy/a.py": """
        def f():
            from toy import b
            return b
    """,
    "toy/b.py": "from . import a\n",
    # c -> d only under TYPE_CHECKING: no cycle with d -> c
    "toy/c.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from toy.d import D
        else:
            import toy.helpers
    """,
    "toy/d.py": "import toy.c\nclass D: ...\n",
    "toy/helpers.py": "import json\n",
    # a package re-exporting its submodule, which imports a sibling submodule through the package: no cycle
    "toy/sub/__init__.py": "from toy.sub.e import E\n",
    "toy/sub/e.py": "from toy.sub import tools\nclass E: ...\n",
    "toy/sub/tools.py": "X = 1\n",
    # a submodule reading a name from its own package's __init__, which imports it: a cycle
    "toy/p/__init__.py": "from toy.p.q import Q\nLIMIT = 3\n",
    "toy/p/q.py": "from toy.p import LIMIT\nclass Q: ...\n",
    # import_module with a literal name, and a three-module cycle through it
    "toy/x.py": "import toy.y\n",
    "toy/y.py": "from toy import z\n",
    "toy/z.py": """
        import importlib
        def load():
            return importlib.import_module("toy.x")
    """,
}


def test_finder_resolves_imports(tmp_path):
    found = import_graph(_write_package(tmp_path, TOY))
    graph, sites = found.edges, found.sites
    assert graph["toy"] == {"toy.a"}
    assert graph["toy.a"] == {"toy.b"} and sites[("toy.a", "toy.b")][0].in_function
    assert graph["toy.b"] == {"toy.a"}  # relative import resolved, at module level
    assert not sites[("toy.b", "toy.a")][0].in_function
    assert graph["toy.c"] == {"toy.helpers"}  # the TYPE_CHECKING body is skipped, its else branch kept
    assert graph["toy.d"] == {"toy.c"}
    assert graph["toy.sub.e"] == {"toy.sub.tools"}  # a submodule, not the package
    assert graph["toy.p.q"] == {"toy.p"}  # a name of the package: its __init__
    assert graph["toy.z"] == {"toy.x"}  # importlib.import_module("toy.x")


def test_finder_reports_every_cycle_with_its_chain_and_lines(tmp_path):
    package = _write_package(tmp_path, TOY)
    graph = import_graph(package)
    cycles = import_cycles(graph.edges)
    assert cycles == [
        ["toy.a", "toy.b", "toy.a"],
        ["toy.p", "toy.p.q", "toy.p"],
        ["toy.x", "toy.y", "toy.z", "toy.x"],
    ]
    report = format_cycles(cycles, graph.sites, package)
    assert "toy.a -> toy.b -> toy.a" in report
    assert "toy.a imports toy.b at toy/a.py:3 (function-level)" in report
    assert "toy.b imports toy.a at toy/b.py:1 (module-level)" in report
    assert "toy.z imports toy.x at toy/z.py:4 (function-level)" in report


def test_finder_finds_nothing_in_an_acyclic_package(tmp_path):
    acyclic = {k: v for k, v in TOY.items() if k not in ("toy/b.py", "toy/p/q.py", "toy/z.py")}
    acyclic["toy/a.py"] = "def f():\n    return 1\n"
    graph = import_graph(_write_package(tmp_path, acyclic)).edges
    assert import_cycles(graph) == []
    assert len(strongly_connected_components(graph)) == len(graph)


def test_finder_reports_an_import_of_a_missing_module(tmp_path):
    package = _write_package(tmp_path, {"toy/__init__.py": "", "toy/a.py": "\nfrom toy.gone import thing\n"})
    graph = import_graph(package)
    assert graph.missing == ["toy/a.py:2: toy.a imports toy.gone, which is not a module"]
    assert graph.edges == {"toy": set(), "toy.a": set()}


def test_find_spec_is_found(tmp_path):
    package = _write_package(
        tmp_path,
        {
            "toy/__init__.py": "import importlib.util\nfor n in ['a']:\n    importlib.util.find_spec(n)\n",
            "toy/a.py": "from importlib.util import find_spec\n",
            "toy/b.py": "import importlib\n",
        },
    )
    assert find_spec_calls(package) == ["toy/__init__.py:3", "toy/a.py:1"]
