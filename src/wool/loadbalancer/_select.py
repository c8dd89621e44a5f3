"""Choosing a worker for a call: the caller's loads, capacity, and waiting for a slot."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import anyio

from wool._errors import NoWorkersAvailable, WoolError
from wool.discovery import WorkerMetadata
from wool.loadbalancer._protocol import CallInfo, Candidate, LoadBalancerLike

__all__ = ["Selector"]

log = logging.getLogger("wool.client")


class Selector:
    """One caller's side of load balancing: the calls it has in flight on each worker,
    and the wait of calls for which no worker may be chosen yet.

    A root call goes only to a worker with a free slot of its advertised capacity (counting
    this caller's root calls); while every usable worker is full it waits for one to free,
    bounded only by the caller's deadline. A call the balancer makes wait, or one for which
    there is no usable worker, waits up to ``wait_for_workers``.
    """

    def __init__(
        self,
        balancer: LoadBalancerLike,
        *,
        wait_for_workers: float,
        description: str,
        notify: Callable[[], None],
        left_out: Callable[[], str] | None = None,
    ) -> None:
        self._balancer = balancer
        # Why discovery left workers out ("" if it does not say): told to a starved call.
        self._left_out = left_out
        self._wait_for_workers = wait_for_workers
        self._description = description
        self._notify = notify  # wakes the calls waiting in choose()
        self._load: Counter[str] = Counter()
        self._roots: Counter[str] = Counter()

    def load(self, worker_id: str) -> int:
        """Calls this caller has in flight on the worker."""
        return self._load[worker_id]

    async def choose(
        self,
        call: CallInfo,
        usable: Callable[[CallInfo], list[WorkerMetadata]],
        changed: Callable[[], Awaitable[None]],
    ) -> WorkerMetadata:
        """A worker for ``call``, counted as holding it until :meth:`release`.

        Raises:
            wool.NoWorkersAvailable: no usable worker, or none the balancer accepts, within
                ``wait_for_workers``; or the balancer said none will do.
            wool.WoolError: the balancer raised or returned a worker it was not offered.
        """
        starved_since: float | None = None
        while True:
            workers = usable(call)
            candidates = [
                Candidate(w, self._load[w.id]) for w in workers if call.nested or self._free(w)
            ]
            if candidates:
                worker = self._ask(call, candidates)
                if worker is not None:
                    self._hold(worker.id, call)
                    return worker
            if workers and not candidates:
                starved_since = None  # every worker is full: a slot frees when a call ends
                log.debug("%r waits for a free worker in %s", call.routine, self._description)
                await changed()
                continue
            if starved_since is None:
                starved_since = anyio.current_time()
            with anyio.move_on_after(starved_since + self._wait_for_workers - anyio.current_time()):
                await changed()
                continue
            raise self._starved(call, declined=bool(candidates))

    def release(self, worker_id: str, call: CallInfo) -> None:
        """The call chosen for ``worker_id`` has finished there."""
        self._load[worker_id] -= 1
        if not call.nested:
            self._roots[worker_id] -= 1
        self._load += Counter()  # drops the workers with nothing in flight
        self._roots += Counter()
        self._notify()

    def _free(self, worker: WorkerMetadata) -> bool:
        return worker.capacity is None or self._roots[worker.id] < worker.capacity

    def _hold(self, worker_id: str, call: CallInfo) -> None:
        self._load[worker_id] += 1
        if not call.nested:
            self._roots[worker_id] += 1

    def _ask(self, call: CallInfo, candidates: list[Candidate]) -> WorkerMetadata | None:
        try:
            worker = self._balancer.choose(call, candidates)
        except NoWorkersAvailable:
            raise
        except Exception as exc:
            raise WoolError(
                f"load balancer {self._balancer!r} failed choosing a worker for "
                f"{call.routine!r}: {exc!r}; the call was not sent"
            ) from exc
        if worker is None:
            return None
        if not any(c.worker.id == worker.id for c in candidates):
            raise WoolError(
                f"load balancer {self._balancer!r} chose {worker!r} for {call.routine!r}, "
                "which is not among the candidates it was given; return the `worker` of one "
                "of them, or None to wait"
            )
        return next(c.worker for c in candidates if c.worker.id == worker.id)

    def _starved(self, call: CallInfo, *, declined: bool) -> NoWorkersAvailable:
        waited = f"waited {self._wait_for_workers:g} s"
        if declined:
            return NoWorkersAvailable(
                f"the load balancer of {self._description} accepted none of its workers for "
                f"{call.routine!r} ({waited})"
            )
        reasons = self._left_out() if self._left_out is not None else ""
        if reasons:
            return NoWorkersAvailable(
                f"{self._description} has no usable workers ({waited}); these were left "
                f"out: {reasons}"
            )
        return NoWorkersAvailable(
            f"{self._description} has no workers ({waited}); "
            "check that its workers started and match the pool's tags"
        )
