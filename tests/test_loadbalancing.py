"""Load balancing end to end: the balancer sees the call and the loads; capacity holds
root calls in the caller."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

import wool
from wool.discovery._lan import _metadata, _service  # pyright: ignore[reportPrivateUsage]

from .lb_routines import (
    gate,
    hints_on_worker,
    nested_hints_on_worker,
    pid,
    pid_stream,
    second_pid,
    tagged_pid,
)
from .test_discovery import start_worker

pytestmark = pytest.mark.anyio


async def wait_for_file(path: Path) -> int:
    """The pid a ``gate`` call wrote once it started."""
    with anyio.fail_after(30):
        while not path.exists() or not path.read_text():
            await anyio.sleep(0.01)
    return int(path.read_text())


class ByRoutine:
    """Routes by tag and by name, to the candidates in order of worker id."""

    def __init__(self) -> None:
        self.calls: list[wool.CallInfo] = []

    def choose(
        self, call: wool.CallInfo, candidates: Sequence[wool.Candidate]
    ) -> wool.WorkerMetadata | None:
        self.calls.append(call)
        ordered = sorted((c.worker for c in candidates), key=lambda w: w.id)
        if "first" in call.tags:
            return ordered[0]
        if call.routine == "second_pid":
            return ordered[-1]
        return ordered[0]


async def test_a_balancer_routes_by_tag_and_by_routine_name() -> None:
    balancer = ByRoutine()
    async with wool.WorkerPool(size=2, loadbalancer=balancer) as pool:
        first, second = sorted(pool.workers, key=lambda w: w.id)
        assert [await tagged_pid() for _ in range(4)] == [first.pid] * 4
        assert [await second_pid() for _ in range(4)] == [second.pid] * 4
    assert balancer.calls[0] == wool.CallInfo("tagged_pid", frozenset({"first"}), 0)
    assert balancer.calls[-1] == wool.CallInfo("second_pid", frozenset(), 0)


async def test_least_loaded_sends_calls_to_the_idle_worker(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=2, loadbalancer=wool.LeastLoadedLoadBalancer()) as pool:
        release = tmp_path / "release"
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate, str(tmp_path / "busy"), str(release))
            busy = await wait_for_file(tmp_path / "busy")
            idle = next(w.pid for w in pool.workers if w.pid != busy)
            assert [await pid() for _ in range(4)] == [idle] * 4
            release.write_text("go")


async def test_workers_advertise_their_capacity() -> None:
    async with wool.WorkerPool(size=1, concurrency=3) as pool:
        assert [w.capacity for w in pool.workers] == [3]
    async with wool.WorkerPool(size=1) as pool:
        assert [w.capacity for w in pool.workers] == [None]


async def test_a_wool_worker_advertises_its_concurrency_to_every_discovery() -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    worker = start_worker("--namespace", namespace, "--host", "127.0.0.1", "--concurrency", "2")
    try:
        line = worker.wait_for("serving at")
        match = re.search(r"serving at \S+:(\d+) ", line)
        assert match is not None, line
        (record,) = wool.LocalDiscovery(namespace).scan()
        assert record.capacity == 2
        # DnsDiscovery learns it from the worker's Info.
        dns = wool.DnsDiscovery("localhost", int(match.group(1)), interval=0.2)
        async with wool.WorkerPool(discovery=dns, start_timeout=20) as pool:
            assert [(w.pid, w.capacity) for w in pool.workers] == [(worker.pid, 2)]
    finally:
        assert worker.stop() == 0


def test_lan_discovery_carries_the_capacity() -> None:
    worker = wool.WorkerMetadata(id="w", host="127.0.0.1", port=1, capacity=4)
    for sent in (worker, wool.WorkerMetadata(id="w", host="127.0.0.1", port=1)):
        assert _metadata(_service(sent, "ns"), "ns") == sent


async def fill(tmp_path: Path, tg: anyio.abc.TaskGroup, n: int) -> list[int]:
    """Start ``n`` gate calls, one after the other (so the balancer chooses for them in
    this order), and return their workers' pids."""
    pids: list[int] = []
    for i in range(n):
        tg.start_soon(gate, str(tmp_path / f"started-{i}"), str(tmp_path / f"release-{i}"))
        pids.append(await wait_for_file(tmp_path / f"started-{i}"))
    return pids


class Recording(wool.RoundRobinLoadBalancer):
    """Round robin that records the calls it was asked to choose for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def choose(
        self, call: wool.CallInfo, candidates: Sequence[wool.Candidate]
    ) -> wool.WorkerMetadata | None:
        self.asked.append(call.routine)
        return super().choose(call, candidates)


async def test_a_full_pool_holds_root_calls_until_a_slot_frees(tmp_path: Path) -> None:
    async with wool.WorkerPool(size=2, concurrency=1):
        async with anyio.create_task_group() as tg:
            pids = await fill(tmp_path, tg, 2)
            # Round robin would send the third call to the first worker; held in the caller,
            # it goes to whichever worker frees a slot first instead.
            tg.start_soon(gate, str(tmp_path / "started-2"), str(tmp_path / "release-2"))
            (tmp_path / "release-1").write_text("go")
            assert await wait_for_file(tmp_path / "started-2") == pids[1]
            (tmp_path / "release-0").write_text("go")
            (tmp_path / "release-2").write_text("go")


async def test_a_held_call_can_be_cancelled_and_times_out(tmp_path: Path) -> None:
    balancer = Recording()
    async with wool.WorkerPool(size=2, concurrency=1, loadbalancer=balancer):
        async with anyio.create_task_group() as tg:
            await fill(tmp_path, tg, 2)
            with anyio.move_on_after(0.3) as timed:
                await gate(str(tmp_path / "late"), str(tmp_path / "release-late"))
            assert timed.cancelled_caught
            with anyio.CancelScope() as scope:

                async def cancel_once_held() -> None:
                    await anyio.wait_all_tasks_blocked()
                    scope.cancel()

                tg.start_soon(cancel_once_held)
                await gate(str(tmp_path / "cancelled"), str(tmp_path / "release-late"))
            assert scope.cancelled_caught
            # Held in the caller: no worker was ever chosen for them (none was sent).
            assert balancer.asked == ["gate", "gate"]
            (tmp_path / "release-0").write_text("go")
            (tmp_path / "release-1").write_text("go")
        assert not (tmp_path / "late").exists() and not (tmp_path / "cancelled").exists()
        # The held calls took no slot: both workers take a call at once again.
        (tmp_path / "release-2").write_text("go")
        (tmp_path / "release-3").write_text("go")
        async with anyio.create_task_group() as tg:
            for i in (2, 3):
                tg.start_soon(gate, str(tmp_path / f"started-{i}"), str(tmp_path / f"release-{i}"))


async def test_nested_calls_never_wait_for_a_slot() -> None:
    from .routines import fib

    async with wool.WorkerPool(size=1, concurrency=1):
        with anyio.fail_after(60):
            assert await fib(6) == 8


class Failing:
    def choose(
        self, call: wool.CallInfo, candidates: Sequence[wool.Candidate]
    ) -> wool.WorkerMetadata | None:
        if call.routine == "second_pid":
            raise RuntimeError("bug in the balancer")
        if "first" in call.tags:
            raise wool.NoWorkersAvailable("no worker for this one")
        if call.routine == "gate":
            return wool.WorkerMetadata(id="elsewhere", host="127.0.0.1", port=1)
        return candidates[0].worker


async def test_a_failing_balancer_fails_the_call_and_the_pool_keeps_serving() -> None:
    async with wool.WorkerPool(size=1, loadbalancer=Failing()) as pool:
        with pytest.raises(wool.WoolError, match=r"load balancer .* failed choosing") as info:
            await second_pid()
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(wool.NoWorkersAvailable, match="no worker for this one"):
            await tagged_pid()
        with pytest.raises(wool.WoolError, match="not among the candidates"):
            await gate("never", "never")
        assert await pid() == pool.workers[0].pid


def test_the_pool_checks_its_balancer_and_concurrency() -> None:
    with pytest.raises(TypeError, match="LoadBalancerLike"):
        wool.WorkerPool(size=1, loadbalancer=object())  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="concurrency"):
        wool.WorkerPool(size=1, concurrency=0)
    with pytest.raises(TypeError, match="tags"):
        wool.routine(tags="gpu")  # pyright: ignore[reportArgumentType]


def candidate(worker_id: str, load: int, capacity: int | None = None) -> wool.Candidate:
    worker = wool.WorkerMetadata(id=worker_id, host="127.0.0.1", port=1, capacity=capacity)
    return wool.Candidate(worker, load)


def test_least_loaded_weighs_the_load_by_capacity() -> None:
    balancer = wool.LeastLoadedLoadBalancer()
    call = wool.CallInfo("f")
    # 2 of 4 slots used is less loaded than 1 of 1.
    chosen = balancer.choose(call, [candidate("small", 1, 1), candidate("big", 2, 4)])
    assert chosen is not None and chosen.id == "big"
    # A worker without a limit counts as large as the largest that has one.
    chosen = balancer.choose(call, [candidate("big", 3, 4), candidate("free", 2)])
    assert chosen is not None and chosen.id == "free"
    # Equal workers take turns.
    equal = [candidate("a", 0), candidate("b", 0)]
    picks = [balancer.choose(call, equal) for _ in range(4)]
    assert [w.id for w in picks if w is not None] == ["a", "b", "a", "b"]


def test_round_robin_takes_the_candidates_in_turn() -> None:
    balancer = wool.RoundRobinLoadBalancer()
    three = [candidate("a", 5), candidate("b", 0), candidate("c", 0)]
    picks = [balancer.choose(wool.CallInfo("f"), three) for _ in range(4)]
    assert [w.id for w in picks if w is not None] == ["a", "b", "c", "a"]


class OneAtATime:
    """Makes a call wait while this caller has any call in flight."""

    def __init__(self) -> None:
        self.waited = 0

    def choose(
        self, call: wool.CallInfo, candidates: Sequence[wool.Candidate]
    ) -> wool.WorkerMetadata | None:
        if any(c.load for c in candidates):
            self.waited += 1
            return None
        return candidates[0].worker


async def test_a_call_the_balancer_makes_wait_goes_once_a_call_ends(tmp_path: Path) -> None:
    balancer = OneAtATime()
    async with wool.WorkerPool(size=2, loadbalancer=balancer) as pool:
        results: list[int] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(gate, str(tmp_path / "started"), str(tmp_path / "release"))
            await wait_for_file(tmp_path / "started")

            async def second() -> None:
                results.append(await pid())

            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            assert balancer.waited >= 1 and not results
            (tmp_path / "release").write_text("go")
        assert results == [pool.workers[0].pid]


class StickyByKey:
    """Sends the calls of one ``hint(key=...)`` to one worker; new keys go where fewest are."""

    def __init__(self) -> None:
        self.homes: dict[str, str] = {}  # key: worker id
        self.calls: list[wool.CallInfo] = []

    def choose(
        self, call: wool.CallInfo, candidates: Sequence[wool.Candidate]
    ) -> wool.WorkerMetadata | None:
        self.calls.append(call)
        key = call.hints.get("key")
        ids = {c.worker.id: c.worker for c in candidates}
        if key is None:
            return candidates[0].worker
        if self.homes.get(key) not in ids:
            homed = list(self.homes.values())
            self.homes[key] = min(sorted(ids), key=homed.count)
        return ids[self.homes[key]]


async def test_calls_with_one_hint_share_a_worker_and_different_hints_spread() -> None:
    balancer = StickyByKey()
    async with wool.WorkerPool(size=2, loadbalancer=balancer):
        seen: dict[str, set[int]] = {"user-1": set(), "user-2": set()}
        for key in ["user-1", "user-2"] * 4:
            with wool.hint(key=key):
                seen[key].add(await pid())
        assert len(seen["user-1"]) == len(seen["user-2"]) == 1
        assert seen["user-1"] != seen["user-2"]
        assert await pid() in seen["user-1"]  # no hint: the balancer's first candidate
    assert balancer.calls[0] == wool.CallInfo("pid", hints={"key": "user-1"})
    assert balancer.calls[-1].hints == {}


async def test_a_hint_is_seen_for_calls_made_in_child_tasks() -> None:
    balancer = StickyByKey()
    async with wool.WorkerPool(size=2, loadbalancer=balancer):
        pids: list[tuple[bool, int]] = []

        async def call(hinted: bool) -> None:
            pids.append((hinted, await pid()))

        async with anyio.create_task_group() as outer:
            with wool.hint(key="user-1"):
                # Tasks of a group opened in the block, and of one opened before it.
                async with anyio.create_task_group() as inner:
                    for _ in range(3):
                        inner.start_soon(call, True)
                outer.start_soon(call, True)
            outer.start_soon(call, False)  # started after the block: no hint
    hints = sorted(c.hints.get("key", "") for c in balancer.calls)
    assert hints == ["", "user-1", "user-1", "user-1", "user-1"]
    assert len({p for hinted, p in pids if hinted}) == 1


async def test_hint_blocks_nest_and_end() -> None:
    balancer = StickyByKey()
    async with wool.WorkerPool(size=1, loadbalancer=balancer):
        with wool.hint({"user-id": "7"}, key="a") as outer:
            assert outer == {"user-id": "7", "key": "a"}
            with wool.hint(key="b", region="eu"):
                await pid()
            await pid()
        await pid()
    assert [c.hints for c in balancer.calls] == [
        {"user-id": "7", "key": "b", "region": "eu"},
        {"user-id": "7", "key": "a"},
        {},
    ]


async def test_a_generator_call_carries_the_hints_of_its_first_step() -> None:
    balancer = StickyByKey()
    async with wool.WorkerPool(size=2, loadbalancer=balancer):
        with wool.hint(key="user-1"):
            first = [p async for p in pid_stream(3)]
            stream = pid_stream(2)
        # Dispatched when its first item is asked for: outside the block, without hints.
        second = [p async for p in stream]
        with wool.hint(key="user-1"):
            third = [p async for p in pid_stream(3)]
    assert len(set(first)) == 1 and first == third
    assert [(c.generator, dict(c.hints)) for c in balancer.calls] == [
        (True, {"key": "user-1"}),
        (True, {}),
        (True, {"key": "user-1"}),
    ]
    assert len(second) == 2


async def test_hints_stay_in_the_caller() -> None:
    balancer = StickyByKey()
    async with wool.WorkerPool(size=1, loadbalancer=balancer):
        with wool.hint(key="user-1"):
            assert await hints_on_worker() == {}
            # A routine's own hint is for the balancer of the worker it runs on: the call
            # it makes does not carry it either.
            assert await nested_hints_on_worker() == {}
    # The caller's balancer saw its two root calls, not the nested one (the worker's own
    # balancer chose for that).
    assert [(c.routine, c.depth, dict(c.hints)) for c in balancer.calls] == [
        ("hints_on_worker", 0, {"key": "user-1"}),
        ("nested_hints_on_worker", 0, {"key": "user-1"}),
    ]


def test_hint_refuses_what_is_not_a_string() -> None:
    with pytest.raises(TypeError, match=r"values must be strings, got 42"):
        wool.hint(key=42)  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="keys must be non-empty strings"):
        wool.hint({"": "x"})
    with pytest.raises(TypeError, match="keys must be non-empty strings"):
        wool.hint({1: "x"})  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="mapping"):
        wool.hint([("key", "x")])  # pyright: ignore[reportArgumentType]
    call = wool.CallInfo("f", hints={"key": "x"})
    assert hash(call) == hash(wool.CallInfo("f"))
    with pytest.raises(TypeError):
        call.hints["key"] = "y"  # pyright: ignore[reportIndexIssue]
