"""Loaded (through PYTHONPATH) only by a test's worker: slow generation steps."""

import slow_steps  # noqa: F401 - connects its signal handler
