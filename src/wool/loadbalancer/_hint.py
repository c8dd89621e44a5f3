"""Per-call hints for the load balancer: ``with wool.hint(key="user-42"): ...``."""

from __future__ import annotations

import contextvars
from collections.abc import Generator, Mapping
from contextlib import AbstractContextManager, contextmanager
from types import MappingProxyType

__all__ = ["NO_HINTS", "current_hints", "hint"]

NO_HINTS: Mapping[str, str] = MappingProxyType({})

# A plain contextvars variable, not a wool.ContextVar: hints are read by the caller's
# balancer and are never sent to workers.
_hints: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "wool_hints", default=NO_HINTS
)


def current_hints() -> Mapping[str, str]:
    """The hints in effect in the current context (read once per call by the client)."""
    return _hints.get()


def hint(
    hints: Mapping[str, str] | None = None, /, **more: str
) -> AbstractContextManager[Mapping[str, str]]:
    """Give the pool's load balancer hints about the calls made inside the block.

    Every routine call made in the block, or in a task started in it, is chosen a worker
    with these hints in :attr:`wool.CallInfo.hints`, e.g. ``with wool.hint(key="user-42"):``
    so that a balancer sends all of one user's calls to the same worker. Hints are given
    as keywords, as a mapping (for keys that are not identifiers), or both::

        with wool.hint({"user-id": "42"}, region="eu"):
            await fetch_profile()

    Blocks nest: an inner block adds its hints to the outer ones, and replaces those of the
    same key, until it ends. The hints are read when a call is dispatched: when a coroutine
    routine is awaited, when an async generator routine is asked for its first item.

    Hints stay in the caller: they are not sent to workers, so the calls a routine makes on
    a worker carry only the hints that routine gives with its own ``wool.hint`` (and are
    chosen by that worker's balancer). The built-in balancers ignore hints.

    In an async generator, do not ``yield`` inside the block unless the generator is always
    iterated from one task: ending the block in another task's context raises
    ``ValueError``, as for any context manager that sets a context variable.

    Yields the hints in effect inside the block (read-only).

    Raises:
        TypeError: ``hints`` is not a mapping, a key is not a non-empty string, or a value
            is not a string (raised by the call, before the block is entered).
    """
    if hints is not None and not isinstance(hints, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise TypeError(f"wool.hint takes a mapping of hints, got {hints!r}")
    given = {**(hints if hints is not None else {}), **more}
    for key, value in given.items():
        if not isinstance(key, str) or not key:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"wool.hint keys must be non-empty strings, got {key!r}")
        if not isinstance(value, str):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"wool.hint values must be strings, got {value!r} for {key!r}; "
                f"convert it first (e.g. str(...))"
            )
    return _in_effect(given)


@contextmanager
def _in_effect(given: dict[str, str]) -> Generator[Mapping[str, str]]:
    merged = MappingProxyType({**_hints.get(), **given})
    token = _hints.set(merged)
    try:
        yield merged
    finally:
        _hints.reset(token)
