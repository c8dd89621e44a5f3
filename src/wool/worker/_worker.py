"""A worker's life: serve calls, publish itself, stop gracefully (backend-neutral)."""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio

from wool._errors import WoolError
from wool.client._open import open_proxy
from wool.client._proxy import WorkerProxy
from wool.discovery import WorkerMetadata, left_out_of
from wool.events._observe import set_worker_id
from wool.routine import set_process_dispatcher
from wool.security import exposure
from wool.transport import Executor, Limits, Portal, Server
from wool.worker._config import WorkerConfig
from wool.worker._service import WorkerService

__all__ = ["serve"]

log = logging.getLogger("wool.worker")

Report = Callable[[dict[str, Any]], None]

# Seconds an orphaned worker lets its calls unwind before it exits.
_ORPHAN_GRACE = 1.0


def wool_version() -> str:
    try:
        return version("wool")
    except PackageNotFoundError:
        return "0+unknown"


async def serve(config: WorkerConfig, portal: Portal, executor: Executor, report: Report) -> None:
    """Run a worker until SIGTERM, SIGINT or a Stop request; ``report`` is told when it is ready."""
    grace = [config.grace]

    def request_stop(requested_grace: float) -> None:
        # Runs on grpclib's loop, possibly another thread: a signal reaches the main task
        # the same way on every backend.
        grace[0] = requested_grace
        os.kill(os.getpid(), signal.SIGTERM)

    service = WorkerService(
        executor,
        portal,
        default_grace=config.grace,
        on_stop_request=request_stop,
        concurrency=config.concurrency,
        limits=config.limits,
    )
    _check_exposure(config)
    server = await portal.run(_new_server, service, config.keepalive, config.limits)
    try:
        port = await portal.run(server.start, config.host, config.port, config.credentials)
    except OSError as exc:
        raise WoolError(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
            "choose another --port (0 picks a free one) or stop what uses it"
        ) from exc
    metadata = WorkerMetadata(
        id=config.id,
        host=config.advertise_host or config.host,
        port=port,
        pid=os.getpid(),
        tags=config.tags,
        version=wool_version(),
        backend=config.backend,
        secure=config.credentials is not None,
        options=_options(config),
        capacity=config.concurrency,
    )
    service.metadata = metadata
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with (
                config.discovery.publisher() as publisher,
                open_proxy(
                    portal,
                    config.discovery,
                    grace=config.grace,
                    keepalive=config.keepalive,
                    limits=config.limits,
                    credentials=config.credentials,
                    insecure=config.insecure,
                    wait_for_workers=config.wait_for_workers,
                    filter=lambda w: config.tags <= w.tags,
                    description=f"the pool of worker {config.id}",
                    left_out=functools.partial(left_out_of, config.discovery),
                ) as proxy,
            ):
                set_process_dispatcher(proxy)
                set_worker_id(config.id)
                proxy.pin(metadata)
                await publisher.publish("worker-added", metadata)
                await _find_peers(proxy, config)
                log.info(
                    "worker %s serving at %s (%s, pid %d)",
                    config.id,
                    metadata.address,
                    config.backend,
                    os.getpid(),
                )
                report({"ok": True, "port": port, "pid": os.getpid()})
                async for signum in signals:
                    log.info("worker %s stopping on %s", config.id, signal.Signals(signum).name)
                    if signum == signal.SIGHUP:
                        # The pool's process is gone: nobody waits for the results.
                        grace[0] = min(grace[0], _ORPHAN_GRACE)
                    break
                await publisher.publish("worker-dropped", metadata)
                # The listener stays open while draining: running calls may still make
                # nested calls, to this worker too; the service refuses new root calls.
                await portal.run(service.drain, grace[0])
                set_process_dispatcher(None)
    finally:
        with anyio.CancelScope(shield=True):
            await portal.run(server.close)
    log.info("worker %s stopped", config.id)


async def _find_peers(proxy: WorkerProxy, config: WorkerConfig) -> None:
    """Wait until discovery has shown this worker each of ``config.peers``."""
    missing = set(config.peers) - {w.id for w in proxy.workers}
    with anyio.move_on_after(config.wait_for_workers):
        while missing:
            await proxy.changed()
            missing -= {w.id for w in proxy.workers}
        return
    raise WoolError(
        f"worker {config.id} did not find the workers started with it "
        f"({', '.join(sorted(missing))}) through {config.discovery!r} within "
        f"{config.wait_for_workers:g} s"
    )


def _options(config: WorkerConfig) -> tuple[tuple[str, str], ...]:
    """Transport settings published for callers."""
    options: list[tuple[str, str]] = []
    if config.keepalive:
        options.append(("keepalive", str(config.keepalive)))
    if config.tls_name:
        options.append(("tls-name", config.tls_name))
    return tuple(options)


def _check_exposure(config: WorkerConfig) -> None:
    """Refuse to serve plaintext on a network address unless told to; warn when anyone
    else can reach the worker: whoever can talk to it can run code as its user."""
    reach = exposure(config.host)
    if config.credentials is not None:
        if not config.credentials.mutual and reach != "private":
            log.warning(
                "worker %s listens on %s with one-way TLS (--no-mutual): it asks callers "
                "for no certificate, so every %s that can reach it can run code as uid %d",
                config.id,
                config.host,
                "host" if reach == "network" else "user of this host",
                os.getuid(),
            )
        return
    if reach == "network":
        if not config.insecure:
            raise WoolError(
                f"refusing to listen on {config.host} without TLS: every host that can "
                "reach it could run code as this user; give the worker credentials "
                "(--tls-cert, --tls-key, --tls-ca), listen on 127.0.0.1, or pass "
                "--insecure if the network is trusted"
            )
        log.warning(
            "worker %s listens on %s:%s WITHOUT TLS (--insecure): every host that can reach "
            "it can run code as uid %d, read its calls' arguments and results, and stop it",
            config.id,
            config.host,
            config.port or "<any>",
            os.getuid(),
        )
    elif reach == "loopback":
        log.warning(
            "worker %s listens on %s without TLS: every user of this host can run code "
            "as uid %d through it; omit --host for a private Unix socket, or use credentials",
            config.id,
            config.host,
            os.getuid(),
        )


async def _new_server(service: WorkerService, keepalive: float | None, limits: Limits) -> Server:
    return Server(service, keepalive=keepalive, limits=limits)
