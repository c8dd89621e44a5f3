"""The ``wool`` command as a user meets it (issue 9)."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import pytest

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
