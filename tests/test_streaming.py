"""Read-ahead, flow control and large payloads of routines, end to end on both backends."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import re
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wool
from wool import _serialization
from wool._serialization import Segments, dumps_payload, load, loads, unpack
from wool.transport._channel import send
from wool.transport._framing import Assembler, Limits, split
from wool.transport._grpc import _Codec  # pyright: ignore[reportPrivateUsage]
from wool.transport._h2 import MAX_FRAME_SIZE
from wool.transport._protocol.wool.v1 import Chunk, Request, Response, Task

from .semantics_routines import lines, note, until_noted
from .stream_routines import (
    LargeError,
    accumulate,
    countdown,
    counted,
    counted_lockstep,
    echo,
    echo_sends,
    fail_with,
    gated,
    make_bytes,
    payloads,
    pid,
    raises_late,
    small_items,
    stuck_after_first,
)
from .test_generators import Op, play

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def produced(path: Path) -> int:
    return int(path.read_text() or 0) if path.exists() else 0


async def wait_for_count(path: Path, count: int, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while produced(path) < count:
            await anyio.sleep(0.01)


# Read-ahead


async def test_iteration_reads_ahead_up_to_the_window(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with wool.WorkerPool(size=1):
        gen = counted(100, str(count))
        assert await gen.__anext__() == 0
        await wait_for_count(count, 5)  # the item asked for and a window of 4
        await gen.aclose()  # applied at the yield the worker stopped at
        assert produced(count) == 5  # it ran no further than granted


async def test_the_window_is_topped_up_as_items_are_taken(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with wool.WorkerPool(size=1):
        gen = counted(100, str(count))
        assert [await gen.__anext__() for _ in range(5)] == [0, 1, 2, 3, 4]
        await wait_for_count(count, 5 + 2)  # topped up once a quarter of the window was used
        await gen.aclose()
        assert produced(count) <= 5 + 4  # never more than the items taken and the window


async def test_prefetch_zero_steps_in_lock_step(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with wool.WorkerPool(size=1):
        gen = counted_lockstep(100, str(count))
        assert await gen.__anext__() == 0
        assert await gen.__anext__() == 1
        await gen.aclose()  # applied at the yield the worker stopped at
        assert produced(count) == 2


async def test_a_generator_that_takes_sends_never_runs_ahead(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with wool.WorkerPool(size=1):
        gen = accumulate(str(count))
        assert await gen.__anext__() == 0
        for value, total in [(5, 5), (10, 15), (1, 16)]:
            assert await gen.asend(value) == total
        await gen.aclose()
        assert produced(count) == 4  # one step per item taken: nothing ran ahead


READ_AHEAD_SCRIPTS: dict[str, list[Op]] = {
    "iterate past the end": [("anext",)] * 6,
    "sends are ignored": [("anext",), ("asend", "x"), ("asend", None), ("anext",)],
    "throw after reading ahead": [("anext",), ("athrow", ValueError("v")), ("anext",)],
    "close after reading ahead": [("anext",), ("anext",), ("aclose",), ("anext",)],
    "throw after the end was read ahead": [
        ("anext",),
        ("anext",),
        ("anext",),
        ("anext",),
        ("athrow", KeyError("k")),
        ("anext",),
    ],
}


@pytest.mark.parametrize("name", list(READ_AHEAD_SCRIPTS))
async def test_a_read_ahead_generator_matches_the_local_one(name: str, tmp_path: Path) -> None:
    script = READ_AHEAD_SCRIPTS[name]
    local_marker, remote_marker = tmp_path / "local", tmp_path / "remote"
    local = await play(countdown.__wrapped__(4, str(local_marker)), script)  # type: ignore[attr-defined]
    async with wool.WorkerPool(size=1):
        remote = await play(countdown(4, str(remote_marker)), script)
        with anyio.fail_after(5):  # the remote finally runs on close or exhaustion
            while not remote_marker.exists():
                await anyio.sleep(0.01)
    assert remote == local
    assert remote_marker.read_text() == local_marker.read_text() == "finally;"


RAISES_LATE_SCRIPTS: dict[str, list[Op]] = {
    "iterate into the error": [("anext",), ("anext",), ("anext",), ("anext",)],
    "close before the error": [("anext",), ("aclose",), ("anext",)],
    "throw before the error": [("anext",), ("athrow", KeyError("k")), ("anext",)],
}


@pytest.mark.parametrize("name", list(RAISES_LATE_SCRIPTS))
async def test_a_generator_that_failed_ahead_matches_the_local_one(
    name: str, tmp_path: Path
) -> None:
    script = RAISES_LATE_SCRIPTS[name]
    local = await play(raises_late.__wrapped__(str(tmp_path / "l")), script)  # type: ignore[attr-defined]
    async with wool.WorkerPool(size=1):
        remote = await play(raises_late(str(tmp_path / "r")), script)
    assert remote == local


async def test_closing_waits_for_a_read_ahead_step_to_reach_its_yield(tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), tmp_path / "gate"
    async with wool.WorkerPool(size=1):
        gen = gated(log, str(gate))
        assert await gen.__anext__() == 1
        await until_noted(log, "step 2 began")  # read ahead: the worker is inside step 2

        async def close() -> None:
            await gen.aclose()
            note(log, "aclose returned")

        async with anyio.create_task_group() as tg:
            tg.start_soon(close)
            await anyio.sleep(0.2)  # lets the CLOSE reach the worker first (not asserted)
            note(log, "gate opened")
            gate.touch()
    # Applied at the yield the step reached, as locally: the finally's awaits ran.
    assert lines(log) == [
        "step 2 began",
        "gate opened",
        "reached yield 2",
        "finally",
        "cleanup awaited",
        "aclose returned",
    ]


async def test_throwing_waits_for_a_read_ahead_step_to_reach_its_yield(tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), tmp_path / "gate"
    async with wool.WorkerPool(size=1):
        gen = gated(log, str(gate))
        assert await gen.__anext__() == 1
        await until_noted(log, "step 2 began")

        async def throw() -> None:
            with pytest.raises(KeyError):  # as locally: it catches nothing at its yields
                await gen.athrow(KeyError("k"))
            note(log, "athrow raised")

        async with anyio.create_task_group() as tg:
            tg.start_soon(throw)
            await anyio.sleep(0.2)  # lets the THROW reach the worker first (not asserted)
            note(log, "gate opened")
            gate.touch()
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
    assert lines(log) == [
        "step 2 began",
        "gate opened",
        "reached yield 2",
        "finally",
        "cleanup awaited",
        "athrow raised",
    ]


async def test_a_read_ahead_step_is_cancelled_once_the_grace_runs_out(tmp_path: Path) -> None:
    log, gate = str(tmp_path / "log"), tmp_path / "gate"
    async with wool.WorkerPool(size=1, grace=0.5):
        gen = gated(log, str(gate))  # the gate never opens
        assert await gen.__anext__() == 1
        await until_noted(log, "step 2 began")
        with anyio.fail_after(10):
            await gen.aclose()
        note(log, "aclose returned")
    # The step never reached its yield: it was cancelled, and its finally ran cancelled.
    assert lines(log) == [
        "step 2 began",
        "finally",
        "cleanup cancelled",
        "shielded cleanup ran",
        "aclose returned",
    ]


async def test_read_ahead_on_a_trio_worker(tmp_path: Path) -> None:
    count = tmp_path / "count"
    async with wool.WorkerPool(size=1, backend="trio"):
        gen = counted(100, str(count))
        assert await gen.__anext__() == 0
        await wait_for_count(count, 5)
        assert [item async for item in gen] == list(range(1, 100))


async def test_a_worker_killed_mid_stream_fails_the_consumer_promptly(tmp_path: Path) -> None:
    import os
    import signal

    async with wool.WorkerPool(size=1):
        worker = await pid()
        gen = stuck_after_first(str(tmp_path / "m"))
        assert await gen.__anext__() == 1
        os.kill(worker, signal.SIGKILL)
        with anyio.fail_after(5), pytest.raises(wool.WorkerLost, match="stuck_after_first"):
            await gen.__anext__()
        with anyio.fail_after(30):  # the pool replaces the worker and keeps serving
            assert await echo(b"after") == b"after"


def test_prefetch_is_checked() -> None:
    for bad in (-1, 1.5, True, 1 << 21):
        with pytest.raises(ValueError, match="prefetch"):
            wool.routine(prefetch=bad)(stuck_after_first.__wrapped__)  # type: ignore[arg-type, attr-defined]


# Flow control


def rss(process_id: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{process_id}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
async def test_a_slow_consumer_keeps_memory_flat_on_both_ends() -> None:
    import os

    n = 250_000
    samples: list[tuple[int, int]] = []
    async with wool.WorkerPool(size=1):
        worker = await pid()
        received = 0
        async for item in small_items(n, 400):
            assert len(item) == 400
            received += 1
            if received % 25_000 == 0:
                await anyio.sleep(0.3)  # a consumer that stalls: the worker must wait
                samples.append((rss(worker), rss(os.getpid())))
    assert received == n
    # Unbounded buffering of 400-byte items would add over 100 MB on one end.
    worker_growth = max(w for w, _ in samples[1:]) - samples[0][0]
    caller_growth = max(c for _, c in samples[1:]) - samples[0][1]
    assert worker_growth < 20 * MiB, samples
    assert caller_growth < 20 * MiB, samples


# Large payloads


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
async def test_large_values_travel_in_chunks_both_ways() -> None:
    data = bytes(range(256)) * (24 * MiB // 256)
    # Both ends refuse any message over 1 MiB: this passes only if payloads are chunked.
    async with wool.WorkerPool(size=1, max_message_size=MiB):
        assert await echo(data) == data
        assert await make_bytes(5 * MiB) == b"y" * (5 * MiB)
        items = [item async for item in payloads(3, 3 * MiB)]
        assert items == [bytes([i]) * (3 * MiB) for i in range(3)]
        gen = echo_sends(0)
        assert await gen.__anext__() == 0
        assert await gen.asend(data) == len(data)
        await gen.aclose()
        with pytest.raises(LargeError) as caught:
            await fail_with(3 * MiB)
        assert caught.value.data == b"e" * (3 * MiB)


def test_large_bytes_are_pickled_out_of_band_and_other_buffers_in_band() -> None:
    big = b"b" * MiB
    array = bytearray(b"a" * MiB)
    data = dumps_payload(((big, array, big), {"again": big}))
    assert isinstance(data, Segments)
    # The bytes object itself is a part (not a copy), once though it appears three times.
    assert sum(isinstance(p, memoryview) and p.obj is big for p in data.parts) == 1
    (first, second, third), kwargs = loads(data.join())
    assert first == big and first is third and kwargs["again"] is first
    assert type(second) is bytearray and second == array  # writable, as a plain pickle gives
    assert loads(dumps_payload(("small", 1))) == ("small", 1)


async def test_values_that_fit_one_message_are_joined() -> None:
    async with wool.WorkerPool(size=1):
        medium = b"m" * 300_000  # out of band, but under the message size
        assert await echo(medium) == medium
        assert await echo([medium, {"k": medium}]) == [medium, {"k": medium}]


async def test_an_argument_over_the_limit_is_refused_before_sending() -> None:
    async with wool.WorkerPool(size=1, max_payload_size=MiB):
        with pytest.raises(wool.SerializationError) as caught:
            await echo(b"x" * (2 * MiB))
        message = str(caught.value)
        assert "over the maximum payload size of 1048576 bytes" in message
        assert re.search(r"pickles to 2097\d{3} bytes", message)  # the size, stated
        assert await echo(b"still serving") == b"still serving"


async def test_a_result_or_item_over_the_limit_fails_the_call_only() -> None:
    async with wool.WorkerPool(size=1, max_payload_size=MiB):
        with pytest.raises(wool.SerializationError, match="over the maximum payload size"):
            await make_bytes(2 * MiB)
        gen = payloads(2, 2 * MiB)
        with pytest.raises(wool.SerializationError, match="a value yielded by"):
            await gen.__anext__()
        gen_sends = echo_sends(0)
        await gen_sends.__anext__()
        with pytest.raises(wool.SerializationError, match="value sent"):
            await gen_sends.asend(b"z" * (2 * MiB))
        await gen_sends.aclose()
        assert await echo(b"still serving") == b"still serving"


def test_the_default_limits_allow_a_gibibyte_in_4_mib_messages() -> None:
    pool = wool.WorkerPool(size=1)
    assert pool.limits.max_payload >= 1024 * MiB
    assert pool.limits.max_message == 4 * MiB


def test_no_message_of_a_split_payload_exceeds_the_maximum() -> None:
    payload = bytes(range(256)) * 40_000
    request = Request(task=Task(routine="r", function=b"f" * 100, arguments=payload))
    messages = split(request, 64 * 1024)
    assert len(messages) > 100
    assert all(len(bytes(m)) <= 64 * 1024 for m in messages)
    assert request.task is not None and request.task.arguments == payload  # can be resent
    assembler = Assembler(len(payload))
    codec = _Codec(64 * 1024)
    wholes = [assembler.add(codec.decode(codec.encode(m, Request), Request)) for m in messages]
    assert wholes[:-1] == [None] * (len(messages) - 1)
    whole = wholes[-1]
    assert whole is not None and whole.task is not None
    arguments = whole.task.arguments
    assert isinstance(arguments, Segments)  # joined where it is loaded, not on arrival
    assert arguments.join() == payload and whole.task.routine == "r"
    # Copies of the chunks' parts, not views of the messages they came in: those are
    # freed, and a join of bytes objects runs without the GIL.
    assert all(type(part) is bytes for part in arguments.parts)


class _OpenWindowStream:
    """A stream that, like grpclib's while the peer's window is open, sends a message
    without ever letting the loop run; it records what else ran between messages."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.ticks_between: list[int] = []
        self.ticks = 0

    async def send_message(self, message: Request, end: bool = False) -> None:
        self.ticks_between.append(self.ticks)
        self.sent.append(len(bytes(message)))


def test_a_large_payload_is_sent_a_frame_at_a_time_with_the_loop_running_between() -> None:
    stream = _OpenWindowStream()
    payload = bytes(10 * MiB)
    request = Request(task=Task(routine="r", function=b"f" * 100, arguments=payload))

    async def main() -> None:
        async def tick() -> None:
            while True:
                stream.ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.get_running_loop().create_task(tick())
        await asyncio.sleep(0)
        try:
            await send(stream, request, Limits())  # pyright: ignore[reportArgumentType]
        finally:
            ticker.cancel()

    asyncio.run(main())  # the transport's loop is asyncio, whatever the host's backend
    # Each chunk, with gRPC's 5-byte prefix, fills at most one HTTP/2 frame...
    assert len(stream.sent) > 10
    assert all(size + 5 <= MAX_FRAME_SIZE for size in stream.sent[:-1])
    # ... and the loop's other tasks (other calls, pings) run between any two of them.
    steps = [b - a for a, b in itertools.pairwise(stream.ticks_between)]
    assert all(step >= 1 for step in steps), steps


def _received(data: Segments, cuts: list[int]) -> Segments:
    """``data`` as a receiver gets it: the whole payload cut into bytes objects at ``cuts``."""
    whole = data.join()
    edges = [0, *sorted({min(cut, len(whole)) for cut in cuts}), len(whole)]
    return Segments([whole[a:b] for a, b in itertools.pairwise(edges) if b > a])


def test_a_payload_received_in_parts_is_loaded_with_one_copy_of_its_large_bytes() -> None:
    big = bytes(range(256)) * (3 * MiB // 256)
    received = _received(dumps_payload(((big, b"small"), {})), [1000, MiB, 2 * MiB])
    pickled, buffers = unpack(received)
    # The buffer spans parts: joined into a bytes object, which unpickling takes as it is.
    assert [type(buffer) for buffer in buffers] == [bytes]
    (value, small), _ = pickle.loads(pickled, buffers=buffers)
    assert value is buffers[0] and value == big and small == b"small"


async def test_a_large_received_payload_is_freed_by_load_not_by_its_caller() -> None:
    big = bytes(range(256)) * (6 * MiB // 256)
    received = _received(dumps_payload(((big, b"small"), {})), [1000, MiB, 2 * MiB, 5 * MiB])
    assert received.size >= 4 * MiB  # loaded in a thread
    (value, small), _ = await load(received)
    assert value == big and small == b"small"
    # Its parts were dropped in load's thread, a part at a time, not all at once when
    # the caller lets go of the payload (on the event loop, holding the GIL meanwhile).
    assert received.parts == [] and len(received) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=700_000), max_size=6))
def test_a_payload_loads_however_it_was_cut(cuts: list[int]) -> None:
    value = ([b"a" * 300_000, b"b" * 400_000], {"c": "text"})
    assert loads(_received(dumps_payload(value), cuts)) == value
    plain = list(range(50_000))  # a pickle with nothing out of band
    assert loads(_received(Segments([dumps_payload(plain)]), cuts)) == plain


def test_a_payload_whose_lengths_do_not_add_up_is_refused() -> None:
    data = dumps_payload((b"x" * MiB,))
    assert isinstance(data, Segments)
    with pytest.raises(pickle.UnpicklingError, match="lengths"):
        loads(data.join()[:-1])
    with pytest.raises(pickle.UnpicklingError, match="lengths"):
        loads(data.join() + b"?")


async def test_a_large_received_payload_is_unpacked_off_the_event_loop_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []

    def recording(data: Segments) -> tuple[object, list[object]]:
        threads.append(threading.get_ident())
        return unpack(data)

    monkeypatch.setattr(_serialization, "unpack", recording)
    big = b"l" * (8 * MiB)
    assert await load(_received(dumps_payload(big), [MiB])) == big
    assert await load(dumps_payload(b"small")) == b"small"
    # The large one on a worker thread (its copies would stall the loop), the small one here.
    assert threads[0] != threading.get_ident() and threads[1] == threading.get_ident()


async def test_a_large_payload_is_unpacked_while_user_code_fills_the_default_threads() -> None:
    # Every thread of anyio's default limiter taken by blocking user code: wool's own
    # unpacking must not wait for them.
    limiter = anyio.to_thread.current_default_thread_limiter()
    release = threading.Event()
    total = limiter.total_tokens
    limiter.total_tokens = 1
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, release.wait)
            try:
                with anyio.fail_after(30):
                    while limiter.borrowed_tokens < 1:
                        await anyio.sleep(0.01)
                    big = b"u" * (8 * MiB)
                    assert await load(_received(dumps_payload(big), [MiB])) == big
            finally:
                release.set()  # the user's thread ends, and with it the task group
    finally:
        limiter.total_tokens = total


def test_receivers_refuse_oversized_messages_and_payloads() -> None:
    with pytest.raises(wool.ProtocolError, match="over the maximum message size"):
        _Codec(1024).decode(b"x" * 2048, Response)
    assembler = Assembler(max_payload=100)
    assembler.add(Response(chunk=Chunk(data=b"x" * 60)))
    with pytest.raises(wool.ProtocolError, match="maximum payload size"):
        assembler.add(Response(chunk=Chunk(data=b"x" * 60)))


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        Limits(max_message=10)
    with pytest.raises(ValueError, match="max_payload_size"):
        wool.WorkerPool(size=1, max_payload_size=0)
