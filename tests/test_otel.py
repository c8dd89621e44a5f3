"""wool.otel: one trace per call tree, spans on callers and workers, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

import wool
import wool.otel

from .event_recorder import count_to
from .otel_hooks import EXPORTER, broken, descend, describe, finished_spans, install, nest
from .routines import die

pytestmark = pytest.mark.anyio

HOOKS = ["tests.otel_worker_hooks"]


@pytest.fixture
def traced() -> Iterator[None]:
    EXPORTER.clear()
    install()
    try:
        yield
    finally:
        wool.otel.uninstrument()


async def all_spans(workers: int) -> list[dict[str, Any]]:
    """Spans of this process and of each worker (round-robin reaches each once)."""
    found = [describe(s) for s in EXPORTER.get_finished_spans()]
    for _ in range(workers):
        found += await finished_spans()
    return found


async def test_nested_calls_make_one_tree(traced: None) -> None:
    async with wool.WorkerPool(size=2, imports=HOOKS):
        await nest(3)
        spans = await all_spans(2)
    tree = [s for s in spans if s["attributes"].get("wool.routine") == "nest"]
    by_id = {s["span"]: s for s in tree}
    assert len(tree) == 6  # a client and a server span per call
    assert len({s["trace"] for s in tree}) == 1
    roots = [s for s in tree if s["parent"] not in by_id]
    assert [(r["kind"], r["pid"]) for r in roots] == [("CLIENT", os.getpid())]
    # Walk down: client, server, client, server, client, server, depths 0, 0, 1, 1, 2, 2.
    chain, node = [], roots[0]
    while True:
        chain.append((node["kind"], node["attributes"]["wool.depth"]))
        children = [s for s in tree if s["parent"] == node["span"]]
        if not children:
            break
        assert len(children) == 1
        node = children[0]
    assert chain == [
        ("CLIENT", 0),
        ("SERVER", 0),
        ("CLIENT", 1),
        ("SERVER", 1),
        ("CLIENT", 2),
        ("SERVER", 2),
    ]
    # A server span is in the worker's process, its client span in the caller's.
    assert all(s["pid"] != os.getpid() for s in tree if s["kind"] == "SERVER")
    assert len({s["pid"] for s in tree}) >= 2


async def test_a_three_level_call_tree_is_one_trace_across_four_processes(traced: None) -> None:
    # Each level opens a pool of its own for the next, so that no two levels share a
    # process: caller, level 0, level 1 and level 2 run in four different processes.
    async with wool.WorkerPool(size=1, imports=HOOKS):
        below = await descend(3)
        spans = [describe(s) for s in EXPORTER.get_finished_spans()]
        spans += below + await finished_spans()
    tree = [s for s in spans if s["attributes"].get("wool.routine") == "descend"]
    assert len(tree) == 6  # a client and a server span per call
    assert len({s["trace"] for s in tree}) == 1
    by_id = {s["span"]: s for s in tree}
    (root,) = [s for s in tree if s["parent"] not in by_id]
    chain, node = [root], root
    while children := [s for s in tree if s["parent"] == node["span"]]:
        (node,) = children
        chain.append(node)
    assert [(s["kind"], s["attributes"]["wool.depth"]) for s in chain] == [
        ("CLIENT", 0),
        ("SERVER", 0),
        ("CLIENT", 1),
        ("SERVER", 1),
        ("CLIENT", 2),
        ("SERVER", 2),
    ]
    # Each call's server span is in the process of the next call's client span, and every
    # level is in a process of its own, the caller's first.
    pids = [s["pid"] for s in chain]
    assert pids[0] == os.getpid()
    assert (pids[1], pids[3]) == (pids[2], pids[4])
    levels = [pids[0], pids[1], pids[3], pids[5]]
    assert len(set(levels)) == 4, levels
    # The spans say so themselves: the resource of each names its process.
    assert [s["resource_pid"] for s in chain] == pids


async def test_a_failure_is_recorded_on_both_spans(traced: None) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        with pytest.raises(KeyError):
            await broken()
        spans = await all_spans(1)
    mine = [s for s in spans if s["attributes"].get("wool.routine") == "broken"]
    assert sorted((s["kind"], s["status"], s["attributes"]["wool.outcome"]) for s in mine) == [
        ("CLIENT", "ERROR", "raised"),
        ("SERVER", "ERROR", "raised"),
    ]
    assert all("exception" in s["events"] for s in mine)


async def test_a_lost_call_is_recorded(traced: None) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        with pytest.raises(wool.WorkerLost):
            await die()
    (span,) = [
        describe(s) for s in EXPORTER.get_finished_spans() if s.attributes["wool.routine"] == "die"
    ]
    assert (span["status"], span["attributes"]["wool.outcome"]) == ("ERROR", "lost")


async def test_a_generator_call_is_one_span_with_step_events(traced: None) -> None:
    async with wool.WorkerPool(size=1, imports=HOOKS):
        assert [i async for i in count_to(2)] == [0, 1]
        spans = await all_spans(1)
    mine = {s["kind"]: s for s in spans if s["attributes"].get("wool.routine") == "count_to"}
    assert set(mine) == {"CLIENT", "SERVER"}
    assert mine["SERVER"]["parent"] == mine["CLIENT"]["span"]
    assert mine["CLIENT"]["events"].count("wool.iteration-initiated") == 3
    assert mine["SERVER"]["events"].count("wool.iteration") == 3


def test_import_wool_loads_no_opentelemetry() -> None:
    code = "import sys, wool; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
