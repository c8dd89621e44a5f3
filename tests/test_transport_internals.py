"""The private parts of h2 that the transport tunes (``transport/_h2.py``) are
still there and still mean what the transport takes them to mean. A new h2 that fails here
must not be allowed by pyproject.toml until the transport is changed."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid

import cloudpickle
import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamClosedBy
from h2.utilities import SizeLimitDict
from hyperframe.frame import DataFrame

from wool._serialization import dumps_function
from wool.transport import PROTOCOL_VERSION, Client, RejectedReason, Request, Task
from wool.transport._channel import Channel, Codec
from wool.transport._edges import ConnectionWatch
from wool.transport._framing import DEFAULT_LIMITS
from wool.transport._h2 import _QuietDataFrame, _QuietFrames, connected, received_headers
from wool.transport._mux import CALLS, _unimplemented
from wool.transport._server import _GrpcServer

from .routines import add


def test_h2_keeps_a_frame_buffer_and_a_dispatch_table_by_frame_class() -> None:
    connection = H2Connection(H2Configuration(client_side=True))
    assert isinstance(connection.incoming_buffer, FrameBuffer)
    table = connection._frame_dispatch_table  # pyright: ignore[reportPrivateUsage]
    assert DataFrame in table
    # h2 sets the buffer's frame size limit through this attribute (see _QuietFrames).
    assert "max_frame_size" in vars(FrameBuffer(server=False))


def test_received_data_frames_are_described_without_their_payload() -> None:
    frame = DataFrame(1, b"x" * 100_000)
    buffer = _QuietFrames(server=False)
    buffer.max_frame_size = 1 << 20
    buffer.add_data(frame.serialize())
    received = next(buffer)
    assert type(received) is _QuietDataFrame
    assert received.data == frame.data
    assert "data=<100000 bytes>" in repr(received)


_HEADERS = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]


def test_h2_records_closed_streams_in_a_size_limited_dict_that_it_consults() -> None:
    """The transport replaces ``_closed_streams`` by a smaller SizeLimitDict (see
    CLOSED_STREAMS_KEPT): h2 must still move closed streams there and read them back."""
    connection = H2Connection(H2Configuration(client_side=True))
    closed = connection._closed_streams  # pyright: ignore[reportPrivateUsage]
    assert isinstance(closed, SizeLimitDict)
    connection._closed_streams = SizeLimitDict(size_limit=2)  # pyright: ignore[reportPrivateUsage]
    connection.initiate_connection()
    for stream_id in (1, 3, 5, 7):
        connection.send_headers(stream_id, _HEADERS)
        connection.reset_stream(stream_id)
    connection.open_outbound_streams  # moves the closed streams out of ``streams``
    assert dict(connection._closed_streams) == {  # pyright: ignore[reportPrivateUsage]
        5: StreamClosedBy.SEND_RST_STREAM,
        7: StreamClosedBy.SEND_RST_STREAM,
    }
    assert connection._stream_is_closed_by_reset(7)  # pyright: ignore[reportPrivateUsage]
    assert not connection._stream_is_closed_by_reset(1)  # pyright: ignore[reportPrivateUsage]


# ------------------------------------------------------------------ grpclib's private parts


class _NoMethods:
    """A grpclib service with no methods: a worker older than every RPC the test asks for."""

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {}


def _add_request() -> Request:
    return Request(
        task=Task(
            version=PROTOCOL_VERSION,
            id=uuid.uuid4().hex,
            routine="tests.routines.add",
            function=dumps_function(add),
            arguments=cloudpickle.dumps(((1, 2), {})),
            grace=1.0,
        )
    )


async def _against_a_server_without_methods(path: str) -> None:
    server = _GrpcServer([_NoMethods()], codec=Codec(DEFAULT_LIMITS.max_message))
    await server.start(path=path)
    channel = Channel(path=path, codec=Codec(DEFAULT_LIMITS.max_message))
    client = Client(f"unix:{path}", 0)
    try:
        assert not connected(channel)
        stream = channel.request(CALLS, grpclib.const.Cardinality.STREAM_STREAM, bytes, bytes)
        with pytest.raises(GRPCError) as raised:
            async with stream:
                await stream.send_request()
                await stream.recv_message()
        assert connected(channel)
        # grpclib's client calls this status UNKNOWN (the answer has no content type); the
        # transport reads the real one from the headers to tell an older worker.
        assert received_headers(stream).get("grpc-status") == str(Status.UNIMPLEMENTED.value)
        assert _unimplemented(stream, raised.value)

        # grpclib builds each connection through _protocol_factory, on both ends: the
        # transport's tuning reaches every connection only through it.
        assert isinstance(channel.watch, ConnectionWatch)
        (protocol,) = server.connections
        assert isinstance(protocol.connection._connection.incoming_buffer, _QuietFrames)

        # End to end: a small call to such a worker is refused as another protocol version.
        response = await asyncio.wait_for(client.call(_add_request()), 20)
        assert response.rejected is not None
        assert response.rejected.reason == RejectedReason.VERSION
    finally:
        await client.close()
        channel.close()
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
    assert not connected(channel)


def test_grpclib_internals_the_transport_reads() -> None:
    # A short directory: a Unix socket's path is limited to about 100 bytes.
    directory = tempfile.mkdtemp(prefix="wool-internals-", dir="/tmp")
    try:
        asyncio.run(_against_a_server_without_methods(os.path.join(directory, "s")))
    finally:
        shutil.rmtree(directory)
