"""Same-host discovery through a directory of small files, one per worker.

Each worker is a JSON file named after its id in ``<tmp>/wool-<uid>/<namespace>/``,
written atomically (write then rename). Subscribers poll the directory. An entry whose
process is gone is dropped, and its file removed, by whoever notices first; the last
publisher to leave removes the directories.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import tempfile
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

import anyio

from wool.discovery._protocol import DiscoveryEvent, EventKind, WorkerFilter, WorkerMetadata
from wool.security import release_socket

__all__ = ["LocalDiscovery"]

log = logging.getLogger("wool.discovery")

_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")


def _root() -> Path:
    return Path(tempfile.gettempdir()) / f"wool-{os.getuid()}"


def _trusted(root: Path) -> bool:
    """The directory is ours alone: on a shared temp dir another user could have made it
    first and planted entries that send our calls, and their pickles, to their worker."""
    try:
        info = root.lstat()
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        log.error(
            "ignoring %s: it must be a directory owned by uid %d with mode 0700", root, os.getuid()
        )
        return False
    return True


def _alive(pid: int) -> bool:
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalDiscovery:
    """Workers on this host, grouped by namespace.

    ``namespace`` defaults to a fresh random one, so pools do not see each other's
    workers unless they name the same namespace: ``wool worker --discovery local
    --namespace jobs`` and ``WorkerPool(discovery=LocalDiscovery("jobs"))`` meet.

    Each worker is a small file under ``<tmp>/wool-<uid>/<namespace>/``. An entry whose
    process died without withdrawing it is dropped (and deleted) by the first subscriber
    that notices, within about a second; the last publisher or subscriber to leave
    removes the directories.

    Raises:
        ValueError: ``namespace`` is not up to 63 letters, digits, ``-`` and ``_`` (not
            starting with ``-``).
    """

    def __init__(self, namespace: str | None = None, *, poll_interval: float = 0.05) -> None:
        self.namespace = namespace or f"ns-{uuid.uuid4().hex[:12]}"
        if not _NAMESPACE.fullmatch(self.namespace):
            raise ValueError(
                f"invalid namespace {self.namespace!r}: use up to 63 letters, digits, '-' "
                "and '_', not starting with '-'"
            )
        self.poll_interval = poll_interval

    def __repr__(self) -> str:
        return f"LocalDiscovery(namespace={self.namespace!r})"

    @property
    def path(self) -> Path:
        """The namespace's directory."""
        return _root() / self.namespace

    @asynccontextmanager
    async def publisher(self) -> AsyncGenerator[_Publisher, None]:
        """A publisher that writes one file per worker; leaving withdraws them.

        Entering and leaving raise nothing of their own.

        Raises:
            PermissionError: by the publisher's ``publish``, when ``<tmp>/wool-<uid>`` is
                not a directory private to this user (set ``TMPDIR`` to one).
            OSError: by ``publish``, when the worker's file cannot be written there.
        """
        publisher = _Publisher(self.path)
        try:
            yield publisher
        finally:
            publisher.withdraw_all()

    @asynccontextmanager
    async def subscriber(
        self, filter: WorkerFilter | None = None
    ) -> AsyncGenerator[AsyncIterator[DiscoveryEvent], None]:
        """Events for the namespace's workers, polled every ``poll_interval`` seconds.

        A directory that is not private to this user is ignored (and logged), not trusted.

        Raises:
            OSError: by the iterator, when the namespace's directory exists but cannot be
                listed (a missing one means no workers yet). Entering and leaving raise
                nothing of their own.
        """
        try:
            yield self._events(filter)
        finally:
            self.cleanup()

    async def _events(self, filter: WorkerFilter | None) -> AsyncIterator[DiscoveryEvent]:
        known: dict[str, WorkerMetadata] = {}
        seen_change: int | None = None
        next_full_scan = 0.0
        while True:
            # Read the entries only when the directory changed, and look for dead
            # processes about once a second: cheap with hundreds of workers.
            change = _mtime(self.path)
            now = anyio.current_time()
            if change == seen_change and now < next_full_scan:
                await anyio.sleep(self.poll_interval)
                continue
            seen_change, next_full_scan = change, now + _LIVENESS_INTERVAL
            current = {w.id: w for w in self.scan() if filter is None or filter(w)}
            for worker_id in known.keys() - current.keys():
                yield DiscoveryEvent("worker-dropped", known.pop(worker_id))
            for worker_id, worker in current.items():
                previous = known.get(worker_id)
                if previous != worker:
                    known[worker_id] = worker
                    yield DiscoveryEvent(
                        "worker-added" if previous is None else "worker-updated", worker
                    )
            await anyio.sleep(self.poll_interval)

    def scan(self) -> list[WorkerMetadata]:
        """The live workers of the namespace now; removes entries of dead processes."""
        workers: list[WorkerMetadata] = []
        if not _trusted(self.path.parent):
            return workers
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return workers
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            try:
                worker = _decode(Path(entry.path).read_bytes())
            except (OSError, ValueError, TypeError, KeyError):
                continue
            if _alive(worker.pid):
                workers.append(worker)
            else:
                log.info(
                    "dropping worker %s of namespace %s: process %d is gone",
                    worker.id,
                    self.namespace,
                    worker.pid,
                )
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                release_socket(worker.host)  # a killed worker could not remove it
        return workers

    def cleanup(self) -> None:
        """Remove the namespace's directory if nothing live is published in it."""
        if not self.scan():
            _prune(self.path)


class _Publisher:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._published: set[str] = set()

    async def publish(self, kind: EventKind, worker: WorkerMetadata) -> None:
        entry = self._path / f"{worker.id}.json"
        if kind == "worker-dropped":
            self._withdraw(worker.id)
            return
        self._path.parent.mkdir(exist_ok=True, mode=0o700)
        if not _trusted(self._path.parent):
            raise PermissionError(
                f"{self._path.parent} is not a private directory of this user; "
                "set TMPDIR to a directory only you can write"
            )
        staging = entry.with_suffix(f".{os.getpid()}.tmp")
        for attempt in range(3):
            # Whoever leaves last prunes empty directories: it may race with this publish.
            try:
                self._path.parent.mkdir(exist_ok=True, mode=0o700)
                self._path.mkdir(exist_ok=True, mode=0o700)
                staging.write_bytes(_encode(worker))
                os.replace(staging, entry)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        self._published.add(worker.id)

    def _withdraw(self, worker_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._path / f"{worker_id}.json").unlink()
        self._published.discard(worker_id)

    def withdraw_all(self) -> None:
        for worker_id in list(self._published):
            self._withdraw(worker_id)
        _prune(self._path)


_LIVENESS_INTERVAL = 1.0


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _prune(path: Path) -> None:
    for directory in (path, path.parent):
        try:
            directory.rmdir()
        except OSError:
            return


def _encode(worker: WorkerMetadata) -> bytes:
    data = asdict(worker)
    data["tags"] = sorted(worker.tags)
    data["options"] = dict(worker.options)
    return json.dumps(data).encode()


def _decode(data: bytes) -> WorkerMetadata:
    fields = json.loads(data)
    fields["tags"] = frozenset(fields["tags"])
    fields["options"] = tuple(sorted(fields.get("options", {}).items()))
    return WorkerMetadata(**fields)
