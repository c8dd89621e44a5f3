"""The original wool (PyPI ``wool==0.15.7``, grpcio-based), timed like ``run.py`` times wool.

Run by ``run.py`` with the interpreter of a private virtual environment that has
``wool==0.15.7`` installed (``.venv-original``); it must never import this repository's wool,
and refuses to run if the ``wool`` it imports is not 0.15.7. It can also be run by hand:

    .venv-original/bin/python -I benchmarks/original.py --calls 2000 --concurrent 2000

For a ``wool.WorkerPool(size=2)`` and a trivial ``add(x, y)`` routine, under ``asyncio.run``
(default loop):

- sequential latency: median and p99 (ms, nearest rank) of ``--calls`` calls awaited one after
  the other, after ``--warmup`` calls;
- throughput: calls/s of ``--concurrent`` calls started at once in one ``asyncio.TaskGroup``,
  after ``--warmup`` calls started the same way.

Output: one JSON line on stdout. The original logs at INFO from its pool and its workers; its
loggers are set to WARNING when this module is imported (its workers are started with the
``spawn`` method and import it again as ``__mp_main__``, so they do it too), and ``run.py`` also
sends this script's stderr to a file it shows only if the script fails. ``size=2`` is the
original's deprecated spelling of ``spawn=2``; it is kept to read like ``run.py`` and its
DeprecationWarning is silenced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Awaitable, Callable

import wool

EXPECTED_VERSION = "0.15.7"
POOL_SIZE = 2


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


def _quiet() -> None:
    """The original's loggers at WARNING (its worker processes set INFO on the root logger)."""
    for name in ("wool", "grpc", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="The 'size' parameter is deprecated")


_quiet()  # at import: the spawned workers import this module too


def _percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile (as in run.py)."""
    ordered = sorted(samples)
    rank = max(0, math.ceil(pct / 100 * len(ordered)) - 1)
    return ordered[rank]


def _call(i: int) -> Awaitable[int]:
    return add(i, 1)


async def _sequential(call: Callable[[int], Awaitable[int]], n: int) -> list[float]:
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


async def _concurrent(call: Callable[[int], Awaitable[int]], n: int) -> float:
    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(n):
            tg.create_task(_checked(call, i))
    return n / (time.perf_counter() - start)


async def _measure(args: argparse.Namespace) -> dict[str, object]:
    async with asyncio.timeout(args.timeout):
        start = time.perf_counter()
        async with wool.WorkerPool(size=POOL_SIZE):
            started = time.perf_counter() - start
            await _sequential(_call, args.warmup)
            samples = await _sequential(_call, args.calls)
            await _concurrent(_call, args.warmup)
            throughput = await _concurrent(_call, args.concurrent)
    return {
        "version": wool.__version__,
        "python": platform.python_version(),
        "pool_size": POOL_SIZE,
        "calls": args.calls,
        "warmup": args.warmup,
        "concurrent": args.concurrent,
        "latency_median_ms": round(_percentile(samples, 50) * 1000, 4),
        "latency_p99_ms": round(_percentile(samples, 99) * 1000, 4),
        "throughput_calls_per_s": round(throughput, 1),
        "pool_start_s": round(started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    if args.calls < 1 or args.concurrent < 1 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--calls and --concurrent must be >= 1, --warmup >= 0, --timeout > 0")
    if wool.__version__ != EXPECTED_VERSION:
        sys.exit(
            f"original.py: imported wool {wool.__version__} from {os.path.dirname(wool.__file__)}"
            f", not the original {EXPECTED_VERSION}"
        )
    print(json.dumps(asyncio.run(_measure(args))), flush=True)


if __name__ == "__main__":
    main()
