"""Soak: mixed calls against a pool of 2 for a chosen time; memory once a minute, errors.

    make soak                                     # 10 minutes, asyncio caller
    .venv/bin/python benchmarks/soak.py --minutes 1
    .venv/bin/python benchmarks/soak.py --minutes 10 --backend trio

``--lanes`` (8) tasks each run one operation after another, chosen at random (seeded) from:

- ``coroutine``: ``add(i, 1)``, checked;
- ``generator``: ``count(50)`` consumed whole, checked;
- ``generator_closed``: ``count(1000)``, closed after 10 items;
- ``cancelled``: ``sleeper(10)`` cancelled after 1-20 ms (the call must not return);
- ``cancelled_generator``: a slow generator cancelled while the caller iterates it;
- ``failing``: ``fail(i)``, which must raise its ``ValueError`` with its message;
- ``payload``: ``echo`` of 1 MB of random bytes, checked;
- ``nested``: ``nested(3)``, a routine that awaits itself to depth 3 (other workers, or its
  own), checked.

Every operation has a 30 s bound; anything other than its expected outcome (another
exception, a wrong result, a timeout) is an unexpected error. So is a record wool logs at
ERROR or above, in the caller or a worker (``benchmarks/logcount.py``, which the workers
import, counts them; WARNING records are counted and reported, not failed on).

Every ``--interval`` (60) s, and at the end, it logs and records the RSS of the caller and of
each worker and the operations done since the last sample. At the end it prints one JSON
line on stdout: the operations of each kind, the samples, ``rss_growth_pct`` (the total RSS
of the last sample over the first one's, in percent: the first interval is the warm-up;
issue 10's bound is 5), the unexpected errors (the first 20 in full) and the log counts. It
exits 1 if there was any unexpected error or ERROR record, 0 otherwise. Linux only (RSS from
``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
import logcount  # a script's directory is on sys.path
import procstat

import wool

POOL_SIZE = 2
OPERATION_TIMEOUT = 30.0  # seconds any one operation may take
PAYLOAD = 1_000_000
NESTED_DEPTH = 3
ERRORS_KEPT = 20
RSS_GROWTH_PCT_MAX = 5.0  # issue 10: RSS grows by less than 5% after the first minute


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


@wool.routine
async def count(n: int) -> AsyncGenerator[int, None]:
    for i in range(n):
        yield i


@wool.routine
async def ticks(n: int, seconds: float) -> AsyncGenerator[int, None]:
    for i in range(n):
        await anyio.sleep(seconds)
        yield i


@wool.routine
async def sleeper(seconds: float) -> str:
    await anyio.sleep(seconds)
    return "slept"


@wool.routine
async def fail(i: int) -> None:
    raise ValueError(f"expected failure {i}")


@wool.routine
async def echo(data: bytes) -> bytes:
    return data


@wool.routine
async def nested(depth: int) -> int:
    if depth == 0:
        return 0
    return 1 + await nested(depth - 1)


class Unexpected(Exception):
    """An operation ended otherwise than it should have."""


async def _coroutine(rng: random.Random, payload: bytes) -> None:
    i = rng.randrange(1_000_000)
    if (got := await add(i, 1)) != i + 1:
        raise Unexpected(f"add({i}, 1) returned {got!r}")


async def _generator(rng: random.Random, payload: bytes) -> None:
    got = [item async for item in count(50)]
    if got != list(range(50)):
        raise Unexpected(f"count(50) yielded {got!r}")


async def _generator_closed(rng: random.Random, payload: bytes) -> None:
    seen = 0
    async with contextlib.aclosing(count(1000)) as items:
        async for item in items:
            if item != seen:
                raise Unexpected(f"count(1000) yielded {item} where {seen} was due")
            seen += 1
            if seen == 10:
                break


async def _cancelled(rng: random.Random, payload: bytes) -> None:
    with anyio.move_on_after(rng.uniform(0.001, 0.02)) as scope:
        got = await sleeper(10.0)
        raise Unexpected(f"sleeper(10) returned {got!r} inside a 20 ms scope")
    if not scope.cancelled_caught:
        raise Unexpected("the cancelled call's scope did not catch its cancellation")


async def _cancelled_generator(rng: random.Random, payload: bytes) -> None:
    with anyio.move_on_after(rng.uniform(0.005, 0.05)) as scope:
        async with contextlib.aclosing(ticks(1000, 0.002)) as items:
            async for _ in items:
                pass
        raise Unexpected("ticks(1000, 0.002) ended inside a 50 ms scope")
    if not scope.cancelled_caught:
        raise Unexpected("the cancelled generator's scope did not catch its cancellation")


async def _failing(rng: random.Random, payload: bytes) -> None:
    i = rng.randrange(1_000_000)
    try:
        await fail(i)
    except ValueError as exc:
        if str(exc) != f"expected failure {i}":
            raise Unexpected(f"fail({i}) raised ValueError({str(exc)!r})") from exc
    else:
        raise Unexpected(f"fail({i}) returned")


async def _payload(rng: random.Random, payload: bytes) -> None:
    got = await echo(payload)
    if got != payload:
        raise Unexpected(f"echo of {len(payload)} bytes returned other {len(got)} bytes")


async def _nested(rng: random.Random, payload: bytes) -> None:
    if (got := await nested(NESTED_DEPTH)) != NESTED_DEPTH:
        raise Unexpected(f"nested({NESTED_DEPTH}) returned {got!r}")


OPERATIONS: dict[str, Callable[[random.Random, bytes], Awaitable[None]]] = {
    "coroutine": _coroutine,
    "generator": _generator,
    "generator_closed": _generator_closed,
    "cancelled": _cancelled,
    "cancelled_generator": _cancelled_generator,
    "failing": _failing,
    "payload": _payload,
    "nested": _nested,
}


class Soak:
    """The counts and the errors of one soak run."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.interval_calls = 0
        self.unexpected = 0
        self.errors: list[str] = []

    def failed(self, kind: str, exc: BaseException) -> None:
        self.unexpected += 1
        message = f"{kind}: {type(exc).__name__}: {exc}"
        print(f"[soak] UNEXPECTED {message}", file=sys.stderr, flush=True)
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(message)

    async def lane(self, seed: int, stop: anyio.Event) -> None:
        rng = random.Random(seed)
        payload = rng.randbytes(PAYLOAD)
        kinds = list(OPERATIONS)
        while not stop.is_set():
            kind = rng.choice(kinds)
            try:
                with anyio.fail_after(OPERATION_TIMEOUT):
                    await OPERATIONS[kind](rng, payload)
            except Exception as exc:  # every failure is counted, none ends the run
                self.failed(kind, exc)
            self.calls[kind] += 1
            self.interval_calls += 1


def _rss(pool: wool.WorkerPool) -> dict[str, Any]:
    workers: dict[str, float | None] = {}
    for worker in pool.workers:
        try:
            workers[str(worker.pid)] = round(procstat.rss_mb(worker.pid), 1)
        except (OSError, RuntimeError):  # gone between the listing and the read
            workers[str(worker.pid)] = None
    caller = round(procstat.rss_mb(os.getpid()), 1)
    total = caller + sum(mb for mb in workers.values() if mb is not None)
    return {"caller": caller, "workers": workers, "total": round(total, 1)}


def _sample(pool: wool.WorkerPool, soak: Soak, t: float, seconds: float) -> dict[str, Any]:
    """The RSS of every process now, and the operations since the last sample."""
    calls, soak.interval_calls = soak.interval_calls, 0
    sample = {"t_s": round(t, 1), **_rss(pool), "calls": calls}
    sample["calls_per_s"] = round(calls / seconds, 1)
    print(
        f"[soak] {sample['t_s']:.0f} s: RSS caller {sample['caller']} MB, workers "
        f"{sample['workers']} MB, total {sample['total']} MB; {calls} operations "
        f"({sample['calls_per_s']}/s), {soak.unexpected} unexpected errors",
        file=sys.stderr,
        flush=True,
    )
    return sample


async def _worker_logs(pool: wool.WorkerPool) -> dict[str, Any]:
    """Each worker's log counts (asked once the lanes are done: round robin then visits
    every worker in turn)."""
    logs: dict[str, Any] = {}
    for _ in range(2 * POOL_SIZE):
        with anyio.fail_after(OPERATION_TIMEOUT):
            pid, counts = await logcount.worker_counts()
        logs[str(pid)] = counts
    return logs


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    result = Soak()
    samples: list[dict[str, Any]] = []
    seconds = args.minutes * 60
    stop = anyio.Event()
    async with wool.WorkerPool(size=POOL_SIZE, imports=[logcount.__name__]) as pool:
        first_pids = sorted(w.pid for w in pool.workers)
        async with anyio.create_task_group() as tg:
            for lane in range(args.lanes):
                tg.start_soon(result.lane, args.seed + lane, stop)
            start = last = time.monotonic()
            for k in range(1, math.ceil(seconds / args.interval) + 1):
                await anyio.sleep(start + min(k * args.interval, seconds) - time.monotonic())
                now = time.monotonic()
                samples.append(_sample(pool, result, now - start, now - last))
                last = now
            stop.set()  # the lanes finish the operation they are in (30 s at most)
        last_pids = sorted(w.pid for w in pool.workers)
        worker_logs = await _worker_logs(pool)
    caller_logs = logcount.counts()
    logged_errors = caller_logs["errors"] + sum(c["errors"] for c in worker_logs.values())
    growth = None
    if len(samples) >= 2:
        growth = round((samples[-1]["total"] / samples[0]["total"] - 1) * 100, 2)
    return {
        "backend": args.backend,
        "minutes": args.minutes,
        "interval_s": args.interval,
        "lanes": args.lanes,
        "pool_size": POOL_SIZE,
        "seed": args.seed,
        "operations": sum(result.calls.values()),
        "calls": dict(sorted(result.calls.items())),
        "rss": samples,
        "rss_growth_pct": growth,
        "rss_growth_pct_max": RSS_GROWTH_PCT_MAX,
        "rss_growth_met": None if growth is None else growth < RSS_GROWTH_PCT_MAX,
        "workers_replaced": first_pids != last_pids,
        "unexpected_errors": result.unexpected,
        "errors": result.errors,
        "logged_errors": logged_errors,
        "logs": {"caller": caller_logs, "workers": worker_logs},
    }


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument(
        "--interval", type=float, default=60.0, help="seconds between RSS samples (60)"
    )
    parser.add_argument("--lanes", type=int, default=8, help="operations in flight (8)")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--seed", type=int, default=0, help="of the operations' choice (0)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.interval <= 0 or args.lanes < 1:
        parser.error("--minutes and --interval must be > 0, --lanes >= 1")
    if not procstat.available():
        parser.error("the soak reads RSS from /proc, which this system does not have")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    print(
        f"[soak] {args.minutes} min, {args.lanes} lanes of mixed calls, pool of {POOL_SIZE}, "
        f"{args.backend} caller; RSS every {args.interval:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    report = anyio.run(soak, args, backend=args.backend)
    print(json.dumps(report), flush=True)
    growth = report["rss_growth_pct"]
    print(
        f"[soak] {report['operations']} operations, {report['unexpected_errors']} unexpected "
        f"errors, {report['logged_errors']} errors logged by wool; RSS growth after the first "
        "sample "
        f"{'n/a (one sample)' if growth is None else f'{growth}%'}",
        file=sys.stderr,
        flush=True,
    )
    return 1 if report["unexpected_errors"] or report["logged_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
