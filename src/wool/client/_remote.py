"""The caller's end of one call: turning a worker's answer into a value or an exception,
and the handle on an async generator running on a worker."""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import anyio

from wool._errors import (
    ProtocolError,
    SerializationError,
    WorkerLost,
)
from wool._serialization import dumps_payload, load, loads_exception, too_large
from wool._tracebacks import raise_remote
from wool.discovery import WorkerMetadata
from wool.transport import (
    CallStream,
    ConnectionLost,
    Limits,
    RejectedReason,
    Request,
    Response,
    Step,
    StepKind,
    body_of,
)

if TYPE_CHECKING:
    from wool.client._proxy import WorkerProxy

__all__ = ["RemoteGenerator", "dumps_value", "outcome", "time_left"]

log = logging.getLogger("wool.client")


async def outcome(kind: str, body: Any, routine: str, worker: WorkerMetadata) -> Any:
    if kind == "result":
        try:
            return await load(body)
        except Exception as exc:
            raise SerializationError(
                f"the value returned by {routine!r} cannot be unpickled here: {exc}"
            ) from exc
    if kind == "failure":
        raise_remote(loads_exception(body.exception, body.type, body.message, body.traceback))
    if kind == "cancelled":
        if body.deadline:
            # The worker ran out the caller's own deadline first; the caller's scope is
            # about to expire too, and that is what the caller must see.
            deadline = anyio.current_effective_deadline()
            if deadline != float("inf"):
                await anyio.sleep_until(deadline)
                await anyio.lowlevel.checkpoint()
            raise TimeoutError(f"{routine!r} ran out of time on worker {worker.id}")
        raise WorkerLost(
            f"worker {worker.id} at {worker.address} stopped and cancelled {routine!r}",
            worker=worker.id,
            routine=routine,
        )
    if kind == "rejected":
        if body.reason == RejectedReason.EXPIRED:
            return await outcome("cancelled", _Deadline, routine, worker)
        raise ProtocolError(f"worker {worker.id} refused {routine!r}: {body.detail}")
    raise ProtocolError(f"worker {worker.id} sent an unknown answer for {routine!r}: {kind!r}")


class _Deadline:
    deadline = True


class RemoteGenerator:
    """The caller's handle on an async generator running on a worker.

    Items come in the order the generator yields them. While the caller only asks for
    the next item, the worker is granted up to ``window`` items beyond the one asked for,
    topped up as they are consumed; SEND, THROW and CLOSE are exact steps (see ``Step`` in
    the protocol).
    """

    def __init__(
        self,
        proxy: WorkerProxy,
        call: CallStream,
        routine: str,
        worker: WorkerMetadata,
        window: int,
    ) -> None:
        self._proxy = proxy
        self._call = call
        self._routine = routine
        self._worker = worker
        self._window = window
        self._buffer: deque[bytes] = deque()
        self._granted = 0  # items granted that have not arrived
        self._final: Response | None = None

    async def start(self) -> Response:
        """Ask for the first item (and the window after it); return the first answer."""
        await self._grant(self._window + 1, time_left())
        response = await self._receive()
        self._take(response)
        return response

    async def next(self) -> tuple[bool, Any]:
        while not self._buffer:
            if self._final is not None:
                return await self._conclude(self._final)
            if not self._granted:
                # The worker is idle: the first item granted is this caller's, and only
                # its step runs under this caller's deadline.
                await self._grant(self._window + 1, time_left())
            self._take(await self._receive())
        data = self._buffer.popleft()
        ahead = self._granted + len(self._buffer)
        # Top up once a quarter of the window is used: the worker keeps producing while
        # the grant travels.
        if self._final is None and self._window and ahead <= self._window - self._window // 4:
            await self._grant(self._window - ahead)
        return False, await self._load(data)

    async def control(self, kind: StepKind, value: Any = None) -> tuple[bool, Any]:
        self._buffer.clear()  # items read ahead past the point this step applies at
        self._granted = 0
        if self._final is not None:
            return self._too_late(kind, value)
        await self._send(
            Step(
                kind=kind,
                value=b"" if kind == StepKind.CLOSE else dumps_value(value, self._proxy.limits),
                timeout=time_left(),
            )
        )
        while True:
            response = await self._receive()
            if response.items is not None:
                continue  # produced before the step took effect
            if response.item is not None:
                return False, await self._load(response.item)
            self._final = response
            if self._window and not self._answers(kind, value, response):
                # The generator ended while reading ahead, before the step arrived.
                return self._too_late(kind, value)
            return await self._conclude(response)

    @staticmethod
    def _answers(kind: StepKind, value: Any, response: Response) -> bool:
        """Whether a read-ahead generator's final response is what the step did to it.

        Such a generator catches nothing at its yields: a throw it took raises the thrown
        exception, and a close it took ends it quietly."""
        if kind == StepKind.THROW:
            failed = response.failure
            return failed is not None and failed.type == _type_name(value)
        return response.exhausted is not None

    def _too_late(self, kind: StepKind, value: Any) -> tuple[bool, Any]:
        """A step for a generator that ran to its end ahead of the caller: a thrown
        exception propagates, as it would from a generator that does not catch it, and a
        close succeeds."""
        if kind == StepKind.THROW:
            raise_remote(value)
        return True, None

    async def close(self) -> None:
        """Close the remote generator; returns once its ``finally`` blocks have run."""
        await self.control(StepKind.CLOSE)

    def _take(self, response: Response) -> None:
        items = response.items
        if items is not None:
            self._buffer.extend(items.values)
            self._granted = max(0, self._granted - len(items.values))
        elif response.item is not None:
            raise ProtocolError(
                f"worker {self._worker.id} answered a step of {self._routine!r} it was not sent"
            )
        else:
            self._final = response
            self._granted = 0

    async def _conclude(self, response: Response) -> tuple[bool, Any]:
        kind, body = body_of(response)
        if kind == "exhausted":
            return True, None
        return True, await outcome(kind, body, self._routine, self._worker)

    async def _load(self, data: bytes) -> Any:
        try:
            return await load(data)
        except Exception as exc:
            raise SerializationError(
                f"a value yielded by {self._routine!r} cannot be unpickled here: {exc}"
            ) from exc

    async def _grant(self, count: int, timeout: float | None = None) -> None:
        await self._send(Step(kind=StepKind.NEXT, count=count, timeout=timeout))
        self._granted += count

    async def _send(self, step: Step) -> None:
        try:
            await self._proxy._portal.run(self._call.send, Request(step=step))
        except ConnectionLost as exc:
            raise self._proxy._lost(self._worker, self._routine, exc) from exc

    async def _receive(self) -> Response:
        try:
            return await self._proxy._portal.run(self._call.receive)
        except ConnectionLost as exc:
            raise self._proxy._lost(self._worker, self._routine, exc) from exc


def time_left() -> float | None:
    """Seconds until the current task's deadline, None without one."""
    deadline = anyio.current_effective_deadline()
    return None if deadline == math.inf else deadline - anyio.current_time()


def _type_name(value: object) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def dumps_value(value: Any, limits: Limits) -> bytes:
    try:
        data = dumps_payload(value)
    except Exception as exc:
        raise SerializationError(
            f"the value sent ({type(value).__name__}) cannot be pickled: {exc}"
        ) from exc
    if len(data) > limits.max_payload:
        raise too_large(f"the value sent ({type(value).__name__})", len(data), limits.max_payload)
    return cast(bytes, data)  # a Payload in a bytes field: see framing.split
