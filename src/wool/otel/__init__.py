"""OpenTelemetry tracing of routine calls (``pip install wool[otel]``).

Nothing here is imported by ``import wool``: OpenTelemetry is loaded only by importing this
module. :func:`instrument` makes every call a span on the caller (kind CLIENT) and one on
the worker (kind SERVER), the caller's trace context carried with the call, so that nested
routines build one trace whose tree is the call tree.
"""

from __future__ import annotations

from wool.otel._tracing import instrument, uninstrument

__all__ = ["instrument", "uninstrument"]
