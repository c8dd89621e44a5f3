"""Whether an async generator may be run ahead of its caller without changing what it does.

Running a generator ahead resumes it with None before the caller says what to send, and
leaves it at a later ``yield`` when the caller throws an exception in. Both are invisible
only for a generator that ignores the values sent to it and whose yields nothing can stop
a thrown exception at: no ``try`` with an ``except`` clause (or a ``finally`` that returns,
breaks or continues) around them, and no ``with`` or ``async with``, whose ``__exit__`` may
swallow or replace the exception (``contextlib.suppress``).
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
    """True when no ``yield`` of ``fn`` uses the value sent to it or sits where a thrown
    exception could be swallowed or replaced (see the module). False too when the source
    cannot be read."""
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
    """Each statement holding a ``yield`` of this function, and whether a ``try`` or
    ``with`` around it could stop what is thrown in there."""
    for node in nodes:
        if isinstance(node, _Scope):
            continue  # a nested function's yields are its own
        if isinstance(node, (ast.Try, ast.TryStar)):
            finally_leaves = _leaves(node.finalbody)
            yield from _yields(node.body, catching or finally_leaves or bool(node.handlers))
            for handler in node.handlers:
                yield from _yields(handler.body, catching or finally_leaves)
            yield from _yields(node.orelse, catching or finally_leaves)
            yield from _yields(node.finalbody, catching)
            continue
        if isinstance(node, (ast.With, ast.AsyncWith)):
            yield from _yields(node.body, True)  # its __exit__ may swallow the exception
            if any(isinstance(expr, ast.Yield) for expr in _expressions(node)):
                yield node, catching
            continue
        children = [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
        if isinstance(node, ast.Match):
            children = [stmt for case in node.cases for stmt in case.body]
        if children:
            yield from _yields(children, catching)
        if any(isinstance(expr, ast.Yield) for expr in _expressions(node)):
            yield node, catching


def _leaves(statements: list[ast.stmt]) -> bool:
    """Whether a ``finally`` block may end by return, break or continue: that drops the
    exception it was unwinding."""
    jumps = (ast.Return, ast.Break, ast.Continue)
    return any(
        isinstance(node, jumps) for statement in statements for node in _walk_here(statement)
    )


def _walk_here(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and what it holds, without nested functions and classes."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, _Scope):
            yield from _walk_here(child)


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
