"""grpclib plumbing shared by the client, the server and the call streams: channels, the
codec, HTTP/2 settings, and sending or receiving one (possibly chunked) message. Runs on
grpclib's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpclib.client
import grpclib.server
from grpclib.config import Configuration
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import ProtocolError as H2ProtocolError
from grpclib.exceptions import StreamTerminatedError
from grpclib.protocol import H2Protocol
from h2.exceptions import H2Error, StreamClosedError

from wool._errors import ProtocolError
from wool.security import WorkerCredentials, unix_path
from wool.transport._edges import ConnectionWatch, client_tls
from wool.transport._framing import Assembler, Limits, decode_chunk, encode_chunk, split
from wool.transport._h2 import MAX_FRAME_SIZE, tuned
from wool.transport._protocol.wool.v1 import AnswerBatch, CallBatch, Request, Response
from wool.transport._wire import decode_answer_batch, decode_call_batch

__all__ = [
    "CANCEL",
    "DISPATCH",
    "INFO",
    "MISUSE_ERRORS",
    "STOP",
    "TRANSPORT_ERRORS",
    "Channel",
    "Codec",
    "configuration",
    "open_channel",
    "receive",
    "send",
]

DISPATCH = "/wool.v1.Worker/Dispatch"
CANCEL = "/wool.v1.Worker/Cancel"
INFO = "/wool.v1.Worker/Info"
STOP = "/wool.v1.Worker/Stop"

# The peer is gone, or reset the stream.
TRANSPORT_ERRORS = (StreamTerminatedError, StreamClosedError, ConnectionError, OSError)
# On a connection that is still up, these mean that wool misused grpclib or h2 (grpclib's
# ProtocolError "means that you probably should fix your code"): a bug, not a lost peer.
MISUSE_ERRORS = (H2ProtocolError, H2Error)


class Channel(grpclib.client.Channel):
    watch: ConnectionWatch

    def _protocol_factory(self) -> H2Protocol:
        self.watch = ConnectionWatch()
        return self.watch.attach(tuned(super()._protocol_factory(), {}))


def open_channel(
    host: str,
    port: int,
    *,
    credentials: WorkerCredentials | None,
    server_name: str | None,
    codec: CodecBase,
    keepalive: float | None,
) -> Channel:
    """A channel to a worker at ``host:port`` or ``unix:/path``, over TLS with
    ``credentials``; the worker's certificate must name ``server_name`` (default: host)."""
    path = unix_path(host)
    tls, server_name = client_tls(host, credentials, server_name)
    config = configuration(keepalive, server_name=server_name)
    if path is not None:
        return Channel(path=path, ssl=tls, codec=codec, config=config)
    return Channel(host, port, ssl=tls, codec=codec, config=config)


# The messages of the Calls stream, decoded by hand (transport._wire): the bulk of the
# protobuf work of a small call.
_DECODERS: dict[type, Callable[[bytes], Any]] = {
    AnswerBatch: decode_answer_batch,
    CallBatch: decode_call_batch,
}


class Codec(CodecBase):
    __content_subtype__ = "proto"  # pyright: ignore[reportIncompatibleMethodOverride, reportAssignmentType]

    def __init__(self, max_message: int) -> None:
        self._max_message = max_message

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):  # encoded already (the batches of the Calls stream)
            return message
        return encode_chunk(message) or bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self._max_message:
            raise ProtocolError(
                f"the peer sent a message of {len(data)} bytes, over the maximum message size "
                f"of {self._max_message} bytes here; give callers and workers the same "
                "max_message_size"
            )
        try:
            fast = _DECODERS.get(message_type)
            if fast is not None:
                return fast(data)
            return decode_chunk(data, message_type) or message_type.parse(data)
        except Exception as exc:  # betterproto2 raises whatever the bytes lead it to
            raise ProtocolError(
                f"the peer sent {len(data)} bytes that are no {message_type.__name__} "
                f"message: {exc!r}"
            ) from exc


# A chunk message and gRPC's 5-byte prefix fill one frame of the size wool's peers accept.
_CHUNK_MESSAGE = MAX_FRAME_SIZE - 5


async def send(
    stream: grpclib.client.Stream[Any, Any] | grpclib.server.Stream[Any, Any],
    message: Request | Response,
    limits: Limits,
    *,
    end: bool = False,
) -> None:
    """Send one message, in chunks if its payload is too large for one.

    A chunk fills one HTTP/2 frame, and the loop runs its other work between chunks:
    grpclib sends a message's frames without a pause while the peer's window allows, so
    a large payload sent whole would hold up every other call on the connection (their
    messages, their answers, the pings) for as long as it takes to copy it out.
    """
    messages = split(message, limits.max_message, max_chunk=_CHUNK_MESSAGE)
    for part in messages[:-1]:
        await stream.send_message(part)
        await asyncio.sleep(0)
    if end:  # only a client ends its side with its last message
        await stream.send_message(messages[-1], end=True)  # pyright: ignore[reportCallIssue]
    else:
        await stream.send_message(messages[-1])


async def receive(
    stream: grpclib.client.Stream[Any, Any] | grpclib.server.Stream[Any, Any],
    assembler: Assembler,
) -> Any:
    """Receive one whole message (joining its chunks), or None at the end of the stream."""
    while True:
        message = await stream.recv_message()
        if message is None:
            return None
        whole = assembler.add(message)
        if whole is not None:
            return whole


# Bytes a peer may send before it waits for us to read them: the bound on what one call
# (or all calls of a connection) can buffer here when its reader is slow.
_STREAM_WINDOW = 8 * 1024 * 1024
_CONNECTION_WINDOW = 32 * 1024 * 1024


def configuration(keepalive: float | None, *, server_name: str | None = None) -> Configuration:
    """HTTP/2 pings every ``keepalive`` seconds while calls are open; a peer that has not
    answered one within another ``keepalive`` seconds is taken for gone."""
    if keepalive is None:
        return Configuration(
            http2_connection_window_size=_CONNECTION_WINDOW,
            http2_stream_window_size=_STREAM_WINDOW,
            ssl_target_name_override=server_name,
        )
    return Configuration(
        http2_connection_window_size=_CONNECTION_WINDOW,
        http2_stream_window_size=_STREAM_WINDOW,
        ssl_target_name_override=server_name,
        _keepalive_time=keepalive,
        _keepalive_timeout=keepalive,
        _http2_max_pings_without_data=0,
        _http2_min_sent_ping_interval_without_data=keepalive / 2,
    )
