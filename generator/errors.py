"""Errors that generator/ raises for the caller to show to a person."""

from __future__ import annotations


class GeneratorError(Exception):
    """Base class: the message is meant for a user and names the bad value."""


class ModelNotFoundError(GeneratorError):
    """The model that was asked for is not a folder, a file, or a cached Hub repo."""


class InvalidParameterError(GeneratorError, ValueError):
    """A generation parameter is out of bounds; the message names it and its value."""


class GenerationInterrupted(GeneratorError):
    """The caller's progress callback asked to stop; no image was decoded."""


class UnsafeCheckpointError(GeneratorError):
    """A checkpoint that holds more than tensors and plain values: never loaded."""
