"""Latency and throughput of trivial wool calls, next to a floor measured in the same run.

What is measured, for a ``wool.WorkerPool(size=2)`` and a trivial ``add(x, y)`` routine:

- sequential latency: median and p99 (ms) of ``--calls`` calls awaited one after the other,
  after a warm-up;
- throughput: calls/s of ``--concurrent`` calls all started at once in one task group;

each under an asyncio caller (``asyncio.run``, default event loop, not uvloop) and under a
trio caller (``trio.run``; the pool's workers then run trio too).

The floor is the least any RPC of the same call could cost on this machine: the same
cloudpickled request ``(function, args, kwargs)`` and response (the pickled result) sent as
length-prefixed frames over a plain loopback TCP socket to a second process, which unpickles
the request, awaits the function and pickles the result. Client and server run on the
default asyncio loop, so the difference to wool is what wool's machinery (gRPC over HTTP/2,
dispatch, load balancing, the trio bridge) adds on top of pickling and a socket.

Every wool figure is also reported as a ratio to the floor, because absolute figures depend
on the machine, and shared or noisy machines (CI, laptops on battery) swing them by a lot;
the floor, measured minutes apart in the same process, swings with them. Latency ratios are
``wool / floor`` (1.0 is the floor, higher is slower); throughput ratios are
``wool / floor`` too (1.0 is the floor, lower is slower).

Output: one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pickle
import platform
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import cloudpickle
import trio

import wool

HOST = "127.0.0.1"  # the only address this benchmark ever uses
POOL_SIZE = 2
# The floor's throughput spreads the concurrent calls over as many connections as the pool
# has workers, and pipelines them on each: every call writes its request at once and waits
# for its response, which comes back in order on its connection. That is what wool does with
# one multiplexed HTTP/2 connection per worker, minus HTTP/2 and gRPC.
FLOOR_CONNECTIONS = POOL_SIZE
TARGET_LATENCY_MEDIAN_MS = 1.0
TARGET_THROUGHPUT = 2000.0
TRIO_SLACK = 1.5
_FRAME = struct.Struct("!I")


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


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


async def _wool_asyncio(args: argparse.Namespace) -> dict[str, float]:
    async with asyncio.timeout(args.timeout):
        start = time.perf_counter()
        async with wool.WorkerPool(size=POOL_SIZE):
            started = time.perf_counter() - start
            await _sequential(_wool_call, args.warmup)
            samples = await _sequential(_wool_call, args.calls)
            await _concurrent_asyncio(_wool_call, args.warmup)
            throughput = await _concurrent_asyncio(_wool_call, args.concurrent)
    return _figures(samples, throughput, started)


async def _wool_trio(args: argparse.Namespace) -> dict[str, float]:
    with trio.fail_after(args.timeout):
        start = time.perf_counter()
        async with wool.WorkerPool(size=POOL_SIZE):
            started = time.perf_counter() - start
            await _sequential(_wool_call, args.warmup)
            samples = await _sequential(_wool_call, args.calls)
            await _concurrent_trio(_wool_call, args.warmup)
            throughput = await _concurrent_trio(_wool_call, args.concurrent)
    return _figures(samples, throughput, started)


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


async def _floor_latency(port: int, args: argparse.Namespace) -> list[float]:
    """The simplest RPC there is: write a request, read its response, on one connection."""
    reader, writer = await _open(port)
    try:

        async def call(i: int) -> int:
            payload = _request(i)
            writer.write(_FRAME.pack(len(payload)) + payload)
            return pickle.loads(await _read_frame(reader))

        await _sequential(call, args.warmup)
        return await _sequential(call, args.calls)
    finally:
        writer.close()


async def _floor_throughput(port: int, args: argparse.Namespace) -> float:
    streams = [await _open(port) for _ in range(FLOOR_CONNECTIONS)]
    connections = [_PipelinedConnection(r, w) for r, w in streams]
    readers = [asyncio.create_task(c.read_loop()) for c in connections]
    try:

        def call(i: int) -> Awaitable[int]:
            return connections[i % FLOOR_CONNECTIONS].call(i)

        await _concurrent_asyncio(call, args.warmup)
        return await _concurrent_asyncio(call, args.concurrent)
    finally:
        for task in readers:
            task.cancel()
        for _, writer in streams:
            writer.close()


async def _floor_client(port: int, args: argparse.Namespace) -> dict[str, float]:
    async with asyncio.timeout(args.timeout):
        samples = await _floor_latency(port, args)
        throughput = await _floor_throughput(port, args)
    return {**_latency_stats(samples), "throughput_calls_per_s": throughput}


def _measure_floor(args: argparse.Namespace) -> dict[str, float]:
    """Start the floor server in a second process, measure against it, always kill it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    process: subprocess.Popen[bytes] | None = None
    try:
        listener.bind((HOST, 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--floor-server", str(listener.fileno())],
            pass_fds=(listener.fileno(),),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        listener.close()  # the server holds its own copy; connections queue until it accepts
        return asyncio.run(_floor_client(port, args))
    finally:
        listener.close()
        if process is not None:
            _kill(process)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    process.kill()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _log(f"floor server {process.pid} did not exit after SIGKILL")


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
    }


def _ratio(value: float, floor: float) -> float:
    return round(value / floor, 3) if floor > 0 else math.inf


def _targets() -> dict[str, float]:
    return {
        "asyncio_latency_median_ms_max": TARGET_LATENCY_MEDIAN_MS,
        "asyncio_throughput_calls_per_s_min": TARGET_THROUGHPUT,
        "trio_latency_median_ms_max": TARGET_LATENCY_MEDIAN_MS * TRIO_SLACK,
        "trio_throughput_calls_per_s_min": round(TARGET_THROUGHPUT / TRIO_SLACK, 1),
    }


def _targets_met(
    targets: dict[str, float], asyncio_figures: dict[str, float], trio_figures: dict[str, float]
) -> dict[str, bool]:
    met = {}
    for name, figures in (("asyncio", asyncio_figures), ("trio", trio_figures)):
        met[f"{name}_latency_median"] = (
            figures["latency_median_ms"] <= targets[f"{name}_latency_median_ms_max"]
        )
        met[f"{name}_throughput"] = (
            figures["throughput_calls_per_s"] >= targets[f"{name}_throughput_calls_per_s_min"]
        )
    return met


def _report(
    args: argparse.Namespace,
    floor: dict[str, float],
    asyncio_figures: dict[str, float],
    trio_figures: dict[str, float],
) -> dict[str, Any]:
    targets = _targets()
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
        },
        "asyncio": _with_ratios(asyncio_figures, floor),
        "trio": _with_ratios(trio_figures, floor),
        "targets": targets,
        "targets_met": _targets_met(targets, asyncio_figures, trio_figures),
    }


def _summary(name: str, figures: dict[str, float]) -> str:
    return (
        f"{name}: median {figures['latency_median_ms']:.3f} ms, "
        f"p99 {figures['latency_p99_ms']:.3f} ms, "
        f"{figures['throughput_calls_per_s']:.0f} calls/s"
    )


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, help="sequential calls timed (default 2000)")
    parser.add_argument("--warmup", type=int, help="untimed calls before each measure (200)")
    parser.add_argument("--concurrent", type=int, help="calls started at once (default 10000)")
    parser.add_argument("--timeout", type=float, help="seconds each phase may take (300)")
    parser.add_argument(
        "--quick", action="store_true", help="small numbers, for a smoke test (100/20/500, 60 s)"
    )
    parser.add_argument("--floor-server", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (100, 20, 500, 60.0) if args.quick else (2000, 200, 10000, 300.0)
    for name, default in zip(("calls", "warmup", "concurrent", "timeout"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.calls < 1 or args.concurrent < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--calls and --concurrent must be >= 1, --warmup >= 0, --timeout > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.floor_server is not None:
        floor_server(args.floor_server)
        return
    _log(f"{args.calls} sequential + {args.concurrent} concurrent calls, pool of {POOL_SIZE}")
    floor = _measure_floor(args)
    _log(_summary("floor (asyncio + TCP loopback)", floor))
    asyncio_figures = asyncio.run(_wool_asyncio(args))
    _log(_summary("wool, asyncio caller", asyncio_figures))
    trio_figures = trio.run(_wool_trio, args)
    _log(_summary("wool, trio caller", trio_figures))
    print(json.dumps(_report(args, floor, asyncio_figures, trio_figures)), flush=True)


if __name__ == "__main__":
    main()
