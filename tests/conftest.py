from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# `make test` runs the suite on two xdist worker processes (--dist loadgroup). Each worker
# imports this file, so each gets its own temp dir, and the leak checks below see only its
# own children and files. Tests that keep both cores busy for many seconds (thousands of
# calls, large payloads, an inner pytest, network namespaces) are marked
# xdist_group("heavy"): they all run on one worker, one after another, so that no two of
# them ever compete, while the other worker runs the light tests.


# Grouped tests whose group xdist lost (see below): each of them fails, saying why.
UNGROUPED: set[str] = set()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --dist loadgroup, xdist keeps a group on one worker by a suffix it adds to the
    ids of the group's tests; some pytest versions lose it, and the heavy tests would then
    run side by side without a word."""
    if hasattr(config, "workerinput") and config.getoption("loadgroup", False):
        UNGROUPED.update(
            i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
        )


@pytest.fixture(autouse=True)
def grouped(request: pytest.FixtureRequest) -> None:
    if request.node.nodeid in UNGROUPED:
        pytest.fail(
            f"pytest-xdist {importlib.metadata.version('pytest-xdist')} could not keep "
            f"this xdist_group test on one worker under pytest {pytest.__version__}: use a "
            "pytest that pyproject.toml's test extra allows"
        )


# The suite (and every process it starts) gets a temp dir of its own, so that what it
# leaves behind, and only that, can be found and then removed.
SUITE_TMP = Path(tempfile.mkdtemp(prefix="wool-tests-"))
os.environ["TMPDIR"] = str(SUITE_TMP)
tempfile.tempdir = None
WOOL_TMP = SUITE_TMP / f"wool-{os.getuid()}"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def child_pids() -> set[int]:
    pids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail any test that leaves a child process (a worker) running."""
    before = child_pids()
    yield
    deadline = time.monotonic() + 2
    while True:
        left = {pid for pid in child_pids() - before if _alive(pid)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"test left child processes running: {sorted(left)}"


@pytest.fixture(autouse=True, scope="session")
def no_leftover_files() -> Iterator[None]:
    """After the whole suite, nothing wool created is left in the temp dir or /dev/shm."""
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    yield
    existed = WOOL_TMP.exists()
    left = sorted(str(p) for p in WOOL_TMP.rglob("*")) if existed else []
    shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    shm_left = sorted(n for n in shm_after - shm_before if "wool" in n)
    if existed or shm_left:
        pytest.fail(f"the suite left wool files behind: {left or [str(WOOL_TMP)]} {shm_left}")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SUITE_TMP, ignore_errors=True)
