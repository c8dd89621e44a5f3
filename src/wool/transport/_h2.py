"""What the transport reads or tunes in grpclib's and h2's private state, in one place: h2's
frame buffer and dispatch table (every connection's tuning), whether a grpclib channel is
connected, and the headers grpclib received on a client stream. ``pyproject.toml`` pins the
versions of both libraries, and ``tests/test_transport_internals.py`` fails loudly if any of
this changes meaning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpclib.client
from grpclib.protocol import H2Protocol
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes
from h2.utilities import SizeLimitDict
from hyperframe.frame import DataFrame, Frame

from wool.transport._bridge import CoalescingTransport

__all__ = ["CLOSED_STREAMS_KEPT", "MAX_FRAME_SIZE", "connected", "received_headers", "tuned"]

# Large frames: a chunk of a payload crosses in a few frames instead of hundreds of 16 KiB
# ones, each of which h2 parses, copies and (see _QuietFrames) describes.
MAX_FRAME_SIZE = 1024 * 1024


#: Closed streams a connection remembers the end of. h2 remembers the last 65,536, about
#: 140 bytes each: a long-lived connection (a pool's, a worker's) grew by that much with
#: every stream it closed, up to 9 MB on either end. The record serves the frames the peer
#: sent before it saw the stream end, which arrive within a round trip. For a forgotten
#: stream, late DATA gets a RST_STREAM answer and a late WINDOW_UPDATE or RST_STREAM is
#: ignored; only late HEADERS, which only a worker sends, fail the connection. A caller
#: keeps at most 64 streams open on a connection (``transport._grpc``): over a thousand
#: would have to close within one round trip for that to happen.
CLOSED_STREAMS_KEPT = 1024


class _QuietDataFrame(DataFrame):
    def _body_repr(self) -> str:
        return f"data=<{len(self.data)} bytes>"


class _QuietFrames(FrameBuffer):
    """h2 builds ``repr(frame)`` of every frame it receives, for a log call that discards
    it; a DATA frame's repr hex-encodes the whole payload first. Received DATA frames get
    a repr that does not.

    It also accepts frames of up to ``MAX_FRAME_SIZE`` from the start. The peer may send
    frames that large as soon as it has our SETTINGS (RFC 9113, 6.5.3), but h2 raises the
    buffer's limit only at the start of a read, after the peer's ACK: an ACK and a large
    frame read together used to fail the connection (FrameTooLargeError).
    """

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._max_frame_size = max(value, MAX_FRAME_SIZE)

    def __next__(self) -> Frame:
        frame = super().__next__()
        if type(frame) is DataFrame:
            frame.__class__ = _QuietDataFrame
        return frame


def tuned(protocol: H2Protocol, settings: dict[int, int]) -> H2Protocol:
    """``protocol``, set up to give each new connection coalesced writes, larger frames,
    quiet DATA frames, a bounded record of closed streams, and ``settings``."""
    connection_made = protocol.connection_made

    def setup(transport: Any) -> None:
        connection_made(CoalescingTransport(transport))
        h2 = protocol.connection._connection
        quiet = _QuietFrames(server=not h2.config.client_side)
        quiet.__dict__.update(h2.incoming_buffer.__dict__)
        h2.incoming_buffer = quiet
        h2._closed_streams = SizeLimitDict(size_limit=CLOSED_STREAMS_KEPT)  # pyright: ignore[reportPrivateUsage]
        table = h2._frame_dispatch_table  # pyright: ignore[reportPrivateUsage]
        table[_QuietDataFrame] = table[DataFrame]
        h2.update_settings({SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE, **settings})
        protocol.connection.flush()

    protocol.connection_made = setup  # type: ignore[method-assign]
    return protocol


def connected(channel: grpclib.client.Channel) -> bool:
    """Whether ``channel`` has a connection up (grpclib has no public way to ask)."""
    return channel._connected  # pyright: ignore[reportPrivateUsage]


def received_headers(stream: grpclib.client.Stream[Any, Any]) -> Mapping[str, str]:
    """The headers (or trailers-only headers) ``stream`` received so far, empty if none.

    grpclib's client checks only ``grpc-status`` in headers that carry a gRPC content type;
    these let a caller read a status that came without one.
    """
    inner = getattr(stream, "_stream", None)
    return dict(getattr(inner, "headers", None) or ())
