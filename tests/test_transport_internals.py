"""The private parts of h2 that the transport tunes (``transport/_h2.py``) are
still there and still mean what the transport takes them to mean. A new h2 that fails here
must not be allowed by pyproject.toml until the transport is changed."""

from __future__ import annotations

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.frame_buffer import FrameBuffer
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
