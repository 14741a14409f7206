"""Errors whose message is written for the person who asked for the work.

A job that fails with one of these shows its message as it is; any other exception
is a fault of the platform, logged with its traceback and shown to users only as
"an unexpected error" (xrayweb.jobs.lifecycle.failure_message).
"""

from __future__ import annotations


class GeneratorError(Exception):
    """Base class: the message is meant for a user and names the bad value."""


class ModelNotFoundError(GeneratorError):
    """The model that was asked for is not a folder, a file, or a cached Hub repo."""


class InvalidParameterError(GeneratorError, ValueError):
    """A generation parameter is out of bounds; the message names it and its value."""


class NotEnoughDataError(GeneratorError, ValueError):
    """Too few images, scores or features for a figure; the message says how many
    there were and how many it needs."""


class GenerationInterrupted(GeneratorError):
    """The caller's progress callback asked to stop; no image was decoded."""


class UnsafeCheckpointError(GeneratorError):
    """A checkpoint that holds more than tensors and plain values: never loaded."""
