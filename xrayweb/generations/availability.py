"""Which model versions a live worker can load: the web asks the database, where
workers report it (jobs/presence.py), never its own disk or caches."""

from __future__ import annotations

from django.conf import settings
from django.core.files.storage import default_storage

from generator.loading import is_reachable
from xrayweb.generations.model_files import MANIFEST, model_source_check
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs import presence

UNAVAILABLE = "no live worker can load it"


class NotRead:
    """The type of NOT_READ: availability() has not been read yet. None cannot
    stand for that, since it is a real answer (no generation worker is live)."""


NOT_READ = NotRead()
Known = dict[int, bool] | None
REFUSED = "Model version {name!r} cannot run now: {why}. Pick another one."


def loadable_here(version: ModelVersion) -> bool:
    """On a worker: whether this host can load ``version`` (its base on disk, in
    the Hub cache or downloadable, and under a model root; its trained files in
    storage)."""
    if version.files_key:
        return default_storage.exists(f"{version.files_key}{MANIFEST}")
    try:
        model_source_check(version.source)
    except ValueError:
        return False  # this worker refuses to load it
    if version.kind == ModelKind.TINY:
        return True  # built on first use
    if not is_reachable(version.source, version.revision or None):
        return False
    if version.kind == ModelKind.LORA:
        return bool(version.lora_key) and default_storage.exists(version.lora_key)
    return True


def loadable_versions() -> list[int]:
    return [
        v.pk for v in ModelVersion.objects.filter(is_active=True) if loadable_here(v)
    ]


def availability() -> dict[int, bool] | None:
    """Version id → whether some live generation worker can load it; None while no
    generation worker is live (a job then waits for one rather than fail)."""
    workers = list(presence.live(settings.QUEUE_GPU))
    if not workers:
        return None
    loadable = {pk for worker in workers for pk in worker.model_versions}
    active = ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True)
    return {pk: pk in loadable for pk in active}


def refusal(version: ModelVersion, known: dict[int, bool] | None) -> str | None:
    """Why ``version`` cannot be queued now, or None when it can."""
    if known is None or known.get(version.pk, False):
        return None
    return REFUSED.format(name=version.name, why=UNAVAILABLE)
