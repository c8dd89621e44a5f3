"""The shape of the package: layers without cycles, modules of a readable size."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import wool

ROOT = Path(wool.__file__).parent
MAX_LINES = 600


def _part(path: Path) -> str:
    """The top-level package (or module) of wool a file belongs to."""
    first = path.relative_to(ROOT).parts[0]
    return first.removesuffix(".py")


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        part = _part(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                pieces = name.split(".")
                if pieces[0] == "wool" and len(pieces) > 1 and pieces[1] != part:
                    edges[part].add(pieces[1])
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_packages_of_wool_import_each_other_without_cycles() -> None:
    edges = _imports()
    edges.pop("__init__", None)  # the public face imports everything, and nothing imports it
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges) or [])}"


def test_pools_and_workers_share_the_client_runtime_and_not_each_other() -> None:
    edges = _imports()
    assert "client" in edges["pool"] and "client" in edges["worker"]
    assert "pool" not in edges["worker"] and "pool" not in edges["client"]
    assert "worker" not in edges["client"]


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in ROOT.rglob("*.py")
        if "_protocol" not in path.parts and (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
