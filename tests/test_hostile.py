"""Hostile bytes: a worker answers or drops what it cannot read, and keeps serving (issue 12)."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

import anyio
import grpclib.client
import grpclib.const
import pytest
from grpclib.encoding.base import CodecBase
from hypothesis import given, settings
from hypothesis import strategies as st

import wool
from wool.security import unix_path
from wool.transport import (
    PROTOCOL_VERSION,
    Client,
    RejectedReason,
    Request,
    Response,
    Task,
    portal_for_host,
)
from wool.transport._framing import Assembler
from wool.transport._grpc import _Codec  # pyright: ignore[reportPrivateUsage]
from wool.transport._protocol.wool.v1 import (
    AnswerBatch,
    CallBatch,
    CancelRequest,
    Chunk,
    StopRequest,
)

from .routines import add
from .test_discovery import start_worker

pytestmark = pytest.mark.anyio


# --------------------------------------------------------------------- property-based


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=256),
    st.sampled_from([Request, Response, CallBatch, AnswerBatch, CancelRequest, StopRequest]),
)
def test_decoding_any_bytes_gives_a_message_or_a_protocol_error(
    data: bytes, message_type: type
) -> None:
    codec = _Codec(1 << 20)
    try:
        message = codec.decode(data, message_type)
    except wool.ProtocolError:
        return
    assert isinstance(message, message_type)


_messages = st.one_of(
    st.binary(max_size=64).map(lambda data: Request(chunk=Chunk(data=data))),
    st.binary(max_size=64).map(
        lambda data: Request(task=Task(version=PROTOCOL_VERSION, id="x", arguments=data))
    ),
    st.just(Request()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_messages, max_size=12), st.integers(min_value=0, max_value=256))
def test_assembling_any_sequence_gives_messages_or_a_protocol_error(
    messages: list[Request], max_payload: int
) -> None:
    assembler = Assembler(max_payload)
    for message in messages:
        try:
            whole = assembler.add(message)
        except wool.ProtocolError:
            return
        if whole is not None:
            assert isinstance(whole, Request)
            assert whole.chunk is None


# --------------------------------------------------------------------- real workers


def _raw_exchange(path: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; what the worker sends until it closes."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


class _Raw(CodecBase):
    __content_subtype__ = "proto"  # pyright: ignore[reportIncompatibleMethodOverride, reportAssignmentType]

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message

    def decode(self, data: bytes, message_type: Any) -> Any:
        return Response.parse(data)


async def _dispatch_raw(path: str, payloads: list[bytes]) -> list[Response]:
    """Send ``payloads`` as the messages of one Dispatch call; the worker's answers."""
    channel = grpclib.client.Channel(path=path, codec=_Raw())
    try:
        async with channel.request(
            "/wool.v1.Worker/Dispatch",
            grpclib.const.Cardinality.STREAM_STREAM,
            bytes,
            Response,
            timeout=20,
        ) as stream:
            for payload in payloads[:-1]:
                await stream.send_message(payload)
            await stream.send_message(payloads[-1], end=True)
            return [response async for response in stream]
    finally:
        channel.close()


async def _on_grpclib_loop(fn: Any, *args: Any) -> Any:
    portal = portal_for_host()  # grpclib runs on asyncio: on a loop thread under trio
    try:
        with anyio.fail_after(30):
            return await portal.run(fn, *args)
    finally:
        portal.close()


async def test_a_worker_survives_hostile_bytes_and_keeps_serving() -> None:
    async with wool.WorkerPool(size=1) as pool:
        (worker,) = pool.workers
        path = unix_path(worker.host)
        assert path is not None

        # Random bytes, then a malformed HTTP/2 preface: the worker drops the connection
        # (after an HTTP/2 GOAWAY at most), and nothing else.
        for junk in (os.urandom(4096), b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + os.urandom(64)):
            answer = await anyio.to_thread.run_sync(_raw_exchange, path, junk)
            assert len(answer) < 4096
        assert await add(1, 2) == 3

        # Bytes that are no protobuf message: refused as malformed.
        (response,) = await _on_grpclib_loop(_dispatch_raw, path, [b"\x1a\x05\x0a"])
        assert response.rejected is not None
        assert response.rejected.reason == RejectedReason.MALFORMED

        # A chunk sequence cut short: the call ends without running anything.
        chunk = bytes(Request(chunk=Chunk(data=b"x" * 100)))
        assert await _on_grpclib_loop(_dispatch_raw, path, [chunk, chunk]) == []

        # A corrupt pickle from an authenticated (same-user) peer: a typed failure.
        task = Task(
            version=PROTOCOL_VERSION,
            id="corrupt",
            routine="tests.routines.add",
            function=b"\x80\x05not a pickle",
            arguments=b"\x80\x05neither",
            grace=1.0,
        )
        client = Client(worker.host, worker.port)
        portal = portal_for_host()
        try:
            with anyio.fail_after(20):
                response = await portal.run(client.call, Request(task=task))
        finally:
            await portal.run(client.close)
            portal.close()
        assert response.failure is not None
        assert "SerializationError" in response.failure.type

        assert [await add(i, i) for i in range(3)] == [0, 2, 4]
        assert [w.pid for w in pool.workers] == [worker.pid]  # the same worker, not a new one


async def test_a_worker_logs_what_it_drops_or_refuses() -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker("--namespace", namespace)
    try:
        worker.wait_for("serving at")
        (record,) = wool.LocalDiscovery(namespace).scan()
        path = unix_path(record.host)
        assert path is not None
        await anyio.to_thread.run_sync(_raw_exchange, path, os.urandom(512))
        worker.wait_for("dropped a connection that broke HTTP/2")
        (response,) = await _on_grpclib_loop(_dispatch_raw, path, [b"\x1a\x05\x0a"])
        assert response.rejected is not None
        worker.wait_for("refused a malformed call")
        async with wool.WorkerPool(discovery=wool.LocalDiscovery(namespace)):
            assert await add(1, 2) == 3
    finally:
        assert worker.stop() == 0
