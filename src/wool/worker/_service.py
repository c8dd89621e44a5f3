"""The worker's side of the wire: accepts tasks, runs them, answers (on grpclib's loop)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio

from wool._errors import WoolError
from wool.discovery import WorkerMetadata
from wool.transport import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    Execution,
    Executor,
    Limits,
    Portal,
    Rejected,
    RejectedReason,
    Request,
    Response,
    Task,
    WorkerInfo,
)
from wool.worker._execute import CANCELLED, execute, failure, time_left
from wool.worker._figures import CallFigures
from wool.worker._stream import GeneratorSession

__all__ = ["WorkerService"]

log = logging.getLogger("wool.worker")


def _rejected(reason: RejectedReason, detail: str) -> Response:
    return Response(rejected=Rejected(reason=reason, detail=detail))


class _Running:
    """A call between its start and its end (and the count of its outcome)."""

    __slots__ = ("counted", "execution", "grace")

    def __init__(self, execution: Execution[Response], grace: float) -> None:
        self.execution = execution
        self.grace = grace
        # Set once the call's outcome is counted; made only when Cancel waits for it.
        self.counted: anyio.Event | None = None


class WorkerService:
    """Runs the calls a worker receives and keeps track of them until they finish."""

    def __init__(
        self,
        executor: Executor,
        portal: Portal,
        *,
        default_grace: float,
        on_stop_request: Callable[[float], None],
        concurrency: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._executor = executor
        self._portal = portal
        self.limits = limits
        self._concurrency = concurrency
        self._slots: anyio.Semaphore | None = None
        self._default_grace = default_grace
        self._on_stop_request = on_stop_request
        self._running: dict[str, _Running] = {}
        self.figures = CallFigures()
        self._stopping = False
        self._idle: anyio.Event | None = None
        self.metadata: WorkerMetadata | None = None

    async def dispatch(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except Exception as exc:  # a worker bug must still reach the caller as an answer
            log.exception("call failed inside the worker")
            return failure(WoolError(f"the worker failed the call: {exc!r}"), self.limits)

    async def _dispatch(self, request: Request) -> Response:
        received = time.monotonic()
        task = request.task
        if task is None:
            self.figures.refused()
            return _rejected(RejectedReason.MALFORMED, "the first message of a call must be a task")
        return await self._admit(
            task, received, functools.partial(execute, task, self.limits, received)
        )

    async def _admit(
        self, task: Task, received: float, run: Callable[[anyio.CancelScope], Awaitable[Response]]
    ) -> Response:
        """Run a task the worker accepts, or answer why it refuses it. ``received``: when
        the task arrived (``time.monotonic()``), where its deadline counts from."""
        refused = self._refusal(task)
        if refused is not None:
            self.figures.refused()
            return refused
        began = time.monotonic()
        try:
            response = await self._admitted(task, received, run)
        except anyio.get_cancelled_exc_class():
            self.figures.ended(CANCELLED, began, timed=False)
            raise
        except BaseException:
            self.figures.ended(None, began, timed=False)
            raise
        self.figures.ended(response, began, timed=not task.generator)
        return response

    async def _admitted(
        self, task: Task, received: float, run: Callable[[anyio.CancelScope], Awaitable[Response]]
    ) -> Response:
        if task.depth == 0 and self._concurrency is not None:
            if self._slots is None:
                self._slots = anyio.Semaphore(self._concurrency)
            self.figures.queued += 1
            try:
                await self._slots.acquire()
            finally:
                self.figures.queued -= 1
            try:
                if self._stopping:  # the worker began to stop while the call waited
                    return _rejected(RejectedReason.STOPPING, "the worker is stopping")
                left = time_left(task, received)
                if left is not None and left <= 0:
                    return _rejected(
                        RejectedReason.EXPIRED,
                        "the caller's deadline passed while the call waited for a slot",
                    )
                return await self._execute(task, run)
            finally:
                self._slots.release()
        return await self._execute(task, run)

    def _refusal(self, task: Task) -> Response | None:
        """The answer for a task that must not start, or None."""
        if task.version != PROTOCOL_VERSION:
            return _rejected(
                RejectedReason.VERSION,
                f"protocol version {task.version} is not spoken here (this worker speaks "
                f"{PROTOCOL_VERSION}); run the same wool version on callers and workers",
            )
        if self._stopping and task.depth == 0:
            # Nested calls of the calls still draining here are taken: refusing them
            # would keep their parents from finishing within the grace.
            return _rejected(RejectedReason.STOPPING, "the worker is stopping")
        if task.timeout is not None and task.timeout <= 0:
            return _rejected(
                RejectedReason.EXPIRED, "the caller's deadline passed before the call arrived"
            )
        if task.id in self._running:
            return _rejected(RejectedReason.MALFORMED, f"call id {task.id!r} is already running")
        return None

    async def stream(
        self,
        request: Request,
        receive: Callable[[], Coroutine[Any, Any, Request | None]],
        send: Callable[[Response], Coroutine[Any, Any, None]],
    ) -> None:
        try:
            final = await self._stream(request, receive, send)
        except Exception as exc:  # a worker bug must reach the caller as an answer, not a reset
            log.exception("generator call failed inside the worker")
            final = failure(WoolError(f"the worker failed the call: {exc!r}"), self.limits)
        with contextlib.suppress(Exception):  # the caller may be gone
            await send(final)

    async def _stream(
        self,
        request: Request,
        receive: Callable[[], Coroutine[Any, Any, Request | None]],
        send: Callable[[Response], Coroutine[Any, Any, None]],
    ) -> Response:
        received = time.monotonic()
        task = request.task
        if task is None:
            self.figures.refused()
            return _rejected(RejectedReason.MALFORMED, "the first message of a call must be a task")
        portal = self._portal

        # The session calls these from the worker's backend; the stream lives on grpclib's loop.
        async def receive_step() -> Request | None:
            return await portal.run(receive)

        async def send_answer(response: Response) -> None:
            await portal.run(send, response)

        session = GeneratorSession(task, self.limits, receive_step, send_answer, received)
        return await self._admit(task, received, session.run)

    async def _execute(
        self, task: Task, run: Callable[[anyio.CancelScope], Awaitable[Response]]
    ) -> Response:
        execution = self._executor.start(run, on_cancelled=CANCELLED)
        running = self._running[task.id] = _Running(execution, task.grace)
        try:
            return await execution.wait(task.grace)
        finally:
            del self._running[task.id]
            if running.counted is not None:
                # _admit counts the outcome before this loop runs anything else, so
                # an Info call made once Cancel has answered counts the call.
                running.counted.set()
            if self._idle is not None and not self._running:
                self._idle.set()

    async def cancel(self, call_id: str) -> bool:
        running = self._running.get(call_id)
        if running is None:
            return False
        if running.counted is None:  # a second Cancel of the call waits for the same
            running.counted = anyio.Event()
        running.execution.cancel()
        with anyio.move_on_after(running.grace):
            await running.execution.wait(running.grace)
            await running.counted.wait()
        return True

    def info(self) -> WorkerInfo:
        metadata, figures = self.metadata, self.figures
        assert metadata is not None
        return WorkerInfo(
            id=metadata.id,
            host=metadata.host,
            port=metadata.port,
            pid=os.getpid(),
            tags=sorted(metadata.tags),
            version=metadata.version,
            protocol=PROTOCOL_VERSION,
            backend=metadata.backend,
            running=len(self._running),
            secure=metadata.secure,
            stopping=self._stopping,
            queued=figures.queued,
            completed=figures.completed,
            failed=figures.failed,
            cancelled=figures.cancelled,
            rejected=figures.rejected,
            uptime=figures.uptime(),
            latency=figures.latency.summary(time.monotonic()),
            capacity=self._concurrency or 0,
        )

    async def stop(self, grace: float) -> None:
        self._on_stop_request(grace)

    async def drain(self, grace: float) -> None:
        """Refuse new calls, let running ones finish for ``grace`` seconds, cancel the rest."""
        self._stopping = True
        if self._running:
            log.info("draining %d running call(s), up to %g s", len(self._running), grace)
            self._idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle.wait()
        if self._running:
            log.warning("cancelling %d call(s) still running after %g s", len(self._running), grace)
            for running in list(self._running.values()):
                running.execution.cancel()
            with anyio.move_on_after(grace):
                await self._idle.wait()  # pyright: ignore[reportOptionalMemberAccess]
