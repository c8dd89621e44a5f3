"""A worker's life: serve calls, publish itself, stop gracefully (backend-neutral)."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio

from wool._errors import WoolError
from wool.discovery import WorkerMetadata
from wool.events._observe import set_worker_id
from wool.pool._proxy import open_proxy
from wool.routine import set_process_dispatcher
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
    server = await portal.run(_new_server, service, config.keepalive, config.limits)
    try:
        port = await portal.run(server.start, config.host, config.port)
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
        options=(("keepalive", str(config.keepalive)),) if config.keepalive else (),
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
                    wait_for_workers=config.wait_for_workers,
                    filter=lambda w: config.tags <= w.tags,
                    description=f"the pool of worker {config.id}",
                ) as proxy,
            ):
                set_process_dispatcher(proxy)
                set_worker_id(config.id)
                proxy.pin(metadata)
                await publisher.publish("worker-added", metadata)
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


async def _new_server(service: WorkerService, keepalive: float | None, limits: Limits) -> Server:
    return Server(service, keepalive=keepalive, limits=limits)
