"""The worker's side of the ``wool.v1.Worker`` service: the hand-written grpclib mapping
(betterproto2 generates only the messages) onto a :class:`Service`, and the
:class:`Server` (runs on grpclib's loop)."""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, cast

import anyio
import grpclib.const
import grpclib.server
import h2.exceptions
from grpclib.protocol import H2Protocol
from h2.settings import SettingCodes

from wool._errors import ProtocolError
from wool.security import WorkerCredentials, unix_path
from wool.transport._channel import (
    CANCEL,
    DISPATCH,
    INFO,
    STOP,
    Codec,
    configuration,
    receive,
    send,
)
from wool.transport._edges import listening_socket, remove_socket, server_tls
from wool.transport._framing import DEFAULT_LIMITS, Assembler, Limits
from wool.transport._h2 import tuned
from wool.transport._mux import CALLS, serve_calls
from wool.transport._protocol.wool.v1 import (
    CallBatch,
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

__all__ = ["Server", "Service"]

log = logging.getLogger("wool.transport")

# Nested calls hold a stream open while they wait for their children, so a per-connection
# stream limit deadlocks deep fan-outs. Workers accept as many streams as memory allows.
_MAX_CONCURRENT_STREAMS = 2**31 - 1

# How long a stopping server waits for cancelled handlers to answer, then for its connections.
_HANDLERS_ANSWER = 1.0


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
            request = await receive(stream, assembler)
        except ProtocolError as exc:
            log.warning("refused a malformed call: %s", exc)
            await stream.send_message(_malformed(str(exc)))
            return
        if request is None:
            return
        answer = functools.partial(send, stream, limits=self._limits)
        if request.task is not None and request.task.generator:
            steps = functools.partial(receive, stream, assembler)
            await self._service.stream(request, steps, answer)
            return
        await answer(await self._service.dispatch(request))

    async def _calls(self, stream: grpclib.server.Stream[CallBatch, bytes]) -> None:
        await serve_calls(stream, self._service.dispatch, self._limits)

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
        streaming = grpclib.const.Cardinality.STREAM_STREAM
        return {
            DISPATCH: handler(self._dispatch, streaming, Request, Response),
            CALLS: handler(self._calls, streaming, CallBatch, bytes),
            CANCEL: handler(self._cancel, unary, CancelRequest, CancelResponse),
            INFO: handler(self._info, unary, InfoRequest, WorkerInfo),
            STOP: handler(self._stop, unary, StopRequest, StopResponse),
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
        return _logging_broken_http2(protocol)


def _logging_broken_http2(protocol: H2Protocol) -> H2Protocol:
    """``protocol``, logging a connection it drops for breaking HTTP/2 (random bytes, a
    malformed preface): grpclib only says so at debug level, under its own logger."""
    connection_made = protocol.connection_made

    def made(transport: Any) -> None:
        connection_made(transport)
        feed = protocol.connection.feed

        def logged(data: bytes) -> Any:
            try:
                return feed(data)
            except h2.exceptions.ProtocolError as exc:
                log.warning("dropped a connection that broke HTTP/2: %s", exc or type(exc))
                raise

        protocol.connection.feed = logged  # type: ignore[method-assign]

    protocol.connection_made = made  # type: ignore[method-assign]
    return protocol


class Server:
    """A worker's gRPC server. Start, stop and close it on grpclib's loop."""

    def __init__(
        self, service: Service, *, keepalive: float | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._server = _GrpcServer(
            [_Handlers(service, limits)],
            codec=Codec(limits.max_message),
            config=configuration(keepalive),
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
