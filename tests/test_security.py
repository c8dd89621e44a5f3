"""Security: TLS credentials, private workers, refusals, hostile bytes (issue 12).

Real worker processes and real TLS; certificates are made here with trustme.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import pytest
import trustme

import wool
from wool.security import private_socket_path, release_socket, unix_path
from wool.transport import PROTOCOL_VERSION, Client, Request, Task, portal_for_host
from wool.transport import _edges as edges

from .routines import add, fib, whereami
from .test_discovery import WOOL, Worker, start_worker

pytestmark = pytest.mark.anyio


def credentials(
    ca: trustme.CA,
    *identities: str,
    mutual: bool = True,
    trust: trustme.CA | None = None,
    not_after: datetime.datetime | None = None,
) -> wool.WorkerCredentials:
    """Credentials with a certificate from ``ca`` for ``identities``, trusting ``trust``
    (default: ``ca``)."""
    leaf = ca.issue_cert(*(identities or ("wool-worker",)), not_after=not_after)
    return wool.WorkerCredentials(
        (trust or ca).cert_pem.bytes(),
        leaf.private_key_pem.bytes(),
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
        mutual=mutual,
    )


def write(creds: wool.WorkerCredentials, directory: Path) -> list[str]:
    """PEM files for ``creds``; the ``wool worker`` options that name them."""
    directory.mkdir(exist_ok=True)
    paths = {"ca": creds.ca, "key": creds.key, "cert": creds.cert}
    for name, data in paths.items():
        (directory / f"{name}.pem").write_bytes(data)
    options = [f"--tls-{name}={directory / f'{name}.pem'}" for name in paths]
    return options if creds.mutual else [*options, "--no-mutual"]


class _NoClientCertificate(wool.WorkerCredentials):
    """A caller that trusts the CA but presents no certificate."""

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca.decode())
        context.check_hostname = check_hostname
        context.set_alpn_protocols(["h2"])
        return context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


# ------------------------------------------------------------------------ credentials


def test_credentials_from_files_round_trip(ca: trustme.CA, tmp_path: Path) -> None:
    creds = credentials(ca, "127.0.0.1")
    write(creds, tmp_path)
    loaded = wool.WorkerCredentials.from_files(
        tmp_path / "ca.pem", tmp_path / "key.pem", tmp_path / "cert.pem", mutual=False
    )
    assert (loaded.ca, loaded.key, loaded.cert, loaded.mutual) == (
        creds.ca,
        creds.key,
        creds.cert,
        False,
    )
    assert "PRIVATE" not in repr(loaded)  # the key never shows in logs
    context = loaded.server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    assert creds.server_context().verify_mode == ssl.CERT_REQUIRED
    assert loaded.client_context().check_hostname
    assert cloudpickle.loads(cloudpickle.dumps(creds)) == creds


def test_bad_credentials_raise_security_error(ca: trustme.CA, tmp_path: Path) -> None:
    good = credentials(ca)
    write(good, tmp_path)
    with pytest.raises(wool.SecurityError, match="cannot read the key file"):
        wool.WorkerCredentials.from_files(
            tmp_path / "ca.pem", tmp_path / "missing.pem", tmp_path / "cert.pem"
        )
    with pytest.raises(wool.SecurityError, match="CA certificate is not usable PEM"):
        wool.WorkerCredentials(b"not a certificate", good.key, good.cert)
    other = credentials(ca)
    with pytest.raises(wool.SecurityError, match="not a usable PEM pair"):
        wool.WorkerCredentials(good.ca, other.key, good.cert)  # the key is not the cert's
    with pytest.raises(TypeError, match=r"wool\.WorkerCredentials"):
        wool.WorkerPool(size=1, credentials="certs/")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ mTLS pools


async def test_mtls_pool_runs_calls_and_nested_calls(ca: trustme.CA) -> None:
    creds = credentials(ca)
    async with wool.WorkerPool(size=2, credentials=creds) as pool:
        assert all(w.secure for w in pool.workers)
        pids = {w.pid for w in pool.workers}
        with anyio.fail_after(60):
            pid, _ = await whereami()
            assert pid in pids
            assert await fib(6) == 8  # nested calls: workers call workers over mTLS
            assert await add(1, 2) == 3


async def test_private_workers_listen_on_sockets_only_this_user_can_reach() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        path = unix_path(worker.host)
        assert path is not None and worker.port == 0
        directory = Path(path).parent
        info = directory.stat()
        assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
        assert stat.S_IMODE(Path(path).stat().st_mode) & 0o077 == 0
        if os.getuid() == 0:
            # Another user (nobody) cannot even connect.
            assert _connect_as_nobody(path) == "PermissionError"
        assert await add(2, 3) == 5
    assert not Path(path).exists()


def _connect_as_nobody(path: str) -> str:
    code = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({path!r}); print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout.strip()


@pytest.fixture
def own_runtime_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of this test's own as wool's runtime root (others' sockets
    would keep a shared one from being emptied)."""
    root = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    try:
        yield root
    finally:
        shutil.rmtree(root)


def _release_everything_once(root: Path) -> Callable[[], None]:
    """Do what another pool releasing the last socket does (remove ``s``, then
    ``wool-<uid>``), the first time it is called."""
    done: list[bool] = []

    def release() -> None:
        if not done:
            done.append(True)
            runtime = root / f"wool-{os.getuid()}"
            for directory in (runtime / "s", runtime):
                with contextlib.suppress(FileNotFoundError):
                    directory.rmdir()

    return release


def test_a_socket_directory_removed_midway_by_another_pool_is_made_again(
    own_runtime_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = _release_everything_once(own_runtime_root)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.name == "s":
            release()  # between creating wool-<uid> and creating s in it
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    host = private_socket_path("race")
    path = unix_path(host)
    assert path is not None and Path(path).parent.is_dir()
    release_socket(host)


def test_a_socket_directory_removed_before_bind_is_made_again(
    own_runtime_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = private_socket_path("race")
    release = _release_everything_once(own_runtime_root)
    real_probe = edges._remove_stale_socket

    def probe_then_race(path: str) -> None:
        real_probe(path)
        release()  # between the directories' check and bind

    monkeypatch.setattr(edges, "_remove_stale_socket", probe_then_race)
    sock = edges.listening_socket(host, 0)
    try:
        path = unix_path(host)
        assert path is not None and stat.S_ISSOCK(Path(path).stat().st_mode)
    finally:
        sock.close()
        edges.remove_socket(host)
    assert not (own_runtime_root / f"wool-{os.getuid()}").exists()


# ------------------------------------------------------------------------ durable TLS


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def tls_worker(ca: trustme.CA, tmp_path: Path, namespace: str) -> Iterator[Worker]:
    """``wool worker`` on 127.0.0.1 with mTLS, its certificate for 127.0.0.1."""
    options = write(credentials(ca, "127.0.0.1"), tmp_path / "worker")
    worker = start_worker("--namespace", namespace, "--host", "127.0.0.1", *options)
    try:
        worker.wait_for("serving at")
        yield worker
    finally:
        assert worker.stop() == 0


async def _still_serves(namespace: str, creds: wool.WorkerCredentials, pid: int) -> None:
    discovery = wool.LocalDiscovery(namespace)
    async with wool.WorkerPool(discovery=discovery, credentials=creds, start_timeout=20):
        with anyio.fail_after(30):
            assert (await whereami())[0] == pid


async def _refusal(
    namespace: str, creds: wool.WorkerCredentials | None, **options: bool
) -> wool.SecurityError:
    discovery = wool.LocalDiscovery(namespace)
    with pytest.raises(wool.SecurityError) as info:
        with anyio.fail_after(30):
            async with wool.WorkerPool(
                discovery=discovery, credentials=creds, start_timeout=20, **options
            ):
                await add(1, 1)
    return info.value


async def test_durable_mtls_worker_serves_a_pool_with_the_credentials(
    ca: trustme.CA, tls_worker: Worker, namespace: str
) -> None:
    listing = subprocess.run(
        [*WOOL, "workers", "--namespace", namespace],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert listing[1].split()[-1] == "yes"  # it advertises that it requires TLS
    await _still_serves(namespace, credentials(ca, "caller"), tls_worker.pid)


def test_a_tls_worker_negotiates_h2_over_tls_1_2_or_later(
    ca: trustme.CA, tls_worker: Worker, namespace: str
) -> None:
    (record,) = wool.LocalDiscovery(namespace).scan()
    context = credentials(ca, "caller").client_context()
    with socket.create_connection((record.host, record.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=record.host) as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # A caller that offers only TLS 1.1 is refused by the worker (the alert says so).
    old = credentials(ca, "caller").client_context()
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL will not even offer TLS 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, rightly
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((record.host, record.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError) as refused:
            old.wrap_socket(raw, server_hostname=record.host)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


async def test_each_bad_certificate_gets_a_typed_error_and_the_worker_keeps_serving(
    ca: trustme.CA, tls_worker: Worker, namespace: str
) -> None:
    # A pool without credentials will not talk to a worker that requires TLS.
    error = await _refusal(namespace, None)
    assert "requires TLS" in str(error) and "credentials=" in str(error)

    # A certificate from another CA: the worker refuses the caller.
    stranger_ca = trustme.CA()
    error = await _refusal(namespace, credentials(stranger_ca, "caller", trust=ca))
    assert "refused this caller's TLS connection: its CA did not sign" in str(error)

    # Trusting another CA: the caller refuses the worker.
    error = await _refusal(namespace, credentials(ca, "caller", trust=stranger_ca))
    assert "refused the certificate of worker" in str(error)
    assert "self-signed certificate in certificate chain" in str(error)

    # No client certificate under mutual TLS.
    good = credentials(ca, "caller")
    bare = _NoClientCertificate(good.ca, good.key, good.cert)
    error = await _refusal(namespace, bare)
    assert "refused this caller's TLS connection: this caller presented no cert" in str(error)

    # An expired client certificate.
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    error = await _refusal(namespace, credentials(ca, "caller", not_after=past))
    assert "refused this caller's TLS connection: this caller's certificate has expired" in str(
        error
    )

    await _still_serves(namespace, good, tls_worker.pid)


async def test_the_caller_refuses_an_expired_worker_or_one_for_another_name(
    ca: trustme.CA, tmp_path: Path, namespace: str
) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    cases = {
        "expired": (credentials(ca, "127.0.0.1", not_after=past), "certificate has expired"),
        "other-name": (credentials(ca, "other.example"), "IP address mismatch"),
    }
    for name, (creds, reason) in cases.items():
        ns = f"{namespace}-{name}"
        worker = start_worker(
            "--namespace", ns, "--host", "127.0.0.1", *write(creds, tmp_path / name)
        )
        try:
            worker.wait_for("serving at")
            error = await _refusal(ns, credentials(ca, "caller"))
            assert "refused the certificate of worker" in str(error) and reason in str(error)
        finally:
            assert worker.stop() == 0


async def test_a_tls_pool_never_calls_a_plaintext_worker(ca: trustme.CA, namespace: str) -> None:
    worker = start_worker("--namespace", namespace)  # plaintext, on a private socket
    try:
        worker.wait_for("serving at")
        error = await _refusal(namespace, credentials(ca, "caller"))
        assert "does not use TLS" in str(error) and "--tls-cert" in str(error)
        # Even when the worker's record lies (says TLS), the handshake fails typed.
        (record,) = wool.LocalDiscovery(namespace).scan()
        client = Client(record.host, record.port, credentials=credentials(ca, "caller"))
        with pytest.raises(wool.SecurityError, match="does not speak TLS"):
            await _call(client, _task("liar"))
    finally:
        assert worker.stop() == 0


# ------------------------------------------------------------------------ strangers (r4)


def _task(call_id: str, marker: Path | None = None) -> Task:
    async def stranger_code() -> str:
        if marker is not None:
            marker.write_text("ran")
        return "ran"

    return Task(
        version=PROTOCOL_VERSION,
        id=call_id,
        routine="anything",
        function=cloudpickle.dumps(stranger_code),
        arguments=cloudpickle.dumps(((), {})),
        grace=1.0,
    )


async def _call(client: Client, task: Task) -> object:
    portal = portal_for_host()
    try:
        with anyio.fail_after(20):
            return await portal.run(client.call, Request(task=task))
    finally:
        await portal.run(client.close)
        portal.close()


async def test_a_plaintext_stranger_cannot_run_code_on_a_tls_worker(
    ca: trustme.CA, tls_worker: Worker, namespace: str, tmp_path: Path
) -> None:
    (record,) = wool.LocalDiscovery(namespace).scan()
    marker = tmp_path / "ran"
    # A stranger knows the port and has no credentials: no call, no Info, no Stop.
    with pytest.raises(wool.SecurityError, match="requires TLS"):
        await _call(Client(record.host, record.port), _task("stranger-1", marker))
    portal = portal_for_host()
    try:
        for request in ("info", "stop"):
            stranger = Client(record.host, record.port)
            ask = partial(stranger.info, 2.0) if request == "info" else partial(stranger.stop, 0, 2)
            with pytest.raises(wool.SecurityError, match="requires TLS"):
                with anyio.fail_after(20):
                    await portal.run(ask)
            await portal.run(stranger.close)
    finally:
        portal.close()
    assert not marker.exists()
    await _still_serves(namespace, credentials(ca, "caller"), tls_worker.pid)


# ------------------------------------------------------------------------ exposure


def test_wool_worker_refuses_plaintext_on_a_network_address() -> None:
    # Refused before it binds anything: the address is never listened on.
    result = subprocess.run(
        [*WOOL, "worker", "--discovery", "lan", "--advertise-host", "192.0.2.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "refusing to listen on 0.0.0.0 without TLS" in result.stderr
    assert "--insecure" in result.stderr and "--tls-cert" in result.stderr


def test_a_plaintext_worker_on_loopback_warns_that_every_local_user_can_reach_it(
    namespace: str,
) -> None:
    worker = start_worker("--namespace", namespace, "--host", "127.0.0.1")
    try:
        warning = worker.wait_for("without TLS")
        assert "every user of this host can run code" in warning
        assert "omit --host for a private Unix socket" in warning
        worker.wait_for("serving at")
    finally:
        assert worker.stop() == 0
    private = start_worker("--namespace", f"{namespace}-private")
    try:
        worker_line = private.wait_for("serving at")
        assert "unix:" in worker_line
        assert not any("without TLS" in line for line in private.lines)
    finally:
        assert private.stop() == 0


def test_discovery_records_say_whether_a_worker_requires_tls() -> None:
    from wool.discovery._lan import _metadata, _service  # pyright: ignore[reportPrivateUsage]
    from wool.discovery._local import _decode, _encode  # pyright: ignore[reportPrivateUsage]

    for secure in (True, False):
        worker = wool.WorkerMetadata(
            id="w", host="192.0.2.7", port=5000, secure=secure, options=(("tls-name", "n"),)
        )
        assert _metadata(_service(worker, "ns"), "ns") == worker
        assert _decode(_encode(worker)) == worker


async def test_a_pool_refuses_plaintext_workers_on_the_network_unless_insecure() -> None:
    from wool.client._admission import refusal

    remote = wool.WorkerMetadata(id="w", host="192.0.2.7", port=5000)
    error = refusal(remote, None, False)
    assert error is not None and "insecure=True" in str(error)
    assert refusal(remote, None, True) is None
    loopback = wool.WorkerMetadata(id="w", host="127.0.0.1", port=5000)
    assert refusal(loopback, None, False) is None


async def test_tls_name_lets_a_worker_use_a_certificate_for_a_name(
    ca: trustme.CA, tmp_path: Path, namespace: str
) -> None:
    # A certificate for a Service's DNS name, not for the address the worker listens on.
    options = write(credentials(ca, "workers.wool.test"), tmp_path / "worker")
    worker = start_worker(
        "--namespace", namespace, "--host", "127.0.0.1", "--tls-name", "workers.wool.test", *options
    )
    try:
        worker.wait_for("serving at")
        await _still_serves(namespace, credentials(ca, "caller"), worker.pid)
    finally:
        assert worker.stop() == 0


async def test_one_way_tls_accepts_callers_without_certificates(
    ca: trustme.CA, tmp_path: Path, namespace: str
) -> None:
    options = write(credentials(ca, "127.0.0.1", mutual=False), tmp_path / "worker")
    assert "--no-mutual" in options
    worker = start_worker("--namespace", namespace, "--host", "127.0.0.1", *options)
    try:
        warning = worker.wait_for("one-way TLS (--no-mutual)")
        assert "every user of this host that can reach it can run code" in warning
        worker.wait_for("serving at")
        good = credentials(ca, "caller", mutual=False)
        # The caller still verifies the worker; the worker asks for no certificate.
        bare = _NoClientCertificate(good.ca, good.key, good.cert, mutual=False)
        await _still_serves(namespace, bare, worker.pid)
        error = await _refusal(namespace, None)
        assert "requires TLS" in str(error)
    finally:
        assert worker.stop() == 0


# ------------------------------------------------------------------------ discovery probes


def _port(worker: Worker) -> int:
    line = worker.wait_for("serving at")
    match = re.search(r"serving at \S+:(\d+) ", line)
    assert match is not None, line
    return int(match.group(1))


async def test_dns_discovery_probes_workers_with_the_pools_credentials(
    ca: trustme.CA, tmp_path: Path, namespace: str
) -> None:
    # The worker's certificate names the DNS name, not the address it resolves to.
    options = write(credentials(ca, "localhost"), tmp_path / "worker")
    worker = start_worker("--namespace", namespace, "--host", "127.0.0.1", *options)
    try:
        port = _port(worker)
        good = credentials(ca, "caller")

        async def serves() -> None:
            discovery = wool.DnsDiscovery("localhost", port, interval=0.2, credentials=good)
            async with wool.WorkerPool(discovery=discovery, credentials=good, start_timeout=20):
                with anyio.fail_after(30):
                    assert (await whereami())[0] == worker.pid

        await serves()

        # Probes without credentials, or with a certificate from another CA, are refused
        # by the worker: the worker is left out, so the pool finds none.
        stranger = credentials(trustme.CA(), "caller", trust=ca)
        for probe_with in (None, stranger):
            probing = wool.DnsDiscovery("localhost", port, interval=0.2, credentials=probe_with)
            with pytest.raises(wool.NoWorkersAvailable) as refused:
                with anyio.fail_after(30):
                    async with wool.WorkerPool(
                        discovery=probing, credentials=probe_with, start_timeout=1
                    ):
                        await add(1, 1)
            # The caller is told which worker was left out and why, not to check its tags.
            reason = probing.left_out[f"127.0.0.1:{port}"]
            assert f"left out: 127.0.0.1:{port}: {reason}" in str(refused.value)
            assert "tags match" not in str(refused.value)
        await serves()
    finally:
        assert worker.stop() == 0


async def test_a_call_that_finds_every_worker_left_out_is_told_why(
    ca: trustme.CA, tmp_path: Path, namespace: str
) -> None:
    # Certificates rotate under a running pool: the worker at the address it follows comes
    # back with a certificate this pool does not trust, so its probes leave it out.
    good = credentials(ca, "caller")
    first = start_worker(
        "--namespace", namespace, "--host", "127.0.0.1",
        *write(credentials(ca, "localhost"), tmp_path / "first"),
    )  # fmt: skip
    replacement: Worker | None = None
    try:
        port = _port(first)
        discovery = wool.DnsDiscovery("localhost", port, interval=0.2, credentials=good)
        pool = wool.WorkerPool(discovery=discovery, credentials=good, start_timeout=3)
        async with pool:
            with anyio.fail_after(30):
                assert (await whereami())[0] == first.pid
            assert first.stop() == 0
            other_ca = trustme.CA()
            replacement = start_worker(
                "--namespace", namespace, "--host", "127.0.0.1", "--port", str(port),
                *write(credentials(other_ca, "localhost", trust=ca), tmp_path / "second"),
            )  # fmt: skip
            _port(replacement)
            with anyio.fail_after(30):  # discovery drops the first and leaves the second out
                while pool.workers or f"127.0.0.1:{port}" not in discovery.left_out:
                    await anyio.sleep(0.05)
            with pytest.raises(wool.NoWorkersAvailable) as refused:
                with anyio.fail_after(30):
                    await add(1, 1)
        reason = discovery.left_out[f"127.0.0.1:{port}"]
        assert f"left out: 127.0.0.1:{port}: {reason}" in str(refused.value)
        assert "tags" not in str(refused.value)
    finally:
        first.stop()
        if replacement is not None:
            assert replacement.stop() == 0


def test_wool_workers_verifies_workers_with_its_tls_options(
    ca: trustme.CA, tls_worker: Worker, namespace: str, tmp_path: Path
) -> None:
    def listing(creds: wool.WorkerCredentials, name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*WOOL, "workers", "--namespace", namespace, *write(creds, tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )

    verified = listing(credentials(ca, "caller"), "good")
    assert verified.stdout.splitlines()[1].split()[-1] == "verified", verified
    refused = listing(credentials(trustme.CA(), "caller", trust=ca), "stranger")
    assert refused.stdout.splitlines()[1].split()[-1] == "refused", refused
    assert "its CA did not sign this caller's certificate" in refused.stderr
