"""Live figures of workers: WorkerPool.stats() and ``wool workers --watch`` (issue 13, item 4)."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme

import wool
from wool.transport import PROTOCOL_VERSION, Client, Request, Task, portal_for_host
from wool.worker._figures import LatencyWindow

from .event_recorder import count_to
from .routines import add, fail, hold, sleep_then_mark
from .test_discovery import WOOL, Worker, start_worker
from .test_security import credentials, write

pytestmark = pytest.mark.anyio


async def wait_until_exists(path: Path) -> None:
    with anyio.fail_after(30):
        while not path.exists():
            await anyio.sleep(0.01)


# What a worker counts, as WorkerPool.stats() reports it


async def test_stats_count_each_call_by_how_it_ended(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=1) as pool:
        (fresh,) = await pool.stats()
        assert fresh.answered and fresh.error is None
        assert fresh.calls is not None and fresh.calls.completed == 0
        assert fresh.calls.latency.calls == 0 and fresh.calls.latency.mean is None

        assert [await add(i, i) for i in range(3)] == [0, 2, 4]
        assert await sleep_then_mark(0.2, str(tmp_path / "slept")) == "slept"
        for _ in range(2):
            with pytest.raises(ValueError):
                await fail("no")
        assert [i async for i in count_to(3)] == [0, 1, 2]

        marker = tmp_path / "held"
        seen: list[wool.WorkerStats] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(hold, str(marker), 60)
            await wait_until_exists(marker)  # the call runs on the worker now
            seen += await pool.stats()
            tg.cancel_scope.cancel()
        (during,) = seen
        (after,) = await pool.stats()

    assert during.calls is not None and after.calls is not None
    assert during.worker == after.worker and during.worker.pid == int(marker.read_text())
    assert during.calls.running == 1
    assert (during.calls.completed, during.calls.failed, during.calls.cancelled) == (5, 2, 0)
    calls = after.calls
    assert calls.running == 0 and calls.queued == 0 and calls.rejected == 0
    # add x3, sleep_then_mark and the generator completed; the cancelled hold counts once.
    assert (calls.completed, calls.failed, calls.cancelled) == (5, 2, 1)
    assert calls.uptime > 0 and not calls.stopping
    latency = calls.latency
    # The coroutine calls that returned or raised: not the generator, not the cancelled.
    assert (latency.window, latency.calls) == (60.0, 6)
    assert latency.mean is not None and latency.p99 is not None and latency.max is not None
    # The slowest call slept 0.2 s: the longest and the 99th percentile (its rank, with six
    # calls) cannot be shorter, the mean cannot be shorter than its share.
    assert latency.max >= 0.2 and latency.p99 >= 0.2 and latency.p99 <= latency.max
    assert 0.2 / 6 <= latency.mean <= latency.max


async def test_stats_are_frozen_and_typed() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (entry,) = await pool.stats()
    assert isinstance(entry, wool.WorkerStats)
    assert isinstance(entry.calls, wool.CallStats)
    assert isinstance(entry.calls.latency, wool.LatencyStats)
    with pytest.raises(AttributeError):
        entry.calls.running = 3  # type: ignore[misc]


async def test_stats_count_refused_calls_apart() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        portal = portal_for_host()
        client = Client(worker.host, worker.port)
        try:
            # Another protocol version: refused before it starts.
            task = Task(version=PROTOCOL_VERSION + 1, id="x", routine="r", grace=1.0)
            response = await portal.run(client.call, Request(task=task))
            assert response.rejected is not None
        finally:
            await portal.run(client.close)
            portal.close()
        (entry,) = await pool.stats()
    assert entry.calls is not None
    assert (entry.calls.rejected, entry.calls.completed, entry.calls.latency.calls) == (1, 0, 0)


async def test_stats_need_an_open_pool_and_a_sane_timeout() -> None:
    pool = wool.WorkerPool(size=1)
    with pytest.raises(RuntimeError, match="not open"):
        await pool.stats()
    async with pool:
        for timeout in (0, -1, math.inf, math.nan):
            with pytest.raises(ValueError, match="timeout"):
                await pool.stats(timeout)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def durable(namespace: str, anyio_backend: str) -> Iterator[Worker]:
    """``wool worker`` on the test's backend, in a namespace of the test's own."""
    worker = start_worker("--namespace", namespace, "--backend", anyio_backend)
    try:
        worker.wait_for("serving at")
        yield worker
    finally:
        os.kill(worker.pid, signal.SIGCONT)  # in case the test left it stopped
        assert worker.stop() == 0


async def test_a_worker_that_does_not_answer_is_reported_not_waited_for(
    durable: Worker, namespace: str
) -> None:
    async with wool.WorkerPool(size=1, discovery=wool.LocalDiscovery(namespace)) as pool:
        with anyio.fail_after(30):
            while len(pool.workers) < 2:
                await anyio.sleep(0.02)
        os.kill(durable.pid, signal.SIGSTOP)  # hung: connected, silent
        try:
            with anyio.fail_after(10):  # the bound is the timeout; this only catches a hang
                stats = await pool.stats(timeout=0.5)
        finally:
            os.kill(durable.pid, signal.SIGCONT)
    assert len(stats) == 2
    (silent,) = [s for s in stats if s.worker.pid == durable.pid]
    assert not silent.answered and silent.calls is None
    assert silent.error is not None and "answer" in silent.error
    (spawned,) = [s for s in stats if s.worker.pid != durable.pid]
    assert spawned.answered and spawned.error is None


# wool workers --watch


async def watch(namespace: str, *options: str) -> str:
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [*WOOL, "workers", "--namespace", namespace, "--watch", *options],
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return done.stdout.decode()


def frames(output: str) -> list[list[dict[str, str]]]:
    """Each table of the output, as rows keyed by column (cut where the headers start)."""
    tables: list[list[dict[str, str]]] = []
    columns: list[tuple[str, int]] = []
    for line in output.splitlines():
        if line.startswith("ID "):
            columns = [(m.group(), m.start()) for m in re.finditer(r"\S+", line)]
            tables.append([])
        elif columns and line.strip() and ": " not in line:  # not a worker's error line
            ends = [start for _, start in columns[1:]] + [len(line)]
            tables[-1].append(
                {
                    name: line[start:end].strip()
                    for (name, start), end in zip(columns, ends, strict=True)
                }
            )
        else:
            columns = []
    return tables


async def test_watch_shows_a_table_of_each_workers_figures(durable: Worker, namespace: str) -> None:
    async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
        assert await add(1, 2) == 3
        assert await add(2, 2) == 4
        with pytest.raises(ValueError):
            await fail("no")
    output = await watch(namespace, "0.2", "--count", "2")
    tables = frames(output)
    assert len(tables) == 2, output
    for table in tables:
        (row,) = table
        assert row["PID"] == str(durable.pid) and row["STATE"] == "ok"
        figures = {k: row[k] for k in ("RUNNING", "COMPLETED", "FAILED", "CANCELLED", "LAST-MIN")}
        assert figures == {
            "RUNNING": "0",
            "COMPLETED": "2",
            "FAILED": "1",
            "CANCELLED": "0",
            "LAST-MIN": "3",
        }
        assert row["MEAN"].endswith("s") and row["P99"].endswith("s")
    assert f"namespace {namespace!r}" in output


async def test_watch_shows_a_silent_worker_and_ends_on_time(
    durable: Worker, namespace: str
) -> None:
    os.kill(durable.pid, signal.SIGSTOP)
    try:
        output = await watch(namespace, "0.2", "--count", "2", "--timeout", "0.5")
    finally:
        os.kill(durable.pid, signal.SIGCONT)
    tables = frames(output)
    assert len(tables) == 2, output
    assert [[row["STATE"] for row in table] for table in tables] == [["no answer"]] * 2, output
    (worker_id,) = {row["ID"] for table in tables for row in table}
    reasons = [line for line in output.splitlines() if line.startswith(f"{worker_id}: ")]
    assert len(reasons) == 2 and all("answer" in line for line in reasons), output


def test_watch_ends_on_ctrl_c_without_a_traceback(tmp_path: Path) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker("--namespace", namespace)
    try:
        worker.wait_for("serving at")
        with subprocess.Popen(
            [*WOOL, "workers", "--namespace", namespace, "--watch", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as watching:
            try:
                assert watching.stdout is not None
                first = watching.stdout.readline()  # the first table is on its way
                assert "Ctrl-C to stop" in first
                watching.send_signal(signal.SIGINT)
                _, stderr = watching.communicate(timeout=20)
            finally:
                watching.kill()
        assert watching.returncode == 0, stderr
        assert "Traceback" not in stderr, stderr
    finally:
        assert worker.stop() == 0


def test_watch_asks_a_tls_worker_only_with_credentials(tmp_path: Path) -> None:
    ca = trustme.CA()
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    served = write(credentials(ca, "127.0.0.1"), tmp_path / "worker")
    worker = start_worker("--namespace", namespace, "--host", "127.0.0.1", *served)
    try:
        worker.wait_for("serving at")
        asked: dict[str, str] = {}
        for name, options in (("with", write(credentials(ca), tmp_path / "me")), ("without", [])):
            command = [*WOOL, "workers", "--namespace", namespace, "--watch", "0.2", "--count", "1"]
            result = subprocess.run(
                [*command, *options],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
            asked[name] = result.stdout
    finally:
        assert worker.stop() == 0
    assert [row["STATE"] for table in frames(asked["with"]) for row in table] == ["ok"]
    assert [row["STATE"] for table in frames(asked["without"]) for row in table] == ["no answer"]
    assert "requires TLS: pass --tls-cert, --tls-key and --tls-ca" in asked["without"]


def test_count_goes_with_watch() -> None:
    result = subprocess.run(
        [*WOOL, "workers", "--namespace", "nobody", "--count", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--count goes with --watch" in result.stderr


# The latency window itself (no workers: its clock is given)


def test_the_window_reports_mean_p99_and_max_of_the_last_minute() -> None:
    window = LatencyWindow()
    for ms in range(1, 1001):  # 1 ms .. 1 s, one call each, within one second
        window.add(ms / 1000, now=100.5)
    summary = window.summary(now=101.0)
    assert summary.calls == 1000
    assert summary.mean == pytest.approx(0.5005)
    assert summary.max == 1.0
    # The nearest-rank 99th percentile is 990 ms: never below, at most 4.5% above.
    assert 0.990 <= summary.p99 <= 0.990 * 1.045


def test_the_window_forgets_calls_older_than_a_minute() -> None:
    window = LatencyWindow()
    window.add(5.0, now=10.0)
    window.add(0.01, now=50.0)
    assert window.summary(now=60.0).calls == 2
    recent = window.summary(now=70.5)  # the 5 s call ended more than 60 s before
    assert (recent.calls, recent.max) == (1, 0.01)
    assert window.summary(now=200.0).calls == 0


def test_the_window_stays_small_however_many_calls_end() -> None:
    window = LatencyWindow()
    for i in range(200_000):
        window.add((i % 977) / 1000, now=i / 500)  # 400 s of calls, 500 a second
    assert len(window._seconds) <= 60  # pyright: ignore[reportPrivateUsage]
    assert all(len(b.bins) <= 200 for b in window._seconds)  # pyright: ignore[reportPrivateUsage]
    # Seconds 341 to 399 of the calls: 400 - 60 and older are forgotten.
    assert window.summary(now=400.0).calls == 59 * 500
