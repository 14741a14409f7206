"""One loaded pipeline per (source, revision, dtype) per process.

A worker process loads its model once and keeps it; adapters are then loaded into
that pipeline and switched in place (see ``lora``), never by reloading the base.
"""

from __future__ import annotations

import threading

from diffusers import StableDiffusionPipeline

from generator.loading import Placement, load_pipeline

_PIPELINES: dict[tuple[str, str, str, str, bool], StableDiffusionPipeline] = {}
_LOCK = threading.Lock()


def cached_pipeline(
    source: str, revision: str | None, placement: Placement
) -> StableDiffusionPipeline:
    """The process's pipeline for this model, loading it on first use."""
    key = (
        source,
        revision or "",
        placement.device,
        str(placement.dtype),
        placement.channels_last,
    )
    with _LOCK:
        if key not in _PIPELINES:
            _PIPELINES[key] = load_pipeline(
                source, revision=revision, placement=placement
            )
        return _PIPELINES[key]


def cached_count() -> int:
    return len(_PIPELINES)


def clear_cache() -> None:
    with _LOCK:
        _PIPELINES.clear()
