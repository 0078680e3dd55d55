"""The package's import graph: no cycles (imports inside functions count) and the design's layers.

DESIGN.md: "flows -> tasks -> (agents, models, analysis, lab); analysis -> lab; no import cycles,
not even through imports inside functions. Nothing in lab/ imports from flows/ or tasks/."

The graph is read from the source with ``ast``, not from ``sys.modules``, so an import hidden in a
function body or an ``if`` counts as much as one at the top of a file. Counted: ``import
crashsearch.x``, ``from crashsearch.x import y`` (an edge to ``crashsearch.x.y`` when ``y`` is a
submodule, else to ``crashsearch.x``) and relative imports. Not counted: imports under ``if
TYPE_CHECKING:`` (they never run), and the plugin registries that import a module named in a
string (agents/__init__.py, models/registry.py): the registered module imports the registry, the
registry reaches it only by name at call time, as timm and Ray Tune do.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "crashsearch"
# The repository root is the package; these folders sit beside its subpackages but are not in it.
NOT_IN_PACKAGE = {"tests", "benchmarks", "docs", "build", "dist"}

# The design's layers: a module of the key's folder may import only from these folders.
# Top-level modules (crashsearch, crashsearch.api, crashsearch.__main__) are entry points, above
# every layer, and no layer may import them.
ALLOWED = {
    "flows": {"flows", "tasks", "agents", "models", "analysis", "lab"},
    "tasks": {"tasks", "agents", "models", "analysis", "lab"},
    "agents": {"agents", "lab"},
    "models": {"models", "lab"},
    "analysis": {"analysis", "lab"},
    "lab": {"lab"},
}
# Existing edges that break the layering, each with why it stays for now. Empty is the goal.
LAYER_EXCEPTIONS: dict[tuple[str, str], str] = {
    # replay() runs a policy over a recorded history on the turns loop (lab/turns.py, shared with
    # the campaign and the benchmark) and builds the policies' own HistoryView for it by default;
    # analysis/synthetic.planted_search relies on that default. Moving HistoryView into lab/ would
    # split the policy interface across two layers.
    ("crashsearch.analysis.baselines", "crashsearch.agents.base"): "replay builds the policies' view",
}


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_IN_PACKAGE or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom in the tree, at any depth, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = list(ast.iter_child_nodes(node))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            children = node.orelse
        stack.extend(children)


def module_imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` (at ``path``) imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative: resolve against this module's package
            base = name.split(".") if is_package else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    modules = package_modules(root)
    return {name: module_imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _cycle_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, for the failure message."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth-first from start back to start, inside the component
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def _layer(module: str) -> str | None:
    """The folder (layer) of a module; None for the top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Edges (importer, imported) that the design's layers forbid."""
    bad = []
    for src, targets in graph.items():
        for dst in targets:
            src_layer, dst_layer = _layer(src), _layer(dst)
            if src_layer is None:
                continue  # an entry point may import anything
            if dst_layer is None or dst_layer not in ALLOWED[src_layer]:
                bad.append((src, dst))
    return sorted(bad)


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The checker itself: a cycle held apart by an import inside a function is still a cycle."""
    pkg = tmp_path / "lab"
    pkg.mkdir()
    (tmp_path / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from crashsearch.lab import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from crashsearch.lab import a\n")
    graph = import_graph(tmp_path)
    assert graph["crashsearch.lab.b"] == {"crashsearch.lab.a"}
    assert graph["crashsearch.lab.c"] == set()
    assert find_cycles(graph) == [["crashsearch.lab.a", "crashsearch.lab.b"]]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50, "the walk found too few modules: is ROOT the package?"
    cycles = [f"{', '.join(c)} (e.g. {' -> '.join(_cycle_path(graph, c))})" for c in find_cycles(graph)]
    assert not cycles, "import cycles (imports inside functions count):\n" + "\n".join(cycles)


def test_imports_follow_the_design_layers():
    graph = import_graph()
    bad = [e for e in layer_violations(graph) if e not in LAYER_EXCEPTIONS]
    assert not bad, "imports against DESIGN.md's layers:\n" + "\n".join(f"{a} -> {b}" for a, b in bad)
    stale = [e for e in LAYER_EXCEPTIONS if e not in layer_violations(graph)]
    assert not stale, f"LAYER_EXCEPTIONS lists edges that no longer exist: {stale}"


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_every_layer_is_in_the_package(folder):
    assert (ROOT / folder / "__init__.py").exists()


def test_the_event_reader_is_one_implementation():
    """lab/versions.py re-exports the reader lab/bugfix_log.py holds (the store reads events there,
    which keeps store and versions out of a cycle): a second copy in versions.py would let the
    store's bugfix_events view and the analysis disagree."""
    from crashsearch.lab import bugfix_log, versions

    assert versions.bugfix_events is bugfix_log.bugfix_events
    assert versions.EVENTS_FILE == bugfix_log.EVENTS_FILE
