"""Defects found by the review of issue 9: each test fails without its fix."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import signal
import socket
import threading
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import grpclib.client
import pytest
from grpclib.exceptions import ProtocolError as GrpclibProtocolError
from h2.exceptions import ProtocolError as H2ProtocolError

import wool
import wool.pool._pool
from wool.client._open import open_proxy
from wool.client._proxy import WorkerProxy
from wool.discovery import DiscoveryEvent, MergedDiscovery, WorkerFilter, WorkerMetadata
from wool.discovery._lan import _Browser
from wool.transport import Client, ConnectionLost, Limits, _bridge, portal_for_host
from wool.transport._framing import split
from wool.worker._execute import failure

from .routines import Calculator, add, die, fail, identity, whereami
from .stream_routines import counted

pytestmark = pytest.mark.anyio


async def test_a_bug_in_a_background_task_does_not_cancel_the_pool_body(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # D17: a pool's background tasks share a task group with the body of `async with`.
    failed, ran_again = anyio.Event(), anyio.Event()
    original = WorkerProxy._close_forgotten
    runs = 0

    async def buggy(self: WorkerProxy, *, wait: bool = False) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            failed.set()
            raise RuntimeError("simulated bug in probe_suspects")
        ran_again.set()
        await original(self, wait=wait)

    monkeypatch.setattr(WorkerProxy, "_close_forgotten", buggy)
    with caplog.at_level(logging.ERROR, logger="wool"):
        async with wool.WorkerPool(size=1):
            await failed.wait()
            assert await add(1, 2) == 3
            await ran_again.wait()  # the probe loop runs on after its failure
            assert await add(2, 2) == 4
    logged = [r for r in caplog.records if "a bug in wool" in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "simulated bug" in str(logged[0].exc_info[1])


@pytest.mark.parametrize("error", [GrpclibProtocolError, H2ProtocolError])
@pytest.mark.parametrize("kind", ["coroutine", "generator"])
async def test_misuse_of_grpclib_is_a_bug_not_a_lost_worker(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: type[Exception],
    kind: str,
    tmp_path: Path,
) -> None:
    # D14: a protocol error on a live connection is wool's bug: it is not reported as
    # WorkerLost, and the healthy worker is not suspended.
    async def call() -> object:
        if kind == "coroutine":
            return await add(1, 2)
        return [x async for x in counted(3, str(tmp_path / "produced"))]

    async def misused(*args: object, **kwargs: object) -> None:
        raise error("simulated misuse of the stream")

    async with wool.WorkerPool(size=1) as pool:
        expected = await call()
        # Both a call of the Calls stream and a generator call's own stream write there.
        monkeypatch.setattr(grpclib.client.Stream, "send_message", misused)
        with caplog.at_level(logging.ERROR, logger="wool"):
            with pytest.raises(RuntimeError, match="bug in wool") as info:
                await call()
        assert isinstance(info.value.__cause__, error)
        assert [r.exc_info for r in caplog.records if "a bug in wool" in r.getMessage()]
        monkeypatch.undo()
        assert len(pool.workers) == 1  # still in rotation
        assert await call() == expected


async def test_worker_lost_keeps_the_transport_error_as_its_cause() -> None:
    # D15: causes were dropped with `from None`.
    async with wool.WorkerPool(size=1):
        with pytest.raises(wool.WorkerLost) as info:
            await die()
    assert isinstance(info.value.__cause__, ConnectionLost)
    assert info.value.__cause__.__cause__ is not None  # grpclib's or the socket's own error


async def test_an_argument_the_worker_cannot_import_keeps_the_import_error_as_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # D15: the worker's SerializationError dropped the ImportError behind it.
    async with wool.WorkerPool(size=1):
        (tmp_path / "caller_only_module.py").write_text("class Thing:\n    pass\n")
        monkeypatch.syspath_prepend(str(tmp_path))  # after the workers copied sys.path
        import caller_only_module  # pyright: ignore[reportMissingImports]

        with pytest.raises(wool.SerializationError, match="cannot be unpickled") as info:
            await identity(caller_only_module.Thing())
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert "caller_only_module" in str(info.value.__cause__)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _FlakyDiscovery:
    """Its first subscription reports ``first``, then fails; later ones report ``later``."""

    def __init__(self, first: list[WorkerMetadata], later: list[WorkerMetadata]) -> None:
        self.first, self.later = first, later
        self.subscriptions = 0

    @asynccontextmanager
    async def publisher(self) -> AsyncIterator[Any]:
        yield None

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        self.subscriptions += 1
        first = self.subscriptions == 1

        async def events() -> AsyncIterator[DiscoveryEvent]:
            for worker in self.first if first else self.later:
                yield DiscoveryEvent("worker-added", worker)
            if first:
                raise OSError("discovery backend hiccup")
            await anyio.sleep_forever()

        yield events()


async def test_workers_gone_while_discovery_resubscribed_are_dropped() -> None:
    # D13 (r13): the new subscription reports only present workers; the departed one
    # stayed in rotation for ever.
    gone = WorkerMetadata(id="gone", host="127.0.0.1", port=_closed_port())
    kept = WorkerMetadata(id="kept", host="127.0.0.1", port=_closed_port())
    discovery = _FlakyDiscovery([gone, kept], [kept])
    portal = portal_for_host()
    try:
        async with open_proxy(
            portal, discovery, grace=1, keepalive=None, wait_for_workers=1
        ) as proxy:
            with anyio.fail_after(10):
                while "gone" in {w.id for w in proxy.workers} or discovery.subscriptions < 2:
                    await proxy.changed()
            assert [w.id for w in proxy.workers] == ["kept"]
    finally:
        portal.close()


@wool.routine
async def yields_then_fails(message: str) -> AsyncIterator[int]:
    yield 1
    raise ValueError(message)


@pytest.mark.parametrize("text", ["x" * 100_000, "é€" * 40_000, "bad \ud800 surrogate"])
def test_failure_texts_fit_the_smallest_message(text: str) -> None:
    # D16 (r10): the texts travel unchunked beside the pickled exception.
    limits = Limits(max_message=64 * 1024)
    response = failure(ValueError(text), limits)
    parts = split(response, limits.max_message)
    assert all(len(bytes(part)) <= limits.max_message for part in parts)


@pytest.mark.parametrize("kind", ["coroutine", "generator"])
async def test_a_long_exception_message_reaches_the_caller_with_small_messages(kind: str) -> None:
    # D16: the worker's answer was unsendable; the caller got ProtocolError.
    message = "é" * 100_000
    async with wool.WorkerPool(size=1, max_message_size=64 * 1024):
        with pytest.raises(ValueError) as info:
            if kind == "coroutine":
                await fail(message)
            else:
                assert [x async for x in yields_then_fails(message)] == [1]
    assert str(info.value) == message


@wool.routine
async def pids_of_nested_calls(n: int) -> tuple[int, set[int]]:
    return os.getpid(), {(await whereami())[0] for _ in range(n)}


async def test_nested_calls_spread_over_the_pool_from_the_first_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Item 5: the pool was ready before its workers had found each other. With discovery
    # polled every 2 s, at least one of two workers misses the other in its first look
    # (each looks before it publishes itself), so without the wait its nested calls all
    # stay on itself.
    monkeypatch.setattr(
        wool.pool._pool, "LocalDiscovery", functools.partial(wool.LocalDiscovery, poll_interval=2)
    )
    async with wool.WorkerPool(size=2) as pool:
        results = [await pids_of_nested_calls(4) for _ in range(2)]
        every = {w.pid for w in pool.workers}
    assert {caller for caller, _ in results} == every  # both workers were asked
    assert [nested for _, nested in results] == [every, every]


def test_a_forgotten_await_names_the_routine() -> None:
    with pytest.warns(RuntimeWarning, match=r"coroutine 'add' was never awaited"):
        add(1, 2)  # pyright: ignore[reportUnusedCoroutine]
        gc.collect()
    with pytest.warns(RuntimeWarning, match=r"coroutine 'Calculator.plus' was never awaited"):
        Calculator(1).plus(2)  # pyright: ignore[reportUnusedCoroutine]
        gc.collect()


async def test_a_pool_waiting_for_its_first_worker_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(wool.pool._pool, "_WAITING_NOTICE", 0.1)
    discovery = wool.LocalDiscovery(f"nobody-{os.getpid()}")
    with caplog.at_level(logging.INFO, logger="wool"):
        with pytest.raises(wool.NoWorkersAvailable):
            async with wool.WorkerPool(discovery=discovery, start_timeout=1):
                pass
    waiting = [r for r in caplog.records if "still waiting for a first worker" in r.getMessage()]
    assert len(waiting) == 1
    assert repr(discovery) in waiting[0].getMessage()


@wool.routine
async def pid_once_released(marker: str, release: str) -> int:
    """Write this worker's pid to ``marker``, then wait for the file ``release``."""
    Path(marker).write_text(str(os.getpid()))
    while not Path(release).exists():
        await anyio.sleep(0.01)
    return os.getpid()


@wool.routine
async def pid_items(n: int) -> AsyncIterator[int]:
    for _ in range(n):
        yield os.getpid()


class _DeafToDepartures(wool.LocalDiscovery):
    """Reports workers as they come, never as they go: the pool keeps a withdrawn worker
    in rotation, as one that has not noticed the withdrawal yet would."""

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncIterator[AsyncIterator[DiscoveryEvent]]:
        async with super().subscriber(filter) as events:

            async def arrivals() -> AsyncIterator[DiscoveryEvent]:
                async for event in events:
                    if event.kind != "worker-dropped":
                        yield event

            yield arrivals()


async def _wait_until_stopping(worker: WorkerMetadata) -> None:
    portal = portal_for_host()
    client = Client(worker.host, worker.port)
    try:
        with anyio.fail_after(10):
            while not (await portal.run(client.info, 1.0)).stopping:
                await anyio.sleep(0.01)
    finally:
        await portal.run(client.close)
        portal.close()


async def _until_exists(path: Path) -> None:
    with anyio.fail_after(10):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.01)


@pytest.mark.parametrize("kind", ["coroutine", "generator"])
async def test_a_stopping_worker_refuses_calls_and_another_takes_them(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    kind: str,
) -> None:
    # r14: the test of this path never got a STOPPING refusal, because the pool had
    # dropped the draining worker before calling. Here the pool does not hear that it
    # left, so round robin sends it one of the next two calls, which it refuses.
    monkeypatch.setattr(wool.pool._pool, "LocalDiscovery", _DeafToDepartures)
    marker, release = tmp_path / "holder", tmp_path / "release"
    async with wool.WorkerPool(size=2, grace=10) as pool:
        async with anyio.create_task_group() as tg:
            held: list[int] = []

            async def hold() -> None:
                held.append(await pid_once_released(str(marker), str(release)))

            tg.start_soon(hold)
            await _until_exists(marker)
            draining = int(marker.read_text())
            (worker,) = [w for w in pool.workers if w.pid == draining]
            (other,) = [w.pid for w in pool.workers if w.pid != draining]
            os.kill(draining, signal.SIGTERM)  # it finishes the held call, refuses new ones
            await _wait_until_stopping(worker)
            with caplog.at_level(logging.WARNING, logger="wool"):
                for _ in range(2):
                    if kind == "coroutine":
                        assert (await whereami())[0] == other
                    else:
                        assert [pid async for pid in pid_items(3)] == [other] * 3
            release.write_text("go")
        assert held == [draining]  # the draining worker finished the call it had
    refused = [r for r in caplog.records if f"{worker.id}" in r.getMessage()]
    assert any("suspended: it is stopping" in r.getMessage() for r in refused)


async def test_discoveries_close_their_memory_streams() -> None:
    # D19 (r5): anyio warns about memory object streams collected unclosed.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merged = MergedDiscovery(wool.LocalDiscovery("r5-a"), wool.LocalDiscovery("r5-b"))
        async with merged.subscriber() as events:
            with anyio.move_on_after(0.1):
                async for _ in events:
                    pass
        del events
        browser = _Browser(cast(Any, None), "r5")
        await browser.close()
        del browser
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


class _ShrinkingDns(wool.DnsDiscovery):
    """Resolves to two loopback addresses, then to one, then waits."""

    def __init__(self, port: int) -> None:
        super().__init__("pods.invalid", port, interval=0, timeout=1)
        self.answers = [{"127.0.0.1", "127.0.0.2"}, {"127.0.0.1"}]
        self.resolved_twice = anyio.Event()
        self.clients: dict[str, Client] = {}

    async def _resolve(self) -> set[str] | None:
        if self.answers:
            return self.answers.pop(0)
        self.resolved_twice.set()
        await anyio.sleep_forever()
        return None

    def _events(
        self, portal: Any, clients: dict[str, Client], filter: WorkerFilter | None
    ) -> AsyncIterator[DiscoveryEvent]:
        self.clients = clients
        return super()._events(portal, clients, filter)


async def test_dns_discovery_keeps_clients_only_for_addresses_dns_lists() -> None:
    # D20: one client per address ever resolved, never removed.
    discovery = _ShrinkingDns(_closed_port())
    async with discovery.subscriber() as events, anyio.create_task_group() as tg:

        async def drain() -> None:
            async for _ in events:
                pass

        tg.start_soon(drain)
        await discovery.resolved_twice.wait()
        assert set(discovery.clients) == {"127.0.0.1"}
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_transport_thread_cancels_what_is_left_on_its_loop() -> None:
    # D22: the last release stopped the loop with its tasks still pending (then joined the
    # thread from async code).
    portal = portal_for_host()
    assert isinstance(portal, _bridge._ThreadPortal)
    started, ended = threading.Event(), threading.Event()
    how: list[str] = []

    async def left_behind() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            how.append("cancelled")
            raise
        finally:
            ended.set()

    thread = _bridge.LoopThread._shared
    assert thread is not None
    portal.loop.call_soon_threadsafe(lambda: portal.loop.create_task(left_behind()))
    assert await anyio.to_thread.run_sync(started.wait, 10)
    portal.close()
    assert await anyio.to_thread.run_sync(ended.wait, 10)
    assert how == ["cancelled"]
    await anyio.to_thread.run_sync(thread._thread.join, 10)
    assert thread.loop.is_closed()
