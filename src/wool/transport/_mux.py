"""Many coroutine calls on one long-lived HTTP/2 stream (the ``Calls`` RPC), both sides.

A new HTTP/2 stream per call costs three header blocks, stream bookkeeping and a server
task in pure Python, several times the cost of the call's own bytes. Small coroutine
calls therefore travel as entries of one long-lived stream per caller and worker, each
named by an id; what is written in one turn of the event loop goes out as one message
(``CallBatch`` one way, ``AnswerBatch`` the other).

What does not travel here keeps a stream of its own (``Dispatch``), with HTTP/2 flow
control per call: a call whose Task is larger than :data:`MAX_ENTRY` (its arguments, in
practice), and every generator call. A large argument or a fast generator thus never
stalls the small calls of this stream. A large *result* is cut into Chunk responses of at
most :data:`_ANSWER_PART` bytes, each written after the previous one went out, so the
answers of other calls interleave with it.

Cancellation is an entry too: the worker cancels the call's task (once, as grpclib
cancels the handler of a reset stream, so a cancelled routine gets its grace exactly as
with a reset) and answers ``cancelled`` when the task has ended. Losing the stream or its
connection cancels every call of the stream on the worker, and fails them on the caller.

This module runs on grpclib's loop, which is an asyncio loop whatever the host's backend:
like grpclib itself it uses asyncio's tasks and futures directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import grpclib.client
import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError, StreamTerminatedError

from wool._errors import ProtocolError, WoolError
from wool.transport._bridge import ConnectionLost
from wool.transport._channel import MISUSE_ERRORS, TRANSPORT_ERRORS, Channel
from wool.transport._framing import Assembler, Limits, encode_chunk, fixed_size, split, varint
from wool.transport._h2 import received_headers
from wool.transport._protocol.wool.v1 import (
    Answer,
    AnswerBatch,
    Call,
    CallBatch,
    CancelResponse,
    Rejected,
    RejectedReason,
    Request,
    Response,
    Task,
)
from wool.transport._wire import encode_call, encode_cancel_call, encode_response

__all__ = ["CALLS", "MAX_ENTRY", "CallsClient", "serve_calls", "task_entry"]

log = logging.getLogger("wool.transport")

CALLS = "/wool.v1.Worker/Calls"

#: Largest Task (in bytes on the wire) sent on the Calls stream; a larger call gets a
#: stream of its own. Small enough that the entries ahead of a small call are written
#: in a fraction of a millisecond.
MAX_ENTRY = 64 * 1024

# Largest part of a Response written as one entry (see the module's docstring).
_ANSWER_PART = 1024 * 1024

# Room for the entry's id and framing around an encoded Task or Response.
_ENTRY_ROOM = 32

# The tag of field 1 (length-delimited): the entries of CallBatch and AnswerBatch.
_ENTRY_TAG = b"\x0a"


def task_entry(request: Request, limits: Limits) -> Task | None:
    """The Task of ``request`` if it may travel on the Calls stream, else None."""
    task = request.task
    if task is None or task.generator:
        return None
    limit = min(MAX_ENTRY, limits.max_message) - _ENTRY_ROOM
    if len(task.arguments) + fixed_size(request) > limit:
        return None
    (whole,) = split(request, limits.max_message)  # joins segmented arguments
    return cast(Request, whole).task


def _batch(entries: list[bytes], limit: int) -> tuple[bytes, int]:
    """The leading entries that fit in one message of ``limit`` bytes (at least one),
    framed as the repeated field 1 of a batch message; and how many were taken."""
    parts: list[bytes] = []
    size = 0
    for entry in entries:
        head = _ENTRY_TAG + varint(len(entry))
        if parts and size + len(head) + len(entry) > limit:
            break
        parts.append(head)
        parts.append(entry)
        size += len(head) + len(entry)
    return b"".join(parts), len(parts) // 2


# ----------------------------------------------------------------------- the caller's side


class _Pending:
    """A call of the stream that has not ended: waiting for its response, or (once the
    caller is cancelled) for the worker's answer to its cancel."""

    __slots__ = ("assembler", "cancelling", "future")

    def __init__(self, future: asyncio.Future[Any]) -> None:
        self.future = future
        self.assembler: Assembler | None = None
        self.cancelling = False


class CallsClient:
    """The caller's side of one Calls stream (and of the connection it has to itself).

    Opens the stream at once, in the background; calls made meanwhile are queued. Once
    the stream fails (see :attr:`failure`) every call of it has failed, and the owner
    starts a new one for further calls.
    """

    def __init__(
        self,
        channel: Channel,
        *,
        address: str,
        limits: Limits,
        connect: Callable[[Channel], Awaitable[None]],
        lost: Callable[[BaseException], Exception],
    ) -> None:
        self._channel = channel
        self._address = address
        self._limits = limits
        self._connect = connect
        self._lost = lost
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, _Pending] = {}
        self._outbox: dict[int, bytes] = {}  # entries not written yet, by call id, in order
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._cancels: dict[str, asyncio.Future[bool]] = {}  # by task id, until claimed
        #: Why the stream ended (None while it works).
        self.failure: Exception | None = None
        # Not the first caller's context: the stream outlives it.
        self._runner = self._loop.create_task(self._run(), context=contextvars.Context())

    @property
    def busy(self) -> bool:
        """Calls (or the answers to their cancels) are outstanding."""
        return bool(self._pending)

    async def call(self, task: Task) -> Response:
        """Send ``task`` and return its response.

        If this is cancelled, the call is withdrawn if it was not written yet, or else a
        cancel entry follows it; :meth:`cancelled` then gives the worker's answer.
        """
        if self.failure is not None:
            raise _fresh(self.failure)
        call_id = next(self._ids)
        future: asyncio.Future[Response] = self._loop.create_future()
        pending = _Pending(future)
        self._pending[call_id] = pending
        self._put(call_id, encode_call(call_id, task))
        try:
            return await future
        except asyncio.CancelledError:
            self._cancel(call_id, pending, task.id)
            raise

    def cancelled(self, task_id: str) -> asyncio.Future[bool] | None:
        """The worker's answer to the cancel of the call of ``task_id`` (True: the routine
        was running and has finished unwinding), or None when no cancel was sent (the call
        had not been written, or had answered already). Each answer is given out once."""
        return self._cancels.pop(task_id, None)

    def _cancel(self, call_id: int, pending: _Pending, task_id: str) -> None:
        if self._pending.get(call_id) is not pending:
            return  # it answered (or failed) in the meantime
        if self._outbox.pop(call_id, None) is not None:
            del self._pending[call_id]  # never written: nothing to cancel on the worker
            return
        pending.cancelling = True
        pending.assembler = None
        answer: asyncio.Future[bool] = self._loop.create_future()
        pending.future = answer
        self._put(call_id, encode_cancel_call(call_id))
        self._cancels[task_id] = answer

    def _put(self, call_id: int, entry: bytes) -> None:
        if not self._outbox:
            self._wake.set()
        self._outbox[call_id] = entry

    async def _run(self) -> None:
        stream: grpclib.client.Stream[Any, Any] | None = None
        error: BaseException = ConnectionLost(f"the calls stream to worker {self._address} ended")
        try:
            await self._connect(self._channel)
            stream = self._channel.request(
                CALLS, grpclib.const.Cardinality.STREAM_STREAM, bytes, AnswerBatch
            )
            await stream.__aenter__()
            await stream.send_request()
            error = await self._exchange(stream)
        except asyncio.CancelledError:
            error = ConnectionLost(f"the client of worker {self._address} is closed")
            raise
        except BaseException as exc:
            error = exc
        finally:
            if stream is not None:
                error = await _finish(stream, error)
                if _unimplemented(stream, error):
                    error = _OlderWorker()
            self._fail(error)

    async def _exchange(self, stream: grpclib.client.Stream[Any, Any]) -> BaseException:
        """Write and read until either fails; what it failed with."""
        reader = self._loop.create_task(self._read(stream))
        writer = self._loop.create_task(self._write(stream))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            writer.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({reader, writer})  # cancelled: they end at once
            for task in (reader, writer):
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the first failure is the one reported
        first = next(iter(done))
        ended = ConnectionLost(f"worker {self._address} ended the calls stream")
        return ended if first.cancelled() else first.exception() or ended

    async def _write(self, stream: grpclib.client.Stream[Any, Any]) -> None:
        limit = self._limits.max_message
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            entries = list(self._outbox.values())
            message, taken = _batch(entries, limit)
            if taken == len(entries):
                self._outbox.clear()
            else:
                ids = list(self._outbox)[taken:]
                self._outbox = {call_id: self._outbox[call_id] for call_id in ids}
            await stream.send_message(message)

    async def _read(self, stream: grpclib.client.Stream[Any, Any]) -> None:
        while True:
            batch = await stream.recv_message()
            if batch is None:
                return
            for answer in batch.answers:
                self._answer(answer)

    def _answer(self, answer: Answer) -> None:
        pending = self._pending.get(answer.id)
        if pending is None:
            raise ProtocolError(
                f"worker {self._address} answered call {answer.id}, which is not in flight "
                "on its calls stream"
            )
        if answer.cancelled is not None:
            if not pending.cancelling:
                raise ProtocolError(
                    f"worker {self._address} answered a cancel of call {answer.id}, which "
                    "was not cancelled"
                )
            del self._pending[answer.id]
            _settle(pending.future, answer.cancelled.cancelled)
            return
        response = answer.response
        if response is None:
            raise ProtocolError(
                f"worker {self._address} sent an answer to call {answer.id} with no body"
            )
        if pending.cancelling:
            return  # the caller is gone; the answer to its cancel follows
        if response.chunk is not None or pending.assembler is not None:
            if pending.assembler is None:
                pending.assembler = Assembler(self._limits.max_payload)
            whole = pending.assembler.add(response)
            if whole is None:
                return
            response = whole
        del self._pending[answer.id]
        _settle(pending.future, response)

    def _fail(self, exc: BaseException) -> None:
        """Fail every outstanding call with the error for ``exc``."""
        error = self.failure = self._error(exc)
        pending, self._pending = self._pending, {}
        self._outbox.clear()
        for entry in pending.values():
            if entry.cancelling:
                # Whatever the routine's state, nothing more can be done about it here
                # (a lost stream cancels it on the worker).
                _settle(entry.future, False)
            elif isinstance(exc, _OlderWorker):
                _settle(entry.future, self._older_worker())
            elif not entry.future.done():
                entry.future.set_exception(_fresh(error))

    def _error(self, exc: BaseException) -> Exception:
        if isinstance(exc, _OlderWorker):
            return ProtocolError(f"worker {self._address} speaks an older protocol")
        if isinstance(exc, GRPCError):
            error: Exception = ProtocolError(
                f"worker {self._address} ended the calls stream: {exc.status.name}"
                f"{': ' + exc.message if exc.message else ''}"
            )
            error.__cause__ = exc
            return error
        if isinstance(exc, (*TRANSPORT_ERRORS, *MISUSE_ERRORS)):
            error = self._lost(exc)
            error.__cause__ = exc
            return error
        if isinstance(exc, Exception):
            if not isinstance(exc, WoolError):
                log.error("calls stream to worker %s failed", self._address, exc_info=exc)
            return exc
        # A cancellation nobody asked for (grpclib can leak one when a connection closes).
        return ConnectionLost(f"the calls stream to worker {self._address} ended: {exc!r}")

    def _older_worker(self) -> Response:
        return Response(
            rejected=Rejected(
                reason=RejectedReason.VERSION,
                detail=f"worker {self._address} has no Calls stream: it speaks an older "
                "protocol; run the same wool version on callers and workers",
            )
        )

    def close(self) -> None:
        """Stop the stream; its outstanding calls fail with ConnectionLost."""
        self._runner.cancel()


class _OlderWorker(Exception):
    """The worker has no Calls stream."""


def _unimplemented(stream: grpclib.client.Stream[Any, Any], exc: BaseException) -> bool:
    """Whether ``exc`` says that the worker has no Calls RPC (it speaks an older protocol).

    grpclib's server answers an unknown method with status UNIMPLEMENTED in headers that
    lack a content type, and grpclib's client reports that as UNKNOWN ("Missing
    content-type header"): the status is then read from the headers themselves.
    """
    if not isinstance(exc, GRPCError):
        return False
    if exc.status is grpclib.const.Status.UNIMPLEMENTED:
        return True
    status = received_headers(stream).get("grpc-status")
    return status == str(grpclib.const.Status.UNIMPLEMENTED.value)


def _fresh(error: Exception) -> Exception:
    """A copy of ``error`` for one caller: an exception raised by many tasks would collect
    all of their tracebacks."""
    fresh = copy.copy(error)
    fresh.__cause__ = error.__cause__
    fresh.__traceback__ = None
    return fresh


async def _finish(stream: grpclib.client.Stream[Any, Any], error: BaseException) -> BaseException:
    """Release ``stream`` (resetting it if it is still open); the error the calls failed
    with: the worker's status, if it ended the stream with one."""
    terminated = error if isinstance(error, StreamTerminatedError) else StreamTerminatedError()
    try:
        # With StreamTerminatedError, grpclib raises the status the worker ended with.
        await stream.__aexit__(StreamTerminatedError, terminated, None)
    except GRPCError as status:
        if not isinstance(error, GRPCError):
            return status
    except Exception:  # the stream is released either way
        pass
    return error


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


# ----------------------------------------------------------------------- the worker's side


async def serve_calls(
    stream: grpclib.server.Stream[Any, Any],
    dispatch: Callable[[Request], Awaitable[Response]],
    limits: Limits,
) -> None:
    """Serve one Calls stream until the caller ends it (then its calls finish and answer)
    or it is lost (then its calls are cancelled).

    Raises:
        GRPCError: INVALID_ARGUMENT, when the caller sent an entry that breaks the
            protocol; the stream's calls are cancelled first.
    """
    calls = _ServedCalls(stream, dispatch, limits)
    handler = asyncio.current_task()
    assert handler is not None
    writer = asyncio.get_running_loop().create_task(calls.write())

    def write_failed(_: asyncio.Task[None]) -> None:
        # A stream that cannot be written to is lost: stop serving it, cancelling its calls.
        handler.cancel()

    writer.add_done_callback(write_failed)
    try:
        try:
            await calls.read()
        except ProtocolError as exc:
            log.warning("a caller broke the calls protocol: %s", exc)
            calls.cancel_all()
            await calls.settle()
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, str(exc)) from exc
        except BaseException:
            calls.cancel_all()
            await calls.settle()
            raise
        await calls.settle()  # the caller ended its side: finish, answer, end
        await calls.flushed()
    finally:
        writer.remove_done_callback(write_failed)
        writer.cancel()
        if writer.done() and not writer.cancelled():
            log.debug("a calls stream could not be written to: %r", writer.exception())


class _ServedCalls:
    def __init__(
        self,
        stream: grpclib.server.Stream[Any, Any],
        dispatch: Callable[[Request], Awaitable[Response]],
        limits: Limits,
    ) -> None:
        self._stream = stream
        self._dispatch = dispatch
        self._limits = limits
        self._loop = asyncio.get_running_loop()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._cancelling: set[int] = set()  # calls whose caller sent a cancel
        self._last_id = 0
        self._outbox: list[bytes] = []
        self._queued = 0  # entries ever queued
        self._written = 0  # entries ever written
        self._wake = asyncio.Event()
        self._progress: asyncio.Future[None] | None = None
        self._part = min(_ANSWER_PART, limits.max_message) - _ENTRY_ROOM

    async def read(self) -> None:
        while True:
            batch: CallBatch | None = await self._stream.recv_message()
            if batch is None:
                return
            for call in batch.calls:
                self._take(call)

    def _take(self, call: Call) -> None:
        if call.task is not None:
            self._start(call.id, call.task)
        elif call.cancel is not None:
            self._cancel(call.id)
        else:
            raise ProtocolError(f"the entry for call {call.id} has neither a task nor a cancel")

    def _start(self, call_id: int, task: Task) -> None:
        if call_id <= self._last_id:
            raise ProtocolError(
                f"call id {call_id} does not follow {self._last_id}: the ids of a calls "
                "stream increase"
            )
        self._last_id = call_id
        if task.generator:
            self._put(
                _answer_entry(
                    call_id,
                    Response(
                        rejected=Rejected(
                            reason=RejectedReason.MALFORMED,
                            detail="a generator call cannot travel on the calls stream",
                        )
                    ),
                )
            )
            return
        running = self._loop.create_task(self._run(call_id, task))
        self._running[call_id] = running
        running.add_done_callback(functools.partial(self._ended, call_id))

    def _cancel(self, call_id: int) -> None:
        if call_id > self._last_id:
            raise ProtocolError(f"cancel of call {call_id}, which was never started")
        if call_id in self._cancelling:
            raise ProtocolError(f"call {call_id} was cancelled twice")
        running = self._running.get(call_id)
        if running is None:  # it has answered already
            self._put(_cancelled_entry(call_id, False))
            return
        self._cancelling.add(call_id)
        running.cancel()  # once, as grpclib cancels the handler of a reset stream

    async def _run(self, call_id: int, task: Task) -> None:
        response = await self._dispatch(Request(task=task))
        parts = cast(list[Response], split(response, self._part))
        for part in parts[:-1]:
            # One part at a time: the other calls' answers go out in between.
            await self._written_up_to(self._put(_answer_entry(call_id, part)))
        self._put(_answer_entry(call_id, parts[-1]))

    def _ended(self, call_id: int, running: asyncio.Task[None]) -> None:
        del self._running[call_id]
        if call_id in self._cancelling:
            self._cancelling.discard(call_id)
            self._put(_cancelled_entry(call_id, running.cancelled()))
            return
        failed = None if running.cancelled() else running.exception()
        if failed is not None:  # a bug in wool: the caller must still get an answer
            log.error("call %d of a calls stream failed", call_id, exc_info=failed)
            detail = f"the worker failed to answer: {failed!r}"
            self._put(_answer_entry(call_id, Response(rejected=Rejected(detail=detail))))

    def cancel_all(self) -> None:
        for running in self._running.values():
            running.cancel()
        self._cancelling.clear()  # nobody to answer: the stream is gone

    async def settle(self) -> None:
        """Wait for every call to end (a cancelled one ends within its grace), through
        further cancellations of this task."""
        while self._running:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(set(self._running.values()))

    async def flushed(self) -> None:
        await self._written_up_to(self._queued)

    def _put(self, entry: bytes) -> int:
        """Queue ``entry``; its number, for :meth:`_written_up_to`."""
        if not self._outbox:
            self._wake.set()
        self._outbox.append(entry)
        self._queued += 1
        return self._queued

    async def _written_up_to(self, number: int) -> None:
        while self._written < number:
            if self._progress is None:
                self._progress = self._loop.create_future()
            await asyncio.shield(self._progress)

    async def write(self) -> None:
        limit = self._limits.max_message
        while True:
            while not self._outbox:
                self._wake.clear()
                await self._wake.wait()
            message, taken = _batch(self._outbox, limit)
            del self._outbox[:taken]
            await self._stream.send_message(message)
            self._written += taken
            progress, self._progress = self._progress, None
            if progress is not None:
                progress.set_result(None)


def _answer_entry(call_id: int, response: Response) -> bytes:
    # Answer{id, response} by hand: a Chunk's bytes are encoded once, without the copies
    # betterproto makes of a nested bytes field.
    body = encode_chunk(response) or encode_response(response) or bytes(response)
    return b"".join((b"\x08", varint(call_id), b"\x12", varint(len(body)), body))


def _cancelled_entry(call_id: int, cancelled: bool) -> bytes:
    return bytes(Answer(id=call_id, cancelled=CancelResponse(cancelled=cancelled)))
