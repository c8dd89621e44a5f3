"""The ``wool`` command: ``wool worker`` runs a durable worker, ``wool workers`` lists them."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import uuid
from collections.abc import Sequence
from typing import Any

import anyio

from wool._errors import WoolError
from wool.discovery import DiscoveryLike, LanDiscovery, LocalDiscovery, WorkerMetadata
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
        help="address to listen on (default: 127.0.0.1 for local discovery, 0.0.0.0 for lan)",
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
    worker.add_argument("--tls-cert", help="(not supported yet)")
    worker.add_argument("--tls-key", help="(not supported yet)")
    worker.add_argument("--tls-ca", help="(not supported yet)")
    worker.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the worker's log (default: %(default)s)",
    )

    workers = commands.add_parser("workers", help="list the workers a discovery sees")
    _discovery_options(workers)
    workers.add_argument(
        "--wait", type=float, help="seconds to listen (default: 0.3 for local, 3 for lan)"
    )
    return parser


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


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _worker(args: argparse.Namespace) -> int:
    from wool.worker._config import WorkerConfig
    from wool.worker._main import run

    if args.tls_cert or args.tls_key or args.tls_ca:
        print("wool worker: TLS is not supported yet; run without --tls-* options", file=sys.stderr)
        return 2
    host = args.host or ("0.0.0.0" if args.discovery == "lan" else "127.0.0.1")
    advertised = args.advertise_host or _advertised_host(host)
    if args.discovery == "lan" and not _is_ip(advertised):
        print(
            f"wool worker: --discovery lan advertises an IP address; {advertised!r} is not "
            "one (pass --advertise-host with this host's address)",
            file=sys.stderr,
        )
        return 2
    config = WorkerConfig(
        id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
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


def _table(workers: Sequence[WorkerMetadata]) -> str:
    header = ("ID", "ADDRESS", "TAGS", "VERSION", "TLS")
    rows = [
        (
            w.id,
            w.address,
            ",".join(sorted(w.tags)) or "-",
            w.version or "-",
            "yes" if w.secure else "no",
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
    discovery = _discovery(args)
    workers = anyio.run(_collect, discovery, seconds)
    if not workers:
        print(
            f"wool workers: no workers found {_where(discovery)} within {seconds:g} s; "
            "check --discovery and --namespace (and --wait for slow networks)",
            file=sys.stderr,
        )
        return 0
    print(_table(workers))
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
