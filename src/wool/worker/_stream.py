"""An async generator routine on a worker, driven by its caller's Steps.

The whole call runs as one execution on the worker's backend. Three tasks share it:

- the *producer* runs the generator: one step per item the caller granted (NEXT), and
  SEND, THROW and CLOSE exactly when they come, before any further step;
- the *reader* takes the caller's Steps off the stream;
- the *sender* ships produced items in batches while the generator runs on: whatever
  accumulated while the last batch was being sent goes out as the next one.

The worker never holds more items than the caller granted, so memory stays bounded
however slowly the caller consumes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio

from wool._serialization import Payload, loads
from wool.transport import Items, Limits, Request, Response, Step, StepKind, Task
from wool.worker._execute import (
    EXHAUSTED,
    deadline_of,
    failure,
    load_call,
    pickle_value,
    run_in,
)

__all__ = ["GeneratorSession"]

log = logging.getLogger("wool.worker")

Receive = Callable[[], Awaitable[Request | None]]
Send = Callable[[Response], Awaitable[None]]

_CUT_SHORT = object()

# Protobuf framing of one value in an Items message, counted against a batch's size.
_VALUE_OVERHEAD = 8


class GeneratorSession:
    """Runs one generator call; :meth:`run` returns the final Response to send.

    ``receive`` and ``send`` move messages over the call's stream (they are called from
    the worker's backend).
    """

    def __init__(self, task: Task, limits: Limits, receive: Receive, send: Send) -> None:
        self._task = task
        self._limits = limits
        self._receive = receive
        self._send = send
        self._agen: Any = None
        self._credit = 0
        self._control: Step | None = None
        self._caller_gone = False
        self._stepping: anyio.CancelScope | None = None
        self._outbox: list[Payload] = []
        self._outbox_bytes = 0

    async def run(self, scope: anyio.CancelScope) -> Response:
        # Created here, in the worker's backend (the session is made on grpclib's loop).
        self._wakeup = anyio.Event()
        self._outbox_ready = anyio.Event()
        self._sending = anyio.Lock()
        try:
            return await run_in(
                scope, self._task, deadline_of(self._task), self._serve, self._limits
            )
        finally:
            await self._close_generator()

    async def _serve(self) -> Response:
        run, args, kwargs = load_call(self._task)
        self._agen = run(*args, **kwargs)
        final = EXHAUSTED
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_steps)
            tg.start_soon(self._send_batches)
            final = await self._produce()
            await self._deliver()
            tg.cancel_scope.cancel()
        return final

    async def _produce(self) -> Response:
        """Run the generator as granted; the final Response once it is done."""
        try:
            while True:
                while not (self._may_step() or self._control or self._caller_gone):
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                if self._caller_gone:
                    return EXHAUSTED  # nobody reads it; the generator is closed after
                step, self._control = self._control, None
                if step is None:
                    self._credit -= 1
                    final = await self._read_ahead()
                else:
                    self._credit = 0  # the caller dropped what it had granted
                    final = await self._apply(step)
                if final is not None:
                    return final
        except StopAsyncIteration:
            return EXHAUSTED
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            return failure(exc, self._limits)

    def _may_step(self) -> bool:
        # Items are granted by count; what waits to be sent is also bounded in bytes, so
        # a window of large items cannot pile up here while the caller is slow.
        return self._credit > 0 and self._outbox_bytes < self._limits.max_message

    async def _read_ahead(self) -> Response | None:
        item: Any = _CUT_SHORT
        with anyio.CancelScope() as self._stepping:
            item = await self._agen.__anext__()
        self._stepping = None
        if item is _CUT_SHORT:
            # Cancelled at an await, the generator has finished: a THROW or CLOSE that cut
            # it short has nothing left to apply to (the caller takes it as too late).
            return EXHAUSTED
        if self._caller_gone or self._closing:
            return None  # nobody will read this item
        data = pickle_value(self._task, item, self._limits, what="a value yielded by")
        if isinstance(data, Response):
            return data
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self._outbox_ready.set()
        return None

    async def _apply(self, step: Step) -> Response | None:
        agen = self._agen
        if step.kind == StepKind.CLOSE:
            await agen.aclose()
            return EXHAUSTED
        value = loads(step.value)
        if step.kind == StepKind.THROW:
            item = await agen.athrow(value)
        else:
            item = await agen.asend(value)
        data = pickle_value(self._task, item, self._limits, what="a value yielded by")
        if isinstance(data, Response):
            return data
        await self._deliver(Response(item=cast(bytes, data)))  # see execute()
        return None

    async def _read_steps(self) -> None:
        while True:
            try:
                message = await self._receive()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                log.debug("call %s: reading steps failed: %r", self._task.id, exc)
                message = None
            step = None if message is None else message.step
            if step is None:
                # The caller half-closed (it is done), or broke the protocol.
                self._caller_gone = True
                self._cut_step_short()
                self._wakeup.set()
                return
            if step.kind == StepKind.NEXT:
                self._credit += max(step.count, 1)
            else:
                # A step run ahead must not delay an exact one: the caller is at an
                # earlier yield than the one the generator is heading for.
                self._control = step
                if step.kind != StepKind.SEND:
                    self._cut_step_short()
            self._wakeup.set()

    @property
    def _closing(self) -> bool:
        return self._control is not None and self._control.kind == StepKind.CLOSE

    def _cut_step_short(self) -> None:
        # A step run ahead of the caller must not keep a closing caller waiting.
        if self._stepping is not None:
            self._stepping.cancel()

    async def _send_batches(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = anyio.Event()
            await self._deliver()

    async def _deliver(self, answer: Response | None = None) -> None:
        """Send the items produced so far, then ``answer``."""
        async with self._sending:
            try:
                while self._outbox:
                    batch = self._next_batch()
                    size = sum(map(len, batch))  # before sending: chunking changes the batch
                    await self._send(Response(items=Items(values=cast(list[bytes], batch))))
                    self._outbox_bytes -= size
                    self._wakeup.set()
                if answer is not None:
                    await self._send(answer)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                log.debug("call %s: sending failed: %r", self._task.id, exc)
                self._outbox.clear()
                self._outbox_bytes = 0
                self._caller_gone = True
                self._cut_step_short()
                self._wakeup.set()

    def _next_batch(self) -> list[Payload]:
        room = self._limits.max_message // 2
        size = 0
        for count, value in enumerate(self._outbox):
            size += len(value) + _VALUE_OVERHEAD
            if size > room and count:
                break
        else:
            count = len(self._outbox)
        batch, self._outbox = self._outbox[:count], self._outbox[count:]
        return batch

    async def _close_generator(self) -> None:
        """Close the generator (its finally blocks run), waiting up to the call's grace."""
        if self._agen is None:
            return
        with anyio.CancelScope(shield=True) as scope:
            grace = self._task.grace
            scope.deadline = anyio.current_time() + (grace if math.isfinite(grace) else 0)
            try:
                await self._agen.aclose()
            except BaseException as exc:
                log.warning("closing generator %s raised %r", self._task.routine, exc)
