"""The package's shape (issue #12): no import cycle, even through imports inside functions or
under TYPE_CHECKING, and modules and functions a newcomer can read on a screen or two."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "promptdistill"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 120
LONG_OK = "# long:"  # a function may be longer when a comment on its def line says why


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every promptdistill module `path` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports a.b.c when that is a module, else a.b
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if n in known else node.module for n in names]
        found |= {n for n in names if n in known}
    return found


def test_no_import_cycles() -> None:
    known = modules()
    graph = {name: imports_of(path, known) - {name} for name, path in known.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_package_inits_import_nothing() -> None:
    """A subpackage's __init__ is its docstring: importing one module never drags in others."""
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        stmts = [n for n in tree.body if not isinstance(n, ast.Expr)]
        kinds = {type(n).__name__ for n in stmts}
        assert kinds <= {"ImportFrom", "Assign"}, (init, kinds)  # `from __future__`, __version__
        assert all(not isinstance(n, ast.ImportFrom) or n.module == "__future__" for n in stmts), (
            init
        )


def test_modules_and_functions_fit_on_a_screen() -> None:
    too_long: list[str] = []
    for name, path in sorted(modules().items()):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES and LONG_OK not in lines[node.lineno - 1]:
                    too_long.append(f"{name}.{node.name}: {n} lines")
    assert not too_long, too_long
