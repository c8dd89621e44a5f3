"""Coroutine calls multiplexed on one long-lived Calls stream per worker: in-band
cancellation, connection loss, protocol errors; and the stream bookkeeping of the calls
that keep a stream of their own (D8, D21). Real workers, asyncio and trio callers."""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import grpclib.client
import grpclib.const
import grpclib.server
import pytest
import trustme
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

import wool
from wool._serialization import dumps, dumps_function, loads
from wool.discovery import WorkerMetadata
from wool.security import unix_path
from wool.transport import (
    PROTOCOL_VERSION,
    Client,
    ConnectionLost,
    Portal,
    RejectedReason,
    Request,
    Response,
    Step,
    StepKind,
    Task,
    Unreachable,
    portal_for_host,
)
from wool.transport._channel import Codec
from wool.transport._h2 import CLOSED_STREAMS_KEPT
from wool.transport._mux import CALLS, MAX_ENTRY
from wool.transport._protocol.wool.v1 import (
    Answer,
    AnswerBatch,
    Call,
    CallBatch,
    CancelCall,
)

from .mux_routines import closed_streams_remembered, hold_padded, make_bytes, slow_to_close
from .routines import add, identity, sleep_then_mark
from .test_security import credentials
from .test_structured import wait_for_file

pytestmark = pytest.mark.anyio


def request(routine: Any, *args: Any, generator: bool = False, grace: float = 1.0) -> Request:
    return Request(
        task=Task(
            version=PROTOCOL_VERSION,
            id=uuid.uuid4().hex,
            routine="test",
            function=dumps_function(routine),
            arguments=cloudpickle.dumps((args, {})),
            grace=grace,
            generator=generator,
        )
    )


@asynccontextmanager
async def client_to(worker: WorkerMetadata, **options: Any) -> AsyncIterator[tuple[Client, Portal]]:
    """A transport Client of ``worker``, and the portal to run its coroutines with."""
    portal = portal_for_host()
    client = Client(worker.host, worker.port, **options)
    try:
        yield client, portal
    finally:
        with anyio.CancelScope(shield=True):
            await portal.run(client.close)
        portal.close()


async def running_on(client: Client, portal: Portal) -> int:
    return (await portal.run(client.info, 5.0)).running


# --------------------------------------------------------------------- the Calls stream


async def test_small_calls_share_one_stream_and_large_ones_get_their_own() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):
            results: dict[int, int] = {}

            async def one(i: int) -> None:
                response = await portal.run(client.call, request(add, i, 1))
                results[i] = loads(response.result)

            with anyio.fail_after(120):
                async with anyio.create_task_group() as tg:
                    for i in range(1000):
                        tg.start_soon(one, i)
            assert results == {i: i + 1 for i in range(1000)}
            assert client._connections == []  # no call needed a stream of its own

            big = os.urandom(2 * MAX_ENTRY)
            response = await portal.run(client.call, request(identity, big))
            assert loads(response.result) == big
            assert len(client._connections) == 1  # the large call had a stream of its own
            assert not client.busy


async def test_many_concurrent_calls_of_a_pool_over_one_connection() -> None:
    async with wool.WorkerPool(size=1):
        results: list[int] = []

        async def one(i: int) -> None:
            results.append(await add(i, i))

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(3000):
                    tg.start_soon(one, i)
        assert sorted(results) == [2 * i for i in range(3000)]


async def test_a_large_result_comes_back_in_parts_between_other_answers() -> None:
    async with wool.WorkerPool(size=1):
        small: list[int] = []

        async def smalls() -> None:
            for i in range(50):
                small.append(await add(i, 1))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(smalls)
                # Small arguments, a result of several parts: it comes on the Calls stream.
                assert await make_bytes(5 * 1024 * 1024 + 3) == b"\x01" * (5 * 1024 * 1024 + 3)
        assert small == [i + 1 for i in range(50)]


# --------------------------------------------------------------------- in-band cancellation


async def test_cancelling_a_multiplexed_call_runs_the_remote_finally_first(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):
            call = request(sleep_then_mark, 30, str(marker), grace=5.0)
            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:

                    async def cancel_when_started() -> None:
                        await wait_for_file(marker, "started")
                        tg.cancel_scope.cancel()

                    tg.start_soon(cancel_when_started)
                    await portal.run(client.call, call)
                cancelled = await portal.run(client.cancel, call.task.id, 5.0)  # pyright: ignore[reportOptionalMemberAccess]
            assert cancelled is True
            # The answer came once the routine had unwound.
            assert marker.read_text() == "cancelled finally"
            # In band: no Cancel request, which would have needed a stream of its own.
            assert client._connections == []
            assert not client.busy


async def test_a_pool_caller_returns_from_a_cancel_after_the_remote_finally(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1):
        with anyio.fail_after(20):
            with anyio.CancelScope() as scope:

                async def cancel_when_started() -> None:
                    await wait_for_file(marker, "started")
                    scope.cancel()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_when_started)
                    await sleep_then_mark(30, str(marker))
        assert marker.read_text() == "cancelled finally"


async def test_a_caller_cancelled_while_its_request_is_being_written(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=1, keepalive=None, grace=0.5) as pool:
        (worker,) = pool.workers
        assert await add(0, 0) == 0  # the Calls stream is open
        # A frozen worker reads nothing: the calls below fill the stream's window, so
        # the caller is still writing (or has yet to write) most of them when cancelled.
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            padding = b"p" * (MAX_ENTRY - 4096)
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(300):
                        tg.start_soon(hold_padded, str(tmp_path / f"m{i}"), 30, padding)
                    await anyio.sleep(1.0)
                    calls = pool._proxy._clients[worker.id]._calls  # pyright: ignore
                    assert calls._outbox, "the writer is not held up: this tests nothing"
                    tg.cancel_scope.cancel()
        finally:
            os.kill(worker.pid, signal.SIGCONT)

        # The calls that went out are followed by their cancels: none runs on (a routine
        # that started was cancelled at once, and finished, well before its 30 s sleep
        # would have). The worker may still be reading the backlog when it first says
        # that nothing runs: wait for the routines' own word too.
        def unwound() -> bool:
            return all(m.read_text() == "started finally" for m in tmp_path.glob("m*"))

        async with client_to(worker) as (client, portal):
            with anyio.fail_after(20):
                while await running_on(client, portal) or not unwound():
                    await anyio.sleep(0.05)
        assert await add(1, 2) == 3
        assert [w.pid for w in pool.workers] == [worker.pid]


async def test_a_cancel_racing_the_result(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):
            outcomes: dict[str, int] = {"result": 0, "cancelled": 0}
            for i in range(200):
                call = request(add, i, 1)
                with anyio.move_on_after(i % 25 * 0.0002) as scope:  # 0 to 5 ms
                    response = await portal.run(client.call, call)
                if scope.cancelled_caught:
                    with anyio.fail_after(10):
                        await portal.run(client.cancel, call.task.id, 5.0)  # pyright: ignore[reportOptionalMemberAccess]
                    outcomes["cancelled"] += 1
                else:
                    assert loads(response.result) == i + 1  # pyright: ignore[reportPossiblyUnboundVariable]
                    outcomes["result"] += 1
            assert not client.busy
            assert client._cancelled_on == {}
            assert await running_on(client, portal) == 0
            response = await portal.run(client.call, request(add, 1, 2))
            assert loads(response.result) == 3

        # Through a pool, with a routine that ends about when it is cancelled: once the
        # caller's cancellation completes, the routine has either not started (and never
        # will) or run its finally.
        markers: list[Path] = []
        for i in range(40):
            marker = tmp_path / f"race{i}"
            markers.append(marker)
            with anyio.move_on_after(0.005 + i % 10 * 0.003):
                await sleep_then_mark(0.015, str(marker))
            assert not marker.exists() or marker.read_text().endswith("finally")
        await anyio.sleep(0.5)
        assert all(not m.exists() or m.read_text().endswith("finally") for m in markers)
        assert await add(2, 2) == 4


async def test_losing_the_connection_cancels_the_workers_calls(tmp_path: Path) -> None:
    markers = [tmp_path / f"m{i}" for i in range(3)]
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):
            errors: list[BaseException] = []

            async def call(marker: Path) -> None:
                try:
                    await portal.run(client.call, request(sleep_then_mark, 30, str(marker)))
                except ConnectionLost as exc:
                    errors.append(exc)

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for marker in markers:
                        tg.start_soon(call, marker)
                    for marker in markers:
                        await wait_for_file(marker, "started")
                    await portal.run(client.close)  # the connection goes
                for marker in markers:
                    await wait_for_file(marker, "finally")
            assert len(errors) == 3
            assert all(marker.read_text() == "cancelled finally" for marker in markers)
        assert await add(1, 2) == 3


# --------------------------------------------------------------------- protocol errors


class _Raw(CodecBase):
    __content_subtype__ = "proto"  # pyright: ignore[reportIncompatibleMethodOverride, reportAssignmentType]

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return AnswerBatch.parse(data)


async def _exchange(
    path: str, *batches: bytes, read_between: bool = False
) -> tuple[list[Answer], GRPCError | None]:
    """Send ``batches`` on a Calls stream (reading one answer batch after each but the
    last if ``read_between``), end it, read to the end; the answers and the status."""
    channel = grpclib.client.Channel(path=path, codec=_Raw())
    answers: list[Answer] = []
    try:
        async with channel.request(
            CALLS, grpclib.const.Cardinality.STREAM_STREAM, bytes, AnswerBatch, timeout=20
        ) as stream:
            for batch in batches[:-1]:
                await stream.send_message(batch)
                if read_between:
                    answers.extend((await stream.recv_message()).answers)
            await stream.send_message(batches[-1], end=True)
            async for answer_batch in stream:
                answers.extend(answer_batch.answers)
    except GRPCError as exc:
        return answers, exc
    finally:
        channel.close()
    return answers, None


def _batch(*calls: Call) -> bytes:
    return bytes(CallBatch(calls=list(calls)))


async def test_a_malformed_calls_message_is_a_protocol_error_and_the_worker_keeps_serving() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        path = unix_path(worker.host)
        assert path is not None
        portal = portal_for_host()
        try:

            async def exchange(*batches: bytes, read_between: bool = False) -> Any:
                with anyio.fail_after(30):
                    return await portal.run(_exchange_on, path, batches, read_between)

            task = request(add, 1, 2).task
            cases: list[tuple[bytes, str]] = [
                (b"\x0a\x05\x0a", "no CallBatch message"),
                (_batch(Call(id=1)), "neither a task nor a cancel"),
                (_batch(Call(id=7, cancel=CancelCall())), "never started"),
                (_batch(Call(id=2, task=task), Call(id=2, task=task)), "does not follow"),
            ]
            for batch, complaint in cases:
                _, status = await exchange(batch)
                assert status is not None
                assert status.status is grpclib.const.Status.INVALID_ARGUMENT
                assert complaint in (status.message or "")

            # A cancel that arrives after the answer is answered at once, and in order.
            answers, status = await exchange(
                _batch(Call(id=1, task=task)),
                _batch(Call(id=1, cancel=CancelCall())),
                read_between=True,
            )
            assert status is None
            assert len(answers) == 2
            assert answers[0].id == 1 and answers[0].response is not None
            assert loads(answers[0].response.result) == 3
            assert answers[1].id == 1 and answers[1].cancelled is not None
            assert answers[1].cancelled.cancelled is False  # the call had answered
        finally:
            portal.close()
        assert [await add(i, i) for i in range(3)] == [0, 2, 4]
        assert [w.pid for w in pool.workers] == [worker.pid]  # the same worker


async def _exchange_on(path: str, batches: tuple[bytes, ...], read_between: bool) -> Any:
    return await _exchange(path, *batches, read_between=read_between)


class _FakeWorker:
    """Answers each Calls stream's first call: the first stream with an id it never
    got, the others correctly. Without ``calls``, a worker of an older protocol."""

    def __init__(self, *, calls: bool = True) -> None:
        self._calls = calls
        self.streams = 0

    async def _serve(self, stream: grpclib.server.Stream[CallBatch, bytes]) -> None:
        self.streams += 1
        batch = await stream.recv_message()
        assert batch is not None
        (call,) = batch.calls
        answer = call.id + 1000 if self.streams == 1 else call.id
        result = Response(result=dumps(3))
        await stream.send_message(bytes(AnswerBatch(answers=[Answer(id=answer, response=result)])))
        while await stream.recv_message() is not None:
            pass

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        if not self._calls:
            return {}
        handler = grpclib.const.Handler(
            self._serve, grpclib.const.Cardinality.STREAM_STREAM, CallBatch, bytes
        )
        return {CALLS: handler}


async def _against_fake(fake: _FakeWorker, scenario: Callable[[Client], Any]) -> Any:
    """Run ``scenario`` with a Client of ``fake`` (all on grpclib's loop)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = grpclib.server.Server([fake], codec=Codec(4 << 20))
    await server.start(sock=sock)
    client = Client("127.0.0.1", sock.getsockname()[1])
    try:
        return await scenario(client)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
        sock.close()


async def test_an_answer_to_an_unknown_call_is_a_protocol_error_and_the_client_recovers() -> None:
    async def scenario(client: Client) -> None:
        with pytest.raises(wool.ProtocolError, match="not in flight"):
            await client.call(request(add, 1, 2))
        response = await client.call(request(add, 1, 2))  # on a new Calls stream
        assert loads(response.result) == 3

    fake = _FakeWorker()
    portal = portal_for_host()
    try:
        with anyio.fail_after(20):
            await portal.run(_against_fake, fake, scenario)
    finally:
        portal.close()
    assert fake.streams == 2


async def test_a_worker_without_a_calls_stream_refuses_the_call_as_another_version() -> None:
    async def scenario(client: Client) -> Response:
        return await client.call(request(add, 1, 2))

    portal = portal_for_host()
    try:
        with anyio.fail_after(20):
            response = await portal.run(_against_fake, _FakeWorker(calls=False), scenario)
    finally:
        portal.close()
    assert response.rejected is not None
    assert response.rejected.reason == RejectedReason.VERSION
    assert "older protocol" in response.rejected.detail


# --------------------------------------------------------------------- D8: connects


async def test_a_connect_that_never_completes_times_out_and_a_cancelled_one_holds_nothing() -> None:
    # A listener that never accepts: the kernel completes TCP, and the TLS handshake
    # then waits for an answer that never comes.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    client = Client(
        "127.0.0.1",
        listener.getsockname()[1],
        credentials=credentials(trustme.CA()),
        connect_timeout=0.5,
    )
    portal = portal_for_host()
    try:
        for call in (request(add, 1, 2), request(slow_to_close, "x", generator=True)):
            start = client.call if call.task and not call.task.generator else client.open  # pyright: ignore[reportUnknownVariableType]
            with anyio.fail_after(10):
                with pytest.raises(Unreachable, match=r"no connection within 0\.5 s"):
                    await portal.run(start, call)
            assert not client.busy
            with anyio.fail_after(10):
                with anyio.move_on_after(0.1) as scope:
                    await portal.run(start, call)
            assert scope.cancelled_caught
            assert not client.busy  # the cancelled connect holds no stream slot
    finally:
        await portal.run(client.close)
        portal.close()
        listener.close()


# --------------------------------------------------------------------- D21: closing


async def test_a_close_cut_short_still_resets_the_generator_call(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):
            opening = request(slow_to_close, str(marker), generator=True, grace=60.0)
            call = await portal.run(client.open, opening)
            await portal.run(call.send, Request(step=Step(kind=StepKind.NEXT, count=1)))
            first = await portal.run(call.receive)
            assert first.items is not None
            # Half-closed, the worker closes the generator, whose finally takes a minute:
            # the drain is cut short here.
            with anyio.move_on_after(0.5):
                await portal.run(call.close)
            assert not client.busy
            # The stream was reset all the same: the worker cancelled the generator.
            await wait_for_file(marker, "cut", timeout=15)


async def test_cancelling_a_generator_call_closes_the_stream_its_caller_never_got() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):
            call = request(slow_to_close, "unused", generator=True)
            # As when the caller is cancelled while open() completes: the CallStream is
            # never handed to anyone, and only the cancel that follows knows its id.
            await portal.run(client.open, call)
            assert client.busy
            with anyio.fail_after(10):
                await portal.run(client.cancel, call.task.id, 5.0)  # pyright: ignore[reportOptionalMemberAccess]
            assert not client.busy
            with anyio.fail_after(10):
                while await running_on(client, portal):
                    await anyio.sleep(0.05)


# --------------------------------------------------------------------- long-lived connections


async def test_a_long_lived_connection_remembers_a_bounded_number_of_closed_streams() -> None:
    # h2 remembers how the last 65,536 closed streams of a connection ended, ~140 bytes
    # each: the soak's caller and workers grew steadily by that much. Both ends keep fewer.
    streams = CLOSED_STREAMS_KEPT + 200
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        async with client_to(worker) as (client, portal):

            async def infos(n: int) -> None:
                for _ in range(n):
                    await portal.run(client.info, 10.0)

            with anyio.fail_after(300):
                async with anyio.create_task_group() as tg:
                    for _ in range(16):  # 16 streams at a time: all on one connection
                        tg.start_soon(infos, streams // 16)
            (connection,) = client._connections
            h2 = connection.channel._protocol.connection._connection  # pyright: ignore[reportPrivateUsage, reportOptionalMemberAccess]
            assert len(h2._closed_streams) == CLOSED_STREAMS_KEPT  # pyright: ignore[reportPrivateUsage]
            # The worker's end of that connection; the pool's own has closed fewer streams.
            remembered = await closed_streams_remembered()
            assert max(remembered) == CLOSED_STREAMS_KEPT
