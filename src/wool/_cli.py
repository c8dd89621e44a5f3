"""The ``wool`` command: ``wool worker`` runs a durable worker, ``wool workers`` lists them."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import anyio

from wool._errors import SecurityError, WoolError
from wool.discovery import DiscoveryLike, LanDiscovery, LocalDiscovery, WorkerMetadata
from wool.security import WorkerCredentials, private_socket_path
from wool.transport import DEFAULT_LIMITS, Limits

__all__ = ["main"]

log = logging.getLogger("wool")

#: The namespace ``wool worker`` and ``wool workers`` use unless told otherwise.
DEFAULT_NAMESPACE = "wool"

_WILDCARDS = ("", "0.0.0.0", "::")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wool", description="wool: run and list workers.")
    parser.add_argument("--version", action="version", version=f"wool {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="run one durable worker in the foreground",
        description="Run one worker until SIGTERM or SIGINT; then drain its calls and exit.",
    )
    _discovery_options(worker)
    worker.add_argument(
        "--tag", action="append", default=[], help="advertise TAG (repeatable; default: none)"
    )
    worker.add_argument(
        "--host",
        help="address to listen on (default: for local discovery a Unix socket only this user "
        "can reach, or 127.0.0.1 when --port is given; 0.0.0.0 for lan)",
    )
    worker.add_argument("--port", type=int, default=0, help="port (default: 0, a free one)")
    worker.add_argument(
        "--advertise-host",
        help="address callers should use (default: --host, "
        "or this host's first non-loopback IPv4 address when --host is a "
        "wildcard)",
    )
    worker.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop routines run on (default: %(default)s)",
    )
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        help="root calls run at once at most (nested calls are never held back; default: no limit)",
    )
    worker.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds to drain calls on stop before cancelling them (default: %(default)g)",
    )
    worker.add_argument(
        "--keepalive",
        type=float,
        default=5.0,
        help="seconds between HTTP/2 pings on open calls (default: %(default)g)",
    )
    worker.add_argument(
        "--max-message-size",
        type=_positive_int,
        default=DEFAULT_LIMITS.max_message,
        help="bytes in one message on the wire; larger payloads are chunked (default: 4 MiB; "
        "use the same as the callers' pools)",
    )
    worker.add_argument(
        "--max-payload-size",
        type=_positive_int,
        default=DEFAULT_LIMITS.max_payload,
        help="bytes one pickled argument tuple, result or item may take (default: 1 GiB)",
    )
    tls = _tls_options(worker)
    tls.add_argument(
        "--tls-name",
        metavar="NAME",
        help="the name callers check in this worker's certificate, published with its "
        "address (default: the address itself), e.g. a Kubernetes Service's DNS name",
    )
    worker.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening without TLS on a network address: every host that can reach "
        "it can run code as this user (default: off)",
    )
    worker.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the worker's log (default: %(default)s)",
    )

    workers = commands.add_parser(
        "workers",
        help="list the workers a discovery sees, or watch what they do",
        description="List the workers a discovery sees; with --watch, show a table of "
        "each one's live figures (calls running, completed, failed, cancelled, and the "
        "latency of the last minute), refreshed until Ctrl-C.",
    )
    _discovery_options(workers)
    workers.add_argument(
        "--wait",
        type=_seconds,
        help="seconds to listen before listing (default: 0.3 for local, 3 for lan)",
    )
    workers.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=_seconds,
        metavar="SECONDS",
        help="refresh a table of live figures every SECONDS (2 if omitted) until Ctrl-C "
        "(default: list once)",
    )
    workers.add_argument(
        "--count",
        type=_positive_int,
        help="with --watch: stop after COUNT tables (default: until Ctrl-C)",
    )
    workers.add_argument(
        "--timeout",
        type=_seconds,
        default=2.0,
        help="with --watch: seconds each worker has to answer before it shows as "
        "'no answer' (default: %(default)g)",
    )
    _tls_options(workers)
    return parser


def _tls_options(parser: argparse.ArgumentParser) -> Any:
    tls = parser.add_argument_group(
        "TLS", "all three files, PEM: the worker requires TLS (mutual unless --no-mutual)"
    )
    tls.add_argument("--tls-cert", metavar="PATH", help="this side's certificate")
    tls.add_argument("--tls-key", metavar="PATH", help="the certificate's private key")
    tls.add_argument("--tls-ca", metavar="PATH", help="the CA that signs workers and callers")
    tls.add_argument(
        "--no-mutual",
        dest="mutual",
        action="store_false",
        help="one-way TLS: accept callers without a certificate (callers still verify "
        "workers; default: mutual)",
    )
    return tls


def _credentials(args: argparse.Namespace) -> WorkerCredentials | None:
    """The credentials the TLS options name, or None; SecurityError if they are partial."""
    files = (args.tls_ca, args.tls_key, args.tls_cert)
    if not any(files):
        if not args.mutual:
            raise SecurityError("--no-mutual needs --tls-cert, --tls-key and --tls-ca")
        return None
    if not all(files):
        raise SecurityError("TLS needs all of --tls-cert, --tls-key and --tls-ca")
    return WorkerCredentials.from_files(args.tls_ca, args.tls_key, args.tls_cert, args.mutual)


def _discovery_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--discovery",
        choices=("local", "lan"),
        default="local",
        help="local: this host's temp directory; lan: mDNS (default: %(default)s)",
    )
    parser.add_argument(
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="keeps pools apart (default: %(default)s)",
    )
    parser.add_argument(
        "--interface",
        action="append",
        default=None,
        dest="interfaces",
        help="lan: address of an interface to use for mDNS (repeatable; default: all)",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def _discovery(args: argparse.Namespace) -> DiscoveryLike:
    if args.discovery == "lan":
        return LanDiscovery(args.namespace, interfaces=args.interfaces)
    return LocalDiscovery(args.namespace)


def _advertised_host(host: str) -> str:
    if host not in _WILDCARDS:
        return host
    # Read the interfaces; never ask an outside host which address we have.
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    return "127.0.0.1"


def _default_host(args: argparse.Namespace, worker_id: str) -> str:
    if args.discovery == "lan":
        return "0.0.0.0"
    # Local discovery is this user's alone: a socket only this user can reach matches it.
    return "127.0.0.1" if args.port else private_socket_path(worker_id.rsplit("-", 1)[-1])


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _worker(args: argparse.Namespace) -> int:
    from wool.worker._config import WorkerConfig
    from wool.worker._main import run

    try:
        credentials = _credentials(args)
    except SecurityError as exc:
        print(f"wool worker: {exc}", file=sys.stderr)
        return 2
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    host = args.host or _default_host(args, worker_id)
    advertised = args.advertise_host or _advertised_host(host)
    if args.discovery == "lan" and not _is_ip(advertised):
        print(
            f"wool worker: --discovery lan advertises an IP address; {advertised!r} is not "
            "one (pass --advertise-host with this host's address)",
            file=sys.stderr,
        )
        return 2
    config = WorkerConfig(
        id=worker_id,
        discovery=_discovery(args),
        backend=args.backend,
        tags=frozenset(args.tag),
        host=host,
        port=args.port,
        advertise_host=advertised,
        concurrency=args.concurrency,
        grace=args.grace,
        keepalive=args.keepalive,
        log_level=getattr(logging, args.log_level),
        limits=Limits(max_message=args.max_message_size, max_payload=args.max_payload_size),
        credentials=credentials,
        insecure=args.insecure,
        tls_name=args.tls_name,
    )
    log.info(
        "starting worker %s (%s discovery, namespace %r)", config.id, args.discovery, args.namespace
    )
    try:
        run(config, lambda report: None)
    except WoolError as exc:
        print(f"wool worker: {exc}", file=sys.stderr)
        return 1
    return 0


async def _collect(discovery: DiscoveryLike, seconds: float) -> list[WorkerMetadata]:
    workers: dict[str, WorkerMetadata] = {}
    async with discovery.subscriber() as events:
        with anyio.move_on_after(seconds):
            async for event in events:
                if event.kind == "worker-dropped":
                    workers.pop(event.worker.id, None)
                else:
                    workers[event.worker.id] = event.worker
    return sorted(workers.values(), key=lambda w: w.id)


async def _verify(
    workers: Sequence[WorkerMetadata], credentials: WorkerCredentials
) -> dict[str, str]:
    """Each worker's TLS status as these credentials see it: ``verified`` (a TLS Info
    call succeeded), ``refused`` (the reason goes to stderr) or ``unreachable``."""
    from wool.transport import Client, ConnectionLost, portal_for_host

    status: dict[str, str] = {}
    portal = portal_for_host()
    try:
        for worker in workers:
            client = Client(
                worker.host,
                worker.port,
                credentials=credentials,
                server_name=dict(worker.options).get("tls-name"),
            )
            try:
                await portal.run(client.info, 3.0)
                status[worker.id] = "verified"
            except SecurityError as exc:
                status[worker.id] = "refused"
                print(f"wool workers: {worker.id}: {exc}", file=sys.stderr)
            except ConnectionLost:
                status[worker.id] = "unreachable"
            finally:
                await portal.run(client.close)
    finally:
        portal.close()
    return status


def _table(workers: Sequence[WorkerMetadata], status: dict[str, str] | None = None) -> str:
    header = ("ID", "ADDRESS", "TAGS", "VERSION", "TLS")
    rows = [
        (
            w.id,
            w.address,
            ",".join(sorted(w.tags)) or "-",
            w.version or "-",
            (status or {}).get(w.id) or ("yes" if w.secure else "no"),
        )
        for w in workers
    ]
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    )


def _workers(args: argparse.Namespace) -> int:
    seconds = args.wait if args.wait is not None else (3.0 if args.discovery == "lan" else 0.3)
    try:
        credentials = _credentials(args)
    except SecurityError as exc:
        print(f"wool workers: {exc}", file=sys.stderr)
        return 2
    discovery = _discovery(args)
    if args.watch is not None:
        return _watch(args, discovery, seconds, credentials)
    if args.count is not None:
        print("wool workers: --count goes with --watch", file=sys.stderr)
        return 2
    workers = anyio.run(_collect, discovery, seconds)
    if not workers:
        print(
            f"wool workers: no workers found {_where(discovery)} within {seconds:g} s; "
            "check --discovery and --namespace (and --wait for slow networks)",
            file=sys.stderr,
        )
        return 0
    status = None if credentials is None else anyio.run(_verify, workers, credentials)
    print(_table(workers, status))
    return 0


def _watch(
    args: argparse.Namespace,
    discovery: DiscoveryLike,
    seconds: float,
    credentials: WorkerCredentials | None,
) -> int:
    from wool._watch import Watch, watch

    options = Watch(
        discovery=discovery,
        where=_where(discovery),
        first_wait=seconds,
        interval=args.watch,
        count=args.count,
        timeout=args.timeout,
        credentials=credentials,
    )
    try:
        anyio.run(watch, options)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return 0


def _where(discovery: DiscoveryLike) -> str:
    if isinstance(discovery, LocalDiscovery):
        return f"in namespace {discovery.namespace!r} of local discovery ({discovery.path})"
    if isinstance(discovery, LanDiscovery):
        where = ", ".join(discovery.interfaces) if discovery.interfaces else "all interfaces"
        return f"in namespace {discovery.namespace!r} of lan discovery (mDNS on {where})"
    return f"through {discovery!r}"


def _version() -> str:
    from wool import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "WARNING")),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    handlers: dict[str, Any] = {"worker": _worker, "workers": _workers}
    return handlers[args.command](args)
