"""The client side of a pool: known workers, connections, and dispatch of calls."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import anyio

from wool._context import absorb, outgoing
from wool._errors import (
    NoPoolError,
    SecurityError,
    SerializationError,
    WorkerLost,
)
from wool._serialization import Payload, too_large
from wool.client._admission import refusal
from wool.client._remote import RemoteGenerator, outcome
from wool.discovery import WorkerMetadata
from wool.events._observe import current_call, observe_call
from wool.loadbalancer import CallInfo, LoadBalancerLike, RoundRobinLoadBalancer
from wool.loadbalancer._hint import current_hints
from wool.loadbalancer._select import Selector
from wool.routine import call_depth
from wool.security import WorkerCredentials
from wool.transport import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    CallStream,
    Client,
    ConnectionLost,
    Limits,
    Portal,
    Rejected,
    RejectedReason,
    Request,
    Response,
    Task,
    Unreachable,
    body_of,
)

__all__ = ["WorkerProxy"]

T = TypeVar("T")

log = logging.getLogger("wool.client")

_CALLER = f"{os.uname().nodename}:{os.getpid()}"


class WorkerProxy:
    """Dispatches routine calls to the workers it knows.

    Discovery says which workers exist (:meth:`add`, :meth:`remove`). A worker whose
    connection fails is suspended: it leaves the rotation until it answers an Info probe
    again, or discovery drops it.
    """

    def __init__(
        self,
        portal: Portal,
        *,
        grace: float,
        keepalive: float | None,
        wait_for_workers: float,
        limits: Limits = DEFAULT_LIMITS,
        loadbalancer: LoadBalancerLike | None = None,
        description: str = "the pool",
        credentials: WorkerCredentials | None = None,
        insecure: bool = False,
        left_out: Callable[[], str] | None = None,
    ) -> None:
        self._portal = portal
        self._credentials = credentials
        self._insecure = insecure
        # Workers this pool must not call (TLS mismatch, failed handshake), and why.
        self._refused: dict[str, SecurityError] = {}
        self.limits = limits
        self._grace = grace
        self._keepalive = keepalive
        self._selector = Selector(
            loadbalancer if loadbalancer is not None else RoundRobinLoadBalancer(),
            wait_for_workers=wait_for_workers,
            description=description,
            notify=self._notify,
            left_out=left_out,
        )
        self._clients: dict[str, Client] = {}
        self._closing: list[Client] = []
        self._closed = False
        self._known: dict[str, WorkerMetadata] = {}
        self._suspects: dict[str, float] = {}  # worker id: when it was suspended
        self._pinned: set[str] = set()
        self._changed = anyio.Event()
        self._ids = map(f"{uuid.uuid4().hex[:12]}-{{}}".format, itertools.count())
        self.description = description

    @property
    def workers(self) -> list[WorkerMetadata]:
        """The workers in rotation."""
        return [w for w in self._known.values() if w.id not in self._suspects]

    @property
    def known(self) -> list[WorkerMetadata]:
        """The workers in rotation and those suspended for failing calls."""
        return list(self._known.values())

    def add(self, worker: WorkerMetadata) -> None:
        known = self._known.get(worker.id)
        if known == worker:
            return
        problem = refusal(worker, self._credentials, self._insecure)
        if problem is not None:
            self.refuse(worker, problem)
            return
        self._refused.pop(worker.id, None)
        if known is not None and known.address != worker.address:
            self._forget_client(worker.id)
        self._known[worker.id] = worker
        self._suspects.pop(worker.id, None)
        log.debug("worker %s at %s joined %s", worker.id, worker.address, self.description)
        self._notify()

    def pin(self, worker: WorkerMetadata) -> None:
        """Keep ``worker`` whatever discovery says: a worker is always there for the nested
        calls of its own routines, also while it drains after withdrawing itself."""
        self._pinned.add(worker.id)
        self.add(worker)

    def refuse(self, worker: WorkerMetadata, error: SecurityError) -> None:
        """Keep ``worker`` out of rotation until discovery reports it anew: calling it
        would break the pool's security settings (or its TLS handshake failed)."""
        if self._refused.get(worker.id) is None:
            log.error("%s will not use worker %s: %s", self.description, worker.id, error)
        self._refused[worker.id] = error
        if self._known.pop(worker.id, None) is not None:
            self._suspects.pop(worker.id, None)
            self._forget_client(worker.id)
        self._notify()

    @property
    def refused(self) -> list[SecurityError]:
        """Why the workers the pool will not call were refused."""
        return list(self._refused.values())

    def remove(self, worker_id: str) -> None:
        self._refused.pop(worker_id, None)
        if worker_id in self._pinned or self._known.pop(worker_id, None) is None:
            return
        self._suspects.pop(worker_id, None)
        self._forget_client(worker_id)
        log.info("worker %s left %s", worker_id, self.description)
        self._notify()

    def _suspend(self, worker: WorkerMetadata, reason: str) -> None:
        if self._closed:
            return
        if worker.id in self._known and worker.id not in self._suspects:
            log.warning("worker %s at %s suspended: %s", worker.id, worker.address, reason)
            self._suspects[worker.id] = anyio.current_time()
            self._notify()

    def suspended_for(self, worker_id: str) -> float:
        """Seconds the worker has been out of rotation for failing calls (0 if it is not)."""
        since = self._suspects.get(worker_id)
        return 0.0 if since is None else anyio.current_time() - since

    async def changed(self) -> None:
        """Wait until the set of workers in rotation changes."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _forget_client(self, worker_id: str) -> None:
        client = self._clients.pop(worker_id, None)
        if client is not None:
            self._closing.append(client)

    def _usable(self, call: CallInfo) -> list[WorkerMetadata]:
        if self._closed:
            raise NoPoolError(call.routine, closed=True)
        workers = self.workers
        if not workers and self._refused:  # nothing to wait for: say why instead
            raise next(reversed(self._refused.values()))
        return workers

    def client(self, worker: WorkerMetadata) -> Client:
        """The connections to ``worker`` that calls use (made on first use)."""
        return self._client(worker)

    def _client(self, worker: WorkerMetadata) -> Client:
        client = self._clients.get(worker.id)
        if client is None:
            client = Client(
                worker.host,
                worker.port,
                keepalive=self._keepalive,
                limits=self.limits,
                credentials=self._credentials,
                server_name=dict(worker.options).get("tls-name"),
            )
            self._clients[worker.id] = client
        return client

    async def probe_suspects(self, interval: float = 0.25) -> None:
        """Forever: give suspended workers that answer an Info call back to the rotation."""
        while True:
            await anyio.sleep(interval)
            await self._close_forgotten()
            for worker_id in list(self._suspects):
                worker = self._known.get(worker_id)
                if worker is None:
                    continue
                try:
                    info = await self._portal.run(self._client(worker).info, 1.0)
                except ConnectionLost:
                    continue
                except SecurityError as exc:
                    self.refuse(worker, exc)
                    continue
                if info.stopping:
                    continue  # draining: it will leave
                if worker_id in self._suspects:
                    log.info("worker %s answers again; back in rotation", worker_id)
                    del self._suspects[worker_id]
                    self._notify()

    async def reconcile(self, stale: set[str], reported: set[str]) -> None:
        """After discovery subscribed again: drop the workers in ``stale`` (reported by the
        last subscription) that the new one has not ``reported`` and that do not answer an
        Info call, or answer that they are stopping."""
        for worker_id in list(stale):
            worker = self._known.get(worker_id)
            if worker is None or worker_id in reported:
                continue
            try:
                info = await self._portal.run(self._client(worker).info, 1.0)
            except ConnectionLost:
                info = None
            if worker_id not in reported and (info is None or info.stopping):
                log.info("worker %s is gone since discovery subscribed again", worker_id)
                self.remove(worker_id)

    async def _close_forgotten(self, *, wait: bool = False) -> None:
        # A worker that left may still be finishing calls (it drains before it exits).
        closing, self._closing = self._closing, []
        for client in closing:
            if client.busy and not wait:
                self._closing.append(client)
                continue
            try:
                await self._portal.run(client.close)
            except Exception:
                log.exception("closing the client of worker %s failed", client.address)

    def _request(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        grace: float,
        timeout: float | None,
        *,
        generator: bool = False,
    ) -> Request:
        return Request(
            task=Task(
                version=PROTOCOL_VERSION,
                id=next(self._ids),
                routine=routine,
                function=function,
                arguments=cast(bytes, arguments),  # see framing.split
                timeout=timeout,
                grace=grace,
                caller=_CALLER,
                depth=call_depth.get() + 1,
                generator=generator,
                context=outgoing(),
                parent=current_call.get(),
            )
        )

    def _lost(self, worker: WorkerMetadata, routine: str, exc: Exception) -> WorkerLost:
        self._suspend(worker, str(exc))
        return WorkerLost(
            f"worker {worker.id} at {worker.address} was lost while running {routine!r}: {exc}",
            worker=worker.id,
            routine=routine,
        )

    async def _send(
        self,
        worker: WorkerMetadata,
        routine: str,
        operation: Callable[[Request], Coroutine[Any, Any, T]],
        request: Request,
    ) -> T | None:
        """``operation(request)`` on the worker's client; None when the call never reached
        the worker (unreachable, or refused before the TLS handshake ended), so that
        another worker may take it.

        Raises:
            WorkerLost: the connection was lost once the call may have started.
        """
        try:
            return await self._portal.run(operation, request)
        except Unreachable as exc:
            self._suspend(worker, str(exc))
        except SecurityError as exc:
            self.refuse(worker, exc)
        except ConnectionLost as exc:
            raise self._lost(worker, routine, exc) from exc
        return None

    def _declined(self, worker: WorkerMetadata, response: Response) -> bool:
        """The worker refused a call that never started there: another worker may take it."""
        refusal = response.rejected
        if refusal is None:
            return False
        if refusal.reason == RejectedReason.STOPPING:
            self._suspend(worker, "it is stopping")
            return True
        if refusal.reason == RejectedReason.VERSION:
            log.error("worker %s speaks another protocol: %s", worker.id, refusal.detail)
            self.remove(worker.id)  # until discovery reports it anew
            return True
        return False

    async def call(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        *,
        grace: float | None,
        timeout: float | None,
        tags: frozenset[str] = frozenset(),
    ) -> Any:
        """Run one call on a worker and return its result or raise its exception."""
        grace = self._grace if grace is None else grace
        deadline = _deadline(timeout)
        self._check_sizes(routine, function, arguments)
        request = self._request(routine, function, arguments, grace, timeout)
        assert request.task is not None
        info = CallInfo(routine, tags, request.task.depth, hints=current_hints())
        with observe_call(request.task) as observer:
            while True:
                worker = observer.scheduled(
                    await self._selector.choose(info, self._usable, self.changed)
                )
                client = self._client(worker)
                try:
                    if _expired(request.task, deadline):
                        # Its time ran out while it waited for a worker: nothing is sent.
                        response = _EXPIRED
                    elif (
                        response := await self._send(worker, routine, client.call, request)
                    ) is None:
                        continue
                except anyio.get_cancelled_exc_class():
                    await self._cancel_remote(client, request.task.id, grace)
                    raise
                finally:
                    self._selector.release(worker.id, info)
                if self._declined(worker, response):
                    continue
                absorb(response.context, routine)  # as after a local await, failed or not
                kind, body = body_of(response)
                return await outcome(kind, body, routine, worker)

    @asynccontextmanager
    async def generator(
        self,
        routine: str,
        function: bytes,
        arguments: Payload,
        *,
        grace: float | None,
        timeout: float | None,
        prefetch: int,
        tags: frozenset[str] = frozenset(),
    ) -> AsyncGenerator[RemoteGenerator, None]:
        """Open a generator call on a worker; its steps are taken through the yielded object.

        The worker runs up to ``prefetch`` items ahead of the ones asked for.
        """
        grace = self._grace if grace is None else grace
        deadline = _deadline(timeout)
        self._check_sizes(routine, function, arguments)
        request = self._request(routine, function, arguments, grace, timeout, generator=True)
        assert request.task is not None
        info = CallInfo(routine, tags, request.task.depth, generator=True, hints=current_hints())
        client: Client | None = None
        call: CallStream | None = None
        held: WorkerMetadata | None = None
        with observe_call(request.task) as observer:
            try:
                while True:
                    if held is not None:
                        self._selector.release(held.id, info)
                        held = None
                    held = worker = observer.scheduled(
                        await self._selector.choose(info, self._usable, self.changed)
                    )
                    client = self._client(worker)
                    if _expired(request.task, deadline):
                        await outcome("rejected", _EXPIRED.rejected, routine, worker)
                    call = await self._send(worker, routine, client.open, request)
                    if call is None:
                        continue
                    remote = RemoteGenerator(self, call, routine, worker, prefetch)
                    # The first step is always NEXT (Python refuses other first steps
                    # locally), so take it here: a worker that refuses the call lets another
                    # one take it.
                    try:
                        first = await remote.start()
                    except SecurityError as exc:
                        closing, call = call, None
                        with anyio.move_on_after(grace):
                            await self._portal.run(functools.partial(closing.close, reset=True))
                        self.refuse(worker, exc)
                        continue
                    if self._declined(worker, first):
                        closing, call = call, None
                        with anyio.move_on_after(grace):
                            await self._portal.run(functools.partial(closing.close, reset=True))
                        continue
                    break
                yield observer.steps(remote)
            except anyio.get_cancelled_exc_class():
                if client is not None:
                    await self._cancel_remote(client, request.task.id, grace)
                raise
            finally:
                try:
                    if call is not None:
                        with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                            with contextlib.suppress(ConnectionLost):
                                await self._portal.run(call.close)
                finally:
                    if held is not None:
                        self._selector.release(held.id, info)

    def _check_sizes(self, routine: str, function: bytes, arguments: Payload) -> None:
        """Refuse, before sending anything, a call too large for the limits."""
        if len(arguments) > self.limits.max_payload:
            raise too_large(
                f"the argument tuple of {routine!r}", len(arguments), self.limits.max_payload
            )
        room = self.limits.max_message - 1024
        if len(function) > room:
            raise SerializationError(
                f"routine {routine!r} pickles to {len(function)} bytes, more than one message "
                f"may carry ({room} bytes); make it importable by the workers (define it in a "
                "module) rather than sending it by value"
            )

    async def _cancel_remote(self, client: Client, call_id: str, grace: float) -> None:
        # The stream was reset already, which cancels the routine; this waits until the
        # worker says the routine has finished unwinding, up to the grace period.
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(grace):
                with contextlib.suppress(ConnectionLost):
                    await self._portal.run(client.cancel, call_id, grace)
        finally:
            client.forget(call_id)

    async def aclose(self) -> None:
        self._closed = True
        self._notify()  # callers waiting for a worker learn that the pool closed
        for worker_id in list(self._clients):
            self._forget_client(worker_id)
        await self._close_forgotten(wait=True)


def _deadline(timeout: float | None) -> float | None:
    """The moment a call made now with ``timeout`` seconds left expires."""
    return None if timeout is None else anyio.current_time() + timeout


def _expired(task: Task, deadline: float | None) -> bool:
    """Set the seconds ``task`` has left (measured now, before each attempt to send it,
    however long it waited for a worker); whether none are left."""
    if deadline is None:
        return False
    task.timeout = deadline - anyio.current_time()
    return task.timeout <= 0


_EXPIRED = Response(
    rejected=Rejected(
        reason=RejectedReason.EXPIRED, detail="the deadline passed before the call was sent"
    )
)
