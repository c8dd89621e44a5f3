"""Whether an async generator may be run ahead of its caller without changing what it does.

Running a generator ahead resumes it with None before the caller says what to send, and
leaves it at a later ``yield`` when the caller throws an exception in. Both are invisible
only for a generator that ignores the values sent to it and catches nothing at its yields.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import textwrap
from collections.abc import Iterator
from typing import Any

__all__ = ["reads_ahead_safely"]

log = logging.getLogger("wool.routine")

_Scope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


@functools.lru_cache(maxsize=1024)
def reads_ahead_safely(fn: Any) -> bool:
    """True when no ``yield`` of ``fn`` uses the value sent to it or sits in a ``try``
    block with an ``except`` clause. False too when the source cannot be read."""
    node = _definition(fn)
    if node is None:
        log.debug("no source for %r: it is stepped without reading ahead", fn)
        return False
    return all(_ignores_input(yield_, inside) for yield_, inside in _yields(node.body, False))


def _definition(fn: Any) -> ast.AsyncFunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == fn.__name__:
            return node
    return None


def _yields(nodes: list[ast.stmt], catching: bool) -> Iterator[tuple[ast.stmt, bool]]:
    """Each statement holding a ``yield`` of this function, and whether an ``except``
    clause around it would catch what is thrown in there."""
    for node in nodes:
        if isinstance(node, _Scope):
            continue  # a nested function's yields are its own
        if isinstance(node, (ast.Try, ast.TryStar)):
            yield from _yields(node.body, catching or bool(node.handlers))
            for handler in node.handlers:
                yield from _yields(handler.body, catching)
            yield from _yields(node.orelse, catching)
            yield from _yields(node.finalbody, catching)
            continue
        children = [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
        if isinstance(node, ast.Match):
            children = [stmt for case in node.cases for stmt in case.body]
        if children:
            yield from _yields(children, catching)
        if any(isinstance(expr, ast.Yield) for expr in _expressions(node)):
            yield node, catching


def _expressions(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt) or isinstance(child, _Scope):
            continue
        yield child
        yield from _expressions(child)


def _ignores_input(statement: ast.stmt, catching: bool) -> bool:
    # Only a bare ``yield value`` statement drops what was sent.
    return (
        not catching
        and isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Yield)
        and sum(isinstance(e, ast.Yield) for e in _expressions(statement)) == 1
    )
