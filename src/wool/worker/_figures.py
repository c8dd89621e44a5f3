"""A worker's live figures: what its calls came to, and their recent latency.

Recorded on every call, so each record is a few additions: the latency window keeps
one-second buckets of log-scale histograms (bounded whatever the call rate), and the
percentile is worked out only when someone asks (an Info call).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from math import floor, log2

from wool.transport import Latency, Response

__all__ = ["CallFigures", "LatencyWindow"]

#: Histogram bins per doubling: a bin spans a factor of 2 ** (1 / 16), 4.4%.
_BINS_PER_DOUBLING = 16
#: Latencies below this count as this (the clock cannot tell them apart anyway).
_SHORTEST = 1e-9
_SHORTEST_BIN = floor(log2(_SHORTEST) * _BINS_PER_DOUBLING)


def _bin_top(index: int) -> float:
    return 2.0 ** ((index + 1) / _BINS_PER_DOUBLING)


@dataclass(slots=True)
class _Second:
    """The calls that ended within one second of the window."""

    second: int
    calls: int = 0
    total: float = 0.0
    longest: float = 0.0
    bins: dict[int, int] = field(default_factory=dict[int, int])


class LatencyWindow:
    """Latencies of the calls that ended in the last ``span`` seconds.

    Memory is bounded by ``span`` buckets of at most a few hundred bins each, however
    many calls end. The window slides by whole seconds: it covers between ``span - 1``
    and ``span`` seconds.
    """

    def __init__(self, span: int = 60) -> None:
        if span < 1:
            raise ValueError(f"span must be at least 1 second, got {span!r}")
        self.span = span
        self._seconds: deque[_Second] = deque()
        self._current = _Second(-1)  # the newest bucket (a placeholder until the first call)

    def add(self, seconds: float, now: float) -> None:
        """Record a call that took ``seconds`` and ended at ``now`` (a monotonic time)."""
        bucket = self._current
        if bucket.second != int(now):
            bucket = self._current = _Second(int(now))
            self._seconds.append(bucket)
            self._forget(bucket.second)
        bucket.calls += 1
        bucket.total += seconds
        if seconds > bucket.longest:
            bucket.longest = seconds
        index = _SHORTEST_BIN if seconds <= _SHORTEST else floor(log2(seconds) * _BINS_PER_DOUBLING)
        bins = bucket.bins
        bins[index] = bins.get(index, 0) + 1

    def _forget(self, second: int) -> None:
        buckets = self._seconds
        while buckets and buckets[0].second <= second - self.span:
            buckets.popleft()

    def summary(self, now: float) -> Latency:
        """The figures of the window that ends at ``now``."""
        self._forget(int(now))
        calls = sum(b.calls for b in self._seconds)
        if not calls:
            return Latency(window=float(self.span))
        longest = max(b.longest for b in self._seconds)
        return Latency(
            window=float(self.span),
            calls=calls,
            mean=sum(b.total for b in self._seconds) / calls,
            p99=min(self._percentile(0.99, calls), longest),
            max=longest,
        )

    def _percentile(self, fraction: float, calls: int) -> float:
        """The top of the bin that holds the nearest-rank percentile: never below it."""
        merged: dict[int, int] = {}
        for bucket in self._seconds:
            for index, count in bucket.bins.items():
                merged[index] = merged.get(index, 0) + count
        rank = math.ceil(fraction * calls)
        seen = 0
        for index in sorted(merged):
            seen += merged[index]
            if seen >= rank:
                return _bin_top(index)
        raise AssertionError("the bins hold fewer calls than counted")  # pragma: no cover


class CallFigures:
    """What a worker's calls came to since it started (see ``WorkerInfo`` in the proto)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.queued = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.rejected = 0
        self.latency = LatencyWindow()

    def ended(self, response: Response | None, began: float, *, timed: bool) -> None:
        """Count a call that ended with ``response`` (None: it failed inside the worker).

        ``began``: when the worker accepted the call (``time.monotonic()``); ``timed``: a
        coroutine call, whose latency enters the window if it returned or raised.
        """
        if response is None or response.failure is not None:
            self.failed += 1
        elif response.cancelled is not None:
            self.cancelled += 1
            return  # its length was its caller's (or deadline's) to decide
        elif response.rejected is not None:
            self.rejected += 1
            return  # it never ran
        else:
            self.completed += 1
        if timed:
            now = time.monotonic()
            self.latency.add(now - began, now)

    def refused(self) -> None:
        """Count a call refused before it was accepted."""
        self.rejected += 1

    def uptime(self) -> float:
        return time.monotonic() - self.started
