"""The examples and the code in the documentation run as written.

Every script runs in a fresh interpreter (``sys.executable``) from the repository root, with
its own temporary directory, and must exit 0 and leave nothing behind: no process (found by
a marker in the environment, which workers inherit) and no file in its temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# Every Markdown source of the documentation site (docs/ and the pages under it), but not
# the site's build output or the notes that ship with its intersphinx inventories.
DOCS = [
    ROOT / "README.md",
    *sorted(
        p
        for p in (ROOT / "docs").rglob("*.md")
        if not {"_build", "_intersphinx"} & set(p.relative_to(ROOT / "docs").parts)
    ),
]
SCRIPT_TIMEOUT = 120.0
_MARKER = "WOOL_TEST_SCRIPT_RUN"


# ------------------------------------------------------------------------ running a script


def _marked_pids(marker: str) -> set[int]:
    """Live processes whose environment carries ``marker`` (a script and its workers)."""
    needle = f"{_MARKER}={marker}".encode()
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.add(int(entry.name))
    return pids


def _kill_all(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return f"exit code {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_script(args: list[str], work: Path, timeout: float = SCRIPT_TIMEOUT) -> Finished:
    """Run ``python *args`` from the repository root; kill it and its workers however it ends.

    Fails the test if it times out, leaves a process running, or leaves a file in its
    temporary directory (``work / "tmp"``, its TMPDIR).
    """
    marker = uuid.uuid4().hex
    tmpdir = work / "tmp"
    tmpdir.mkdir(parents=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p
    )
    env[_MARKER] = marker
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONUNBUFFERED"] = "1"
    # Output goes to files, not pipes: a worker left running would keep a pipe open.
    out_path, err_path = work / "stdout.txt", work / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        deadline = time.monotonic() + 5
        while (left := _marked_pids(marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_all(left)
    stdout, stderr = out_path.read_text(), err_path.read_text()
    finished = Finished(process.returncode, stdout, stderr)
    if timed_out:
        pytest.fail(f"{args} did not finish within {timeout:g} s\n{finished.describe()}")
    assert not left, f"{args} left processes running: {sorted(left)}\n{finished.describe()}"
    files = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
    assert not files, f"{args} left files in its temporary directory: {files}"
    return finished


@pytest.fixture
def work(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A scratch directory, removed after the test (whatever the script left there)."""
    path = tmp_path / "work"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------ examples


EXPECTED_OUTPUT: dict[str, list[str]] = {
    "quickstart.py": ["add(1, 2) = 3", "fib(12) = 144"],
    "trio_nursery.py": [
        "square(0) =  0",
        "square(5) = 25",
        "caught ValueError: invalid literal for int() with base 10: 'http'",
        "in parse_port",
        "port = int(text)",
        "slow() cancelled by the caller's deadline: True",
    ],
}

EXAMPLE_RUNS = [pytest.param([path], id=path.name) for path in EXAMPLES] + [
    pytest.param([ROOT / "examples" / "quickstart.py", "--trio"], id="quickstart.py --trio")
]


def test_examples_are_found() -> None:
    assert {p.name for p in EXAMPLES} >= set(EXPECTED_OUTPUT)


@pytest.mark.xdist_group("heavy")  # never two at once: see tests/conftest.py
@pytest.mark.timeout(SCRIPT_TIMEOUT + 60)
@pytest.mark.parametrize("args", EXAMPLE_RUNS)
def test_example_runs(args: list[Path | str], work: Path) -> None:
    script = Path(args[0])
    finished = run_script([str(a) for a in args], work)
    assert finished.returncode == 0, finished.describe()
    position = 0
    for expected in EXPECTED_OUTPUT.get(script.name, []):
        found = finished.stdout.find(expected, position)
        assert found >= 0, f"{expected!r} missing (or out of order) in\n{finished.stdout}"
        position = found + len(expected)


# ------------------------------------------------------------------------ documentation


@dataclass
class CodeBlock:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def fragment(self) -> bool:
        return self.code.lstrip("\n").startswith("# fragment")


_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")


def code_blocks(path: Path) -> list[CodeBlock]:
    """The fenced ``python`` blocks of a Markdown file."""
    blocks: list[CodeBlock] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, start = match["fence"], i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: the code block is never closed")
        i += 1
        if match["info"].lower() in ("python", "py", "python3"):
            blocks.append(CodeBlock(path, start + 1, "\n".join(body) + "\n"))
    return blocks


DOC_BLOCKS = [block for path in DOCS for block in code_blocks(path)]


def _expected_prints(code: str) -> list[list[str]]:
    """For each ``print(...)  # value`` line, the texts the output line may show."""
    expected: list[list[str]] = []
    for line in code.splitlines():
        match = re.match(r"\s*print\(.*\)\s*#\s*(?P<comment>.+)$", line)
        if match is None:
            continue
        comment = match["comment"].strip()
        # "# 100: the caller's account did not change": the value is what precedes ": ".
        head = comment.split(": ", 1)[0]
        expected.append([comment, head])
    return expected


def test_documentation_has_runnable_python_blocks() -> None:
    readme = [b for b in DOC_BLOCKS if b.path.name == "README.md" and not b.fragment]
    assert len(readme) >= 5, [b.id for b in readme]
    assert any(b.path.parent.name == "docs" and not b.fragment for b in DOC_BLOCKS)


@pytest.mark.timeout(SCRIPT_TIMEOUT + 60)
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(
            block,
            id=block.id,
            marks=[pytest.mark.skip(reason="marked `# fragment`")] if block.fragment else [],
        )
        for block in DOC_BLOCKS
    ],
)
def test_documentation_block_runs(block: CodeBlock, work: Path) -> None:
    script = work / f"{block.path.stem}_{block.line}.py"
    script.write_text(block.code)
    finished = run_script([str(script)], work)
    assert finished.returncode == 0, f"{block.id}\n{finished.describe()}"
    # What the block's comments say its prints show appears in that order.
    lines = finished.stdout.splitlines()
    position = 0
    for candidates in _expected_prints(block.code):
        while position < len(lines) and not any(c in lines[position] for c in candidates):
            position += 1
        assert position < len(lines), (
            f"{block.id}: no output line shows {candidates[0]!r} in order\n{finished.stdout}"
        )
        position += 1
