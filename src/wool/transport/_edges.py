"""TLS and Unix sockets at the transport's edges: listening sockets, the server's TLS
context, and the typed errors for refused handshakes (runs on grpclib's loop)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
from typing import Any

from wool._errors import SecurityError
from wool.security import WorkerCredentials, prepare_socket_directory, release_socket, unix_path
from wool.transport._bridge import Unreachable

__all__ = [
    "ConnectionWatch",
    "client_tls",
    "connect_error",
    "listening_socket",
    "plaintext_refusal",
    "remove_socket",
    "server_tls",
    "tls_refusal",
]

log = logging.getLogger("wool.transport")

# A server that speaks TLS answers a plaintext HTTP/2 preface with a TLS record.
_TLS_RECORD_TYPES = (b"\x15\x03", b"\x16\x03")


class ConnectionWatch:
    """Why a client connection ended and what its peer sent first: a TLS failure after
    the handshake (the worker refusing our certificate) arrives only as the cause of a
    lost connection, and a TLS worker answers a plaintext caller with no HTTP/2 at all."""

    def __init__(self) -> None:
        self.lost_reason: BaseException | None = None
        self.first_bytes: bytes | None = None
        self.peer_closed = False

    def attach(self, protocol: Any) -> Any:
        """Watch ``protocol`` (an asyncio protocol); returns it."""
        connection_lost = protocol.connection_lost
        data_received = protocol.data_received
        eof_received = protocol.eof_received

        def lost(exc: Exception | None) -> None:
            self.lost_reason = exc
            self.peer_closed |= isinstance(exc, ConnectionResetError)
            connection_lost(exc)

        def eof() -> bool | None:
            self.peer_closed = True
            return eof_received()

        def first_data(data: bytes) -> None:
            self.first_bytes = bytes(data[:8])
            protocol.data_received = data_received  # only the first read is watched
            data_received(data)

        protocol.connection_lost = lost
        protocol.data_received = first_data
        protocol.eof_received = eof
        return protocol

    def refusal(self, address: str, exc: BaseException, *, secure: bool) -> SecurityError | None:
        """The typed error if TLS (or its absence) ended the connection, else None."""
        refusal = tls_refusal(address, exc) or tls_refusal(address, self.lost_reason)
        if refusal is None and not secure and self.peer_closed:
            # Not when we gave up on a silent peer (a hung worker, a keepalive timeout).
            refusal = plaintext_refusal(address, self.first_bytes)
        return refusal


# Name checked in a worker's certificate when connecting over a Unix socket: none is
# (the socket's 0700 directory already says who listens); the chain is still verified.
_UNIX_SERVER_NAME = "wool-worker"


def client_tls(
    host: str, credentials: WorkerCredentials | None, server_name: str | None
) -> tuple[ssl.SSLContext | None, str | None]:
    """The context a caller connects to ``host`` with (None: plaintext), and the name the
    worker's certificate must carry (None: ``host`` itself)."""
    if credentials is None:
        return None, None
    if unix_path(host) is not None:
        return credentials.client_context(check_hostname=False), _UNIX_SERVER_NAME
    return credentials.client_context(), server_name


def connect_error(address: str, exc: OSError) -> Exception:
    """The error for a failed connect: SecurityError if TLS refused it, else Unreachable
    (nothing was sent: another worker may take the call)."""
    refusal = tls_refusal(address, exc)
    return refusal or Unreachable(f"cannot connect to worker {address}: {exc}")


def tls_refusal(address: str, exc: BaseException | None) -> SecurityError | None:
    """The typed error for a TLS failure in ``exc`` (None if it is no TLS failure)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SecurityError(
            f"this caller refused the certificate of worker {address}: {exc.verify_message}; "
            "the worker's certificate must be signed by the pool's CA, be valid now, and "
            "name the address the caller connects to",
            worker=address,
        )
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or str(exc)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return SecurityError(
            f"worker {address} does not speak TLS ({reason}) but this caller has "
            "credentials; start the worker with credentials (wool worker --tls-cert "
            "--tls-key --tls-ca), or call it from a pool without credentials",
            worker=address,
        )
    why = _ALERTS.get(reason, reason)
    return SecurityError(
        f"worker {address} refused this caller's TLS connection: {why}; under mutual "
        "TLS the caller's certificate must be signed by the worker's CA and valid now",
        worker=address,
    )


# What the alerts a worker sends when it refuses a caller's certificate mean.
_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "its CA did not sign this caller's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "this caller's certificate has expired",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "this caller presented no certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "this caller's certificate is not acceptable",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the handshake failed (no common TLS version or cipher)",
}


def plaintext_refusal(address: str, first: bytes | None) -> SecurityError | None:
    """The typed error when a caller without credentials reached a TLS worker: it answers
    with a TLS record, or closes the connection without a word (a plaintext worker always
    speaks first, with its HTTP/2 settings)."""
    if first is None or first[:2] in _TLS_RECORD_TYPES:
        return SecurityError(
            f"worker {address} closed the connection without speaking HTTP/2: it requires "
            "TLS and this caller has no credentials; give the pool "
            "credentials=wool.WorkerCredentials(...) signed by the worker's CA",
            worker=address,
        )
    return None


def _remove_stale_socket(path: str) -> None:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: left by a worker that was killed
    except FileNotFoundError:
        pass
    else:
        raise OSError(errno.EADDRINUSE, f"a worker already listens on {path}")
    finally:
        probe.close()


def server_tls(credentials: WorkerCredentials | None) -> ssl.SSLContext | None:
    if credentials is None:
        return None
    context = credentials.server_context()
    context.sslobject_class = _ReportedHandshake
    return context


class _ReportedHandshake(ssl.SSLObject):
    """A server-side TLS session that logs why a handshake failed and tells the client.

    asyncio drops a connection whose handshake failed without sending the alert OpenSSL
    wrote for the client, which then sees only a closed connection. The first failure is
    reported as "want to read", which makes asyncio send what is pending (the alert); the
    next attempt raises it. Nothing of the connection reached the service either way.
    """

    _failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            self._failure = exc
            log.warning("refused a connection: TLS handshake failed: %s", _reason(exc))
            if exc.reason in _PLAINTEXT:
                raise  # no TLS client to tell: drop the connection now
            # A TLS client closes on the alert; one that does not is dropped by asyncio's
            # handshake timeout.
            raise ssl.SSLWantReadError("send the alert first") from exc


# What OpenSSL says when the first bytes of a connection are no TLS record.
_PLAINTEXT = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL")


def _reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the caller's certificate: {exc.verify_message}"
    if exc.reason in _PLAINTEXT:
        return "the caller does not speak TLS (it has no credentials)"
    return exc.reason or str(exc)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound socket for ``host:port``, or for ``unix:/path`` (mode 0600; a stale socket
    left there by a killed worker is replaced, a live one is not)."""
    path = unix_path(host)
    if path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def bind() -> None:
            _remove_stale_socket(path)
            sock.bind(path)

        try:
            prepare_socket_directory(path, then=bind)  # another pool may have just removed it
            os.chmod(path, 0o600)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def remove_socket(host: str) -> None:
    """Remove a closed server's Unix socket (and wool's directories once empty)."""
    path = unix_path(host)
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        release_socket(host)
