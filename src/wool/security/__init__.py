"""Who may talk to a worker: TLS credentials and private endpoints.

:class:`WorkerCredentials` carries a CA, a key and a certificate; every connection between
callers and workers that hold them is TLS (mutual by default), authenticated before any
byte of it reaches a pickle loader. Without credentials, a pool's spawned workers listen on
Unix sockets in a directory only the pool's user can open.
"""

from __future__ import annotations

from wool.security._credentials import WorkerCredentials
from wool.security._private import (
    exposure,
    prepare_socket_directory,
    private_socket_path,
    release_socket,
    unix_path,
)

__all__ = [
    "WorkerCredentials",
    "exposure",
    "prepare_socket_directory",
    "private_socket_path",
    "release_socket",
    "unix_path",
]
