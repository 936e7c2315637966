#!/usr/bin/env python3
"""Print the import graph of the taskqueue package and fail on cycles and oversized modules.

Reads the source with ``ast`` (nothing is imported or executed), so it runs without Django
settings. Every ``import``/``from ... import`` of a ``taskqueue`` module counts, at module
level or inside a function; ``if TYPE_CHECKING:`` blocks do not (they never run).

    python scripts/import_graph.py            # the graph, then the verdict
    python scripts/import_graph.py --quiet    # the verdict only

Exit status 1 when a cycle exists, a module (migrations aside) is over ``MAX_LINES`` lines,
or a function-local import has no comment saying why on the line before it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "taskqueue"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


class Imports(ast.NodeVisitor):
    """Collect the taskqueue modules one file imports, and its unexplained local imports."""

    def __init__(self, name: str, is_package: bool, modules: set[str], lines: list[str]) -> None:
        self.name = name
        self.is_package = is_package
        self.modules = modules
        self.lines = lines
        self.depth = 0
        self.found: set[str] = set()
        self.unexplained: list[int] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _add(self, target: str, lineno: int) -> None:
        if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            return
        while target and target not in self.modules:
            target = target.rpartition(".")[0]
        if target and target != self.name:
            self.found.add(target)
        if self.depth and not self._explained(lineno):
            self.unexplained.append(lineno)

    def _explained(self, lineno: int) -> bool:
        """A comment on the line before the import, or before the block of imports it is in."""
        index = lineno - 2
        while index >= 0:
            line = self.lines[index].strip()
            if line.startswith("#"):
                return True
            if not line.startswith(("import ", "from ")) and line:
                return False
            index -= 1
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.name, self.is_package, node)
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            self._add(candidate if candidate in self.modules else base, node.lineno)


def build_graph() -> tuple[dict[str, set[str]], dict[str, int], dict[str, list[int]]]:
    files = {
        module_name(path): path
        for path in sorted((ROOT / PACKAGE).rglob("*.py"))
        if "migrations" not in path.parts
    }
    modules = set(files)
    graph: dict[str, set[str]] = {}
    sizes: dict[str, int] = {}
    unexplained: dict[str, list[int]] = {}
    for name, path in files.items():
        text = path.read_text()
        lines = text.splitlines()
        sizes[name] = len(lines)
        visitor = Imports(name, path.name == "__init__.py", modules, lines)
        visitor.visit(ast.parse(text, filename=str(path)))
        graph[name] = visitor.found
        if visitor.unexplained:
            unexplained[name] = visitor.unexplained
    return graph, sizes, unexplained


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="print the verdict only")
    args = parser.parse_args()
    graph, sizes, unexplained = build_graph()
    if not args.quiet:
        for name in sorted(graph):
            targets = ", ".join(sorted(graph[name])) or "-"
            print(f"{name} ({sizes[name]} lines) -> {targets}")
        print()
    failed = False
    for component in find_cycles(graph):
        failed = True
        print("import cycle: " + " <-> ".join(component))
    for name, size in sorted(sizes.items()):
        if size > MAX_LINES:
            failed = True
            print(f"over {MAX_LINES} lines: {name} ({size})")
    for name, linenos in sorted(unexplained.items()):
        failed = True
        where = ", ".join(map(str, linenos))
        print(f"function-local import without a comment saying why: {name} line(s) {where}")
    if not failed:
        print(f"{len(graph)} modules, no import cycle, none over {MAX_LINES} lines")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
