"""The load-balancing seam: what a balancer is told about a call, and how it answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

from wool.discovery import WorkerMetadata
from wool.loadbalancer._hint import NO_HINTS

__all__ = ["CallInfo", "Candidate", "LoadBalancerLike"]


@dataclass(frozen=True)
class CallInfo:
    """The call a worker is being chosen for."""

    #: The routine's qualified name (``Class.method`` for methods).
    routine: str
    #: The routine's ``@wool.routine(tags=...)``: hints for the balancer, never sent.
    tags: frozenset[str] = field(default_factory=frozenset)
    #: 0 for a root call (made outside any routine), 1 for a call made by a root call's
    #: routine, and so on. Only root calls count against a worker's capacity.
    depth: int = 0
    #: The routine is an async generator (the worker is held until it is closed).
    generator: bool = False
    #: The caller's ``with wool.hint(...)`` in effect when the call was made (read-only):
    #: per-call hints for the balancer, such as a key whose calls should share a worker.
    #: Never sent. Not part of the hash (a mapping is not hashable); compared for equality.
    hints: Mapping[str, str] = field(default_factory=lambda: NO_HINTS, hash=False)

    def __post_init__(self) -> None:
        if type(self.hints) is not MappingProxyType:
            object.__setattr__(self, "hints", MappingProxyType(dict(self.hints)))

    @property
    def nested(self) -> bool:
        """The call is made by a routine running on a worker."""
        return self.depth > 0


@dataclass(frozen=True)
class Candidate:
    """A worker the call may go to, with what this caller knows about its load."""

    worker: WorkerMetadata
    #: Calls this caller has in flight on the worker (root and nested, generators included).
    load: int = 0


@runtime_checkable
class LoadBalancerLike(Protocol):
    """Chooses the worker for each call (``WorkerPool(loadbalancer=...)``).

    The pool asks :meth:`choose` once per call, and again whenever the answer was "wait"
    and the workers or their loads changed. The balancer keeps no list of workers: each
    time it is given the usable ones (known, not suspended for failing, and, for a root
    call, with a free slot of their advertised capacity). It runs in the caller's event
    loop and must not block.
    """

    def choose(self, call: CallInfo, candidates: Sequence[Candidate]) -> WorkerMetadata | None:
        """The worker for ``call``, or None to make the call wait.

        ``candidates`` is never empty; return the ``worker`` of one of them. A call told
        to wait is asked about again when a worker joins, leaves or finishes a call, up to
        the pool's ``start_timeout`` (and within the caller's own deadline); then it fails
        with ``wool.NoWorkersAvailable``. Do not make nested calls (``call.nested``) wait
        for a busy worker: their parents hold the slots they would wait for.

        Raises:
            wool.NoWorkersAvailable: none of the candidates will ever do; the call fails at
                once with this exception.
        """
        ...
