"""grpclib client and server for the ``wool.v1.Worker`` service (runs on grpclib's loop).

The service mapping is written by hand: betterproto2 generates only the messages. Every
coroutine here runs on grpclib's asyncio loop; hosts reach them through a Portal.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

import anyio
import grpclib.client
import grpclib.const
import grpclib.server
from grpclib.config import Configuration
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.exceptions import ProtocolError as H2ProtocolError
from grpclib.protocol import H2Protocol
from h2.exceptions import H2Error, StreamClosedError
from h2.settings import SettingCodes

from wool._errors import ProtocolError
from wool.security import WorkerCredentials, unix_path
from wool.transport._bridge import ConnectionLost
from wool.transport._edges import (
    ConnectionWatch,
    client_tls,
    connect_error,
    listening_socket,
    remove_socket,
    server_tls,
)
from wool.transport._framing import (
    DEFAULT_LIMITS,
    Assembler,
    Limits,
    decode_chunk,
    encode_chunk,
    split,
)
from wool.transport._h2 import tuned
from wool.transport._protocol.wool.v1 import (
    CancelRequest,
    CancelResponse,
    InfoRequest,
    Rejected,
    RejectedReason,
    Request,
    Response,
    StopRequest,
    StopResponse,
    WorkerInfo,
)

__all__ = ["CallStream", "Client", "Server", "Service"]

log = logging.getLogger("wool.transport")

_DISPATCH = "/wool.v1.Worker/Dispatch"
_CANCEL = "/wool.v1.Worker/Cancel"
_INFO = "/wool.v1.Worker/Info"
_STOP = "/wool.v1.Worker/Stop"

# Nested calls hold a stream open while they wait for their children, so a per-connection
# stream limit deadlocks deep fan-outs. Workers accept as many streams as memory allows.
_MAX_CONCURRENT_STREAMS = 2**31 - 1

# The peer is gone, or reset the stream.
_TRANSPORT_ERRORS = (StreamTerminatedError, StreamClosedError, ConnectionError, OSError)
# On a connection that is still up, these mean that wool misused grpclib or h2 (grpclib's
# ProtocolError "means that you probably should fix your code"): a bug, not a lost peer.
_MISUSE_ERRORS = (H2ProtocolError, H2Error)
# How long a stopping server waits for cancelled handlers to answer, then for its connections.
_HANDLERS_ANSWER = 1.0


class _Channel(grpclib.client.Channel):
    watch: ConnectionWatch

    def _protocol_factory(self) -> H2Protocol:
        self.watch = ConnectionWatch()
        return self.watch.attach(tuned(super()._protocol_factory(), {}))


def _open_channel(
    host: str,
    port: int,
    *,
    credentials: WorkerCredentials | None,
    server_name: str | None,
    codec: CodecBase,
    keepalive: float | None,
) -> _Channel:
    """A channel to a worker at ``host:port`` or ``unix:/path``, over TLS with
    ``credentials``; the worker's certificate must name ``server_name`` (default: host)."""
    path = unix_path(host)
    tls, server_name = client_tls(host, credentials, server_name)
    config = _configuration(keepalive, server_name=server_name)
    if path is not None:
        return _Channel(path=path, ssl=tls, codec=codec, config=config)
    return _Channel(host, port, ssl=tls, codec=codec, config=config)


class _Codec(CodecBase):
    __content_subtype__ = "proto"  # pyright: ignore[reportIncompatibleMethodOverride, reportAssignmentType]

    def __init__(self, max_message: int) -> None:
        self._max_message = max_message

    def encode(self, message: Any, message_type: Any) -> bytes:
        return encode_chunk(message) or bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if len(data) > self._max_message:
            raise ProtocolError(
                f"the peer sent a message of {len(data)} bytes, over the maximum message size "
                f"of {self._max_message} bytes here; give callers and workers the same "
                "max_message_size"
            )
        try:
            return decode_chunk(data, message_type) or message_type.parse(data)
        except Exception as exc:  # betterproto2 raises whatever the bytes lead it to
            raise ProtocolError(
                f"the peer sent {len(data)} bytes that are no {message_type.__name__} "
                f"message: {exc!r}"
            ) from exc


async def _send(
    stream: grpclib.client.Stream[Any, Any] | grpclib.server.Stream[Any, Any],
    message: Request | Response,
    limits: Limits,
    *,
    end: bool = False,
) -> None:
    """Send one message, in chunks if its payload is too large for one."""
    messages = split(message, limits.max_message)
    for part in messages[:-1]:
        await stream.send_message(part)
    if end:  # only a client ends its side with its last message
        await stream.send_message(messages[-1], end=True)  # pyright: ignore[reportCallIssue]
    else:
        await stream.send_message(messages[-1])


async def _receive(
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


def _configuration(keepalive: float | None, *, server_name: str | None = None) -> Configuration:
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


# h2 counts a connection's open streams by walking all of them on every new stream, so
# one connection with thousands of concurrent streams costs O(n^2). Calls are spread over
# as many connections as needed, at most this many streams each. There is no limit on
# connections: a nested fan-out holds streams while it waits, and any cap could deadlock.
_STREAMS_PER_CONNECTION = 64


class _Connection:
    __slots__ = ("channel", "streams")

    def __init__(self, channel: _Channel) -> None:
        self.channel = channel
        self.streams = 0


class Client:
    """The connections to one worker. Create, use and close it on grpclib's loop."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        keepalive: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        credentials: WorkerCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        self.address = host if unix_path(host) is not None else f"{host}:{port}"
        self._host = host
        self._port = port
        self._credentials = credentials
        self._server_name = server_name
        self._keepalive = keepalive
        self.limits = limits
        self._codec = _Codec(limits.max_message)
        self._connections: list[_Connection] = []
        # Connections of calls cancelled while in flight: their Cancel request must travel
        # behind the stream's reset on the same connection, or it could overtake it.
        self._cancelled_on: dict[str, _Connection] = {}
        self._closed = False

    def _connection(self) -> _Connection:
        if self._closed:
            raise ConnectionLost(f"the client of worker {self.address} is closed")
        for connection in self._connections:
            if connection.streams < _STREAMS_PER_CONNECTION:
                return connection
        # grpclib binds a channel to the loop it is created on: create them on first use.
        channel = _open_channel(
            self._host,
            self._port,
            credentials=self._credentials,
            server_name=self._server_name,
            codec=self._codec,
            keepalive=self._keepalive,
        )
        connection = _Connection(channel)
        self._connections.append(connection)
        return connection

    @property
    def busy(self) -> bool:
        """Calls are in flight on this client."""
        return any(connection.streams for connection in self._connections)

    async def call(self, request: Request) -> Response:
        """A coroutine call: one request frame (with end of stream), one response frame.

        Cancelling this coroutine resets the stream, which cancels the routine on the worker.
        """
        connection = self._connection()
        connection.streams += 1  # before any await: concurrent calls must see it
        try:
            await connection.channel.__connect__()
        except OSError as exc:
            connection.streams -= 1
            raise connect_error(self.address, exc) from exc
        stream = connection.channel.request(
            _DISPATCH, grpclib.const.Cardinality.STREAM_STREAM, Request, Response
        )
        try:
            async with stream:
                await _send(stream, request, self.limits, end=True)
                response = await _receive(stream, Assembler(self.limits.max_payload))
        except (*_TRANSPORT_ERRORS, *_MISUSE_ERRORS) as exc:
            raise self.lost(connection, exc) from exc
        except GRPCError as exc:
            raise ProtocolError(
                f"worker {self.address} failed the call without an answer: {exc.message}"
            ) from exc
        except anyio.get_cancelled_exc_class():
            if request.task is not None:
                self._cancelled_on[request.task.id] = connection
            raise
        finally:
            connection.streams -= 1
        if response is None:
            raise ConnectionLost(f"worker {self.address} closed the call without an answer")
        return response

    def lost(self, connection: _Connection, exc: BaseException, what: str = "lost") -> Exception:
        """The error for a call that failed on ``connection``: a ``RuntimeError`` for a bug
        in wool (grpclib or h2 misused on a connection that is still up), logged with its
        stack, which leaves a healthy worker in rotation; a ``SecurityError`` when TLS
        refused the connection; otherwise ``ConnectionLost`` (the peer is gone)."""
        if isinstance(exc, _MISUSE_ERRORS) and connection.channel._connected:
            log.error(
                "internal error on a call to worker %s (a bug in wool)", self.address, exc_info=exc
            )
            return RuntimeError(
                f"internal error in wool on a call to worker {self.address}: {exc!r}; this is "
                "a bug in wool, please report it"
            )
        watch = getattr(connection.channel, "watch", None) or ConnectionWatch()
        refusal = watch.refusal(self.address, exc, secure=self._credentials is not None)
        return refusal or ConnectionLost(f"connection to worker {self.address} {what}: {exc}")

    def forget(self, call_id: str) -> None:
        """Drop what was kept to cancel ``call_id`` (its Cancel request will not be sent)."""
        self._cancelled_on.pop(call_id, None)

    async def cancel(self, call_id: str, timeout: float) -> bool:
        """Cancel a call; returns once the worker says its routine finished unwinding."""
        connection = self._cancelled_on.pop(call_id, None)
        reply = await self._request(
            _CANCEL, CancelRequest(id=call_id), CancelResponse, timeout, connection
        )
        return reply.cancelled

    async def open(self, request: Request) -> CallStream:
        """Start a generator call: send its Task, keep the stream open for Steps."""
        connection = self._connection()
        connection.streams += 1
        try:
            await connection.channel.__connect__()
        except OSError as exc:
            connection.streams -= 1
            raise connect_error(self.address, exc) from exc
        stream = connection.channel.request(
            _DISPATCH, grpclib.const.Cardinality.STREAM_STREAM, Request, Response
        )
        call = CallStream(self, connection, stream, request.task.id if request.task else "")
        try:
            await stream.__aenter__()
            await call.send(request)
        except BaseException:
            await call.close(reset=True)
            raise
        return call

    async def info(self, timeout: float) -> WorkerInfo:
        return await self._request(_INFO, InfoRequest(), WorkerInfo, timeout)

    async def stop(self, grace: float, timeout: float) -> None:
        await self._request(_STOP, StopRequest(grace=grace), StopResponse, timeout)

    async def _request(
        self,
        path: str,
        request: Any,
        reply: type,
        timeout: float,
        connection: _Connection | None = None,
    ) -> Any:
        connection = connection or self._connection()
        connection.streams += 1
        stream = connection.channel.request(
            path, grpclib.const.Cardinality.UNARY_UNARY, type(request), reply, timeout=timeout
        )
        try:
            async with stream:
                await stream.send_message(request, end=True)
                response = await stream.recv_message()
        except (*_TRANSPORT_ERRORS, GRPCError, TimeoutError) as exc:
            raise self.lost(connection, exc, "did not answer") from exc
        except _MISUSE_ERRORS as exc:
            raise self.lost(connection, exc) from exc
        finally:
            connection.streams -= 1
        if response is None:
            raise ConnectionLost(f"worker {self.address} closed the request without an answer")
        return response

    async def close(self) -> None:
        self._closed = True
        for connection in self._connections:
            connection.channel.close()
        self._connections.clear()


class CallStream:
    """An open generator call: exchange Steps for Responses, then close it."""

    def __init__(
        self,
        client: Client,
        connection: _Connection,
        stream: grpclib.client.Stream[Any, Any],
        call_id: str,
    ) -> None:
        self._client = client
        self._connection = connection
        self._stream = stream
        self._call_id = call_id
        self._assembler = Assembler(client.limits.max_payload)
        self._closed = False

    async def send(self, request: Request) -> None:
        """Send one request. Cancelling this resets the stream."""
        try:
            await _send(self._stream, request, self._client.limits)
        except BaseException as exc:
            await self._failed(exc)
            raise

    async def receive(self) -> Response:
        """Receive the next whole response. Cancelling this resets the stream."""
        try:
            response = await _receive(self._stream, self._assembler)
        except BaseException as exc:
            await self._failed(exc)
            raise
        if response is None:
            raise ConnectionLost(f"worker {self._client.address} ended the call without an answer")
        return response

    async def _failed(self, exc: BaseException) -> None:
        address = self._client.address
        if isinstance(exc, (*_TRANSPORT_ERRORS, *_MISUSE_ERRORS)):
            raise self._client.lost(self._connection, exc) from exc
        if isinstance(exc, GRPCError):
            raise ProtocolError(f"worker {address} failed the call: {exc.message}") from exc
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            # The Cancel request that follows must travel behind the reset.
            self._client._cancelled_on[self._call_id] = self._connection
            await self.close(reset=True)

    async def close(self, *, reset: bool = False) -> None:
        """End the call: half-close (the worker then finishes), or reset it (cancels it)."""
        if self._closed:
            return
        self._closed = True
        self._connection.streams -= 1
        try:
            if reset:
                await self._stream.cancel()
            else:
                await self._stream.end()
                while await self._stream.recv_message() is not None:
                    pass
            await self._stream.__aexit__(None, None, None)
        except (*_TRANSPORT_ERRORS, GRPCError):
            pass  # the call is over either way
        except _MISUSE_ERRORS as exc:
            self._client.lost(self._connection, exc)  # logs a bug


class Service(Protocol):
    """What a worker does with requests; implemented by ``wool.worker``."""

    async def dispatch(self, request: Request) -> Response: ...

    async def stream(
        self,
        request: Request,
        receive: Callable[[], Coroutine[Any, Any, Request | None]],
        send: Callable[[Response], Coroutine[Any, Any, None]],
    ) -> None:
        """A generator call: Steps come through ``receive``, Responses go through ``send``."""
        ...

    async def cancel(self, call_id: str) -> bool: ...

    def info(self) -> WorkerInfo: ...

    async def stop(self, grace: float) -> None: ...


class _Handlers:
    """The ``wool.v1.Worker`` service mapping for grpclib."""

    def __init__(self, service: Service, limits: Limits) -> None:
        self._service = service
        self._limits = limits

    async def _dispatch(self, stream: grpclib.server.Stream[Request, Response]) -> None:
        assembler = Assembler(self._limits.max_payload)
        try:
            request = await _receive(stream, assembler)
        except ProtocolError as exc:
            await stream.send_message(_malformed(str(exc)))
            return
        if request is None:
            return
        send = functools.partial(_send, stream, limits=self._limits)
        if request.task is not None and request.task.generator:
            receive = functools.partial(_receive, stream, assembler)
            await self._service.stream(request, receive, send)
            return
        await send(await self._service.dispatch(request))

    async def _cancel(self, stream: grpclib.server.Stream[CancelRequest, CancelResponse]) -> None:
        request = await stream.recv_message()
        if request is None:
            return
        await stream.send_message(CancelResponse(cancelled=await self._service.cancel(request.id)))

    async def _info(self, stream: grpclib.server.Stream[InfoRequest, WorkerInfo]) -> None:
        await stream.recv_message()
        await stream.send_message(self._service.info())

    async def _stop(self, stream: grpclib.server.Stream[StopRequest, StopResponse]) -> None:
        request = await stream.recv_message()
        if request is None:
            return
        await stream.send_message(StopResponse())
        await self._service.stop(request.grace)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        def handler(
            fn: Callable[[Any], Awaitable[None]],
            cardinality: grpclib.const.Cardinality,
            request: type,
            reply: type,
        ) -> grpclib.const.Handler:
            return grpclib.const.Handler(fn, cardinality, request, reply)

        unary = grpclib.const.Cardinality.UNARY_UNARY
        return {
            _DISPATCH: handler(
                self._dispatch, grpclib.const.Cardinality.STREAM_STREAM, Request, Response
            ),
            _CANCEL: handler(self._cancel, unary, CancelRequest, CancelResponse),
            _INFO: handler(self._info, unary, InfoRequest, WorkerInfo),
            _STOP: handler(self._stop, unary, StopRequest, StopResponse),
        }


def _malformed(detail: str) -> Response:
    return Response(rejected=Rejected(reason=RejectedReason.MALFORMED, detail=detail))


class _GrpcServer(grpclib.server.Server):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # grpclib keeps no handle on its connections, and Python >= 3.12.1's
        # Server.wait_closed() waits for every one of them to close (gh-79033).
        self.connections: weakref.WeakSet[H2Protocol] = weakref.WeakSet()

    def _protocol_factory(self) -> H2Protocol:
        protocol = tuned(
            super()._protocol_factory(),
            {SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_CONCURRENT_STREAMS},
        )
        self.connections.add(protocol)
        return protocol


class Server:
    """A worker's gRPC server. Start, stop and close it on grpclib's loop."""

    def __init__(
        self, service: Service, *, keepalive: float | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._server = _GrpcServer(
            [_Handlers(service, limits)],
            codec=_Codec(limits.max_message),
            config=_configuration(keepalive),
        )
        self.port = 0
        self._host = ""

    async def start(
        self, host: str, port: int, credentials: WorkerCredentials | None = None
    ) -> int:
        """Listen on ``host:port`` (or the Unix socket ``unix:/path``; the port is then 0),
        with TLS if ``credentials`` are given: a connection reaches the service only once
        its handshake is done, its client certificate verified under mutual TLS."""
        sock = listening_socket(host, port)
        try:
            await self._server.start(sock=sock, ssl=server_tls(credentials))
        except BaseException:
            sock.close()
            raise
        self._host = host
        self.port = 0 if unix_path(host) is not None else sock.getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening, cancel what still runs, let the cancelled handlers answer for
        a moment, then close every connection. Bounded: callers that stay connected
        cannot hold a stopping worker."""
        try:
            with contextlib.suppress(RuntimeError):
                self._server.close()
            with anyio.move_on_after(_HANDLERS_ANSWER):
                async with anyio.create_task_group() as tg:
                    for protocol in list(self._server.connections):
                        handler = cast(grpclib.server.Handler, protocol.handler)
                        tg.start_soon(handler.wait_closed)
            for protocol in list(self._server.connections):
                with contextlib.suppress(AttributeError):  # never connected
                    protocol.processor.close("the worker stopped")
            with anyio.move_on_after(_HANDLERS_ANSWER):
                await self._server.wait_closed()
        finally:
            remove_socket(self._host)
