"""Choosing the worker for each call."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from wool.discovery import WorkerMetadata

__all__ = ["LoadBalancerLike", "RoundRobinLoadBalancer"]


@runtime_checkable
class LoadBalancerLike(Protocol):
    """Keeps the set of usable workers and picks one per call."""

    def add(self, worker: WorkerMetadata) -> None:
        """A worker joined or changed its metadata."""
        ...

    def remove(self, worker_id: str) -> None:
        """A worker left or was found dead; unknown ids are ignored."""
        ...

    def choose(self) -> WorkerMetadata | None:
        """The worker for the next call, or None when there is none."""
        ...


class RoundRobinLoadBalancer:
    """Cycles through the workers in the order they joined (the default load balancer).

    Implements :class:`~wool.LoadBalancerLike`; ``len()`` is the number of workers it has.
    """

    def __init__(self) -> None:
        self._workers: dict[str, WorkerMetadata] = {}
        self._order: list[str] = []
        self._next = 0

    def add(self, worker: WorkerMetadata) -> None:
        if worker.id not in self._workers:
            self._order.append(worker.id)
        self._workers[worker.id] = worker

    def remove(self, worker_id: str) -> None:
        if self._workers.pop(worker_id, None) is not None:
            self._order.remove(worker_id)

    def choose(self) -> WorkerMetadata | None:
        if not self._order:
            return None
        self._next %= len(self._order)
        worker = self._workers[self._order[self._next]]
        self._next += 1
        return worker

    def __len__(self) -> int:
        return len(self._order)
