"""The shape of the packages: no import cycle among bench/ and methods/ modules, no file over
400 lines, no function over 80, and the harness never imports the runner as a library."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {
    f"{p.parent.name}.{p.stem}": p
    for pkg in ("bench", "methods")
    for p in sorted((ROOT / pkg).glob("*.py"))
    if p.stem != "__init__"
}


def imports(path: Path) -> set[str]:
    """bench./methods. modules ``path`` imports anywhere, inside functions too (a lazy import
    only hides a cycle), except under ``if TYPE_CHECKING:``."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            out.update(n for n in names if n in MODULES)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as a list of modules, or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(n: str, path: list[str]) -> list[str]:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (cycle := visit(m, [*path, m])):
                return cycle
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state and (cycle := visit(n, [n])):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = {m: imports(p) for m, p in MODULES.items()}
    assert find_cycle(graph) == []
    # Only the commands run a benchmark; nothing takes measurements from the runner.
    users = {m for m, deps in graph.items() if "bench.runner" in deps}
    assert users <= {"bench.cli", "bench.stability"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_and_functions_stay_small(module):
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= 400
    long = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(ast.parse(text))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno >= 80
    ]
    assert long == []
