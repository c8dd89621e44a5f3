"""A routine's exception reads as if the routine had run in the caller: the caller's frames,
then the routine's, each with its file name and source line, and none of wool's."""

from __future__ import annotations

import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_examples import run_script

SCRIPT = textwrap.dedent(
    """
    import sys
    import traceback

    import anyio

    import wool


    @wool.routine
    async def parse_port(text):
        port = int(text)  # <parse_port raises>
        return port


    @wool.routine
    async def outer(text):
        return await parse_port(text)  # <outer awaits>


    @wool.routine
    async def ports(texts):
        for text in texts:
            yield int(text)  # <ports raises>


    async def main():
        async with wool.WorkerPool(size=1):
            try:
                await parse_port("http")  # <main awaits parse_port>
            except ValueError as exc:
                print("".join(traceback.format_exception(exc)) + "=====")
            try:
                await outer("http")  # <main awaits outer>
            except ValueError as exc:
                print("".join(traceback.format_exception(exc)) + "=====")
            try:
                async for _ in ports(["1", "http"]):  # <main iterates ports>
                    pass
            except ValueError as exc:
                print("".join(traceback.format_exception(exc)) + "=====")


    anyio.run(main, backend=sys.argv[1])
    """
)

_FRAME = re.compile(
    r'^  File "(?P<file>[^"]+)", line \d+, in (?P<name>\S+)\n    (?P<line>.*)$', re.M
)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "work"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _frames(output: str) -> list[list[tuple[str, str, str]]]:
    sections = output.split("=====")[:-1]
    return [[m.group("file", "name", "line") for m in _FRAME.finditer(s)] for s in sections]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_remote_frames_name_the_script_and_its_lines(backend: str, work: Path) -> None:
    script = work / "routines.py"
    script.write_text(SCRIPT)
    finished = run_script([str(script), backend], work)
    assert finished.returncode == 0, finished.describe()
    expected = [
        [("main", "<main awaits parse_port>"), ("parse_port", "<parse_port raises>")],
        [
            ("main", "<main awaits outer>"),
            ("outer", "<outer awaits>"),
            ("parse_port", "<parse_port raises>"),
        ],
        [("main", "<main iterates ports>"), ("ports", "<ports raises>")],
    ]
    got = _frames(finished.stdout)
    assert len(got) == len(expected), finished.describe()
    for frames, want in zip(got, expected, strict=True):
        assert [(name, line.split("# ")[-1]) for _, name, line in frames] == want, finished.stdout
        assert {file for file, _, _ in frames} == {str(script)}


@pytest.mark.timeout(180)
def test_wool_frames_are_kept_on_request(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WOOL_FULL_TRACEBACKS", "1")
    script = work / "routines.py"
    script.write_text(SCRIPT)
    finished = run_script([str(script), "asyncio"], work)
    assert finished.returncode == 0, finished.describe()
    first = _frames(finished.stdout)[0]
    files = [file for file, _, _ in first]
    assert any("/wool/client/" in f for f in files), finished.stdout  # the caller's dispatch
    assert any("/wool/worker/" in f for f in files), finished.stdout  # the worker's
    assert files[-1] == str(script)
