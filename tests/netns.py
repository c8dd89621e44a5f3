"""Linux network namespaces for tests: throwaway "hosts" joined by a veth pair.

Everything a :class:`Lab` creates (namespaces, ``/etc/netns/<name>/`` directories, the
processes it starts inside them) is removed by :meth:`Lab.close`, also when a test fails.
Only addresses inside the lab's own namespaces are used; the host's interfaces and its
``/etc/hosts`` are never touched.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

IP = shutil.which("ip") or "/usr/sbin/ip"
NETNS_ETC = Path("/etc/netns")
# Seconds any single ``ip`` command may take.
_IP_TIMEOUT = 10.0


def skip_unless_possible() -> None:
    """Skip the calling test unless this process can create network namespaces."""
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces need Linux")
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root (ip netns add)")
    if not Path(IP).exists():
        pytest.skip(f"iproute2 is not installed ({IP} not found)")


class Proc:
    """A process started in a namespace; its stdout and stderr go to files."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], out: Path, err: Path) -> None:
        self.name = name
        self.popen = popen
        self.out = out
        self.err = err

    @property
    def pid(self) -> int:
        # ``ip netns exec`` execs the command: the child's pid is the command's.
        return self.popen.pid

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"--- {self.name} (pid {self.pid}, returncode {self.popen.poll()}) stdout:\n"
            f"{self.stdout()}\n--- {self.name} stderr:\n{self.stderr()}"
        )

    def wait_for(self, text: str, *, stream: str = "stdout", timeout: float = 20.0) -> str:
        """Wait until ``text`` appears in the process's stdout (or stderr); return it all."""
        deadline = time.monotonic() + timeout
        while True:
            content = self.stdout() if stream == "stdout" else self.stderr()
            if text in content:
                return content
            if self.popen.poll() is not None:
                content = self.stdout() if stream == "stdout" else self.stderr()
                if text in content:
                    return content
                pytest.fail(f"{self.name} exited before printing {text!r}\n{self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} did not print {text!r} in {timeout:g} s\n{self.describe()}"
                )
            time.sleep(0.05)

    def wait_line(
        self, pattern: str, *, stream: str = "stdout", timeout: float = 20.0
    ) -> re.Match[str]:
        """Wait for a complete output line matching the regular expression ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.popen.poll() is not None
            content = self.stdout() if stream == "stdout" else self.stderr()
            for line in content.splitlines(keepends=True):
                if line.endswith("\n") and (match := regex.search(line)):
                    return match
            if exited:
                pytest.fail(f"{self.name} exited before printing /{pattern}/\n{self.describe()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} did not print /{pattern}/ in {timeout:g} s\n{self.describe()}"
                )
            time.sleep(0.05)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout:g} s\n{self.describe()}")

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
            pass


class Lab:
    """Namespaces and processes of one test; :meth:`close` removes all of them."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.prefix = f"wool-{secrets.token_hex(3)}"
        self.namespaces: list[str] = []
        self.etc_dirs: list[Path] = []
        self.created_netns_etc = False
        self.procs: list[Proc] = []

    # -------------------------------------------------------------------- namespaces

    def ip(self, *args: str, ns: str | None = None) -> None:
        command = [IP, *(("-n", ns) if ns else ()), *args]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")

    def namespace(self, suffix: str) -> str:
        """A new namespace with its loopback up; skips the test if namespaces are unavailable."""
        name = f"{self.prefix}-{suffix}"
        result = subprocess.run(
            [IP, "netns", "add", name],
            capture_output=True,
            text=True,
            timeout=_IP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(
                f"cannot create a network namespace (ip netns add): {result.stderr.strip()}"
            )
        self.namespaces.append(name)
        self.ip("link", "set", "lo", "up", ns=name)
        return name

    def link(self, a: str, b: str, subnet: str) -> tuple[str, str]:
        """Join namespaces ``a`` and ``b`` with a veth pair in ``subnet`` (``"10.201.7"``).

        ``a`` gets ``<subnet>.1``, ``b`` gets ``<subnet>.2``; both get a multicast route so
        that mDNS has a way out. Returns the two addresses. The pair is created inside the
        namespaces (never on the host) and disappears with them.
        """
        self.ip("link", "add", "wa", "type", "veth", "peer", "name", "wb", "netns", b, ns=a)
        for ns, dev, host in ((a, "wa", 1), (b, "wb", 2)):
            self.ip("addr", "add", f"{subnet}.{host}/24", "dev", dev, ns=ns)
            self.ip("link", "set", dev, "up", ns=ns)
            self.ip("route", "add", "224.0.0.0/4", "dev", dev, ns=ns)
        return f"{subnet}.1", f"{subnet}.2"

    def etc_file(self, ns: str, name: str, content: str) -> Path:
        """Write ``/etc/netns/<ns>/<name>``, which ``ip netns exec`` mounts over ``/etc/<name>``."""
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir(mode=0o755)
            self.created_netns_etc = True
        directory = NETNS_ETC / ns
        if directory not in self.etc_dirs:
            directory.mkdir(mode=0o755)
            self.etc_dirs.append(directory)
        path = directory / name
        path.write_text(content)
        return path

    # --------------------------------------------------------------------- processes

    def start(self, ns: str, name: str, *command: str | os.PathLike[str]) -> Proc:
        """Start ``command`` in namespace ``ns`` (``ip netns exec``), output to files."""
        out = self.directory / f"{name}.out"
        err = self.directory / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                [IP, "netns", "exec", ns, *map(str, command)],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=self.env,
                cwd=self.directory,
            )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def run(
        self, ns: str, name: str, *command: str | os.PathLike[str], timeout: float = 30.0
    ) -> Proc:
        """Run ``command`` in ``ns`` to completion (bounded); the caller checks the result."""
        proc = self.start(ns, name, *command)
        proc.wait(timeout)
        return proc

    def describe(self, procs: Sequence[Proc] | None = None) -> str:
        return "\n".join(p.describe() for p in (self.procs if procs is None else procs))

    # ----------------------------------------------------------------------- cleanup

    def close(self) -> None:
        errors: list[str] = []
        for proc in self.procs:
            proc.kill()
        for ns in reversed(self.namespaces):
            result = subprocess.run(
                [IP, "netns", "delete", ns],
                capture_output=True,
                text=True,
                timeout=_IP_TIMEOUT,
                check=False,
            )
            if result.returncode != 0:
                errors.append(f"ip netns delete {ns}: {result.stderr.strip()}")
        for directory in self.etc_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        if self.created_netns_etc:
            try:
                NETNS_ETC.rmdir()
            except OSError:
                pass  # another user of /etc/netns appeared meanwhile
        if errors:
            raise RuntimeError("; ".join(errors))
