"""Where a trivial call's time goes, on the caller and on the worker: a deterministic profile.

Runs ``--calls`` sequential ``add(1, 2)`` calls on a pool of one worker while cProfile
profiles, in CPU time, both threads that do the work in each process: the main thread (the
caller's code, or the worker's routines) and wool's transport loop thread (grpclib). Prints,
for each of the four threads, its CPU time per call by area (pickling, protobuf, h2, grpclib, the
thread hops, wool's client or worker, anyio, the event loop) and the functions with the most
time of their own, with how many times each ran per call::

    .venv/bin/python benchmarks/profile_call.py --backend asyncio --calls 3000

cProfile slows what it profiles (each Python function call costs more), so the absolute
times are inflated, more so for code made of many small calls; the counts per call are
exact. The worker is profiled through ``benchmarks/_profiling/sitecustomize.py`` (on its
``PYTHONPATH``), started and stopped by signals. Python 3.11 only: from 3.12, cProfile
profiles every thread of a process at once.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_profiling"))

import profiling  # noqa: E402

import wool  # noqa: E402

# The first area whose pattern occurs in a function's file name is where its own time goes.
AREAS: list[tuple[str, tuple[str, ...]]] = [
    ("pickling", ("pickle", "_serialization.py", "copyreg")),
    ("protobuf (betterproto2)", ("betterproto2",)),
    ("h2 / hyperframe / hpack", ("/h2/", "/hyperframe/", "/hpack/")),
    ("grpclib", ("/grpclib/",)),
    ("thread hops (bridge, backends)", ("transport/_bridge.py", "transport/_backends/")),
    ("wool transport", ("wool/transport/",)),
    ("wool client, balancer", ("wool/client/", "wool/loadbalancer/", "wool/pool/")),
    ("wool worker", ("wool/worker/",)),
    ("wool routine, context, events", ("wool/routine/", "wool/_context.py", "wool/events/")),
    ("discovery (background)", ("wool/discovery/", "pathlib", "json")),
    ("anyio / sniffio / outcome", ("/anyio/", "sniffio", "outcome")),
    ("trio", ("/trio/",)),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop", "selectors", "<method 'run", "poll")),
]


@wool.routine
async def add(x: int, y: int) -> int:
    return x + y


def _area(filename: str, function: str) -> str:
    where = f"{filename} {function}"
    for name, patterns in AREAS:
        if any(pattern in where for pattern in patterns):
            return name
    return "other (builtins, stdlib)"


def _report(title: str, path: Path, calls: int, top: int) -> None:
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    areas: dict[str, float] = {}
    rows = []
    total = 0.0
    for (filename, line, function), (_, ncalls, tottime, _, _) in stats.items():
        total += tottime
        area = _area(filename, function)
        areas[area] = areas.get(area, 0.0) + tottime
        short = filename.split("site-packages/")[-1].split("/src/")[-1]
        rows.append((tottime, ncalls, f"{function} ({short}:{line})"))
    per = 1e6 / calls
    print(f"\n## {title}: {total * per:.0f} µs per call (profiled)\n")
    print("| area | µs per call | share |\n| --- | --- | --- |")
    for area, seconds in sorted(areas.items(), key=lambda item: -item[1]):
        if seconds * per >= 0.5:
            print(f"| {area} | {seconds * per:.0f} | {100 * seconds / total:.0f}% |")
    print(f"\n| function (own time, top {top}) | µs per call | runs per call |")
    print("| --- | --- | --- |")
    for tottime, ncalls, name in sorted(rows, reverse=True)[:top]:
        print(f"| `{name}` | {tottime * per:.1f} | {ncalls / calls:.2f} |")


async def _profile(args: argparse.Namespace, directory: Path) -> int:
    async with wool.WorkerPool(size=1, backend=args.backend) as pool:
        for i in range(args.warmup):
            await add(i, 1)
        (worker,) = pool.workers
        os.kill(worker.pid, signal.SIGUSR1)
        await anyio.sleep(0.5)  # the worker's loop runs the handler
        profiling.start()
        for i in range(args.calls):
            assert await add(i, 1) == i + 1
        profiling.stop(str(directory))
        os.kill(worker.pid, signal.SIGUSR2)
        await anyio.to_thread.run_sync(_wait_for, directory / f"{worker.pid}-done", 30.0)
        return worker.pid


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker wrote no profile within {timeout} s")
        time.sleep(0.1)


def main() -> None:
    if sys.version_info >= (3, 12):
        # cProfile is built on sys.monitoring there: one profiler for every thread of the
        # process at once, so the threads cannot be told apart.
        raise SystemExit("profile_call.py profiles thread by thread: run it on Python 3.11")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wool-profile-") as tmp:
        directory = Path(tmp)
        os.environ["WOOL_PROFILE_DIR"] = tmp
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE / "_profiling"), path) if p)
        profiling.install()
        started = time.perf_counter()
        worker = anyio.run(_profile, args, directory, backend=args.backend)
        print(f"# {args.calls} sequential calls of add(1, 2), {args.backend} caller and worker")
        print(f"(profiled run: {time.perf_counter() - started:.1f} s in all)")
        for process, pid in (("caller", os.getpid()), ("worker", worker)):
            for thread in ("main", "transport"):
                path = directory / f"{pid}-{thread}.prof"
                _report(f"{process}, {thread} thread", path, args.calls, args.top)


if __name__ == "__main__":
    main()
