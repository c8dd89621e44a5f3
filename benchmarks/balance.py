"""Uneven calls: least loaded against round robin, measured in the same run.

A caller runs ``LANES`` calls at a time, each lane taking the next job as its call ends,
on a pool of 2 workers. The jobs alternate a 100 ms and a 1 ms routine that hold their
worker (``time.sleep``: CPU-bound work, which a worker runs one at a time). Round robin
sends the calls to the workers in turn, so every long call lands on one worker; least
loaded sends each to the worker with fewer calls in flight, which is the one that got
through its short calls. Reported: the seconds of each balancer (the best of ``runs``)
and ``speedup``, round robin's time / least loaded's.
"""

from __future__ import annotations

import time

import anyio

import wool

__all__ = ["measure"]

LANES = 4
LONG, SHORT = 0.1, 0.001


@wool.routine
async def busy(seconds: float) -> float:
    time.sleep(seconds)  # noqa: ASYNC251 -- holds the worker, as CPU-bound work would
    return seconds


async def _run(jobs: list[float]) -> float:
    pending = iter(jobs)

    async def lane() -> None:
        for seconds in pending:
            await busy(seconds)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(LANES):
            tg.start_soon(lane)
    return time.perf_counter() - start


async def _timed(balancer: wool.LoadBalancerLike, jobs: list[float], runs: int) -> float:
    async with wool.WorkerPool(size=2, loadbalancer=balancer):
        await _run([SHORT] * 2 * LANES)  # warm both workers up
        return min([await _run(jobs) for _ in range(runs)])


async def measure(pairs: int, runs: int) -> dict[str, float]:
    """``pairs`` long and ``pairs`` short calls per run, alternating."""
    jobs = [LONG, SHORT] * pairs
    round_robin = await _timed(wool.RoundRobinLoadBalancer(), jobs, runs)
    least_loaded = await _timed(wool.LeastLoadedLoadBalancer(), jobs, runs)
    return {
        "round_robin_s": round(round_robin, 3),
        "least_loaded_s": round(least_loaded, 3),
        "speedup": round(round_robin / least_loaded, 2),
        "calls": 2 * pairs,
        "lanes": LANES,
        "runs": runs,
    }


if __name__ == "__main__":
    print(anyio.run(measure, 20, 2))
