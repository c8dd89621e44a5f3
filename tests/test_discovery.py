"""Discovery and pool modes: the DiscoveryLike seam, LocalDiscovery, durable and hybrid pools,
and the ``wool`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import wool
from wool.discovery import DiscoveryEvent, EventKind, WorkerFilter

from .routines import add, fib, read_text, sleep_then_mark, whereami

pytestmark = pytest.mark.anyio

WOOL = [sys.executable, "-m", "wool"]


class MemoryDiscovery:
    """A discovery that lives in this process: proves any DiscoveryLike works."""

    def __init__(self) -> None:
        self.workers: dict[str, wool.WorkerMetadata] = {}
        self._changed = anyio.Event()

    @asynccontextmanager
    async def publisher(self) -> AsyncGenerator[MemoryDiscovery, None]:
        yield self

    async def publish(self, kind: EventKind, worker: wool.WorkerMetadata) -> None:
        if kind == "worker-dropped":
            self.workers.pop(worker.id, None)
        else:
            self.workers[worker.id] = worker
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncGenerator[AsyncIterator[DiscoveryEvent], None]:
        async def events() -> AsyncIterator[DiscoveryEvent]:
            seen: dict[str, wool.WorkerMetadata] = {}
            while True:
                current = {i: w for i, w in self.workers.items() if filter is None or filter(w)}
                for worker_id in seen.keys() - current.keys():
                    yield DiscoveryEvent("worker-dropped", seen.pop(worker_id))
                for worker_id, worker in current.items():
                    if worker_id not in seen:
                        seen[worker_id] = worker
                        yield DiscoveryEvent("worker-added", worker)
                await self._changed.wait()

        yield events()


async def test_a_custom_discovery_is_a_discovery_like() -> None:
    assert isinstance(MemoryDiscovery(), wool.DiscoveryLike)
    with pytest.raises(TypeError, match="DiscoveryLike"):
        wool.WorkerPool(discovery=object())  # type: ignore[arg-type]


async def test_durable_pool_uses_only_discovered_workers() -> None:
    discovery = MemoryDiscovery()
    async with wool.WorkerPool(size=2) as spawner:
        first, second = spawner.workers
        await discovery.publish("worker-added", first)
        async with wool.WorkerPool(discovery=discovery) as pool:
            assert [w.id for w in pool.workers] == [first.id]
            assert {(await whereami())[0] for _ in range(4)} == {first.pid}
            await discovery.publish("worker-added", second)
            with anyio.fail_after(5):
                while len(pool.workers) < 2:
                    await anyio.sleep(0.01)
            assert {(await whereami())[0] for _ in range(6)} == {first.pid, second.pid}
            await discovery.publish("worker-dropped", first)
            with anyio.fail_after(5):
                while len(pool.workers) > 1:
                    await anyio.sleep(0.01)
            assert {(await whereami())[0] for _ in range(4)} == {second.pid}


async def test_durable_pool_without_workers_says_where_it_looked() -> None:
    with pytest.raises(wool.NoWorkersAvailable) as info:
        async with wool.WorkerPool(
            "gpu", discovery=wool.LocalDiscovery("nobody-here"), start_timeout=0.3
        ):
            pass
    message = str(info.value)
    assert "LocalDiscovery(namespace='nobody-here')" in message
    assert "gpu" in message


async def test_hybrid_pool_spawns_and_discovers() -> None:
    discovery = MemoryDiscovery()
    async with wool.WorkerPool(size=1) as other:
        (remote,) = other.workers
        await discovery.publish("worker-added", remote)
        async with wool.WorkerPool(size=1, discovery=discovery) as pool:
            with anyio.fail_after(5):
                while len(pool.workers) < 2:
                    await anyio.sleep(0.01)
            pids = {(await whereami())[0] for _ in range(6)}
            assert remote.pid in pids and len(pids) == 2
            assert await fib(8) == 21  # nested calls from spawned workers see the pool


async def test_tags_select_discovered_workers() -> None:
    discovery = MemoryDiscovery()
    async with wool.WorkerPool("gpu", size=1) as gpus, wool.WorkerPool(size=1) as plain:
        # The untagged worker first: were it not filtered out, the pool would open with it.
        await discovery.publish("worker-added", plain.workers[0])
        await discovery.publish("worker-added", gpus.workers[0])
        async with wool.WorkerPool("gpu", discovery=discovery) as pool:
            assert [w.id for w in pool.workers] == [gpus.workers[0].id]
            assert {(await whereami())[0] for _ in range(4)} == {gpus.workers[0].pid}


# LocalDiscovery


def metadata(i: int, pid: int | None = None) -> wool.WorkerMetadata:
    return wool.WorkerMetadata(
        id=f"w{i}",
        host="127.0.0.1",
        port=1000 + i,
        pid=os.getpid() if pid is None else pid,
        tags=frozenset({"t"}),
    )


async def test_local_discovery_with_200_workers_and_many_subscribers() -> None:
    discovery = wool.LocalDiscovery(f"test-{uuid.uuid4().hex[:8]}")
    seen: list[dict[str, wool.WorkerMetadata]] = [{} for _ in range(5)]

    async def follow(index: int) -> None:
        async with discovery.subscriber() as events:
            async for event in events:
                if event.kind == "worker-dropped":
                    seen[index].pop(event.worker.id)
                else:
                    seen[index][event.worker.id] = event.worker

    async with discovery.publisher() as publisher, anyio.create_task_group() as tg:
        for i in range(5):
            tg.start_soon(follow, i)
        for i in range(200):
            await publisher.publish("worker-added", metadata(i))
        with anyio.fail_after(10):
            while any(len(s) < 200 for s in seen):
                await anyio.sleep(0.02)
        await publisher.publish("worker-dropped", metadata(7))
        with anyio.fail_after(10):
            while any("w7" in s for s in seen):
                await anyio.sleep(0.02)
        assert all(len(s) == 199 for s in seen)
        tg.cancel_scope.cancel()
    assert not discovery.path.exists()


async def test_local_discovery_drops_entries_of_dead_processes() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    discovery = wool.LocalDiscovery(f"test-{uuid.uuid4().hex[:8]}")
    async with discovery.publisher() as publisher:
        await publisher.publish("worker-added", metadata(1))
        await publisher.publish("worker-added", metadata(2, pid=dead.pid))
        assert [w.id for w in discovery.scan()] == ["w1"]
        assert sorted(p.name for p in discovery.path.iterdir()) == ["w1.json"]
    assert not discovery.path.exists()


def test_local_discovery_rejects_bad_namespaces() -> None:
    for bad in ("../x", "a/b", ".hidden", "x" * 100):
        with pytest.raises(ValueError, match="namespace"):
            wool.LocalDiscovery(bad)


# The wool command


class Worker:
    """``wool worker`` in a subprocess, its stderr collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen([*WOOL, "worker", *args], stderr=subprocess.PIPE, text=True)
        self.pid = self.process.pid
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not in the worker's output: {''.join(self.lines)}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        finally:
            self.process.kill()
            self.process.wait(5)
            self._reader.join(5)


def start_worker(*args: str) -> Worker:
    return Worker(*args)


async def test_wool_worker_serves_a_named_local_namespace() -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker("--namespace", namespace, "--tag", "cpu", "--backend", "trio")
    try:
        line = worker.wait_for("serving at")
        listing = subprocess.run(
            [*WOOL, "workers", "--namespace", namespace],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
        assert listing[0].split() == ["ID", "ADDRESS", "TAGS", "VERSION", "TLS"]
        assert len(listing) == 2 and "cpu" in listing[1] and wool.__version__ in listing[1]
        address = listing[1].split()[1]
        assert address in line
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)) as pool:
            assert [w.pid for w in pool.workers] == [worker.pid]
            assert await whereami() == (worker.pid, "trio")
            assert await add(20, 22) == 42
    finally:
        status = worker.stop()
    assert status == 0
    assert not wool.LocalDiscovery(namespace).path.exists()


async def test_pool_drops_a_killed_durable_worker() -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    workers = [start_worker("--namespace", namespace) for _ in range(2)]
    try:
        for worker in workers:
            worker.wait_for("serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)) as pool:
            with anyio.fail_after(10):
                while len(pool.workers) < 2:
                    await anyio.sleep(0.02)
            workers[0].process.kill()
            workers[0].process.wait(5)
            with anyio.fail_after(5):  # its entry names a dead process: dropped
                while len(pool.workers) > 1:
                    await anyio.sleep(0.02)
            assert [w.pid for w in pool.workers] == [workers[1].pid]
            assert [await add(i, i) for i in range(5)] == [0, 2, 4, 6, 8]
    finally:
        for worker in workers:
            worker.stop()
    assert not wool.LocalDiscovery(namespace).path.exists()


async def test_concurrency_limits_root_calls_but_never_nested_ones(tmp_path: Path) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker("--namespace", namespace, "--concurrency", "1")
    try:
        worker.wait_for("serving at")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
            with anyio.fail_after(60):
                assert await fib(7) == 13  # one root slot; the nested calls still run
            marker = tmp_path / "running"
            seen: list[str] = []

            async def second() -> None:
                await wait_until_exists(marker)
                seen.append(await read_text(str(marker)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(sleep_then_mark, 0.5, str(marker))
                tg.start_soon(second)
            # The second root call ran only once the first had finished with the slot.
            assert seen == ["started finally"]
    finally:
        worker.stop()


async def wait_until_exists(path: Path) -> None:
    with anyio.fail_after(10):
        while not path.exists():
            await anyio.sleep(0.01)


def test_wool_worker_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*WOOL, "worker", "--namespace", f"test-{uuid.uuid4().hex[:8]}", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "--bogus"], "unrecognized arguments: --bogus"),
        (["worker", "--discovery", "carrier-pigeon"], "invalid choice"),
        (["worker", "--concurrency", "0"], "must be at least 1"),
        (["worker", "--tls-cert", "x.pem"], "TLS needs all of --tls-cert, --tls-key and --tls-ca"),
        ([], "required: COMMAND"),
    ],
)
def test_wool_command_rejects_bad_usage(args: list[str], message: str) -> None:
    result = subprocess.run([*WOOL, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr


async def test_local_discovery_refuses_a_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    discovery = wool.LocalDiscovery(f"test-{uuid.uuid4().hex[:8]}")
    root = discovery.path.parent
    root.mkdir()
    root.chmod(0o777)  # as if another user had made it first
    (discovery.path).mkdir()
    (discovery.path / "planted.json").write_text(
        '{"id": "planted", "host": "127.0.0.1", "port": 1, "pid": 0, "tags": []}'
    )
    assert discovery.scan() == []
    async with discovery.publisher() as publisher:
        with pytest.raises(PermissionError, match="TMPDIR"):
            await publisher.publish("worker-added", metadata(1))
    root.chmod(0o700)
    assert [w.id for w in discovery.scan()] == ["planted"]
    (discovery.path / "planted.json").unlink()
