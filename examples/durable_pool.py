"""A durable pool: a caller that uses workers which run on their own (``wool worker``).

    python examples/durable_pool.py
        Self-contained, and what the tests run: starts one ``wool worker`` in a private
        local namespace, makes the calls on it, then stops it with SIGTERM.

    wool worker                                                  # in another terminal
    python examples/durable_pool.py --discovery local            # namespace "wool"
        The workers that ``wool worker`` runs on this host, in the namespace "wool" (or
        ``--namespace NAME``, the same on both sides).

    wool worker --discovery lan                                  # on any host of the LAN
    python examples/durable_pool.py --discovery lan              # namespace "wool"
        Workers found with multicast DNS on the local network.

    python examples/durable_pool.py --discovery dns \\
        --name wool-workers.default.svc.cluster.local --port 48000
        Inside a Kubernetes cluster: the workers of examples/kubernetes/, behind a headless
        Service. See docs/deployment.md.

The routines are defined in this script, so they travel by value: the workers need wool,
not this file. A routine defined in an importable module travels by reference instead, and
the workers must be able to import that module.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import uuid

import anyio

import wool


@wool.routine
async def where() -> str:
    """Which host and process ran the call."""
    return f"{socket.gethostname()}:{os.getpid()}"


@wool.routine
async def square(x: int) -> int:
    return x * x


@wool.routine
async def sum_of_squares(n: int) -> int:
    """A root call that fans out into ``n`` nested calls.

    The nested calls go to the workers that the worker's own discovery finds. They are
    never held back by ``wool worker --concurrency``, which limits root calls only: the
    self-contained run uses ``--concurrency 1`` and the tree still completes.
    """
    results = [0] * n

    async def run(i: int) -> None:
        results[i] = await square(i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(run, i)
    return sum(results)


@wool.routine
async def nap(seconds: float) -> None:
    await anyio.sleep(seconds)


async def use_workers(discovery: wool.DiscoveryLike, start_timeout: float) -> set[str]:
    # Durable mode: `discovery` and no `size`. The pool spawns nothing, waits up to
    # `start_timeout` for a first worker (else wool.NoWorkersAvailable), and leaves the
    # workers running when its block exits.
    async with wool.WorkerPool(discovery=discovery, start_timeout=start_timeout) as pool:
        addresses = ", ".join(sorted(w.address for w in pool.workers))
        print(f"found {len(pool.workers)} worker(s) through {discovery!r}: {addresses}")
        served = {await where() for _ in range(4)}
        print("where() ran on:", ", ".join(sorted(served)))
        print("sum_of_squares(10) =", await sum_of_squares(10))
        with anyio.move_on_after(0.5) as scope:
            await nap(60)  # cancelled on the worker when the caller's deadline passes
        print("nap(60) cancelled by the caller's deadline:", scope.cancelled_caught)
    return served


def spawn_and_use(start_timeout: float) -> int:
    """Start a `wool worker` of our own, use it, stop it: no setup needed."""
    namespace = f"example-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable,
        "-m",
        "wool",
        "worker",
        "--namespace",
        namespace,
        "--concurrency",
        "1",
        "--grace",
        "2",
        "--log-level",
        "WARNING",
    ]
    print("starting:", " ".join(["wool", *command[3:]]))
    worker = subprocess.Popen(command)
    try:
        served = anyio.run(use_workers, wool.LocalDiscovery(namespace), start_timeout)
        print("served by the spawned worker:", served == {f"{socket.gethostname()}:{worker.pid}"})
    finally:
        # What systemd or Kubernetes does to stop a worker: SIGTERM, then wait. The worker
        # withdraws from discovery, drains its calls for up to --grace seconds, and exits 0.
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        try:
            status = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            status = worker.wait()
    print("the worker exited with status", status)
    return 0 if status == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="A durable pool: a caller of `wool worker`s.")
    parser.add_argument(
        "--discovery",
        choices=("spawn", "local", "lan", "dns"),
        default="spawn",
        help="spawn (default): start a worker of our own; local, lan: workers started with "
        "`wool worker --discovery local|lan`; dns: workers behind a DNS name",
    )
    parser.add_argument(
        "--namespace", default="wool", help="local and lan: the workers' namespace (default wool)"
    )
    parser.add_argument("--name", help="dns: the name to resolve, e.g. a headless Service")
    parser.add_argument("--port", type=int, default=48000, help="dns: the workers' port")
    parser.add_argument(
        "--start-timeout", type=float, default=30.0, help="seconds to wait for a first worker"
    )
    args = parser.parse_args()

    if args.discovery == "spawn":
        return spawn_and_use(args.start_timeout)
    discovery: wool.DiscoveryLike
    if args.discovery == "local":
        discovery = wool.LocalDiscovery(args.namespace)
    elif args.discovery == "lan":
        discovery = wool.LanDiscovery(args.namespace)
    else:
        if not args.name:
            parser.error("--discovery dns needs --name")
        discovery = wool.DnsDiscovery(args.name, args.port)
    try:
        anyio.run(use_workers, discovery, args.start_timeout)
    except wool.NoWorkersAvailable as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
