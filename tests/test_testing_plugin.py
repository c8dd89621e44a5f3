"""wool.testing, used as a user would: pytest runs a user's test files in a project of their own.

Each run is a separate ``python -m pytest`` in a temporary directory (no configuration of
this repository applies there), enabling the plugin the documented way, under asyncio and
trio as anyio's plugin parametrizes. The outcomes are read from pytest's report.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.test_examples import _kill_all, _marked_pids

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "test_with_wool.py"
RUN_TIMEOUT = 240.0
_MARKER = "WOOL_TEST_SCRIPT_RUN"


def run_pytest(project: Path, *args: str) -> tuple[int, str]:
    """``python -m pytest -rA *args`` in ``project``; fails if it hangs or leaves a process."""
    marker = uuid.uuid4().hex
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env[_MARKER] = marker
    env.pop("PYTEST_ADDOPTS", None)
    # Under CI pytest does not shorten the summary lines, which then repeat each message.
    env.pop("CI", None)
    env.pop("BUILD_NUMBER", None)
    # A user's run, not a worker of this suite's xdist run.
    for name in [n for n in env if n.startswith("PYTEST_XDIST_")]:
        del env[name]
    output = project / "output.txt"
    with open(output, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        pytest.fail(f"pytest did not finish within {RUN_TIMEOUT:g} s\n{output.read_text()}")
    finally:
        deadline = time.monotonic() + 5
        while (left := _marked_pids(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_all(left)
    text = output.read_text()
    assert not left, f"the pytest run left processes running: {sorted(left)}\n{text}"
    return process.returncode, text


def outcomes(report: str) -> dict[str, str]:
    """``{"test_x[asyncio]": "PASSED", ...}`` from the short summary (``-rA``)."""
    found: dict[str, str] = {}
    for match in re.finditer(r"^(PASSED|FAILED|ERROR) \S+::(\S+)", report, re.MULTILINE):
        kind, test = match.groups()
        found[test] = "ERROR" if "ERROR" in (kind, found.get(test)) else kind
    return found


@pytest.fixture
def project(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A user's project: a top-level conftest.py that enables the plugin, as documented."""
    path = tmp_path / "project"
    path.mkdir()
    (path / "conftest.py").write_text('pytest_plugins = ["wool.testing"]\n')
    yield path
    shutil.rmtree(path, ignore_errors=True)


def docs_test_module() -> str:
    """The test module that docs/testing.md shows."""
    text = (ROOT / "docs" / "testing.md").read_text()
    match = re.search(r"```python\n# fragment: a test module\n(.*?)```", text, re.DOTALL)
    assert match is not None, "docs/testing.md no longer shows a test module"
    return match[1]


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_the_example_and_the_docs_test_files_pass_under_both_backends(project: Path) -> None:
    shutil.copy(EXAMPLE, project / EXAMPLE.name)
    (project / "test_from_docs.py").write_text(docs_test_module())
    returncode, report = run_pytest(project, "--strict-markers", EXAMPLE.name, "test_from_docs.py")
    assert returncode == 0, report
    names = re.findall(r"^async def (test_\w+)", EXAMPLE.read_text(), re.MULTILINE)
    assert len(names) >= 5, names
    names.append("test_add")
    expected = {f"{name}[{backend}]": "PASSED" for name in names for backend in ("asyncio", "trio")}
    assert outcomes(report) == expected, report


SHARING_AND_LEFTOVERS = """
import os
import subprocess
import sys

import pytest

import wool

pytestmark = pytest.mark.anyio

WORKERS = {}
KEPT = []


@wool.routine
async def where() -> int:
    return os.getpid()


@wool.routine
async def count(n: int):
    for i in range(n):
        yield i


async def test_calls_run_on_the_pool(wool_pool, anyio_backend):
    WORKERS[anyio_backend] = sorted(w.pid for w in wool_pool.workers)
    assert len(WORKERS[anyio_backend]) == 3
    assert await where() in WORKERS[anyio_backend]


async def test_the_next_test_gets_the_same_pool(wool_pool, anyio_backend):
    assert sorted(w.pid for w in wool_pool.workers) == WORKERS[anyio_backend]
    assert await where() in WORKERS[anyio_backend]


async def test_without_the_fixture_no_pool_is_current():
    with pytest.raises(wool.NoPoolError):
        await where()


async def test_drops_a_generator_the_event_loop_closes(wool_pool):
    stream = count(10)
    assert await stream.__anext__() == 0
    del stream


async def test_leaves_a_generator_open(wool_pool):
    stream = count(10)
    KEPT.append(stream)
    assert await stream.__anext__() == 0


async def test_leaves_a_process_running(wool_pool):
    KEPT.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))


async def test_the_pool_still_serves_after_leftovers(wool_pool, anyio_backend):
    assert await where() in WORKERS[anyio_backend]
    stream, process = KEPT
    KEPT.clear()
    await stream.aclose()
    assert process.wait(timeout=30) != 0  # the plugin killed it
"""


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_one_pool_per_module_and_backend_current_only_where_asked_and_leftovers_fail(
    project: Path,
) -> None:
    (project / "test_user.py").write_text(SHARING_AND_LEFTOVERS)
    returncode, report = run_pytest(project, "--wool-size", "3", "test_user.py")
    assert returncode == 1, report
    expected: dict[str, str] = {}
    for backend in ("asyncio", "trio"):
        expected |= {
            f"test_calls_run_on_the_pool[{backend}]": "PASSED",
            f"test_the_next_test_gets_the_same_pool[{backend}]": "PASSED",
            f"test_without_the_fixture_no_pool_is_current[{backend}]": "PASSED",
            f"test_drops_a_generator_the_event_loop_closes[{backend}]": "PASSED",
            f"test_leaves_a_generator_open[{backend}]": "ERROR",
            f"test_leaves_a_process_running[{backend}]": "ERROR",
            f"test_the_pool_still_serves_after_leftovers[{backend}]": "PASSED",
        }
    assert outcomes(report) == expected, report
    assert report.count("the test left routine calls still open: count (async generator)") == 2
    assert report.count("the test left processes still running (killed)") == 2


# Settings from pytest.ini and the command line, a session-wide pool, and wool_pool_options
# overridden by the user's conftest.py on top of the plugin's.
SETTINGS_CONFTEST = """
import pytest

pytest_plugins = ["wool.testing"]


@pytest.fixture(scope="session", params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


@pytest.fixture(scope="session")
def wool_pool_options(wool_pool_options):
    return {**wool_pool_options, "concurrency": 3}
"""

SETTINGS_INI = """
[pytest]
wool_size = 1
wool_backend = asyncio
wool_pool_scope = session
"""

SETTINGS_MODULE = """
import json
import os
from pathlib import Path

import pytest
import sniffio

import wool

pytestmark = pytest.mark.anyio
SEEN = Path(os.environ["WOOL_SETTINGS_SEEN"])


@wool.routine
async def where():
    return os.getpid(), sniffio.current_async_library()


async def test_the_pool_has_the_settings(wool_pool, anyio_backend):
    [worker] = wool_pool.workers  # wool_size from the ini file
    assert worker.backend == "trio"  # --wool-backend over the ini file's
    assert wool_pool.concurrency == 3  # the conftest's wool_pool_options
    assert await where() == (worker.pid, "trio")
    with open(SEEN, "a") as f:
        f.write(json.dumps([__name__, anyio_backend, worker.pid]) + "\\n")
"""


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_settings_from_the_ini_file_and_options_and_one_pool_per_session(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / "conftest.py").write_text(SETTINGS_CONFTEST)
    (project / "pytest.ini").write_text(SETTINGS_INI)
    (project / "test_first.py").write_text(SETTINGS_MODULE)
    (project / "test_second.py").write_text(SETTINGS_MODULE)
    seen = project / "seen.jsonl"
    monkeypatch.setenv("WOOL_SETTINGS_SEEN", str(seen))
    returncode, report = run_pytest(project, "--wool-backend", "trio")
    assert returncode == 0, report
    expected = sorted(
        (module, backend)
        for backend in ("asyncio", "trio")
        for module in ("test_first", "test_second")
    )
    passed = re.findall(r"^PASSED (\w+)\.py::test_the_pool_has_the_settings\[(\w+)\]", report, re.M)
    assert sorted(passed) == expected, report
    runs = [json.loads(line) for line in seen.read_text().splitlines()]
    assert sorted((module, backend) for module, backend, _ in runs) == expected, runs
    # Both modules of a backend had the same pool (one per session and backend), and each
    # backend its own.
    pids = {backend: {pid for _, b, pid in runs if b == backend} for backend in ("asyncio", "trio")}
    assert [len(p) for p in pids.values()] == [1, 1], runs
    assert pids["asyncio"] != pids["trio"], runs


A_TEST = """
import pytest

pytestmark = pytest.mark.anyio


async def test_with_a_pool(wool_pool):
    pass
"""


@pytest.mark.parametrize(
    ("ini", "args", "error"),
    [
        ("", ["--wool-size", "0"], "wool_size must be at least 1, got 0"),
        ("wool_size = two", [], "wool_size must be a whole number, got 'two'"),
        ("wool_backend = curio", [], "wool_backend must be asyncio or trio, got 'curio'"),
        ("wool_pool_scope = forever", [], "wool_pool_scope must be module, package or session"),
    ],
)
def test_a_bad_setting_stops_the_run_before_any_test_saying_what_was_wrong(
    project: Path, ini: str, args: list[str], error: str
) -> None:
    (project / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (project / "test_user.py").write_text(A_TEST)
    returncode, report = run_pytest(project, *args)
    assert returncode == pytest.ExitCode.USAGE_ERROR, report
    assert error in report, report
    assert "INTERNALERROR" not in report and "test_with_a_pool" not in report, report
