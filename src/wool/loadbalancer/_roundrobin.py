"""The built-in balancers: round robin (the default) and least loaded."""

from __future__ import annotations

from collections.abc import Sequence

from wool.discovery import WorkerMetadata
from wool.loadbalancer._protocol import CallInfo, Candidate

__all__ = ["LeastLoadedLoadBalancer", "RoundRobinLoadBalancer"]


class RoundRobinLoadBalancer:
    """Takes the candidates in turn (the default load balancer).

    The reference implementation of :class:`~wool.LoadBalancerLike`. :meth:`choose` is
    given the usable workers for each call, so the balancer keeps no list of its own: a
    worker that joins, leaves or is suspended is simply among the candidates or not. A
    worker at its capacity is not a candidate for a root call, so round robin skips
    full workers, and a root call waits in the caller while every worker is full.
    """

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, call: CallInfo, candidates: Sequence[Candidate]) -> WorkerMetadata | None:
        """The candidate after the one chosen last time (in the order given).

        Never returns None: it does not make calls wait beyond what the pool does.
        """
        self._turn %= len(candidates)
        chosen = candidates[self._turn]
        self._turn += 1
        return chosen.worker


class LeastLoadedLoadBalancer:
    """Sends each call to the worker with the fewest calls in flight from this caller,
    relative to its advertised capacity (``wool worker --concurrency``).

    A worker's share is ``load / capacity``; a worker that advertises no limit counts as
    large as the largest capacity among the candidates (1 when none advertises one). Ties
    go to the worker after the one chosen last, so equal workers take turns. Only this
    caller's calls are counted: other callers' calls on the same workers are not seen.
    """

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, call: CallInfo, candidates: Sequence[Candidate]) -> WorkerMetadata | None:
        """The least loaded candidate; never None."""
        largest = max((c.worker.capacity or 0 for c in candidates), default=0) or 1
        start = self._turn % len(candidates)
        ordered = [*candidates[start:], *candidates[:start]]
        chosen = min(ordered, key=lambda c: c.load / (c.worker.capacity or largest))
        self._turn = candidates.index(chosen) + 1
        return chosen.worker
