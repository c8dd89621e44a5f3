"""Endpoints only this host's user can reach, and how exposed an address is."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from wool._errors import SecurityError

__all__ = [
    "exposure",
    "prepare_socket_directory",
    "private_socket_path",
    "release_socket",
    "unix_path",
]

#: How a worker's address is written when it is a Unix domain socket: ``unix:/path``.
UNIX_PREFIX = "unix:"

# sun_path holds 108 bytes on Linux, 104 on macOS, the terminating NUL included.
_MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107

Exposure = Literal["private", "loopback", "network"]


def unix_path(host: str) -> str | None:
    """The socket path if ``host`` names a Unix domain socket (``unix:/path``), else None."""
    return host[len(UNIX_PREFIX) :] if host.startswith(UNIX_PREFIX) else None


def exposure(host: str) -> Exposure:
    """Who can reach a worker that listens on ``host``.

    ``private``: a Unix socket (its directory decides who, see :func:`private_socket_path`);
    ``loopback``: every user of this host; ``network``: every host that can route to it.
    """
    if unix_path(host) is not None:
        return "private"
    if host == "localhost":
        return "loopback"
    try:
        return "loopback" if ipaddress.ip_address(host.strip("[]")).is_loopback else "network"
    except ValueError:
        return "network"  # a name: it may resolve to anything


def _runtime_directories() -> list[Path]:
    # The directory LocalDiscovery keeps its entries in (per user, mode 0700), and one in
    # /tmp for when TMPDIR is too long a path for a socket.
    name = f"wool-{os.getuid()}"
    return [Path(tempfile.gettempdir()) / name, Path("/tmp") / name]


def _in_runtime_directory(socket_path: str) -> bool:
    directory = Path(socket_path).parent
    return directory.name == _SOCKETS and directory.parent.name == f"wool-{os.getuid()}"


_SOCKETS = "s"


def _owned_privately(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def prepare_socket_directory(socket_path: str, then: Callable[[], None] = lambda: None) -> None:
    """Create the directories of a socket in wool's runtime directory (mode 0700), check
    that only this user can enter them, and call ``then`` (which binds the socket); other
    sockets' directories are left as they are.

    Whoever releases the last socket removes the directories, and another process may do
    so between these steps: a step that finds a directory gone starts again.

    Raises:
        SecurityError: a directory exists but another user owns it, or others may enter
            it (someone could then reach or impersonate the workers in it).
        FileNotFoundError: the directories vanished on every attempt.
    """
    if not _in_runtime_directory(socket_path):
        then()
        return  # a socket the user placed: its directory is the user's to guard
    directory = Path(socket_path).parent
    for attempt in range(_ATTEMPTS):
        try:
            _make_private(directory.parent)
            _make_private(directory)
            then()
            return
        except FileNotFoundError:
            if attempt == _ATTEMPTS - 1:
                raise


_ATTEMPTS = 3


def _make_private(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    if not _owned_privately(path):
        raise SecurityError(
            f"{path} must be a directory owned by uid {os.getuid()} with mode 0700; "
            "remove it (or fix its owner and mode) so wool can keep its sockets private"
        )


def release_socket(host: str) -> None:
    """Remove the socket ``unix:/path`` names if it is in wool's runtime directory, and
    the directories once they are empty (as LocalDiscovery does with its own)."""
    path = unix_path(host)
    if path is None or not _in_runtime_directory(path):
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
    directory = Path(path).parent
    for empty in (directory, directory.parent):
        try:
            empty.rmdir()
        except OSError:
            return


def private_socket_path(name: str) -> str:
    """A path for a Unix socket named ``name`` in a directory only this user can enter
    (``<tmp>/wool-<uid>/s``, mode 0700; ``/tmp/wool-<uid>/s`` if that path is too long
    for a socket), written as ``unix:/path``. The directories are created.

    Raises:
        SecurityError: the directory is not this user's alone, or no path is short enough.
    """
    socket_path = ""
    for root in _runtime_directories():
        socket_path = str(root / _SOCKETS / name)
        if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH:
            prepare_socket_directory(socket_path)
            return UNIX_PREFIX + socket_path
    raise SecurityError(
        f"the socket path {socket_path!r} is too long for a Unix socket; "
        "set TMPDIR to a shorter directory"
    )
