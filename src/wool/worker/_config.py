"""What a pool tells a worker process it spawns (sent once, on the worker's stdin)."""

from __future__ import annotations

import logging
import os
import pickle
import struct
from dataclasses import dataclass, field

import cloudpickle

from wool.discovery import DiscoveryLike
from wool.security import WorkerCredentials
from wool.transport import DEFAULT_LIMITS, Limits

__all__ = ["WorkerConfig", "read_config", "write_config"]

_LENGTH = struct.Struct("!I")


@dataclass
class WorkerConfig:
    id: str
    discovery: DiscoveryLike
    backend: str = "asyncio"
    tags: frozenset[str] = field(default_factory=frozenset)
    host: str = "127.0.0.1"
    port: int = 0
    # The address published for callers; defaults to ``host``.
    advertise_host: str | None = None
    # Root calls run at once at most; nested calls are never held back.
    concurrency: int | None = None
    grace: float = 5.0
    keepalive: float | None = 5.0
    wait_for_workers: float = 30.0
    sys_path: list[str] = field(default_factory=list)
    imports: tuple[str, ...] = ()
    log_level: int = logging.WARNING
    # The pool's process: when it dies (stdin closes), the worker stops on its own.
    parent_pid: int | None = None
    limits: Limits = DEFAULT_LIMITS
    # Ids of the workers spawned with this one: it reports ready once discovery has shown
    # it each of them, so that its routines' nested calls spread from the first call.
    peers: tuple[str, ...] = ()
    # TLS for the worker's server and for its nested calls; None: plaintext.
    credentials: WorkerCredentials | None = None
    # Plaintext on a network address (as a server), and to remote workers (as a caller).
    insecure: bool = False
    # The name callers check in this worker's certificate instead of its address.
    tls_name: str | None = None


def write_config(config: WorkerConfig) -> bytes:
    data = cloudpickle.dumps(config)
    return _LENGTH.pack(len(data)) + data


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise EOFError("the worker configuration on stdin is missing or truncated")
        data += chunk
    return data


def read_config(fd: int) -> WorkerConfig:
    """Read the configuration from ``fd``, unbuffered: the rest of stdin is the parent's."""
    (size,) = _LENGTH.unpack(_read_exactly(fd, _LENGTH.size))
    data = _read_exactly(fd, size)
    config = pickle.loads(data)
    if not isinstance(config, WorkerConfig):
        raise TypeError(f"expected a WorkerConfig on stdin, got {type(config).__name__}")
    return config
