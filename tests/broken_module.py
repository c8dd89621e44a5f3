"""Imported by a worker in a test: fails at import time on purpose."""

1 / 0
