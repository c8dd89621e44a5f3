"""``wool.WorkerCredentials``: the TLS material a pool and its workers share."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

from wool._errors import SecurityError

__all__ = ["WorkerCredentials"]

_ALPN = ["h2"]


class WorkerCredentials:
    """A CA certificate, a private key and a certificate signed by that CA (all PEM).

    One object serves both roles: a worker presents ``cert`` to its callers and, for its
    own nested calls, to the workers it calls. With ``mutual=True`` (mTLS) workers accept
    only callers that present a certificate from the CA; with ``mutual=False`` (one-way
    TLS) any caller may connect, encrypted. Callers always verify workers against the CA,
    and, over TCP, that the worker's certificate names the address (or DNS name) they
    connect to.

    The PEM data is held in memory and travels to the workers a pool spawns (through their
    stdin, never a file or the command line).

    Raises:
        SecurityError: the PEM data cannot be loaded (not PEM, key and certificate do not
            match, no CA certificate in ``ca``).
    """

    __slots__ = ("_contexts", "ca", "cert", "key", "mutual")

    def __init__(self, ca: bytes, key: bytes, cert: bytes, *, mutual: bool = True) -> None:
        self.ca = bytes(ca)
        self.key = bytes(key)
        self.cert = bytes(cert)
        self.mutual = bool(mutual)
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.server_context()  # fail here, not at the first connection
        self.client_context()

    @classmethod
    def from_files(
        cls,
        ca_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
        cert_path: str | os.PathLike[str],
        mutual: bool = True,
    ) -> WorkerCredentials:
        """Read the CA certificate, private key and certificate from PEM files.

        The files are read once: after rotating them, restart the pool or worker (see the
        security documentation).

        Raises:
            SecurityError: a file cannot be read, or its contents cannot be loaded.
        """
        data: list[bytes] = []
        for what, path in (("CA certificate", ca_path), ("key", key_path), ("cert", cert_path)):
            try:
                data.append(Path(path).read_bytes())
            except OSError as exc:
                raise SecurityError(
                    f"cannot read the {what} file {os.fspath(path)!r}: {exc.strerror or exc}"
                ) from exc
        return cls(data[0], data[1], data[2], mutual=mutual)

    def server_context(self) -> ssl.SSLContext:
        """The context a worker listens with (TLS >= 1.2, ALPN ``h2``)."""
        context = self._contexts.get("server")
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._load(context)
            context.verify_mode = ssl.CERT_REQUIRED if self.mutual else ssl.CERT_NONE
            self._contexts["server"] = context
        return context

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """The context a caller connects with: it verifies the worker against the CA and,
        with ``check_hostname``, that the certificate names the address connected to."""
        name = "client" if check_hostname else "client-any-name"
        context = self._contexts.get(name)
        if context is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self._load(context)
            context.check_hostname = check_hostname
            context.verify_mode = ssl.CERT_REQUIRED
            self._contexts[name] = context
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(_ALPN)
        try:
            context.load_verify_locations(cadata=self.ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
            raise SecurityError(f"the CA certificate is not usable PEM: {exc}") from exc
        with _pem_files(self.cert, self.key) as (cert_path, key_path):
            try:
                context.load_cert_chain(cert_path, key_path)
            except ssl.SSLError as exc:
                raise SecurityError(
                    f"the certificate and key are not a usable PEM pair: {exc}; check that "
                    "the key is the certificate's and is not encrypted"
                ) from exc

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.ca, self.key, self.cert, self.mutual))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WorkerCredentials):
            return NotImplemented
        return (self.ca, self.key, self.cert, self.mutual) == (
            other.ca,
            other.key,
            other.cert,
            other.mutual,
        )

    def __hash__(self) -> int:
        return hash((self.ca, self.cert, self.mutual))

    def __repr__(self) -> str:
        return f"WorkerCredentials(mutual={self.mutual}, key=<hidden>)"


def _rebuild(ca: bytes, key: bytes, cert: bytes, mutual: bool) -> WorkerCredentials:
    return WorkerCredentials(ca, key, cert, mutual=mutual)


@contextlib.contextmanager
def _pem_files(cert: bytes, key: bytes) -> Generator[tuple[str, str], None, None]:
    """``ssl`` loads a key pair only from files: anonymous memory files where the system
    has them, so the key never touches a disk; else 0600 files, removed at once."""
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("wool-cert"), os.memfd_create("wool-key")]
        try:
            for fd, data in zip(fds, (cert, key), strict=True):
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="wool-tls-") as directory:
        paths = [os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")]
        for path, data in zip(paths, (cert, key), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        yield paths[0], paths[1]
