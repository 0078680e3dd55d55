"""The house's size limits and where command-line code lives (issue 23).

- No function or method of the package (tests and benchmarks are not in it) is over 100 lines,
  and no class has over 20 methods: the weight of a change should not sit in one knot.
- lab/ holds the domain, not the command line: no module under lab/ imports argparse or reads a
  command's parsed arguments (``args.home_dir``, which flows/cli.py sets for every handler).
- Parsing the command line imports no torch, Prefect or pandas: ``crashsearch --help`` and a
  mistyped flag answer at once, and a handler imports the work only when it runs.

The package's modules are found as tests/test_imports.py finds them (``package_modules``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.test_imports import ROOT, package_modules

MAX_FUNCTION_LINES = 100
MAX_METHODS = 20



def oversized(path: Path) -> list[tuple[str, int, str]]:
    """(name, line, what) for each function over MAX_FUNCTION_LINES lines (from its ``def`` to its last
    line, nested functions and methods included) and each class with over MAX_METHODS methods."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append((node.name, node.lineno, f"function of {lines} lines"))
        elif isinstance(node, ast.ClassDef):
            methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body)
            if methods > MAX_METHODS:
                found.append((node.name, node.lineno, f"class of {methods} methods"))
    return found


def _offenders() -> dict[tuple[str, str], str]:
    out = {}
    for path in package_modules().values():
        rel = str(path.relative_to(ROOT))
        for name, line, what in oversized(path):
            out[(rel, name)] = f"{rel}:{line} {name}: {what}"
    return out


def test_the_checker_measures_functions_and_classes(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    methods = "\n".join(f"    def m{i}(self):\n        pass" for i in range(MAX_METHODS + 1))
    source = tmp_path / "m.py"
    source.write_text(f"def fits():\n{body}\n\n\ndef too_long():\n{body}\n    y = 0\n\n\n"
                      f"class Big:\n{methods}\n\n\nclass Small:\n    def m(self):\n        pass\n")
    assert [(name, what) for name, _, what in oversized(source)] == [
        ("too_long", f"function of {MAX_FUNCTION_LINES + 1} lines"), ("Big", f"class of {MAX_METHODS + 1} methods")]


def test_no_function_over_100_lines_and_no_class_over_20_methods():
    offenders = _offenders()
    assert len(package_modules()) > 50, "the walk found too few modules: is ROOT the package?"
    bad = sorted(offenders.values())
    assert not bad, "over the house's limits (split them):\n" + "\n".join(bad)


def _reads_parsed_arguments(tree: ast.AST) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "home_dir" and isinstance(n.value, ast.Name)
               and n.value.id == "args" for n in ast.walk(tree))


def test_lab_holds_no_command_line_code():
    bad = []
    for name, path in package_modules().items():
        if not name.startswith("crashsearch.lab."):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        imports = {alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
        imports |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        if "argparse" in imports:
            bad.append(f"{name} imports argparse")
        if _reads_parsed_arguments(tree):
            bad.append(f"{name} reads a command's arguments (args.home_dir): a handler belongs in flows/commands/")
    assert not bad, "\n".join(bad)


def test_every_command_module_offers_its_arguments_and_its_run_function():
    from crashsearch.flows.cli import COMMANDS, build_parser

    assert len({c.name for c in COMMANDS}) == len(COMMANDS)
    for command in COMMANDS:
        assert command.run.__module__.startswith("crashsearch.flows.commands."), command.name
        assert command.add_arguments.__module__ == command.run.__module__, command.name
        assert command.home in ("writes", "reads", "none"), command.name
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == [c.name for c in COMMANDS]


def test_parsing_the_command_line_imports_no_torch_prefect_or_pandas():
    code = ("import sys; from crashsearch.flows.cli import build_parser; "
            "build_parser().parse_args(['campaign', '--dataset', 'd']); "
            "print(sorted(m for m in ('torch', 'prefect', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
