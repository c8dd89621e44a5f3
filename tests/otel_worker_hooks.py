"""Imported by workers only: turns tracing on there."""

from __future__ import annotations

from .otel_hooks import install

install()
