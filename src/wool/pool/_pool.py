"""``wool.WorkerPool``: the async context manager routines run in."""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
import sys
import uuid
from contextvars import Token
from dataclasses import replace
from types import TracebackType
from typing import Literal

import anyio

from wool._errors import NoWorkersAvailable, WorkerStartError
from wool.client._open import open_proxy
from wool.client._proxy import WorkerProxy
from wool.discovery import (
    DiscoveryLike,
    LocalDiscovery,
    MergedDiscovery,
    WorkerMetadata,
    left_out_of,
)
from wool.loadbalancer import LoadBalancerLike
from wool.pool._process import WorkerProcess
from wool.pool._stats import WorkerStats, ask_workers, check_timeout
from wool.routine import Dispatcher, dispatcher_var
from wool.security import WorkerCredentials, private_socket_path, release_socket
from wool.transport import DEFAULT_LIMITS, Limits, Portal, current_backend, portal_for_host
from wool.worker import WorkerConfig

__all__ = ["WorkerPool"]

log = logging.getLogger("wool.pool")

Backend = Literal["asyncio", "trio"]


class WorkerPool:
    """A pool of worker processes that routine calls in its scope are sent to.

    The modes, by which of ``size`` and ``discovery`` are given:

    ========= ======== ============= ==================================================
    mode      ``size`` ``discovery`` workers used
    ========= ======== ============= ==================================================
    default   -        -             ``os.cpu_count()`` spawned on this host
    ephemeral N        -             N spawned on this host
    durable   -        set           those ``discovery`` finds; nothing is spawned
    hybrid    N        set           N spawned, plus those ``discovery`` finds
    ========= ======== ============= ==================================================

    Positional ``tags`` are advertised by spawned workers and required of every worker
    the pool uses. While the ``async with`` block runs, routines called from it (and from
    tasks it starts) run on the pool's workers; routines that call routines on a worker use
    the same pool.

    Arguments:
        size: how many workers to spawn; ``size`` does not cap the workers discovery adds.
        discovery: where to find running workers (any ``wool.DiscoveryLike``). A pool with
            a discovery waits up to ``start_timeout`` for a first worker, then raises
            ``NoWorkersAvailable``.
        backend: event loop of the workers, ``"asyncio"`` or ``"trio"``; defaults to the
            backend of the program that opens the pool.
        grace: seconds that stopping workers and cancelled calls get to finish unwinding
            before they are killed or abandoned.
        keepalive: seconds between HTTP/2 pings while calls are open; a peer that misses
            one for as long again is taken for lost (callers get ``WorkerLost``, workers
            cancel the routines of a lost caller). ``None`` turns pings off.
        start_timeout: seconds a worker may take to start before the pool gives up.
        imports: modules every worker imports before it serves (to warm heavy imports,
            or fail fast at start-up when they are broken).
        loadbalancer: chooses the worker for each call (any ``wool.LoadBalancerLike``);
            ``wool.RoundRobinLoadBalancer`` by default. See ``docs/loadbalancing.md``.
        concurrency: root calls each spawned worker runs at once (as ``wool worker
            --concurrency``); None for no limit. Workers advertise it, and callers hold
            root calls beyond it until a slot frees. Nested calls are never limited.
        log_level: logging level of the worker processes.
        max_message_size: bytes in one message on the wire; larger arguments, results and
            items travel in chunks (of 1 MiB, or of this size if smaller). Workers the
            pool spawns use the same.
        max_payload_size: bytes an argument tuple, return value, yielded item or sent
            value may pickle to (default 1 GiB). A call over it raises
            ``SerializationError`` before anything is sent.
        credentials: a ``wool.WorkerCredentials``: every connection to a worker is TLS
            (mutual unless the credentials say otherwise), spawned workers get the same
            credentials, and workers that do not use TLS are refused. Without
            credentials, workers that require TLS are refused.
        insecure: accept discovered workers that listen in plaintext on a network
            address (anything but loopback or a Unix socket). Their answers are pickles
            this process loads: only for networks where every host is trusted.

    Spawned workers listen on Unix sockets in a directory only this user can enter
    (``<tmp>/wool-<uid>/s``, mode 0700): other users of the host cannot reach them.

    Calls to a worker the pool refuses (a TLS mismatch, a failed TLS handshake) go to the
    other workers; when none is left, they raise ``SecurityError`` saying what to change.

    Exiting the block stops every worker the pool spawned (SIGTERM, then SIGKILL after
    ``grace``), also when the block raised or was cancelled; nothing it started is left
    running. Discovered workers are not the pool's to stop.

    Raises:
        ValueError: an argument is out of range (``size`` < 1, a ``backend`` other than
            ``"asyncio"`` or ``"trio"``, a negative or infinite ``grace``, a ``keepalive``
            that is not > 0, a ``concurrency`` < 1); raised by the constructor.
        TypeError: ``discovery`` does not implement ``wool.DiscoveryLike``, ``loadbalancer``
            does not implement ``wool.LoadBalancerLike``, or a tag is not a non-empty
            string; raised by the constructor.
        wool.WorkerStartError: entering: a spawned worker failed to start within
            ``start_timeout`` (an import in ``imports`` failed, the process died); its
            traceback is attached. Every worker already started has been stopped.
        wool.NoWorkersAvailable: entering a pool with ``discovery``: no worker (with the
            pool's tags) was found within ``start_timeout``.
        RuntimeError: entering a pool that is already open; make one per ``async with``.

    :meth:`stats` reports what each worker is doing (calls running, completed, failed,
    cancelled, recent latency); ``wool workers --watch`` shows the same as a live table.
    """

    def __init__(
        self,
        *tags: str,
        size: int | None = None,
        discovery: DiscoveryLike | None = None,
        backend: Backend | None = None,
        grace: float = 5.0,
        keepalive: float | None = 5.0,
        start_timeout: float = 60.0,
        imports: tuple[str, ...] | list[str] = (),
        loadbalancer: LoadBalancerLike | None = None,
        concurrency: int | None = None,
        log_level: int | None = None,
        max_message_size: int = DEFAULT_LIMITS.max_message,
        max_payload_size: int = DEFAULT_LIMITS.max_payload,
        credentials: WorkerCredentials | None = None,
        insecure: bool = False,
    ) -> None:
        if size is None:
            size = 0 if discovery is not None else os.cpu_count() or 1
        elif size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if discovery is not None:
            _check_discovery(discovery)
        if loadbalancer is not None:
            _check_loadbalancer(loadbalancer)
        if concurrency is not None and not (
            isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1  # pyright: ignore[reportUnnecessaryIsInstance]
        ):
            raise ValueError(
                f"concurrency must be a whole number >= 1 or None, got {concurrency!r}"
            )
        if backend not in (None, "asyncio", "trio"):
            raise ValueError(f"backend must be 'asyncio' or 'trio', got {backend!r}")
        if not math.isfinite(grace) or grace < 0:
            raise ValueError(f"grace must be a finite number of seconds >= 0, got {grace!r}")
        if keepalive is not None and not (math.isfinite(keepalive) and keepalive > 0):
            raise ValueError(f"keepalive must be seconds > 0 or None, got {keepalive!r}")
        for tag in tags:
            if not isinstance(tag, str) or not tag:  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(f"tags must be non-empty strings, got {tag!r}")
        if credentials is not None and not isinstance(credentials, WorkerCredentials):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"credentials must be a wool.WorkerCredentials, got {type(credentials).__name__}"
            )
        self.limits = Limits(max_message=max_message_size, max_payload=max_payload_size)
        self.credentials = credentials
        self.insecure = insecure
        self.tags = frozenset(tags)
        self.size = size
        self.discovery = discovery
        self.backend = backend
        self.grace = grace
        self.keepalive = keepalive
        self.start_timeout = start_timeout
        self.imports = tuple(imports)
        self.log_level = (
            log_level if log_level is not None else logging.getLogger("wool").getEffectiveLevel()
        )
        self._loadbalancer = loadbalancer
        self.concurrency = concurrency
        self._portal: Portal | None = None
        self._processes: list[WorkerProcess] = []
        self._spawned = 0
        self._config: WorkerConfig | None = None
        self._discovery: LocalDiscovery | None = None
        self._proxy_scope: open_proxy | None = None
        self._proxy: WorkerProxy | None = None
        self._token: Token[Dispatcher | None] | None = None

    @property
    def workers(self) -> list[WorkerMetadata]:
        """The workers the pool currently uses (empty while the pool is closed).

        Spawned and discovered workers alike, minus those suspended for not answering.
        """
        return [] if self._proxy is None else self._proxy.workers

    async def stats(self, timeout: float = 2.0) -> list[WorkerStats]:
        """Ask every worker of the pool for its live figures, all at once.

        Spawned and discovered workers alike, those suspended for not answering too, in
        the order of their ids. Each worker has ``timeout`` seconds to answer; one that
        does not (dead, hung, unreachable) is reported with ``calls`` None and the
        reason in ``error``: the whole takes ``timeout`` plus half a second at most.

        Raises:
            ValueError: ``timeout`` is not a finite number of seconds > 0.
            RuntimeError: the pool is not open.
        """
        check_timeout(timeout)
        proxy, portal = self._proxy, self._portal
        if proxy is None or portal is None:
            raise RuntimeError("the pool is not open; call stats() inside `async with pool`")
        workers = sorted(proxy.known, key=lambda w: w.id)
        return await ask_workers(portal, [(w, proxy.client(w)) for w in workers], timeout)

    async def __aenter__(self) -> WorkerPool:
        if self._portal is not None:
            raise RuntimeError("this WorkerPool is already open; create one per `async with`")
        backend = self.backend or current_backend()
        self._portal = portal_for_host()
        self._discovery = LocalDiscovery(f"pool-{uuid.uuid4().hex[:12]}")
        followed = self._followed()
        self._config = WorkerConfig(
            id="",
            discovery=followed,
            backend=backend,
            tags=self.tags,
            grace=self.grace,
            keepalive=self.keepalive,
            wait_for_workers=self.start_timeout,
            sys_path=list(sys.path),
            imports=self.imports,
            log_level=self.log_level,
            parent_pid=os.getpid(),
            limits=self.limits,
            credentials=self.credentials,
            insecure=self.insecure,
            concurrency=self.concurrency,
        )
        try:
            await self._spawn_all()
            self._proxy_scope = open_proxy(
                self._portal,
                followed,
                grace=self.grace,
                keepalive=self.keepalive,
                limits=self.limits,
                wait_for_workers=self.start_timeout,
                filter=lambda w: self.tags <= w.tags,
                loadbalancer=self._loadbalancer,
                description=f"pool {self._discovery.namespace}",
                credentials=self.credentials,
                insecure=self.insecure,
                left_out=functools.partial(left_out_of, self.discovery),
            )
            self._proxy = await self._proxy_scope.__aenter__()
            for process in self._processes:
                assert process.metadata is not None
                self._proxy.add(process.metadata)
                self._proxy_scope.start_soon(self._supervise, process)
            if self._processes:
                self._proxy_scope.start_soon(self._kill_wedged, restart=True)
            if self.discovery is not None:
                await self._wait_for_a_worker(self._proxy)
        except BaseException:
            await self._close()
            raise
        self._token = dispatcher_var.set(self._proxy)
        log.info(
            "pool %s open: %d worker(s) spawned (%s), %d in all",
            self._discovery.namespace,
            self.size,
            backend,
            len(self._proxy.workers),
        )
        return self

    def _followed(self) -> DiscoveryLike:
        """What the pool (and its spawned workers, for nested calls) subscribe to."""
        assert self._discovery is not None
        if self.discovery is None:
            return self._discovery
        if self.size == 0:
            return self.discovery
        return MergedDiscovery(self._discovery, self.discovery)

    async def _wait_for_a_worker(self, proxy: WorkerProxy) -> None:
        tags = f" with tags {sorted(self.tags)}" if self.tags else ""
        with anyio.move_on_after(self.start_timeout):
            with anyio.move_on_after(_WAITING_NOTICE):
                await _first_worker(proxy)
                return
            log.warning(
                "pool %s is still waiting for a first worker%s through %r (up to %g s in all)",
                proxy.description,
                tags,
                self.discovery,
                self.start_timeout,
            )
            await _first_worker(proxy)
            return
        reasons = left_out_of(self.discovery)
        if reasons:
            raise NoWorkersAvailable(
                f"no usable workers{tags} found through {self.discovery!r} within "
                f"{self.start_timeout:g} s; these were left out: {reasons}"
            )
        raise NoWorkersAvailable(
            f"no workers{tags} found through {self.discovery!r} within "
            f"{self.start_timeout:g} s; check that workers run with the same discovery and "
            "namespace, and that their tags match"
        )

    def _worker_id(self, number: int) -> str:
        assert self._discovery is not None
        return f"{self._discovery.namespace}-{number}"

    def _new_process(self, peers: tuple[str, ...] = ()) -> WorkerProcess:
        assert self._config is not None
        self._spawned += 1
        process = WorkerProcess(
            replace(
                self._config,
                id=self._worker_id(self._spawned - 1),
                peers=peers,
                host=private_socket_path(uuid.uuid4().hex[:12]),
            )
        )
        self._processes.append(process)  # before it starts: closing must stop it
        return process

    async def _spawn_all(self) -> None:
        # Each worker reports ready once it knows the others: the pool is then ready for
        # nested calls to spread over all of them.
        peers = tuple(self._worker_id(self._spawned + n) for n in range(self.size))
        processes = [self._new_process(peers) for _ in range(self.size)]
        errors: list[BaseException] = []

        async def start(process: WorkerProcess) -> None:
            try:
                await process.start(self.start_timeout)
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for process in processes:
                tg.start_soon(start, process)
        if errors:
            first = errors[0]
            if len(errors) > 1 and isinstance(first, WorkerStartError):
                first.add_note(f"{len(errors) - 1} other worker(s) of the pool failed too")
            raise first

    async def _kill_wedged(self) -> None:
        """Kill spawned workers that stay unreachable (hung, stopped): supervision replaces
        them. Discovered workers are not the pool's to kill."""
        patience = max(10.0, 3 * (self.keepalive or 0))
        while True:
            await anyio.sleep(1)
            assert self._proxy is not None
            for process in list(self._processes):
                if self._proxy.suspended_for(process.config.id) > patience:
                    log.error(
                        "worker %s has not answered for %g s; killing it",
                        process.config.id,
                        patience,
                    )
                    process.kill()

    async def _supervise(self, process: WorkerProcess) -> None:
        """Wait for a worker to die; then drop it and start a replacement."""
        status = await process.wait()
        assert self._proxy is not None and self._proxy_scope is not None
        log.warning(
            "worker %s (pid %s) exited unexpectedly with status %s; starting a replacement",
            process.config.id,
            process.pid,
            status,
        )
        self._proxy.remove(process.config.id)
        self._processes.remove(process)
        await process.stop(0)
        release_socket(process.config.host)
        delay = 0.1
        while True:
            replacement = self._new_process()
            try:
                metadata = await replacement.start(self.start_timeout)
            except Exception as exc:
                self._processes.remove(replacement)
                await replacement.stop(0)
                release_socket(replacement.config.host)
                log.error("replacement worker failed to start (retrying in %g s): %s", delay, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._proxy.add(metadata)
            self._proxy_scope.start_soon(self._supervise, replacement)
            return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._token is not None:
                token, self._token = self._token, None
                dispatcher_var.reset(token)
        finally:
            await self._close()

    async def _close(self) -> None:
        try:
            if self._proxy_scope is not None:
                # Not under another scope: its task group must be the task's current scope.
                await self._proxy_scope.__aexit__(None, None, None)
        finally:
            self._proxy_scope = self._proxy = None
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as tg:
                    for process in self._processes:
                        tg.start_soon(process.stop, self.grace)
                for process in self._processes:
                    release_socket(process.config.host)
                self._processes = []
                self._config = None
                if self._discovery is not None:
                    self._discovery.cleanup()
                if self._portal is not None:
                    self._portal.close()
                    self._portal = None
        if self._discovery is not None:
            log.info("pool %s closed", self._discovery.namespace)


#: Seconds a pool waits for its first discovered worker before it logs that it still waits.
_WAITING_NOTICE = 5.0


async def _first_worker(proxy: WorkerProxy) -> None:
    while not proxy.workers:
        if proxy.refused:  # a worker was found but TLS refused it: say why
            raise proxy.refused[-1]
        await proxy.changed()


def _check_discovery(discovery: object) -> None:
    """Refuse, with what to do instead, a ``discovery`` that would fail only once used."""
    if isinstance(discovery, type):
        raise TypeError(
            f"discovery must be an instance, got the class {discovery.__name__}; "
            f"pass {discovery.__name__}(...)"
        )
    if not isinstance(discovery, DiscoveryLike):
        raise TypeError(
            f"discovery must implement wool.DiscoveryLike (publisher() and subscriber()), "
            f"got {type(discovery).__name__}"
        )
    for name in ("publisher", "subscriber"):
        factory = getattr(discovery, name)
        if not callable(factory):
            raise TypeError(
                f"discovery.{name} must be a method that returns an async context manager, "
                f"got {type(factory).__name__}"
            )
        try:
            made = factory()
        except Exception as exc:
            raise TypeError(
                f"discovery.{name}() cannot be called without arguments: {exc}"
            ) from exc
        usable = hasattr(made, "__aenter__") and hasattr(made, "__aexit__")
        if inspect.iscoroutine(made):
            made.close()  # an `async def` that is not a context manager: never awaited
        if not usable:
            raise TypeError(
                f"discovery.{name}() must return an async context manager (for example, "
                f"decorate it with @contextlib.asynccontextmanager), got {type(made).__name__}"
            )


def _check_loadbalancer(balancer: object) -> None:
    """Refuse a ``loadbalancer`` that is not a wool.LoadBalancerLike instance."""
    if isinstance(balancer, type):
        raise TypeError(
            f"loadbalancer must be an instance, got the class {balancer.__name__}; "
            f"pass {balancer.__name__}()"
        )
    if not callable(getattr(balancer, "choose", None)):
        hint = " (a function is not a load balancer)" if callable(balancer) else ""
        raise TypeError(
            "loadbalancer must implement wool.LoadBalancerLike: choose(call, candidates); "
            f"{type(balancer).__name__} has no choose(){hint}"
        )
