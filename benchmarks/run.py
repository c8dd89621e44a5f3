"""Latency and throughput of trivial wool calls, next to a floor measured in the same run.

What is measured, for a ``wool.WorkerPool(size=2)`` and a trivial ``add(x, y)`` routine:

- sequential latency: median and p99 (ms) of ``--calls`` calls awaited one after the other,
  after a warm-up;
- throughput: calls/s of ``--concurrent`` calls all started at once in one task group;
- balance (``benchmarks/balance.py``): uneven calls (100 ms and 1 ms of CPU-bound work) on
  2 workers, total seconds under round robin and under least loaded, and their ratio;

each under an asyncio caller (``asyncio.run``, default event loop, not uvloop) and under a
trio caller (``trio.run``; the pool's workers then run trio too).

The floor is the least any RPC of the same call could cost on this machine: the same
cloudpickled request ``(function, args, kwargs)`` and response (the pickled result) sent as
length-prefixed frames over a plain loopback TCP socket to a second process, which unpickles
the request, awaits the function and pickles the result. Client and server run on the
default asyncio loop, so the difference to wool is what wool's machinery (gRPC over HTTP/2,
dispatch, load balancing, the trio bridge) adds on top of pickling and a socket.

The grpclib reference is the same call over wool's own transport with nothing of wool's
dispatch around it: a ``wool.transport.Client`` (asyncio caller only) sends a ``Request``
carrying a ``Task`` of the same sizes wool sends (the pickled ``add``, pickled arguments) to a
``wool.transport.Server`` in a second process (uvloop where installed) whose service answers
every dispatch at once with a pickled 3. One HTTP/2 stream per call, one request frame with
end of stream and one response frame: what any design with the issue's protocol pays for
grpclib and HTTP/2. The asyncio section also reports wool's figures as ratios to it
(``latency_median_grpclib_ratio``, ``throughput_grpclib_ratio``: ``wool / grpclib``), which is
what wool's own dispatch adds.

Every wool figure is also reported as a ratio to the floor, because absolute figures depend
on the machine, and shared or noisy machines (CI, laptops on battery) swing them by a lot;
the floor, measured minutes apart in the same process, swings with them. Latency ratios are
``wool / floor`` (1.0 is the floor, higher is slower); throughput ratios are
``wool / floor`` too (1.0 is the floor, lower is slower).

Two more latencies are timed, under both callers, because they are what structured
concurrency across processes costs when something goes wrong:

- cancellation: ms from the caller's ``CancelScope.cancel()`` (on the scope around an awaited
  routine call) to the routine's ``finally`` block starting on the worker. The two moments are
  in different processes, so both are read from the wall clock (``time.time()``), which every
  process on one host shares (event-loop clocks are per process; trio's has a random offset).
  The worker writes its timestamp to a small file in a temporary directory;
- worker loss: ms from SIGKILLing the worker a call runs on to that call raising
  ``wool.WorkerLost`` in the caller (both moments in the caller, so ``time.perf_counter()``).
  The pool replaces the dead worker; the next sample waits until it has.

Two more phases, on a fresh ``wool.WorkerPool(size=2)`` each, measure bulk data:

- generator streaming (``stream``): items/s of ``async for`` over one call of the async
  generator routine ``count(n)`` (``for i in range(n): yield i``), ``--stream-items``
  (100,000) items, every item checked, under an asyncio and a trio caller. One warm-up call of
  ``STREAM_WARMUP_ITEMS`` per worker first (round robin takes turns), then ``--stream-runs``
  (3) timed calls; ``items_per_s`` is their median, ``items_per_s_max`` the best;
- large payloads (``echo``, asyncio caller): MB/s (payload bytes / round-trip seconds / 1e6) of
  ``echo(data)``, which returns its ``bytes`` argument, for 10 MB and 100 MB of random bytes:
  ``ECHO_WARMUP`` untimed echoes of each size first (the first ones pay for heap growth), then
  the median of ``--echo-runs`` (5) and ``--echo-large-runs`` (3) round trips. Its floor, in
  the same run, echoes the same payloads over one loopback TCP connection to a second process
  (``--bulk-echo-server``, blocking sockets, no pickling): a 4-byte length and the bytes, which
  the server receives whole into a new buffer before it writes them back, and the client
  receives whole into a new buffer too, as any RPC's ends must. ``mb_per_s_ratio`` is
  ``wool / floor`` (1.0 is the floor, lower is slower).

The ``tls`` section measures a plaintext pool and a mutual-TLS pool (``WorkerCredentials``
from a throwaway trustme CA; asyncio caller) alternately in the same run: latency and
throughput of each, ``latency_median_ratio`` (``mtls / plaintext``; the target is at most
1.5) and ``met``.

The targets (``targets``, ``targets_met``) are the issue's absolute ones. They were set on a
machine whose loopback round trip was about 0.1 ms, so ``targets_relative`` restates the
latency target as a ratio to this run's floor (1 ms / 0.1 ms = 10; trio 1.5x that);
throughput stays absolute only, and so do the streaming target (20,000 items/s, either
caller) and the large-payload one (300 MB/s for 10 MB; 100 MB has none). The run also
times a raw loopback round trip (8 bytes echoed over TCP by a second process, blocking
sockets, no pickling, no event loop), reported next to the floor, because the floor is more
than a bare socket round trip (see benchmarks/README.md).

The original wool (PyPI ``wool==0.15.7``, grpcio-based) is measured in the same run, by
``benchmarks/original.py`` under the interpreter of a private virtual environment
(``.venv-original`` at the repository's root, created and filled by ``pip`` when it is missing
or lacks that version): the same pool size, routine, warm-up and sequential calls as wool's
asyncio phase, and at most ``ORIGINAL_CONCURRENT_MAX`` concurrent calls (throughput is a rate,
so the cap changes how long it takes, not what it reports). ``speedup`` compares wool with it
(latency ``original / wool``, throughput ``wool / original``, both higher is better) and
``targets_same_run`` restates the issue's absolute targets as speedups over the original,
because the issue's figures for the original (2.8 ms, 670 calls/s) came from a machine state
this machine does not reproduce. ``--no-original`` skips it, and so does ``--quick`` unless
``--original`` is given; if the environment cannot be made (no network), a warning goes to
stderr and the report says ``original: null``.

``resources`` has the CPU time per call of the caller (``time.process_time``) and of each
worker (``/proc/<pid>/stat``) over the latency calls and over each of ``--bursts`` (3)
back-to-back bursts of ``--concurrent`` calls, the RSS of every process before and after each
burst and each burst's calls/s, for both callers; the floor's and the grpclib reference's
client and server CPU per call are the same-run baselines (``benchmarks/procstat.py``).
``head_of_line`` (``benchmarks/hol.py``) is the small-call p99 on a pool of 1 while 100 MB
echoes run on it, over the unloaded p99. ``events`` (``benchmarks/bench_events.py``) is the
latency with one trivial ``wool.TaskEvent`` handler on both sides over the latency with none.

Output: one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import pickle
import platform
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
import procstat  # a script's directory is on sys.path
import trio

import wool
from wool.transport import PROTOCOL_VERSION, Request, Response, Task, WorkerInfo

HOST = "127.0.0.1"  # the only address this benchmark ever uses
PROC = procstat.available()  # CPU and RSS figures need Linux's /proc; null without it
POOL_SIZE = 2
# The floor's throughput spreads the concurrent calls over as many connections as the pool
# has workers, and pipelines them on each: every call writes its request at once and waits
# for its response, which comes back in order on its connection. That is what wool does with
# one multiplexed HTTP/2 connection per worker, minus HTTP/2 and gRPC.
FLOOR_CONNECTIONS = POOL_SIZE
TARGET_LATENCY_MEDIAN_MS = 1.0
TARGET_THROUGHPUT = 2000.0
TRIO_SLACK = 1.5
TARGET_CANCEL_MEDIAN_MS = 2.0
TARGET_WORKER_LOSS_MS = 100.0
# The machine the issue's targets were set on: its loopback round trip was about 0.1 ms, so
# "1 ms median" meant "10 round trips". The relative view keeps that ratio, to the floor.
REFERENCE_LOOPBACK_RTT_MS = 0.1
TARGET_LATENCY_FLOOR_RATIO = TARGET_LATENCY_MEDIAN_MS / REFERENCE_LOOPBACK_RTT_MS
# The original wool, measured in the same run; the issue's figures for it, on the machine its
# targets were set on, were 2.8 ms median latency and 670 calls/s. Its targets restated as
# speedups over the original: 2.8 ms / 1 ms, and 2,000 / 670 calls/s rounded to 3.0; a trio
# caller within TRIO_SLACK of both.
ORIGINAL_VERSION = "0.15.7"
ORIGINAL_REQUIREMENT = f"wool=={ORIGINAL_VERSION}"
ORIGINAL_SCRIPT = Path(__file__).resolve().parent / "original.py"
ORIGINAL_VENV = Path(__file__).resolve().parent.parent / ".venv-original"
ORIGINAL_CONCURRENT_MAX = 2000  # the original takes ~5 s per 2,000 calls on 2 shared cores
ORIGINAL_INSTALL_TIMEOUT = 300.0  # seconds for `python -m venv` and `pip install`, each
ISSUE_ORIGINAL_LATENCY_MEDIAN_MS = 2.8
ISSUE_ORIGINAL_THROUGHPUT = 670.0
TARGET_LATENCY_SPEEDUP = round(ISSUE_ORIGINAL_LATENCY_MEDIAN_MS / TARGET_LATENCY_MEDIAN_MS, 2)
TARGET_THROUGHPUT_SPEEDUP = round(TARGET_THROUGHPUT / ISSUE_ORIGINAL_THROUGHPUT, 1)
CANCEL_POOL_SIZE = 1
LOSS_POOL_SIZE = 2
PROBE_SECONDS = 30.0  # how long the probe routine sleeps if nothing ends it earlier
SAMPLE_TIMEOUT = 20.0  # seconds one cancel or worker-loss sample may take
REPLACE_TIMEOUT = 60.0  # seconds the pool may take to replace a killed worker
POLL = 0.001  # seconds between looks at the probe's files
SERVER_START_TIMEOUT = 30.0  # seconds the grpclib reference server may take to print its port
# The grpclib reference's stub service answers every call with this, as if it ran add(1, 2).
GRPCLIB_ARGS = (1, 2)
GRPCLIB_GRACE = 5.0
_FRAME = struct.Struct("!I")
_ECHO = b"rtt-8byt"
# Generator streaming: one async generator call yielding this many small ints, consumed with
# `async for`, after one warm-up call of STREAM_WARMUP_ITEMS per worker.
STREAM_ITEMS = 100_000
STREAM_WARMUP_ITEMS = 1_000
TARGET_STREAM_ITEMS_PER_S = 20_000.0
# Large payloads: `echo(data)` of these many bytes, after ECHO_WARMUP untimed echoes of each
# size (the first ones pay for heap growth, on both sides).
ECHO_SIZES = (10_000_000, 100_000_000)
ECHO_WARMUP = 2
TARGET_ECHO_SIZE = 10_000_000  # the size the MB/s target is for; 100 MB is reported only
TARGET_ECHO_MB_PER_S = 300.0


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


@wool.routine
async def count(n: int) -> AsyncGenerator[int, None]:
    for i in range(n):
        yield i


@wool.routine
async def echo(data: bytes) -> bytes:
    return data


def _write_atomically(path: str, text: str) -> None:
    partial = f"{path}.partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


@wool.routine
async def probe(directory: str, sample: int, seconds: float) -> str:
    """Write ``<sample>.started`` (this worker's pid), sleep; stamp ``<sample>.finally``."""
    _write_atomically(os.path.join(directory, f"{sample}.started"), str(os.getpid()))
    try:
        await anyio.sleep(seconds)
    finally:
        finally_at = time.time()  # first thing in finally: when the unwinding reached it
        _write_atomically(os.path.join(directory, f"{sample}.finally"), repr(finally_at))
    return "slept"


# ---------------------------------------------------------------------------- measurement


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


def _latency_stats(seconds: list[float]) -> dict[str, float]:
    return {
        "latency_median_ms": round(_percentile(seconds, 50) * 1000, 4),
        "latency_p99_ms": round(_percentile(seconds, 99) * 1000, 4),
    }


async def _sequential(call: Callable[[int], Awaitable[int]], n: int) -> list[float]:
    """Seconds each of ``n`` calls took, awaited one after the other."""
    samples: list[float] = []
    for i in range(n):
        start = time.perf_counter()
        result = await call(i)
        samples.append(time.perf_counter() - start)
        if result != i + 1:
            raise AssertionError(f"add({i}, 1) returned {result!r}")
    return samples


async def _checked(call: Callable[[int], Awaitable[int]], i: int) -> None:
    result = await call(i)
    if result != i + 1:
        raise AssertionError(f"add({i}, 1) returned {result!r}")


async def _concurrent_asyncio(call: Callable[[int], Awaitable[int]], n: int) -> float:
    """Calls/s of ``n`` calls started at once in an asyncio task group."""
    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(_checked(call, i))
    return n / (time.perf_counter() - start)


async def _concurrent_trio(call: Callable[[int], Awaitable[int]], n: int) -> float:
    """Calls/s of ``n`` calls started at once in a trio nursery."""
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(_checked, call, i)
    return n / (time.perf_counter() - start)


def _figures(samples: list[float], throughput: float, pool_start: float) -> dict[str, float]:
    stats: dict[str, float] = _latency_stats(samples)
    return {**stats, "throughput_calls_per_s": throughput, "pool_start_s": pool_start}


def _wool_call(i: int) -> Awaitable[int]:
    return add(i, 1)


# ---------------------------------------------------------------------------- wool


async def _bursts(
    args: argparse.Namespace,
    concurrent: Callable[[Callable[[int], Awaitable[int]], int], Awaitable[float]],
    pids: list[int],
) -> list[dict[str, Any]]:
    """``--bursts`` bursts of ``--concurrent`` calls, back to back: each one's calls/s, CPU
    per call and the RSS of every process before and after it.

    A burst after the first that fails is recorded as failed (``failed``: what went wrong)
    and ends the series, so that the rest of the run still reports; a first burst that fails
    fails the run (there is no throughput to report)."""
    bursts: list[dict[str, Any]] = []
    for i in range(args.bursts):
        before = procstat.rss_snapshot(pids) if PROC else None
        meter = procstat.CpuMeter(pids).start() if PROC else None
        try:
            rate = await concurrent(_wool_call, args.concurrent)
        except Exception as exc:
            if not bursts:
                raise
            failed = _describe_failure(exc)
            _log(f"WARNING: burst {i + 1} of {args.bursts} failed: {failed}")
            bursts.append(
                {
                    "calls_per_s": None,
                    "failed": failed,
                    "cpu_us_per_call": None,
                    "rss_mb_before": before,
                    "rss_mb_after": None,
                }
            )
            break
        _log(f"burst {i + 1} of {args.bursts}: {rate:.0f} calls/s")
        bursts.append(
            {
                "calls_per_s": round(rate, 1),
                "cpu_us_per_call": meter.per_call(args.concurrent) if meter else None,
                "rss_mb_before": before,
                "rss_mb_after": procstat.rss_snapshot(pids) if PROC else None,
            }
        )
    return bursts


def _describe_failure(exc: BaseException) -> str:
    """What failed: the exception, or for a group how many failed and the first of them."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(exc)
    first = f"{type(leaves[0]).__name__}: {leaves[0]}"
    return first if len(leaves) == 1 else f"{len(leaves)} calls failed, the first with {first}"


async def _wool_phases(
    args: argparse.Namespace,
    concurrent: Callable[[Callable[[int], Awaitable[int]], int], Awaitable[float]],
) -> tuple[dict[str, float], dict[str, Any]]:
    """Latency and bursts of throughput under the running loop: (the figures, the CPU and
    memory of the caller and each worker)."""
    with anyio.fail_after(args.timeout):
        rss_before_pool = procstat.rss_mb(os.getpid()) if PROC else None
        start = time.perf_counter()
        async with wool.WorkerPool(size=POOL_SIZE) as pool:
            started = time.perf_counter() - start
            pids = [w.pid for w in pool.workers]
            if len(pids) != POOL_SIZE or not all(pids):
                raise AssertionError(f"the pool's workers have pids {pids}")
            await _sequential(_wool_call, args.warmup)
            meter = procstat.CpuMeter(pids).start() if PROC else None
            samples = await _sequential(_wool_call, args.calls)
            latency_cpu = meter.per_call(args.calls) if meter else None
            await concurrent(_wool_call, args.warmup)
            bursts = await _bursts(args, concurrent, pids)
    resources = {
        "latency_cpu_us_per_call": latency_cpu,
        "caller_rss_mb_before_pool": round(rss_before_pool, 1) if rss_before_pool else None,
        "bursts": bursts,
    }
    return _figures(samples, bursts[0]["calls_per_s"], started), resources


async def _wool_asyncio(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    return await _wool_phases(args, _concurrent_asyncio)


async def _wool_trio(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, Any]]:
    return await _wool_phases(args, _concurrent_trio)


# ---------------------------------------------------------------------------- TLS

# TLS latency, as a ratio to plaintext in the same run (issue 12).
TLS_LATENCY_RATIO_MAX = 1.5


def _test_credentials() -> wool.WorkerCredentials:
    import trustme  # a dev dependency: certificates made for this run only

    ca = trustme.CA()
    leaf = ca.issue_cert("wool-worker")
    return wool.WorkerCredentials(
        ca.cert_pem.bytes(),
        leaf.private_key_pem.bytes(),
        b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
    )


async def _pool_figures(
    args: argparse.Namespace, credentials: wool.WorkerCredentials | None
) -> tuple[list[float], float]:
    async with asyncio.timeout(args.timeout):
        async with wool.WorkerPool(size=POOL_SIZE, credentials=credentials):
            await _sequential(_wool_call, args.warmup)
            samples = await _sequential(_wool_call, args.calls)
            await _concurrent_asyncio(_wool_call, args.warmup)
            throughput = await _concurrent_asyncio(_wool_call, args.concurrent)
    return samples, throughput


async def _tls(args: argparse.Namespace) -> dict[str, Any]:
    """A plaintext pool and an mTLS pool (asyncio caller), alternated so that drift of a
    shared machine affects both alike; latency over all samples, the best throughput."""
    credentials = _test_credentials()
    samples: dict[str, list[float]] = {"plaintext": [], "mtls": []}
    throughput: dict[str, float] = {"plaintext": 0.0, "mtls": 0.0}
    for _ in range(1 if args.quick else 2):
        for name, creds in (("plaintext", None), ("mtls", credentials)):
            got, calls_per_s = await _pool_figures(args, creds)
            samples[name] += got
            throughput[name] = max(throughput[name], calls_per_s)
    report: dict[str, Any] = {
        name: {
            **_latency_stats(samples[name]),
            "throughput_calls_per_s": round(throughput[name], 1),
        }
        for name in samples
    }
    ratio = _ratio(report["mtls"]["latency_median_ms"], report["plaintext"]["latency_median_ms"])
    report["latency_median_ratio"] = ratio
    report["throughput_ratio"] = _ratio(throughput["mtls"], throughput["plaintext"])
    report["latency_median_ratio_max"] = TLS_LATENCY_RATIO_MAX
    report["met"] = ratio <= TLS_LATENCY_RATIO_MAX
    return report


# ---------------------------------------------------------------------------- floor


def _request(i: int) -> bytes:
    # The same payload wool ships: cloudpickle of (routine, args, kwargs). `add` lives in
    # __main__, so cloudpickle sends it by value, as it does for wool.
    return cloudpickle.dumps((add, (i, 1), {}), protocol=pickle.HIGHEST_PROTOCOL)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    return await reader.readexactly(size)


class _PipelinedConnection:
    """A floor connection that many tasks share; responses come back in request order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: deque[asyncio.Future[bytes]] = deque()

    async def read_loop(self) -> None:
        while True:
            data = await _read_frame(self._reader)
            self._pending.popleft().set_result(data)

    async def call(self, i: int) -> int:
        future = asyncio.get_running_loop().create_future()
        payload = _request(i)
        self._pending.append(future)
        self._writer.write(_FRAME.pack(len(payload)) + payload)
        await self._writer.drain()
        return pickle.loads(await future)


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port)


def _meter(pid: int) -> procstat.CpuMeter | None:
    """A CPU meter of this process and the helper server ``pid``, started; None without /proc."""
    return procstat.CpuMeter([pid]).start() if PROC else None


def _cpu(meter: procstat.CpuMeter | None, calls: int) -> dict[str, Any] | None:
    return meter.per_call(calls) if meter is not None else None


async def _floor_latency(port: int, args: argparse.Namespace, cpu: dict[str, Any]) -> list[float]:
    """The simplest RPC there is: write a request, read its response, on one connection."""
    reader, writer = await _open(port)
    try:

        async def call(i: int) -> int:
            payload = _request(i)
            writer.write(_FRAME.pack(len(payload)) + payload)
            return pickle.loads(await _read_frame(reader))

        await _sequential(call, args.warmup)
        meter = _meter(cpu["server_pid"])
        samples = await _sequential(call, args.calls)
        cpu["latency"] = _cpu(meter, args.calls)
        return samples
    finally:
        writer.close()


async def _floor_throughput(port: int, args: argparse.Namespace, cpu: dict[str, Any]) -> float:
    streams = [await _open(port) for _ in range(FLOOR_CONNECTIONS)]
    connections = [_PipelinedConnection(r, w) for r, w in streams]
    readers = [asyncio.create_task(c.read_loop()) for c in connections]
    try:

        def call(i: int) -> Awaitable[int]:
            return connections[i % FLOOR_CONNECTIONS].call(i)

        await _concurrent_asyncio(call, args.warmup)
        meter = _meter(cpu["server_pid"])
        rate = await _concurrent_asyncio(call, args.concurrent)
        cpu["burst"] = _cpu(meter, args.concurrent)
        return rate
    finally:
        for task in readers:
            task.cancel()
        for _, writer in streams:
            writer.close()


async def _floor_client(
    port: int, args: argparse.Namespace, cpu: dict[str, Any]
) -> dict[str, float]:
    async with asyncio.timeout(args.timeout):
        samples = await _floor_latency(port, args, cpu)
        throughput = await _floor_throughput(port, args, cpu)
    return {**_latency_stats(samples), "throughput_calls_per_s": throughput}


class _ServerProcess:
    """A helper server (``--floor-server``, ``--echo-server``, ``--bulk-echo-server``) in a
    second process.

    It listens on 127.0.0.1 on a port the OS picks; leaving the ``with`` kills it, however
    the block ends, and it exits by itself if this process dies (its stdin closes).
    """

    def __init__(self, flag: str) -> None:
        self._flag = flag
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> _ServerProcess:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind((HOST, 0))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            self._process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), self._flag, str(listener.fileno())],
                pass_fds=(listener.fileno(),),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            self.__exit__()
            raise
        finally:
            listener.close()  # the server holds its own copy; connections queue until it accepts
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            _kill(self._process)
            self._process = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid


def _measure_floor(args: argparse.Namespace, cpu: dict[str, Any]) -> dict[str, float]:
    """Start the floor server in a second process, measure against it, always kill it.

    ``cpu`` gets the CPU per call of the client and the server (``latency``, ``burst``)."""
    with _ServerProcess("--floor-server") as server:
        cpu["server_pid"] = server.pid
        try:
            return asyncio.run(_floor_client(server.port, args, cpu))
        finally:
            del cpu["server_pid"]


def _measure_raw_rtt(args: argparse.Namespace) -> dict[str, float]:
    """Round trips of 8 bytes echoed by a second process, blocking sockets, no event loop."""
    with _ServerProcess("--echo-server") as server:
        sock = socket.create_connection((HOST, server.port), timeout=args.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            samples: list[float] = []
            for i in range(args.warmup + args.calls):
                start = time.perf_counter()
                sock.sendall(_ECHO)
                _recv_exactly(sock, len(_ECHO))
                if i >= args.warmup:
                    samples.append(time.perf_counter() - start)
        finally:
            sock.close()
    return {
        "raw_rtt_median_ms": round(_percentile(samples, 50) * 1000, 4),
        "raw_rtt_p99_ms": round(_percentile(samples, 99) * 1000, 4),
    }


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        data += chunk
    return data


def _recv_into(sock: socket.socket, buffer: bytearray) -> None:
    """Fill ``buffer`` from ``sock`` (for large payloads: no copies, no concatenation)."""
    view = memoryview(buffer)
    received = 0
    while received < len(buffer):
        got = sock.recv_into(view[received:])
        if not got:
            raise ConnectionError("the connection closed in the middle of a payload")
        received += got


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _log(f"helper server {process.pid} did not exit after SIGKILL")


# ---------------------------------------------------------------------------- grpclib reference


class _StubService:
    """wool's transport ``Service`` with nothing behind it: every dispatch answers at once."""

    def __init__(self) -> None:
        self._result = cloudpickle.dumps(sum(GRPCLIB_ARGS), protocol=pickle.HIGHEST_PROTOCOL)

    async def dispatch(self, request: Request) -> Response:
        return Response(result=self._result)

    async def cancel(self, call_id: str) -> bool:
        return False

    def info(self) -> WorkerInfo:
        return WorkerInfo()

    async def stop(self, grace: float) -> None:
        return None


async def _serve_grpclib() -> None:
    server = wool.transport.Server(_StubService())
    try:
        port = await server.start(HOST, 0)
        print(port, flush=True)
        await asyncio.Event().wait()  # until killed
    finally:
        await server.close()


def grpclib_server() -> None:
    """The reference server: ``wool.transport.Server`` on uvloop (asyncio without it)."""
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_grpclib())
    else:
        uvloop.run(_serve_grpclib())


class _GrpclibServerProcess:
    """``--grpclib-server`` in a second process; it binds 127.0.0.1 and prints its port.

    Leaving the ``with`` kills it, however the block ends, and it exits by itself if this
    process dies (its stdin closes).
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> _GrpclibServerProcess:
        try:
            self._process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--grpclib-server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self.port = _read_port(self._process, SERVER_START_TIMEOUT)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self._process is not None:
            _kill(self._process)
            if self._process.stdout is not None:
                self._process.stdout.close()
            self._process = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid


def _read_port(process: subprocess.Popen[bytes], timeout: float) -> int:
    """The first line the server prints, as a port; waits at most ``timeout`` seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the grpclib server printed no port within {timeout} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            raise RuntimeError(f"the grpclib server exited ({process.poll()}) before its port")
        data += chunk
    port = int(data)
    if not 0 < port < 65536:
        raise RuntimeError(f"the grpclib server printed {port!r}, not a port")
    return port


async def _grpclib_client(
    port: int, args: argparse.Namespace, cpu: dict[str, Any]
) -> dict[str, float]:
    # The sizes wool sends for `add(x, y)`: the routine pickled by value (it lives in
    # __main__), the arguments pickled, an id, the routine's name, the caller, the depth.
    function = cloudpickle.dumps(add, protocol=pickle.HIGHEST_PROTOCOL)
    arguments = cloudpickle.dumps((GRPCLIB_ARGS, {}), protocol=pickle.HIGHEST_PROTOCOL)
    ids = map(f"{uuid.uuid4().hex[:12]}-{{}}".format, itertools.count())
    caller = f"{os.uname().nodename}:{os.getpid()}"
    expected = sum(GRPCLIB_ARGS)
    client = wool.transport.Client(HOST, port)

    async def call(i: int) -> int:
        task = Task(
            version=PROTOCOL_VERSION,
            id=next(ids),
            routine="add",
            function=function,
            arguments=arguments,
            grace=GRPCLIB_GRACE,
            caller=caller,
            depth=1,
        )
        response = await client.call(Request(task=task))
        if response.result is None or pickle.loads(response.result) != expected:
            raise AssertionError(f"the grpclib reference server answered {response!r}")
        return i + 1  # what the harness expects of add(i, 1); the stub's answer was checked

    try:
        async with asyncio.timeout(args.timeout):
            await _sequential(call, args.warmup)
            meter = _meter(cpu["server_pid"])
            samples = await _sequential(call, args.calls)
            cpu["latency"] = _cpu(meter, args.calls)
            await _concurrent_asyncio(call, args.warmup)
            meter = _meter(cpu["server_pid"])
            throughput = await _concurrent_asyncio(call, args.concurrent)
            cpu["burst"] = _cpu(meter, args.concurrent)
    finally:
        await client.close()
    return {**_latency_stats(samples), "throughput_calls_per_s": throughput}


def _measure_grpclib(args: argparse.Namespace, cpu: dict[str, Any]) -> dict[str, float]:
    """Start the grpclib reference server, measure against it, always kill it.

    ``cpu`` gets the CPU per call of the client and the server (``latency``, ``burst``)."""
    with _GrpclibServerProcess() as server:
        cpu["server_pid"] = server.pid
        try:
            return asyncio.run(_grpclib_client(server.port, args, cpu))
        finally:
            del cpu["server_pid"]


# ---------------------------------------------------------------------------- the original wool


def _original_env() -> dict[str, str]:
    """This environment without what would make another interpreter import this repository's
    wool (the test suite puts ``src`` on ``PYTHONPATH``), and with grpcio's C core quiet."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.pop("VIRTUAL_ENV", None)
    env["GRPC_VERBOSITY"] = "ERROR"
    return env


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed_wool(python: Path) -> str | None:
    """The version of wool that ``python`` has installed, or None (no interpreter, no wool)."""
    if not python.exists():
        return None
    code = "from importlib.metadata import version; print(version('wool'))"
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", code],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            env=_original_env(),
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _ensure_original(venv: Path) -> tuple[Path | None, str | None]:
    """The interpreter of a virtual environment with the original wool, made if need be:
    (its path, None), or (None, why not)."""
    python = _venv_python(venv)
    if _installed_wool(python) == ORIGINAL_VERSION:
        _log(f"original wool {ORIGINAL_VERSION}: reusing {venv}")
        return python, None
    _log(f"original wool {ORIGINAL_VERSION}: installing into {venv}")
    steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv)]]
    steps.append([str(python), "-m", "pip", "install", "--quiet", ORIGINAL_REQUIREMENT])
    for step in steps:
        try:
            done = subprocess.run(
                step,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=ORIGINAL_INSTALL_TIMEOUT,
                env=_original_env(),
            )
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(step)}` took more than {ORIGINAL_INSTALL_TIMEOUT:.0f} s"
        except OSError as error:
            return None, f"`{' '.join(step)}` could not run: {error}"
        if done.returncode != 0:
            return None, f"`{' '.join(step)}` exited {done.returncode}:\n{_tail(done.stdout)}"
    installed = _installed_wool(python)
    if installed != ORIGINAL_VERSION:
        return None, f"{venv} has wool {installed}, not {ORIGINAL_VERSION}, after pip install"
    return python, None


def _measure_original(
    python: Path, args: argparse.Namespace
) -> tuple[dict[str, Any] | None, str | None]:
    """``original.py`` under ``python``: (its figures, None), or (None, why not).

    It runs in its own process group, which is killed if it overruns ``--timeout`` or this
    process is interrupted (its workers are its children). Its stderr (the original's logs)
    goes to a temporary file, shown only if it fails.
    """
    concurrent = min(args.concurrent, ORIGINAL_CONCURRENT_MAX)
    command = [str(python), "-I", str(ORIGINAL_SCRIPT), "--calls", str(args.calls)]
    command += ["--warmup", str(args.warmup), "--concurrent", str(concurrent)]
    command += ["--timeout", str(args.timeout)]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_original_env(),
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=args.timeout + 30)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            return None, f"original.py took more than {args.timeout + 30:.0f} s"
        except BaseException:
            _kill_group(process)
            raise
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    if process.returncode != 0:
        return None, f"original.py exited {process.returncode}:\n{_tail(errors)}"
    try:
        figures = json.loads(stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None, f"original.py printed no JSON line:\n{_tail(stdout.decode(errors='replace'))}"
    if figures.get("version") != ORIGINAL_VERSION:
        return None, f"original.py measured wool {figures.get('version')}, not {ORIGINAL_VERSION}"
    return figures, None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group ``process`` leads (it and what it started), then reap it.

    Only while ``process`` has not been reaped: until then its pid, and so the group's id,
    cannot belong to anything else.
    """
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if process.stdout is not None:
        process.stdout.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _log(f"original.py ({process.pid}) did not exit after SIGKILL")


def _original(args: argparse.Namespace) -> tuple[Path | None, str | None]:
    """Whether to measure the original this run, and with which interpreter: (its path,
    None), or (None, why not). Warns when it was wanted but cannot be had."""
    wanted = args.original if args.original is not None else not args.quick
    if not wanted:
        return None, "skipped (--quick)" if args.original is None else "skipped (--no-original)"
    python, why_not = _ensure_original(args.original_venv)
    if python is None:
        _log(f"WARNING: the original wool is not measured: {why_not}")
    return python, why_not


# ---------------------------------------------------------------------------- failure paths


async def _wait_for_file(path: Path, timeout: float) -> str:
    """The text of ``path`` once it exists (the probe writes its files atomically).

    Polled on purpose, with plain blocking calls: the file is another process's only signal,
    a stat of a small local file takes microseconds, and a thread hop per look would load
    the caller more than the look itself.
    """
    with anyio.fail_after(timeout):
        while not path.exists():  # noqa: ASYNC110, ASYNC240
            await anyio.sleep(POLL)
    return path.read_text()  # noqa: ASYNC240


async def _cancel_sample(directory: Path, sample: int) -> tuple[float, float, bool]:
    """One cancelled call: (s from cancel to the remote finally, s from cancel to the
    caller's scope exiting, whether the finally had started by then)."""
    started = directory / f"{sample}.started"
    cancelled_at = cancelled_perf = math.nan
    with anyio.fail_after(SAMPLE_TIMEOUT):
        with anyio.CancelScope() as scope:

            async def cancel_when_started() -> None:
                nonlocal cancelled_at, cancelled_perf
                await _wait_for_file(started, SAMPLE_TIMEOUT)
                cancelled_at, cancelled_perf = time.time(), time.perf_counter()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_started)
                await probe(str(directory), sample, PROBE_SECONDS)
        returned = time.perf_counter() - cancelled_perf
        if not scope.cancelled_caught:
            raise AssertionError(f"cancel sample {sample}: the call was not cancelled")
        finally_path = directory / f"{sample}.finally"
        before_return = finally_path.exists()
        finally_at = float(await _wait_for_file(finally_path, SAMPLE_TIMEOUT))
    return finally_at - cancelled_at, returned, before_return


async def _cancel_phase(args: argparse.Namespace, directory: Path) -> dict[str, float]:
    to_finally: list[float] = []
    to_return: list[float] = []
    late = 0
    async with wool.WorkerPool(size=CANCEL_POOL_SIZE):
        for i in range(args.cancel_warmup + args.cancel_samples):
            finally_s, return_s, before_return = await _cancel_sample(directory, i)
            if i < args.cancel_warmup:
                continue
            to_finally.append(finally_s)
            to_return.append(return_s)
            late += not before_return
    return {
        "median_ms": round(_percentile(to_finally, 50) * 1000, 4),
        "p95_ms": round(_percentile(to_finally, 95) * 1000, 4),
        "max_ms": round(max(to_finally) * 1000, 4),
        "caller_return_median_ms": round(_percentile(to_return, 50) * 1000, 4),
        "finally_after_return": late,
        "samples": len(to_finally),
    }


async def _loss_sample(pool: wool.WorkerPool, directory: Path, sample: int) -> tuple[float, float]:
    """One call whose worker is SIGKILLed: (s from the kill to ``WorkerLost``, s from the
    kill to the pool being back to full size without the killed worker)."""
    started = directory / f"{sample}.started"
    killed_at = math.nan
    killed_pid = 0

    async def kill_when_started() -> None:
        nonlocal killed_at, killed_pid
        pid = int(await _wait_for_file(started, SAMPLE_TIMEOUT))
        if pid not in {w.pid for w in pool.workers}:  # never signal anything but our worker
            raise AssertionError(f"worker-loss sample {sample}: pid {pid} is not a pool worker")
        killed_pid = pid
        killed_at = time.perf_counter()
        os.kill(pid, signal.SIGKILL)

    with anyio.fail_after(SAMPLE_TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_when_started)
            try:
                await probe(str(directory), sample, PROBE_SECONDS)
            except wool.WorkerLost:
                lost_at = time.perf_counter()
            else:
                raise AssertionError(f"worker-loss sample {sample}: the call returned")
    if not lost_at > killed_at:  # also when nothing was killed (nan)
        raise AssertionError(f"worker-loss sample {sample}: WorkerLost came before the kill")

    def replaced() -> bool:
        pids = {w.pid for w in pool.workers}
        return len(pids) >= LOSS_POOL_SIZE and killed_pid not in pids

    with anyio.fail_after(REPLACE_TIMEOUT):  # the pool has no event for this: poll
        while not replaced():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    return lost_at - killed_at, time.perf_counter() - killed_at


async def _loss_phase(args: argparse.Namespace, directory: Path) -> dict[str, float]:
    lost: list[float] = []
    replaced: list[float] = []
    async with wool.WorkerPool(size=LOSS_POOL_SIZE) as pool:
        for _ in range(2):  # warm both workers up: the first call to each costs more
            await add(0, 1)
        for i in range(args.loss_samples):
            lost_s, replaced_s = await _loss_sample(pool, directory, i)
            lost.append(lost_s)
            replaced.append(replaced_s)
    return {
        "median_ms": round(_percentile(lost, 50) * 1000, 4),
        "max_ms": round(max(lost) * 1000, 4),
        "replacement_median_s": round(_percentile(replaced, 50), 3),
        "samples": len(lost),
    }


async def _failures(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Cancellation and worker-loss figures under the running event loop (asyncio or trio)."""
    directory = Path(tempfile.mkdtemp(prefix="wool-bench-"))
    try:
        (directory / "cancel").mkdir()
        (directory / "loss").mkdir()
        with anyio.fail_after(args.timeout):
            cancel = await _cancel_phase(args, directory / "cancel")
            loss = await _loss_phase(args, directory / "loss")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return cancel, loss


# ---------------------------------------------------------------------------- streaming, payloads


async def _stream_once(n: int) -> float:
    """Items/s of one ``async for`` over ``count(n)``, every item checked."""
    expected = 0
    start = time.perf_counter()
    async with contextlib.aclosing(count(n)) as items:  # closed at once if a check fails
        async for item in items:
            if item != expected:
                raise AssertionError(f"count({n}) yielded {item!r} where {expected} was due")
            expected += 1
    elapsed = time.perf_counter() - start
    if expected != n:
        raise AssertionError(f"count({n}) yielded {expected} items")
    return n / elapsed


async def _stream(args: argparse.Namespace) -> dict[str, float]:
    """Generator streaming under the running event loop (asyncio or trio): the median and
    the best items/s of ``--stream-runs`` calls of ``count(--stream-items)``."""
    rates: list[float] = []
    with anyio.fail_after(args.timeout):
        start = time.perf_counter()
        async with wool.WorkerPool(size=POOL_SIZE):
            started = time.perf_counter() - start
            for _ in range(POOL_SIZE):  # warm every worker up: round robin takes turns
                await _stream_once(STREAM_WARMUP_ITEMS)
            for _ in range(args.stream_runs):
                rates.append(await _stream_once(args.stream_items))
    return {
        "items_per_s": round(_percentile(rates, 50), 1),
        "items_per_s_max": round(max(rates), 1),
        "pool_start_s": round(started, 3),
    }


def _echo_runs(args: argparse.Namespace) -> dict[int, int]:
    """Timed round trips per payload size."""
    return dict(zip(ECHO_SIZES, (args.echo_runs, args.echo_large_runs), strict=True))


def _echo_name(size: int) -> str:
    return f"{size // 1_000_000}MB"


async def _echo_wool(args: argparse.Namespace, payload: bytes) -> dict[int, float]:
    """Median seconds of a wool ``echo(data)`` round trip per size, asyncio caller."""
    medians: dict[int, float] = {}
    async with asyncio.timeout(args.timeout):
        async with wool.WorkerPool(size=POOL_SIZE):
            for size, runs in _echo_runs(args).items():
                data = payload[:size]
                samples: list[float] = []
                for i in range(ECHO_WARMUP + runs):
                    start = time.perf_counter()
                    result = await echo(data)
                    elapsed = time.perf_counter() - start
                    if result != data:
                        raise AssertionError(f"echo of {size} bytes returned other bytes")
                    del result
                    if i >= ECHO_WARMUP:
                        samples.append(elapsed)
                medians[size] = _percentile(samples, 50)
    return medians


def _echo_floor(args: argparse.Namespace, payload: bytes) -> dict[int, float]:
    """Median seconds of the same payloads echoed by ``--bulk-echo-server``: a 4-byte length,
    then the bytes, on one blocking loopback TCP connection; each side receives the whole
    payload into a new buffer, as any RPC must, and the server writes it back only then."""
    medians: dict[int, float] = {}
    with _ServerProcess("--bulk-echo-server") as server:
        sock = socket.create_connection((HOST, server.port), timeout=args.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for size, runs in _echo_runs(args).items():
                data = payload[:size]
                samples: list[float] = []
                for i in range(ECHO_WARMUP + runs):
                    start = time.perf_counter()
                    sock.sendall(_FRAME.pack(size))
                    sock.sendall(data)
                    (echoed,) = _FRAME.unpack(_recv_exactly(sock, _FRAME.size))
                    received = bytearray(echoed)
                    _recv_into(sock, received)
                    elapsed = time.perf_counter() - start
                    if bytes(received) != data:  # bytes(): for pyright, bytearray != bytes
                        raise AssertionError(f"the echo server returned other {size} bytes")
                    del received
                    if i >= ECHO_WARMUP:
                        samples.append(elapsed)
                medians[size] = _percentile(samples, 50)
        finally:
            sock.close()
    return medians


def _measure_echo(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Large payloads: MB/s of wool's ``echo`` and of the raw-socket floor, per size."""
    payload = os.urandom(max(ECHO_SIZES))
    floor = _echo_floor(args, payload)
    wool_seconds = asyncio.run(_echo_wool(args, payload))
    figures: dict[str, dict[str, float]] = {}
    for size, runs in _echo_runs(args).items():
        wool_mb_per_s = size / wool_seconds[size] / 1e6
        floor_mb_per_s = size / floor[size] / 1e6
        figures[_echo_name(size)] = {
            "bytes": size,
            "runs": runs,
            "wool_median_s": round(wool_seconds[size], 6),
            "wool_mb_per_s": round(wool_mb_per_s, 1),
            "floor_median_s": round(floor[size], 6),
            "floor_mb_per_s": round(floor_mb_per_s, 1),
            "mb_per_s_ratio": _ratio(wool_mb_per_s, floor_mb_per_s),
        }
    return figures


# ---------------------------------------------------------------------------- floor server


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            fn, call_args, call_kwargs = pickle.loads(await _read_frame(reader))
            fn = getattr(fn, "__wrapped__", fn)  # the routine's function, run here
            response = cloudpickle.dumps(
                await fn(*call_args, **call_kwargs), protocol=pickle.HIGHEST_PROTOCOL
            )
            writer.write(_FRAME.pack(len(response)) + response)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _serve(fd: int) -> None:
    listener = socket.socket(fileno=fd)
    server = await asyncio.start_server(_serve_connection, sock=listener)
    async with server:
        await server.serve_forever()


def _exit_when_parent_goes() -> None:
    """Exit as soon as stdin (a pipe from the benchmark) closes, however the parent ended."""
    sys.stdin.buffer.read()
    os._exit(0)


def floor_server(fd: int) -> None:
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    asyncio.run(_serve(fd))


def echo_server(fd: int) -> None:
    """Echo every byte back, one connection at a time, with blocking sockets."""
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    listener = socket.socket(fileno=fd)
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while data := connection.recv(4096):
                    connection.sendall(data)
            except ConnectionError:
                pass


def bulk_echo_server(fd: int) -> None:
    """Read a length-prefixed payload whole, write it back with its length, and again; one
    connection at a time, blocking sockets. (``echo_server`` echoes 4 KiB reads as they come:
    a pipe, not a store-and-forward round trip like an RPC's.)"""
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    listener = socket.socket(fileno=fd)
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                while True:
                    header = _recv_exactly(connection, _FRAME.size)
                    data = bytearray(_FRAME.unpack(header)[0])
                    _recv_into(connection, data)
                    connection.sendall(header)
                    connection.sendall(data)
                    del data
            except ConnectionError:
                pass


# ---------------------------------------------------------------------------- report


def _with_ratios(figures: dict[str, float], floor: dict[str, float]) -> dict[str, float]:
    return {
        "latency_median_ms": figures["latency_median_ms"],
        "latency_p99_ms": figures["latency_p99_ms"],
        "throughput_calls_per_s": round(figures["throughput_calls_per_s"], 1),
        "latency_median_ratio": _ratio(figures["latency_median_ms"], floor["latency_median_ms"]),
        "latency_p99_ratio": _ratio(figures["latency_p99_ms"], floor["latency_p99_ms"]),
        "throughput_ratio": _ratio(
            figures["throughput_calls_per_s"], floor["throughput_calls_per_s"]
        ),
        "pool_start_s": round(figures["pool_start_s"], 3),
        "latency_median_raw_rtt_ratio": _ratio(
            figures["latency_median_ms"], floor["raw_rtt_median_ms"]
        ),
    }


def _ratio(value: float, floor: float) -> float:
    return round(value / floor, 3) if floor > 0 else math.inf


def _server_cpu(cpu: dict[str, Any] | None) -> dict[str, float] | None:
    """A helper server's meter reading as ``{client, server}`` µs of CPU per call."""
    if cpu is None:
        return None
    return {"client": cpu["caller"], "server": cpu["workers_total"]}


def _cpu_ratio(
    wool_cpu: dict[str, Any] | None, base: dict[str, float] | None
) -> dict[str, float] | None:
    """wool's CPU per call over a helper's: caller / client, workers' total / server."""
    if wool_cpu is None or base is None:
        return None
    return {
        "caller": _ratio(wool_cpu["caller"], base["client"]),
        "workers_total": _ratio(wool_cpu["workers_total"], base["server"]),
    }


def _caller_resources(
    resources: dict[str, Any], floor: dict[str, float], floor_cpu: dict[str, Any]
) -> dict[str, Any]:
    """One caller's CPU and memory figures, with ratios to the floor's in this run."""
    bursts = [
        {
            **burst,
            "throughput_ratio": _ratio(burst["calls_per_s"], floor["throughput_calls_per_s"])
            if burst["calls_per_s"] is not None
            else None,
            "cpu_ratio": _cpu_ratio(burst["cpu_us_per_call"], floor_cpu["burst"]),
        }
        for burst in resources["bursts"]
    ]
    done = [burst for burst in bursts if burst["calls_per_s"] is not None]
    first, last = done[0], done[-1]
    report: dict[str, Any] = {
        "latency_cpu_us_per_call": resources["latency_cpu_us_per_call"],
        "latency_cpu_ratio": _cpu_ratio(resources["latency_cpu_us_per_call"], floor_cpu["latency"]),
        "caller_rss_mb_before_pool": resources["caller_rss_mb_before_pool"],
        "bursts": bursts,
        "bursts_failed": len(bursts) - len(done),
        "throughput_last_first_ratio": _ratio(last["calls_per_s"], first["calls_per_s"]),
        "rss_total_mb_after_last_burst": None,
        "rss_total_growth_ratio": None,
    }
    if last["rss_mb_after"] is not None:
        report["rss_total_mb_after_last_burst"] = last["rss_mb_after"]["total"]
        report["rss_total_growth_ratio"] = _ratio(
            last["rss_mb_after"]["total"], first["rss_mb_before"]["total"]
        )
    return report


def _resources_report(
    floor: dict[str, float],
    floor_cpu: dict[str, Any],
    grpclib_cpu: dict[str, Any],
    callers: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """The ``resources`` section: CPU per call and RSS (see benchmarks/README.md)."""
    floor_cpu = {phase: _server_cpu(floor_cpu.get(phase)) for phase in ("latency", "burst")}
    report: dict[str, Any] = {
        "available": PROC,
        "floor": {f"{phase}_cpu_us_per_call": cpu for phase, cpu in floor_cpu.items()},
        "grpclib": {
            f"{phase}_cpu_us_per_call": _server_cpu(grpclib_cpu.get(phase))
            for phase in ("latency", "burst")
        },
    }
    for name, resources in callers.items():
        report[name] = _caller_resources(resources, floor, floor_cpu)
    return report


def _targets() -> dict[str, float]:
    return {
        "asyncio_latency_median_ms_max": TARGET_LATENCY_MEDIAN_MS,
        "asyncio_throughput_calls_per_s_min": TARGET_THROUGHPUT,
        "trio_latency_median_ms_max": TARGET_LATENCY_MEDIAN_MS * TRIO_SLACK,
        "trio_throughput_calls_per_s_min": round(TARGET_THROUGHPUT / TRIO_SLACK, 1),
        "cancel_median_ms_max": TARGET_CANCEL_MEDIAN_MS,
        "worker_loss_ms_max": TARGET_WORKER_LOSS_MS,
        "stream_asyncio_items_per_s_min": TARGET_STREAM_ITEMS_PER_S,
        "stream_trio_items_per_s_min": TARGET_STREAM_ITEMS_PER_S,
        f"echo_{_echo_name(TARGET_ECHO_SIZE)}_mb_per_s_min": TARGET_ECHO_MB_PER_S,
    }


def _targets_relative() -> dict[str, float]:
    return {
        "reference_loopback_rtt_ms": REFERENCE_LOOPBACK_RTT_MS,
        "asyncio_latency_median_ratio_max": TARGET_LATENCY_FLOOR_RATIO,
        "trio_latency_median_ratio_max": TARGET_LATENCY_FLOOR_RATIO * TRIO_SLACK,
    }


def _targets_relative_met(
    targets: dict[str, float], asyncio_report: dict[str, float], trio_report: dict[str, float]
) -> dict[str, bool]:
    return {
        f"{name}_latency_median": (
            report["latency_median_ratio"] <= targets[f"{name}_latency_median_ratio_max"]
        )
        for name, report in (("asyncio", asyncio_report), ("trio", trio_report))
    }


def _targets_met(
    targets: dict[str, float],
    asyncio_figures: dict[str, float],
    trio_figures: dict[str, float],
    cancel: dict[str, dict[str, float]],
    loss: dict[str, dict[str, float]],
    stream: dict[str, dict[str, float]],
    echo_figures: dict[str, dict[str, float]],
) -> dict[str, bool]:
    met = {}
    for name, figures in (("asyncio", asyncio_figures), ("trio", trio_figures)):
        met[f"{name}_latency_median"] = (
            figures["latency_median_ms"] <= targets[f"{name}_latency_median_ms_max"]
        )
        met[f"{name}_throughput"] = (
            figures["throughput_calls_per_s"] >= targets[f"{name}_throughput_calls_per_s_min"]
        )
    for name in ("asyncio", "trio"):
        met[f"cancel_{name}"] = cancel[name]["median_ms"] <= targets["cancel_median_ms_max"]
    for name in ("asyncio", "trio"):
        met[f"worker_loss_{name}"] = loss[name]["max_ms"] <= targets["worker_loss_ms_max"]
    for name in ("asyncio", "trio"):
        met[f"stream_{name}"] = (
            stream[name]["items_per_s"] >= targets[f"stream_{name}_items_per_s_min"]
        )
    size = _echo_name(TARGET_ECHO_SIZE)
    met[f"echo_{size}"] = (
        echo_figures[size]["wool_mb_per_s"] >= targets[f"echo_{size}_mb_per_s_min"]
    )
    return met


def _targets_same_run() -> dict[str, float]:
    return {
        "asyncio_latency_speedup_min": TARGET_LATENCY_SPEEDUP,
        "asyncio_throughput_speedup_min": TARGET_THROUGHPUT_SPEEDUP,
        "trio_latency_speedup_min": round(TARGET_LATENCY_SPEEDUP / TRIO_SLACK, 2),
        "trio_throughput_speedup_min": round(TARGET_THROUGHPUT_SPEEDUP / TRIO_SLACK, 2),
    }


def _original_report(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    if figures is None:
        return None
    keys = ("version", "latency_median_ms", "latency_p99_ms", "throughput_calls_per_s")
    return {key: figures[key] for key in (*keys, "calls", "concurrent", "pool_start_s")}


def _speedup(
    original: dict[str, Any] | None,
    asyncio_figures: dict[str, float],
    trio_figures: dict[str, float],
) -> dict[str, float] | None:
    """``original / wool`` for latency, ``wool / original`` for throughput: higher is better."""
    if original is None:
        return None
    speedup = {}
    for name, figures in (("asyncio", asyncio_figures), ("trio", trio_figures)):
        speedup[f"{name}_latency"] = _ratio(
            original["latency_median_ms"], figures["latency_median_ms"]
        )
        speedup[f"{name}_throughput"] = _ratio(
            figures["throughput_calls_per_s"], original["throughput_calls_per_s"]
        )
    return speedup


def _targets_same_run_met(
    targets: dict[str, float], speedup: dict[str, float] | None
) -> dict[str, bool] | None:
    if speedup is None:
        return None
    return {
        f"{name}_{kind}": speedup[f"{name}_{kind}"] >= targets[f"{name}_{kind}_speedup_min"]
        for name in ("asyncio", "trio")
        for kind in ("latency", "throughput")
    }


def _report(
    args: argparse.Namespace,
    floor: dict[str, float],
    grpclib: dict[str, float],
    asyncio_figures: dict[str, float],
    trio_figures: dict[str, float],
    cancel: dict[str, dict[str, float]],
    loss: dict[str, dict[str, float]],
    stream: dict[str, dict[str, float]],
    echo_figures: dict[str, dict[str, float]],
    original: dict[str, Any] | None,
    original_unavailable: str | None,
) -> dict[str, Any]:
    targets = _targets()
    targets_same_run = _targets_same_run()
    speedup = _speedup(original, asyncio_figures, trio_figures)
    targets_relative = _targets_relative()
    asyncio_report = _with_ratios(asyncio_figures, floor)
    asyncio_report["latency_median_grpclib_ratio"] = _ratio(
        asyncio_figures["latency_median_ms"], grpclib["latency_median_ms"]
    )
    asyncio_report["throughput_grpclib_ratio"] = _ratio(
        asyncio_figures["throughput_calls_per_s"], grpclib["throughput_calls_per_s"]
    )
    trio_report = _with_ratios(trio_figures, floor)
    return {
        "wool_version": wool.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "pool_size": POOL_SIZE,
        "calls": args.calls,
        "warmup": args.warmup,
        "concurrent": args.concurrent,
        "quick": args.quick,
        "floor": {
            "latency_median_ms": floor["latency_median_ms"],
            "latency_p99_ms": floor["latency_p99_ms"],
            "throughput_calls_per_s": round(floor["throughput_calls_per_s"], 1),
            "connections": FLOOR_CONNECTIONS,
            "raw_rtt_median_ms": floor["raw_rtt_median_ms"],
            "raw_rtt_p99_ms": floor["raw_rtt_p99_ms"],
        },
        "grpclib": {
            "latency_median_ms": grpclib["latency_median_ms"],
            "latency_p99_ms": grpclib["latency_p99_ms"],
            "throughput_calls_per_s": round(grpclib["throughput_calls_per_s"], 1),
        },
        "asyncio": asyncio_report,
        "trio": trio_report,
        "cancel": {**cancel, "pool_size": CANCEL_POOL_SIZE},
        "worker_loss": {**loss, "pool_size": LOSS_POOL_SIZE},
        "stream": {
            **stream,
            "items": args.stream_items,
            "runs": args.stream_runs,
            "warmup_items": STREAM_WARMUP_ITEMS,
            "pool_size": POOL_SIZE,
        },
        "echo": {
            **echo_figures,
            "warmup": ECHO_WARMUP,
            "pool_size": POOL_SIZE,
            # `make bench` gives the caller the malloc settings wool gives its workers.
            "caller_malloc_tuned": "MALLOC_MMAP_THRESHOLD_" in os.environ,
        },
        "targets": targets,
        "targets_met": _targets_met(
            targets, asyncio_figures, trio_figures, cancel, loss, stream, echo_figures
        ),
        "targets_relative": targets_relative,
        "targets_relative_met": _targets_relative_met(
            targets_relative, asyncio_report, trio_report
        ),
        "original": _original_report(original),
        "original_unavailable": original_unavailable,
        "speedup": speedup,
        "targets_same_run": targets_same_run,
        "targets_same_run_met": _targets_same_run_met(targets_same_run, speedup),
    }


def _summary(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name}: median {figures['latency_median_ms']:.3f} ms, "
        f"p99 {figures['latency_p99_ms']:.3f} ms, "
        f"{figures['throughput_calls_per_s']:.0f} calls/s"
    )


def _failure_summary(name: str, cancel: dict[str, float], loss: dict[str, float]) -> str:
    return (
        f"{name}: cancel -> remote finally median {cancel['median_ms']:.3f} ms, "
        f"p95 {cancel['p95_ms']:.3f} ms ({cancel['samples']:.0f} samples); "
        f"SIGKILL -> WorkerLost median {loss['median_ms']:.3f} ms, "
        f"max {loss['max_ms']:.3f} ms ({loss['samples']:.0f} samples)"
    )


def _stream_summary(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name}: median {figures['items_per_s']:.0f} items/s, "
        f"best {figures['items_per_s_max']:.0f} items/s"
    )


def _echo_summary(name: str, figures: dict[str, float]) -> str:
    return (
        f"echo {name} (asyncio caller): wool {figures['wool_mb_per_s']:.1f} MB/s, "
        f"floor {figures['floor_mb_per_s']:.1f} MB/s (ratio {figures['mb_per_s_ratio']:.3f}; "
        f"median of {figures['runs']:.0f})"
    )


def _bursts_summary(name: str, resources: dict[str, Any]) -> str:
    parts = []
    for burst in resources["bursts"]:
        if burst["calls_per_s"] is None:
            parts.append(f"FAILED ({burst['failed']})")
            continue
        part = f"{burst['calls_per_s']:.0f} calls/s"
        if burst["cpu_us_per_call"] is not None:
            cpu = burst["cpu_us_per_call"]
            part += f" (CPU/call caller {cpu['caller']:.0f} us, "
            part += f"workers {cpu['workers_total']:.0f} us"
            part += f"; RSS after {burst['rss_mb_after']['total']:.0f} MB)"
        parts.append(part)
    return f"{name} bursts: " + ", ".join(parts)


async def _bounded(timeout: float, phase: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return await phase


def _measure_head_of_line(args: argparse.Namespace) -> dict[str, Any]:
    from hol import measure

    _log(f"head of line: {args.hol_calls} small calls, unloaded, then during 100 MB echoes")
    figures = asyncio.run(
        _bounded(
            args.timeout,
            measure(
                add, echo, args.hol_calls, args.warmup, args.timeout / 4, 1 if args.quick else 2
            ),
        )
    )
    _log(
        f"head of line: small-call p99 {figures['unloaded_p99_ms']:.3f} ms unloaded, "
        f"{figures['loaded_p99_ms']:.3f} ms during echoes ({figures['p99_ratio']:.2f}x; "
        f"{'met' if figures['met'] else 'NOT met'}: at most {figures['p99_ratio_max']}x)"
    )
    return figures


def _measure_events(args: argparse.Namespace) -> dict[str, Any]:
    from bench_events import measure

    rounds = 1 if args.quick else 2
    _log(f"events: {rounds} x {args.calls} calls with no handler and with one (pool of 2)")
    figures = asyncio.run(_bounded(args.timeout, measure(add, args.calls, args.warmup, rounds)))
    _log(
        f"events: median {figures['none']['latency_median_ms']:.3f} ms with no handler, "
        f"{figures['handler']['latency_median_ms']:.3f} ms with one "
        f"({figures['latency_median_ratio']:.3f}x)"
    )
    return figures


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, help="sequential calls timed (default 2000)")
    parser.add_argument("--warmup", type=int, help="untimed calls before each measure (200)")
    parser.add_argument("--concurrent", type=int, help="calls started at once (default 10000)")
    parser.add_argument("--timeout", type=float, help="seconds each phase may take (300)")
    parser.add_argument("--bursts", type=int, help="bursts of --concurrent calls, back to back (3)")
    parser.add_argument(
        "--hol-calls", type=int, help="small calls timed, unloaded and during echoes (1000)"
    )
    parser.add_argument("--cancel-samples", type=int, help="cancelled calls timed (default 200)")
    parser.add_argument("--cancel-warmup", type=int, help="untimed cancelled calls first (5)")
    parser.add_argument("--loss-samples", type=int, help="workers killed mid-call (default 20)")
    parser.add_argument(
        "--stream-items", type=int, help=f"items one generator call yields ({STREAM_ITEMS})"
    )
    parser.add_argument("--stream-runs", type=int, help="generator calls timed (default 3)")
    parser.add_argument("--echo-runs", type=int, help="10 MB echoes timed (default 5)")
    parser.add_argument("--echo-large-runs", type=int, help="100 MB echoes timed (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "small numbers, for a smoke test (100/20/500, 2 bursts, 20/2 cancels, 3 kills, "
            "1 generator "
            "call, 3 + 1 echoes, 60 s)"
        ),
    )
    parser.add_argument(
        "--original",
        action=argparse.BooleanOptionalAction,
        help=(
            f"measure the original wool ({ORIGINAL_REQUIREMENT}) in the same run "
            "(default: yes, but no with --quick)"
        ),
    )
    parser.add_argument(
        "--original-venv",
        type=Path,
        default=ORIGINAL_VENV,
        metavar="DIR",
        help=f"virtual environment for the original, made if missing (default {ORIGINAL_VENV})",
    )
    parser.add_argument("--floor-server", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--echo-server", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--bulk-echo-server", type=int, metavar="FD", help=argparse.SUPPRESS)
    parser.add_argument("--grpclib-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = ("calls", "warmup", "concurrent", "timeout", "cancel_samples", "cancel_warmup")
    names += ("loss_samples", "stream_items", "stream_runs", "echo_runs", "echo_large_runs")
    names += ("bursts", "hol_calls")
    defaults = (
        (100, 20, 500, 60.0, 20, 2, 3, STREAM_ITEMS, 1, 3, 1, 2, 100)
        if args.quick
        else (2000, 200, 10000, 300.0, 200, 5, 20, STREAM_ITEMS, 3, 5, 3, 3, 1000)
    )
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.calls < 1 or args.concurrent < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--calls and --concurrent must be >= 1, --warmup >= 0, --timeout > 0")
    if args.cancel_samples < 1 or args.loss_samples < 1 or args.cancel_warmup < 0:
        parser.error("--cancel-samples and --loss-samples must be >= 1, --cancel-warmup >= 0")
    if min(args.stream_items, args.stream_runs, args.echo_runs, args.echo_large_runs) < 1:
        parser.error("--stream-items, --stream-runs and --echo-*runs must be >= 1")
    if args.bursts < 1 or args.hol_calls < 1:
        parser.error("--bursts and --hol-calls must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.floor_server is not None:
        floor_server(args.floor_server)
        return
    if args.echo_server is not None:
        echo_server(args.echo_server)
        return
    if args.bulk_echo_server is not None:
        bulk_echo_server(args.bulk_echo_server)
        return
    if args.grpclib_server:
        grpclib_server()
        return
    original_python, original_unavailable = _original(args)
    _log(f"{args.calls} sequential + {args.concurrent} concurrent calls, pool of {POOL_SIZE}")
    floor_cpu: dict[str, Any] = {}
    floor = _measure_floor(args, floor_cpu)
    _log(_summary("floor (asyncio + TCP loopback)", floor))
    floor.update(_measure_raw_rtt(args))
    _log(f"raw loopback round trip: median {floor['raw_rtt_median_ms']:.3f} ms")
    grpclib_cpu: dict[str, Any] = {}
    grpclib = _measure_grpclib(args, grpclib_cpu)
    _log(_summary("grpclib reference (wool.transport, no dispatch; asyncio)", grpclib))
    original: dict[str, Any] | None = None
    if original_python is not None:
        original, original_unavailable = _measure_original(original_python, args)
        if original is None:
            _log(f"WARNING: the original wool could not be measured: {original_unavailable}")
        else:
            _log(
                _summary(
                    f"original wool {original['version']} ({original['concurrent']} "
                    "concurrent), asyncio caller",
                    original,
                )
            )
    callers: dict[str, dict[str, Any]] = {}
    asyncio_figures, callers["asyncio"] = asyncio.run(_wool_asyncio(args))
    _log(_summary("wool, asyncio caller", asyncio_figures))
    _log(_bursts_summary("asyncio", callers["asyncio"]))
    trio_figures, callers["trio"] = trio.run(_wool_trio, args)
    _log(_summary("wool, trio caller", trio_figures))
    _log(_bursts_summary("trio", callers["trio"]))
    _log(
        f"{args.cancel_samples} cancelled calls (pool of {CANCEL_POOL_SIZE}), "
        f"{args.loss_samples} killed workers (pool of {LOSS_POOL_SIZE}) per caller"
    )
    cancel: dict[str, dict[str, float]] = {}
    loss: dict[str, dict[str, float]] = {}
    cancel["asyncio"], loss["asyncio"] = asyncio.run(_failures(args))
    _log(_failure_summary("asyncio caller", cancel["asyncio"], loss["asyncio"]))
    cancel["trio"], loss["trio"] = trio.run(_failures, args)
    _log(_failure_summary("trio caller", cancel["trio"], loss["trio"]))
    _log(
        f"{args.stream_runs} x {args.stream_items} generator items per caller (pool of {POOL_SIZE})"
    )
    stream: dict[str, dict[str, float]] = {}
    stream["asyncio"] = asyncio.run(_stream(args))
    _log(_stream_summary("stream, asyncio caller", stream["asyncio"]))
    stream["trio"] = trio.run(_stream, args)
    _log(_stream_summary("stream, trio caller", stream["trio"]))
    runs = _echo_runs(args)
    _log(
        "echo: "
        + ", ".join(f"{runs[size]} x {_echo_name(size)}" for size in ECHO_SIZES)
        + f" after {ECHO_WARMUP} of each (pool of {POOL_SIZE}; floor: raw loopback TCP)"
    )
    echo_figures = _measure_echo(args)
    for name, figures in echo_figures.items():
        _log(_echo_summary(name, figures))
    _log(f"plaintext pool vs mutual-TLS pool (asyncio caller, pool of {POOL_SIZE})")
    tls = asyncio.run(_tls(args))
    for name in ("plaintext", "mtls"):
        _log(_summary(f"tls: {name}", tls[name]))
    _log(
        f"tls: mTLS latency {tls['latency_median_ratio']:.2f}x plaintext "
        f"({'met' if tls['met'] else 'NOT met'}: at most {TLS_LATENCY_RATIO_MAX}x), "
        f"throughput {tls['throughput_ratio']:.2f}x"
    )
    head_of_line = _measure_head_of_line(args)
    events = _measure_events(args)
    from balance import measure as measure_balance  # a script's directory is on sys.path

    pairs = 10 if args.quick else 20
    _log(f"balance: {2 * pairs} calls of 100 ms and 1 ms, alternating (pool of 2)")
    balance = asyncio.run(measure_balance(pairs, 1 if args.quick else 3))
    _log(
        f"balance: round robin {balance['round_robin_s']:.3f} s, least loaded "
        f"{balance['least_loaded_s']:.3f} s ({balance['speedup']:.2f}x)"
    )
    report = _report(
        args,
        floor,
        grpclib,
        asyncio_figures,
        trio_figures,
        cancel,
        loss,
        stream,
        echo_figures,
        original,
        original_unavailable,
    )
    if report["speedup"] is not None:
        speedup, met = report["speedup"], report["targets_same_run_met"]
        _log(
            "speedup over the original (same run): "
            + ", ".join(
                f"{k} {v:.2f}x ({'met' if met[k] else 'NOT met'})" for k, v in speedup.items()
            )
        )
    report["tls"] = tls
    report["balance"] = balance
    report["resources"] = _resources_report(floor, floor_cpu, grpclib_cpu, callers)
    report["head_of_line"] = head_of_line
    report["events"] = events
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
