"""The caller's side of the ``wool.v1.Worker`` service: a :class:`Client` per worker and
the :class:`CallStream` of a generator call (runs on grpclib's loop; hosts reach them
through a Portal). The worker's side is in ``transport._server``.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
from typing import Any

import anyio
import grpclib.client
import grpclib.const
from grpclib.exceptions import GRPCError

from wool._errors import ProtocolError
from wool.security import WorkerCredentials, unix_path
from wool.transport._bridge import ConnectionLost, Unreachable
from wool.transport._channel import (
    CANCEL,
    DISPATCH,
    INFO,
    MISUSE_ERRORS,
    STOP,
    TRANSPORT_ERRORS,
    Channel,
    Codec,
    open_channel,
    receive,
    send,
)
from wool.transport._edges import ConnectionWatch, connect_error
from wool.transport._framing import DEFAULT_LIMITS, Assembler, Limits
from wool.transport._h2 import connected
from wool.transport._mux import CallsClient, task_entry
from wool.transport._protocol.wool.v1 import (
    CancelRequest,
    CancelResponse,
    InfoRequest,
    Request,
    Response,
    StopRequest,
    StopResponse,
    WorkerInfo,
)

__all__ = ["CONNECT_TIMEOUT", "CallStream", "Client"]

log = logging.getLogger("wool.transport")

#: Seconds a connection (with its TLS handshake) may take before the worker counts as
#: unreachable.
CONNECT_TIMEOUT = 10.0

_Codec = Codec  # the name tests know it by

# h2 counts a connection's open streams by walking all of them on every new stream, so
# one connection with thousands of concurrent streams costs O(n^2). Calls are spread over
# as many connections as needed, at most this many streams each. There is no limit on
# connections: a nested fan-out holds streams while it waits, and any cap could deadlock.
_STREAMS_PER_CONNECTION = 64


class _Connection:
    __slots__ = ("channel", "streams")

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.streams = 0


class Client:
    """The connections to one worker. Create, use and close it on grpclib's loop.

    Small coroutine calls share one long-lived stream, on a connection of its own
    (``transport._mux``); larger calls and generator calls each get a stream of their own
    on the other connections.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        keepalive: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        credentials: WorkerCredentials | None = None,
        server_name: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.address = host if unix_path(host) is not None else f"{host}:{port}"
        self._host = host
        self._port = port
        self._credentials = credentials
        self._server_name = server_name
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self.limits = limits
        self._codec = Codec(limits.max_message)
        self._connections: list[_Connection] = []
        self._calls_connection: _Connection | None = None
        self._calls: CallsClient | None = None
        # Calls cancelled while in flight, until their cancel is answered or forgotten: the
        # Calls stream that carries the cancel, or the connection behind whose reset the
        # Cancel request must travel (on another one it could overtake the reset).
        self._cancelled_on: dict[str, _Connection | CallsClient] = {}
        # Generator calls not closed yet, by call id: a cancel closes one whose caller was
        # cancelled as it opened, and so never got it.
        self._streams: dict[str, CallStream] = {}
        self._closed = False

    def _channel(self) -> Channel:
        if self._closed:
            raise ConnectionLost(f"the client of worker {self.address} is closed")
        # grpclib binds a channel to the loop it is created on: create them on first use.
        return open_channel(
            self._host,
            self._port,
            credentials=self._credentials,
            server_name=self._server_name,
            codec=self._codec,
            keepalive=self._keepalive,
        )

    def _connection(self) -> _Connection:
        for connection in self._connections:
            if connection.streams < _STREAMS_PER_CONNECTION:
                return connection
        connection = _Connection(self._channel())
        self._connections.append(connection)
        return connection

    def _calls_stream(self) -> CallsClient:
        """The Calls stream; a new one if there is none or it failed."""
        calls = self._calls
        if calls is not None and calls.failure is None:
            return calls
        if self._calls_connection is None:
            self._calls_connection = _Connection(self._channel())
        elif self._closed:
            raise ConnectionLost(f"the client of worker {self.address} is closed")
        connection = self._calls_connection
        calls = self._calls = CallsClient(
            connection.channel,
            address=self.address,
            limits=self.limits,
            connect=self._connect,
            lost=functools.partial(self.lost, connection),
        )
        return calls

    async def _connect(self, channel: Channel) -> None:
        """Connect ``channel`` unless it is connected, within the connect timeout.

        Raises:
            Unreachable: no connection within the timeout, or the connect failed.
            SecurityError: TLS refused the connection.
        """
        with anyio.move_on_after(self._connect_timeout) as scope:
            try:
                await channel.__connect__()
            except OSError as exc:
                raise connect_error(self.address, exc) from exc
        if scope.cancelled_caught:
            raise Unreachable(
                f"cannot connect to worker {self.address}: no connection within "
                f"{self._connect_timeout:g} s"
            )

    @property
    def busy(self) -> bool:
        """Calls are in flight on this client."""
        calls = self._calls
        return (calls is not None and calls.busy) or any(
            connection.streams for connection in self._connections
        )

    async def call(self, request: Request) -> Response:
        """A coroutine call: its response.

        A small call travels on the Calls stream, a larger one on a stream of its own.
        Cancelling this cancels the routine on the worker; :meth:`cancel` then waits until
        it has finished unwinding, or :meth:`forget` drops that wait.

        Raises:
            Unreachable: the call was not sent (another worker may take it).
            SecurityError: TLS refused the connection.
            ConnectionLost: the connection was lost with the call in flight.
            ProtocolError: the worker broke the protocol.
        """
        task = task_entry(request, self.limits)
        if task is None:
            return await self._call_on_stream(request)
        calls = self._calls_stream()
        try:
            return await calls.call(task)
        except anyio.get_cancelled_exc_class():
            self._cancelled_on[task.id] = calls
            raise

    async def _call_on_stream(self, request: Request) -> Response:
        """A call on a stream of its own: one request (with end of stream), one response.
        Cancelling this resets the stream, which cancels the routine on the worker."""
        connection, stream = await self._open_stream()
        try:
            async with stream:
                await send(stream, request, self.limits, end=True)
                response = await receive(stream, Assembler(self.limits.max_payload))
        except (*TRANSPORT_ERRORS, *MISUSE_ERRORS) as exc:
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

    async def _open_stream(self) -> tuple[_Connection, grpclib.client.Stream[Any, Any]]:
        """A new Dispatch stream, counted on its connection (the caller uncounts it)."""
        connection = self._connection()
        connection.streams += 1  # before any await: concurrent calls must see it
        try:
            await self._connect(connection.channel)
        except BaseException:
            connection.streams -= 1  # also when cancelled: a slot held for ever leaks
            raise
        stream = connection.channel.request(
            DISPATCH, grpclib.const.Cardinality.STREAM_STREAM, Request, Response
        )
        return connection, stream

    def lost(self, connection: _Connection, exc: BaseException, what: str = "lost") -> Exception:
        """The error for a call that failed on ``connection``: a ``RuntimeError`` for a bug
        in wool (grpclib or h2 misused on a connection that is still up), logged with its
        stack, which leaves a healthy worker in rotation; a ``SecurityError`` when TLS
        refused the connection; otherwise ``ConnectionLost`` (the peer is gone)."""
        if isinstance(exc, MISUSE_ERRORS) and connected(connection.channel):
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
        """Drop what was kept to cancel ``call_id`` (its cancel will not be waited for)."""
        holder = self._cancelled_on.pop(call_id, None)
        if isinstance(holder, CallsClient):
            holder.cancelled(call_id)

    async def cancel(self, call_id: str, timeout: float) -> bool:
        """Cancel a call; returns once the worker says its routine finished unwinding
        (True), or that it was not running (False).

        Raises:
            ConnectionLost: the worker did not answer within ``timeout`` seconds, or the
                connection was lost.
        """
        holder = self._cancelled_on.pop(call_id, None)
        if isinstance(holder, CallsClient):
            answer = holder.cancelled(call_id)
            if answer is None:
                return False  # it was never written, or it had answered
            with anyio.move_on_after(timeout):
                return await answer
            raise ConnectionLost(
                f"worker {self.address} did not answer the cancel of call {call_id} "
                f"within {timeout:g} s"
            )
        orphan = self._streams.get(call_id)
        if orphan is not None:  # not closed yet (maybe never handed to its caller)
            holder = orphan.connection
            await orphan.close(reset=True)
        reply = await self._request(
            CANCEL, CancelRequest(id=call_id), CancelResponse, timeout, holder
        )
        return reply.cancelled

    async def open(self, request: Request) -> CallStream:
        """Start a generator call: send its Task, keep the stream open for Steps.

        Raises:
            Unreachable: the call was not sent (another worker may take it).
            SecurityError: TLS refused the connection.
            ConnectionLost: the connection was lost as the call was sent.
        """
        connection, stream = await self._open_stream()
        call = CallStream(self, connection, stream, request.task.id if request.task else "")
        try:
            await stream.__aenter__()
            await call.send(request)
        except BaseException:
            await call.close(reset=True)
            raise
        return call

    async def info(self, timeout: float) -> WorkerInfo:
        return await self._request(INFO, InfoRequest(), WorkerInfo, timeout)

    async def stop(self, grace: float, timeout: float) -> None:
        await self._request(STOP, StopRequest(grace=grace), StopResponse, timeout)

    async def _request(
        self,
        path: str,
        request: Any,
        reply: type,
        timeout: float,
        connection: _Connection | None = None,
    ) -> Any:
        if self._closed:
            raise ConnectionLost(f"the client of worker {self.address} is closed")
        connection = connection or self._connection()
        connection.streams += 1
        try:
            stream = connection.channel.request(
                path, grpclib.const.Cardinality.UNARY_UNARY, type(request), reply, timeout=timeout
            )
            async with stream:
                await stream.send_message(request, end=True)
                response = await stream.recv_message()
        except (*TRANSPORT_ERRORS, GRPCError, TimeoutError) as exc:
            raise self.lost(connection, exc, "did not answer") from exc
        except MISUSE_ERRORS as exc:
            raise self.lost(connection, exc) from exc
        finally:
            connection.streams -= 1
        if response is None:
            raise ConnectionLost(f"worker {self.address} closed the request without an answer")
        return response

    async def close(self) -> None:
        self._closed = True
        if self._calls is not None:
            self._calls.close()
        if self._calls_connection is not None:
            self._calls_connection.channel.close()
        for connection in self._connections:
            connection.channel.close()
        self._connections.clear()


class _State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


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
        self.connection = connection
        self._stream = stream
        self._call_id = call_id
        self._assembler = Assembler(client.limits.max_payload)
        self._state = _State.OPEN
        client._streams[call_id] = self

    async def send(self, request: Request) -> None:
        """Send one request. Cancelling this resets the stream."""
        try:
            await send(self._stream, request, self._client.limits)
        except BaseException as exc:
            await self._failed(exc)
            raise

    async def receive(self) -> Response:
        """Receive the next whole response. Cancelling this resets the stream."""
        try:
            response = await receive(self._stream, self._assembler)
        except BaseException as exc:
            await self._failed(exc)
            raise
        if response is None:
            raise ConnectionLost(f"worker {self._client.address} ended the call without an answer")
        return response

    async def _failed(self, exc: BaseException) -> None:
        address = self._client.address
        if isinstance(exc, (*TRANSPORT_ERRORS, *MISUSE_ERRORS)):
            raise self._client.lost(self.connection, exc) from exc
        if isinstance(exc, GRPCError):
            raise ProtocolError(f"worker {address} failed the call: {exc.message}") from exc
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            # The Cancel request that follows must travel behind the reset.
            self._client._cancelled_on[self._call_id] = self.connection
            await self.close(reset=True)

    async def close(self, *, reset: bool = False) -> None:
        """End the call: half-close it and wait for the worker to finish (it closes the
        generator), or reset it, which cancels the routine.

        However this ends (a failure, or a cancellation cutting the wait short), the stream
        is released: reset unless the worker ended it, and no longer counted on its
        connection. A second close while one is under way returns at once.
        """
        if self._state is not _State.OPEN:
            return
        self._state = _State.CLOSING
        ended = False
        try:
            if not reset:
                await self._stream.end()
                while await self._stream.recv_message() is not None:
                    pass
                await self._stream.__aexit__(None, None, None)
                ended = True
        except (*TRANSPORT_ERRORS, GRPCError):
            pass  # the call is over either way
        except MISUSE_ERRORS as exc:
            self._client.lost(self.connection, exc)  # logs a bug
        finally:
            try:
                if not ended:
                    # Given an exception, grpclib resets the stream if it is still open and
                    # releases it, waiting for nothing: this also runs once cancelled.
                    with contextlib.suppress(Exception):
                        await self._stream.__aexit__(ConnectionLost, _RELEASED, None)
            finally:
                self._state = _State.CLOSED
                self.connection.streams -= 1
                if self._client._streams.get(self._call_id) is self:
                    del self._client._streams[self._call_id]


_RELEASED = ConnectionLost("the call was closed")
