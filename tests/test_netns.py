"""Discovery across real network boundaries: Linux network namespaces as separate hosts.

Each test builds its own namespaces (``wool-<random>-<x>``) and runs ``wool worker``,
``wool workers`` and pool scripts inside them with ``ip netns exec``. They need root and
iproute2, and are skipped otherwise. The namespaces, the ``/etc/netns/<ns>/`` files and
every process are removed at teardown, also when a test fails.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import Lab, Proc, skip_unless_possible

WOOL = Path(sys.executable).parent / "wool"
SERVING = r"serving at (\S+):(\d+) \((\w+), pid (\d+)\)"
# Each test runs a handful of processes with 20 s waits: one at a time (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("heavy")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    skip_unless_possible()
    if not WOOL.exists():
        pytest.skip(f"the wool command is not installed next to {sys.executable}")
    tmp = tmp_path / "tmp"  # TMPDIR of every process: LocalDiscovery files stay in here
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    lab = Lab(tmp_path, env)
    try:
        yield lab
    finally:
        lab.close()


def serving(worker: Proc) -> tuple[str, int, str, int]:
    """(host, port, backend, pid) from the worker's "serving at ..." log line (bounded wait)."""
    host, port, backend, pid = worker.wait_line(SERVING, stream="stderr").groups()
    return host, int(port), backend, int(pid)


def netns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


# ------------------------------------------------------------------------------ LAN (mDNS)

LAN_POOL = """
import logging
import os
import sys

import anyio
import sniffio
import trio

import wool

NAMESPACE, BACKEND, RUNNER = sys.argv[1], sys.argv[2], sys.argv[3]


@wool.routine
async def where():
    return os.getpid(), os.stat("/proc/self/ns/net").st_ino, sniffio.current_async_library()


async def main():
    discovery = wool.LanDiscovery(NAMESPACE)
    # A trusted test network: plaintext workers on it are accepted only when told so.
    async with wool.WorkerPool(discovery=discovery, start_timeout=10, insecure=True) as pool:
        pid, netns, library = await where()
        print("called", pid, netns, library, flush=True)
        with anyio.fail_after(15):
            while pool.workers:
                await anyio.sleep(0.05)
        print("dropped", flush=True)


logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
if RUNNER == "trio.run":
    trio.run(main)
else:
    anyio.run(main, backend=BACKEND)
"""


@pytest.mark.parametrize(
    ("backend", "runner"),
    [
        pytest.param("asyncio", "anyio.run", id="asyncio"),
        pytest.param("trio", "anyio.run", id="trio"),
        # The same pool under trio.run(), which leaves sniffio's context variable unset.
        pytest.param("trio", "trio.run", id="trio-native"),
    ],
)
def test_lan_discovery_across_two_hosts(
    lab: Lab, tmp_path: Path, backend: str, runner: str
) -> None:
    a, b = lab.namespace("a"), lab.namespace("b")
    _, worker_host = lab.link(a, b, f"10.201.{random.randint(1, 254)}")
    namespace = f"netns-{lab.prefix}"

    worker = lab.start(
        b,
        "worker",
        WOOL,
        "worker",
        "--discovery",
        "lan",
        "--namespace",
        namespace,
        "--host",
        worker_host,
        "--backend",
        backend,
        "--insecure",
        "--log-level",
        "INFO",
    )
    host, port, worker_backend, pid = serving(worker)
    assert "WITHOUT TLS (--insecure)" in worker.stderr()
    assert (host, worker_backend, pid) == (worker_host, backend, worker.pid)

    script = tmp_path / "lan_pool.py"
    script.write_text(textwrap.dedent(LAN_POOL))
    # From the other host, at once: `wool workers` lists it, a pool runs a routine on it.
    listing = lab.start(
        a, "workers", WOOL, "workers", "--discovery", "lan", "--namespace", namespace, "--wait", "5"
    )
    pool = lab.start(a, "pool", sys.executable, script, namespace, backend, runner)

    called = pool.wait_line(r"^called (\d+) (\d+) (\w+)$", timeout=30)
    called_pid, called_netns, library = called.groups()
    assert int(called_pid) == worker.pid, lab.describe()
    assert int(called_netns) == netns_inode(b) != netns_inode(a)
    assert library == backend

    assert listing.wait(20) == 0, lab.describe([listing])
    assert f"{worker_host}:{port}" in listing.stdout(), lab.describe([listing])

    # A graceful stop withdraws the worker (mDNS goodbye): the pool drops it.
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, lab.describe([worker])
    assert "stopped" in worker.stderr()
    pool.wait_for("dropped", timeout=20)
    assert pool.wait(20) == 0, lab.describe([pool])
    # Dropped by discovery (the worker left the pool), not merely suspended.
    assert re.search(rf"worker \S*{pid}\S* left", pool.stderr()), lab.describe([pool])


# ----------------------------------------------------------------------------------- DNS

DNS_POOL = """
import os
import logging
import sys
from pathlib import Path

import anyio

import wool

NAME, PORT, GO = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])


@wool.routine
async def pid():
    return os.getpid()


def hosts(pool):
    return sorted(w.host for w in pool.workers)


async def until(condition, timeout=15):
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.05)


async def main():
    discovery = wool.DnsDiscovery(NAME, PORT, interval=0.2, timeout=1)
    async with wool.WorkerPool(discovery=discovery, start_timeout=20) as pool:
        await until(lambda: len(pool.workers) == 2)
        print("hosts", *hosts(pool), flush=True)
        print("both-pids", *sorted({await pid() for _ in range(4)}), flush=True)
        await until(GO.exists)
        await until(lambda: hosts(pool) == ["127.0.0.2"])
        print("hosts", *hosts(pool), flush=True)
        print("one-pid", *sorted({await pid() for _ in range(2)}), flush=True)
        await until(lambda: not pool.workers)
        print("empty", flush=True)


logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
anyio.run(main)
"""

HOSTS = "127.0.0.1 localhost\n"


def test_dns_discovery_follows_the_name(lab: Lab, tmp_path: Path) -> None:
    ns = lab.namespace("dns")
    name = "workers.wool.test"
    hosts = lab.etc_file(ns, "hosts", f"{HOSTS}127.0.0.2 {name}\n127.0.0.3 {name}\n")
    port = random.randint(47000, 47999)  # the namespace is new: every port is free
    namespace = f"netns-{lab.prefix}"
    workers = {
        host: lab.start(
            ns,
            f"worker-{host}",
            WOOL,
            "worker",
            "--discovery",
            "local",
            "--namespace",
            namespace,
            "--host",
            host,
            "--port",
            str(port),
            "--log-level",
            "INFO",
        )
        for host in ("127.0.0.2", "127.0.0.3")
    }
    for host, worker in workers.items():
        assert serving(worker)[:2] == (host, port)

    script, go = tmp_path / "dns_pool.py", tmp_path / "go"
    script.write_text(textwrap.dedent(DNS_POOL))
    pool = lab.start(ns, "pool", sys.executable, script, name, str(port), go)

    pool.wait_for("hosts 127.0.0.2 127.0.0.3\n", timeout=30)
    # Round robin over the two addresses: calls reach both workers.
    both = pool.wait_line(r"^both-pids (.*)$").group(1)
    assert both == " ".join(map(str, sorted(w.pid for w in workers.values()))), lab.describe()

    # The name loses an address: the pool drops that worker although it still runs. The
    # file is rewritten in place: `ip netns exec` bind-mounts it, and a mount follows the inode.
    with hosts.open("r+") as file:
        file.truncate()
        file.write(f"{HOSTS}127.0.0.2 {name}\n")
    go.write_text("go")
    pool.wait_for("hosts 127.0.0.2\n", timeout=20)
    one = pool.wait_line(r"^one-pid (.*)$").group(1)
    assert one == str(workers["127.0.0.2"].pid), lab.describe()
    assert workers["127.0.0.3"].popen.poll() is None

    # The last worker dies without a word: it stops answering, and the pool drops it.
    workers["127.0.0.2"].signal(signal.SIGKILL)
    workers["127.0.0.2"].wait(10)
    out = pool.wait_for("empty", timeout=20)
    assert pool.wait(20) == 0, lab.describe([pool])
    assert out.count("hosts") == 2
    # Both were dropped by discovery (they left the pool), not merely suspended.
    assert len(re.findall(r"worker \S+ left pool", pool.stderr())) == 2, lab.describe([pool])

    workers["127.0.0.3"].signal(signal.SIGTERM)
    assert workers["127.0.0.3"].wait(20) == 0, lab.describe()
    # The survivor removed the dead worker's entry and its own: nothing is left behind.
    assert not list((tmp_path / "tmp").rglob("*")), list((tmp_path / "tmp").rglob("*"))


# ----------------------------------------------------------------------------------- TLS

TLS_POOL = """
import logging
import os
import sys

import anyio

import wool

NAMESPACE, BACKEND, CERTS = sys.argv[1], sys.argv[2], sys.argv[3]


@wool.routine
async def where():
    return os.getpid(), os.stat("/proc/self/ns/net").st_ino


async def main():
    discovery = wool.LanDiscovery(NAMESPACE)
    try:
        async with wool.WorkerPool(discovery=discovery, start_timeout=10):
            await where()
    except wool.SecurityError as exc:
        print("plaintext pool refused:", exc, flush=True)
    credentials = wool.WorkerCredentials.from_files(
        f"{CERTS}/ca.pem", f"{CERTS}/key.pem", f"{CERTS}/cert.pem"
    )
    async with wool.WorkerPool(discovery=discovery, credentials=credentials, start_timeout=10):
        pid, netns = await where()
        print("called", pid, netns, flush=True)


logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
anyio.run(main, backend=BACKEND)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_mtls_worker_on_a_network_address(lab: Lab, tmp_path: Path, backend: str) -> None:
    import trustme

    a, b = lab.namespace("a"), lab.namespace("b")
    _, worker_host = lab.link(a, b, f"10.202.{random.randint(1, 254)}")
    namespace = f"netns-{lab.prefix}"
    ca = trustme.CA()
    for side, identity in (("worker", worker_host), ("caller", "caller.wool.test")):
        leaf = ca.issue_cert(identity)
        directory = tmp_path / side
        directory.mkdir()
        (directory / "ca.pem").write_bytes(ca.cert_pem.bytes())
        (directory / "key.pem").write_bytes(leaf.private_key_pem.bytes())
        (directory / "cert.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    tls = [f"--tls-{name}={tmp_path / 'worker' / f'{name}.pem'}" for name in ("ca", "key", "cert")]
    worker = lab.start(
        b,
        "worker",
        WOOL,
        "worker",
        "--discovery",
        "lan",
        "--namespace",
        namespace,
        "--host",
        worker_host,
        "--backend",
        backend,
        *tls,
        "--log-level",
        "INFO",
    )
    host, port, _, _ = serving(worker)
    assert host == worker_host

    caller_tls = [
        f"--tls-{name}={tmp_path / 'caller' / f'{name}.pem'}" for name in ("ca", "key", "cert")
    ]
    listing = lab.start(
        a,
        "workers",
        WOOL,
        "workers",
        "--discovery",
        "lan",
        "--namespace",
        namespace,
        "--wait",
        "5",
        *caller_tls,
    )
    script = tmp_path / "tls_pool.py"
    script.write_text(textwrap.dedent(TLS_POOL))
    pool = lab.start(a, "pool", sys.executable, script, namespace, backend, tmp_path / "caller")

    refused = pool.wait_for("plaintext pool refused:", timeout=30)
    assert "requires TLS" in refused, lab.describe([pool])
    called = pool.wait_line(r"^called (\d+) (\d+)$", timeout=30)
    assert int(called.group(1)) == worker.pid, lab.describe()
    assert int(called.group(2)) == netns_inode(b) != netns_inode(a)
    assert pool.wait(20) == 0, lab.describe([pool])

    # `wool workers` with the caller's credentials verifies the worker over TLS.
    assert listing.wait(20) == 0, lab.describe([listing])
    row = next(line for line in listing.stdout().splitlines() if f"{worker_host}:{port}" in line)
    assert row.split()[-1] == "verified", lab.describe([listing])

    # A stranger on the network without credentials cannot get anything run.
    stranger = lab.run(
        a,
        "stranger",
        sys.executable,
        "-c",
        "import anyio, sys\n"
        "from wool.transport import Client\n"
        "async def main():\n"
        f"    client = Client({worker_host!r}, {port})\n"
        "    try:\n"
        "        await client.info(5)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, exc)\n"
        "    await client.close()\n"
        "anyio.run(main)\n",
    )
    said = stranger.stdout()
    assert "SecurityError" in said and "requires TLS" in said, lab.describe([stranger])

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, lab.describe([worker])
