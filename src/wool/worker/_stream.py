"""An async generator routine on a worker, driven by its caller's Steps.

The generator runs the way trio's ``as_safe_channel`` runs one: every step of it is taken
by one task of its own (the *driver*), with no cancel scope wrapped around a step, so the
generator's own cancel scopes and task groups nest as they do locally, across its yields
too. Two more tasks share the call:

- the *reader* takes the caller's Steps off the stream: NEXT grants items, SEND, THROW and
  CLOSE are exact;
- the *sender* ships produced items in batches while the generator runs on (whatever
  accumulated while the last batch was being sent goes out as the next one), then the
  answers to exact steps.

The driver runs ahead of the caller only as far as the caller granted, so memory stays
bounded however slowly the caller consumes. An exact step that arrives while a granted
step runs ahead waits for that step to reach its ``yield`` and is applied there, as Python
applies it locally; only when the call's grace runs out is the step cancelled. Each step
runs under the deadline of the caller waiting for it, and only that step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio

from wool._serialization import Payload, load
from wool.events._observe import step_completed, step_started
from wool.transport import Cancelled, Items, Limits, Request, Response, Step, StepKind, Task
from wool.worker._execute import EXHAUSTED, deadline_of, failure, load_call, pickle_value, run_in

__all__ = ["GeneratorSession"]

log = logging.getLogger("wool.worker")

Receive = Callable[[], Awaitable[Request | None]]
Send = Callable[[Response], Awaitable[None]]

_NOTHING = object()

# Protobuf framing of one value in an Items message, counted against a batch's size.
_VALUE_OVERHEAD = 8


class GeneratorSession:
    """Runs one generator call; :meth:`run` returns the final Response to send.

    ``receive`` and ``send`` move messages over the call's stream (they are called from
    the worker's backend).
    """

    def __init__(
        self, task: Task, limits: Limits, receive: Receive, send: Send, received: float
    ) -> None:
        self._task = task
        self._received = received
        self._limits = limits
        self._receive = receive
        self._send = send
        self._agen: Any = None
        self._credit = 0
        self._control: Step | None = None
        self._next_deadline: float | None = None  # of the caller waiting for the next item
        self._caller_gone = False
        self._stepping = False
        self._steps = 0  # steps taken so far: names the one in progress
        self._cut_short = False  # a step was cancelled because its grace ran out
        self._held: Any = _NOTHING  # an item yielded between steps, for the next grant
        self._outbox: list[Payload] = []
        self._outbox_bytes = 0
        self._answer: Response | None = None

    async def run(self, scope: anyio.CancelScope) -> Response:
        # Created here, in the worker's backend (the session is made on grpclib's loop).
        self._scope = scope
        self._driving = anyio.CancelScope()
        self._wakeup = anyio.Event()
        self._outbox_ready = anyio.Event()
        self._sending = anyio.Lock()
        # The first step, sent with the task, may have waited here for a slot: its
        # deadline counts from the task's arrival.
        self._first_deadline = deadline_of(self._task, self._received)
        # No deadline for the whole call: each step carries its caller's (Step.timeout).
        return await run_in(scope, self._task, None, self._serve, self._limits)

    async def _serve(self) -> Response:
        run, args, kwargs = await load_call(self._task)
        self._agen = run(*args, **kwargs)
        final = EXHAUSTED
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._read_steps)
            tg.start_soon(self._send_batches)
            final = await self._drive()
            await self._deliver()
            tg.cancel_scope.cancel()
        return final

    async def _drive(self) -> Response:
        """Take every step of the generator, in this task; the final Response."""
        with self._driving:
            try:
                return await self._take_steps()
            finally:
                await self._close_generator()
        # The driving scope ended a step: its grace ran out, or its caller's deadline.
        if self._cut_short:
            return EXHAUSTED
        return Response(cancelled=Cancelled(deadline=True))

    async def _take_steps(self) -> Response:
        try:
            while True:
                order = await self._order()
                if self._caller_gone:
                    return EXHAUSTED  # nobody reads on; the generator is closed after
                if order is None:
                    self._credit -= 1
                    final = self._produced(await self._next_item())
                else:
                    self._credit = 0  # the caller dropped what it had granted
                    final = await self._apply(order)
                if final is not None:
                    return final
        except StopAsyncIteration:
            return EXHAUSTED
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            return failure(exc, self._limits)

    async def _order(self) -> Step | None:
        """Wait for what to do next: an exact step, or None for the next granted item."""
        while not (self._may_step() or self._control or self._caller_gone):
            self._wakeup = anyio.Event()
            try:
                await self._wakeup.wait()
            except anyio.get_cancelled_exc_class() as exc:
                outer = (self._scope, self._driving, self._tg.cancel_scope)
                if any(scope.cancel_called for scope in outer):
                    raise
                # A scope the generator left open across its yield was cancelled (its
                # deadline passed, a task of its task group failed): thrown in at the
                # yield, so that the scope handles it, as as_safe_channel does.
                self._held = await self._step(self._agen.athrow(exc), None)
        step, self._control = self._control, None
        return step

    def _may_step(self) -> bool:
        # Items are granted by count; what waits to be sent is also bounded in bytes, so
        # a window of large items cannot pile up here while the caller is slow.
        return self._credit > 0 and self._outbox_bytes < self._limits.max_message

    async def _next_item(self) -> Any:
        if self._held is not _NOTHING:
            item, self._held = self._held, _NOTHING
            return item
        deadline, self._next_deadline = self._next_deadline, None
        return await self._step(self._agen.__anext__(), deadline)

    def _produced(self, item: Any) -> Response | None:
        if self._control is not None or self._caller_gone:
            return None  # run ahead of an exact step or a gone caller: nobody takes it
        data = pickle_value(self._task, item, self._limits, what="a value yielded by")
        if isinstance(data, Response):
            return data
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        self._outbox_ready.set()
        return None

    async def _apply(self, step: Step) -> Response | None:
        agen = self._agen
        self._held = _NOTHING  # the step applies at the yield that produced it
        deadline = None if step.timeout is None else anyio.current_time() + step.timeout
        if step.kind == StepKind.CLOSE:
            await self._step(agen.aclose(), deadline, iteration=False)
            return EXHAUSTED
        value = await load(step.value)
        if step.kind == StepKind.THROW:
            item = await self._step(agen.athrow(value), deadline)
        else:
            item = await self._step(agen.asend(value), deadline)
        data = pickle_value(self._task, item, self._limits, what="a value yielded by")
        if isinstance(data, Response):
            return data
        # Sent by the sender, after the items produced before it: the driver awaits
        # nothing between steps but the next order (see _order).
        self._answer = Response(item=cast(bytes, data))  # a Payload: see execute()
        self._outbox_ready.set()
        return None

    async def _step(
        self, step: Awaitable[Any], deadline: float | None, *, iteration: bool = True
    ) -> Any:
        """One step of the generator, under the deadline of the caller waiting for it.

        The deadline is set on the driving scope, entered once for the whole call: a scope
        around each step would interleave with the scopes the generator leaves open.
        ``iteration``: the step resumes the generator for an item (a close is no iteration).
        """
        self._steps += 1
        self._stepping = True
        if deadline is not None:
            self._driving.deadline = deadline
        observed = iteration and step_started(self._task, self._steps)
        raised: BaseException | None = None
        try:
            return await step
        except BaseException as exc:
            raised = exc
            raise
        finally:
            self._stepping = False
            if deadline is not None:
                self._driving.deadline = math.inf
            if observed:
                step_completed(self._task, self._steps, raised)
            del raised  # no cycle through the traceback

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
                self._cancel_step()
                self._wakeup.set()
                return
            if step.kind == StepKind.NEXT:
                self._credit += max(step.count, 1)
                if step.timeout is not None:
                    self._next_deadline = anyio.current_time() + step.timeout
                if self._first_deadline is not None:
                    first, self._first_deadline = self._first_deadline, None
                    self._next_deadline = min(self._next_deadline or math.inf, first)
            else:
                self._control = step
                if self._stepping:
                    # A step run ahead: the exact one applies at the yield it reaches.
                    self._tg.start_soon(self._cut_after_grace, self._steps)
            self._wakeup.set()

    async def _cut_after_grace(self, step: int) -> None:
        grace = self._task.grace
        if not math.isfinite(grace):
            return
        await anyio.sleep(grace)
        if self._stepping and self._steps == step:
            log.info(
                "call %s: a step of %s did not reach its yield within the grace of %g s; "
                "cancelling it",
                self._task.id,
                self._task.routine,
                grace,
            )
            self._cancel_step()

    def _cancel_step(self) -> None:
        if self._stepping:
            self._cut_short = True
            self._driving.cancel()

    async def _send_batches(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready = anyio.Event()
            await self._deliver()

    async def _deliver(self) -> None:
        """Send the items produced so far, then the answer to an exact step, if any."""
        async with self._sending:
            try:
                while self._outbox:
                    batch = self._next_batch()
                    size = sum(map(len, batch))  # before sending: chunking changes the batch
                    await self._send(Response(items=Items(values=cast(list[bytes], batch))))
                    self._outbox_bytes -= size
                    self._wakeup.set()
                answer, self._answer = self._answer, None
                if answer is not None:
                    await self._send(answer)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                log.debug("call %s: sending failed: %r", self._task.id, exc)
                self._outbox.clear()
                self._outbox_bytes = 0
                self._caller_gone = True
                self._cancel_step()
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
        """Close a generator left at a yield, in the driver, for up to the call's grace.

        Its finally blocks run as they would locally: with their awaits intact, or under
        the cancellation of a cancelled call (shielded cleanup still runs)."""
        agen = self._agen
        if agen is None or agen.ag_frame is None:
            return  # never made, or finished
        if not self._driving.cancel_called:
            self._driving.deadline = anyio.current_time() + self._task.grace
        try:
            await agen.aclose()
        except anyio.get_cancelled_exc_class():
            log.debug("call %s: closing %s was cancelled", self._task.id, self._task.routine)
        except BaseException as exc:
            log.warning("closing generator %s raised %r", self._task.routine, exc)
