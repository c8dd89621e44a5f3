"""A worker process as seen by the pool that spawned it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

import wool
from wool._errors import WorkerStartError
from wool.discovery import WorkerMetadata
from wool.worker._config import WorkerConfig, write_config

__all__ = ["WorkerProcess"]

log = logging.getLogger("wool.pool")

# The worker must import the same wool as its parent, installed or not.
_WOOL_ROOT = str(Path(wool.__file__).resolve().parent.parent)


# glibc serves large allocations with fresh mmaps and returns freed memory at once, so
# every copy of a large payload faults its pages in anew (~0.8 ms per MB). Workers keep
# up to this much freed memory for reuse instead. Settings in the environment win.
_MALLOC_TUNING = {
    "MALLOC_MMAP_THRESHOLD_": str(256 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(512 * 1024 * 1024),
}


class WorkerProcess:
    """Spawns one worker (a fresh interpreter, never a fork) and stops it."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.metadata: WorkerMetadata | None = None
        self._process: Process | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def start(self, timeout: float) -> WorkerMetadata:
        """Start the worker and wait, up to ``timeout`` seconds, until it serves.

        Any failure, the system's (no file descriptors, no memory) or the worker's, is a
        WorkerStartError.
        """
        try:
            with anyio.fail_after(timeout):
                return await self._start(timeout)
        except WorkerStartError:
            raise
        except TimeoutError:
            raise WorkerStartError(
                f"worker {self.config.id} did not start within {timeout:g} s; "
                "raise the pool's start_timeout if workers are slow to import"
            ) from None
        except (OSError, ValueError, anyio.BrokenResourceError) as exc:
            raise WorkerStartError(
                f"worker {self.config.id} could not be started: {exc!r}"
            ) from exc

    async def _start(self, timeout: float) -> WorkerMetadata:
        read_fd, write_fd = os.pipe()
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_WOOL_ROOT, env.get("PYTHONPATH")) if p)
            for name, value in _MALLOC_TUNING.items():
                env.setdefault(name, value)
            self._process = await anyio.open_process(
                [sys.executable, "-m", "wool.worker", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=None,
                stderr=None,
                pass_fds=(write_fd,),
                env=env,
                # Ctrl-C goes to the program, which stops its pools; not to every worker.
                start_new_session=True,
            )
            os.close(write_fd)
            write_fd = -1
            assert self._process.stdin is not None
            await self._process.stdin.send(write_config(self.config))
            report = await self._read_report(read_fd, timeout)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if not report.get("ok"):
            raise WorkerStartError(
                f"worker {self.config.id} failed to start", remote_traceback=report.get("error", "")
            )
        self.metadata = WorkerMetadata(
            id=self.config.id,
            host=self.config.host,
            port=int(report["port"]),
            pid=int(report["pid"]),
            tags=self.config.tags,
            version=wool.__version__,
            backend=self.config.backend,
            secure=self.config.credentials is not None,
            capacity=self.config.concurrency,
        )
        log.info(
            "worker %s started (pid %d) at %s",
            self.config.id,
            self.metadata.pid,
            self.metadata.address,
        )
        return self.metadata

    async def _read_report(self, fd: int, timeout: float) -> dict[str, Any]:
        data = b""
        with anyio.move_on_after(timeout):
            while not data.endswith(b"\n"):
                await anyio.wait_readable(fd)
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
            else:
                return json.loads(data)
            assert self._process is not None
            code = await self._process.wait()
            raise WorkerStartError(
                f"worker {self.config.id} exited with status {code} before it was ready; "
                "its output above says why"
            )
        raise WorkerStartError(
            f"worker {self.config.id} did not start within {timeout:g} s; "
            "raise the pool's start_timeout if workers are slow to import"
        )

    async def wait(self) -> int:
        """Wait for the process to exit; its status."""
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, grace: float) -> None:
        """SIGTERM, then SIGKILL if the worker is still alive after ``grace`` seconds."""
        process = self._process
        if process is None:
            return
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await process.wait()
                if process.returncode is None:
                    log.warning(
                        "worker %s did not stop within %g s; killing it", self.config.id, grace
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            await process.aclose()
        log.info("worker %s exited with status %s", self.config.id, process.returncode)

    def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
