"""The private parts of h2 that the transport tunes (``transport/_h2.py``) are
still there and still mean what the transport takes them to mean. A new h2 that fails here
must not be allowed by pyproject.toml until the transport is changed."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
from h2.stream import StreamClosedBy
from h2.utilities import SizeLimitDict
from hyperframe.frame import DataFrame

from wool.transport._h2 import _QuietDataFrame, _QuietFrames


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
