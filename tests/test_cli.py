"""The ``wool`` command as a user meets it (issue 9)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid

import pytest

import wool

WOOL = [sys.executable, "-m", "wool"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_worker_that_cannot_start_says_why_in_one_line(backend: str) -> None:
    # D9 (r2): under trio the error came wrapped in a 48-line ExceptionGroup traceback.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *WOOL,
                "worker",
                "--namespace",
                f"test-{uuid.uuid4().hex[:8]}",
                "--port",
                str(port),
                "--backend",
                backend,
                "--log-level",
                "ERROR",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"wool worker: cannot listen on 127.0.0.1:{port}")


def test_wool_version_is_this_librarys() -> None:
    result = subprocess.run([*WOOL, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"wool {wool.__version__}"
    # PyPI's unrelated "wool" is at 0.15.7: this one must not be mistaken for it.
    major, minor = (int(part) for part in wool.__version__.split(".")[:2])
    assert (major, minor) > (0, 15)


def test_wool_worker_help_shows_every_default() -> None:
    result = subprocess.run(
        [*WOOL, "worker", "--help"], capture_output=True, text=True, timeout=30, env=_wide()
    )
    assert result.returncode == 0
    options: list[str] = []  # each option with its help, on one line
    for line in result.stdout.splitlines():
        if line.startswith("  -"):
            options.append(line.strip())
        elif line.startswith("   ") and options:
            options[-1] += " " + line.strip()
    assert len(options) >= 15
    for option in options:
        if option.startswith(("-h, --help", "--tls-")):
            continue
        assert "default: " in option, option
    assert any(o.startswith("--keepalive") and "(default: 5)" in o for o in options)


def test_wool_workers_says_where_it_looked_when_it_finds_nobody() -> None:
    namespace = f"nobody-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [*WOOL, "workers", "--namespace", namespace, "--wait", "0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert result.stdout == ""
    assert f"no workers found in namespace {namespace!r} of local discovery" in result.stderr
    assert str(wool.LocalDiscovery(namespace).path) in result.stderr


def _wide() -> dict[str, str]:
    # One line per option in argparse's help.
    return {**os.environ, "COLUMNS": "400"}
