"""Live previews of running requests: small PNGs that the worker overwrites every few
steps and deletes at the end, kept in the shared cache (Redis), never as a result.

The key names the attempt, so a superseded attempt's preview is never shown for the
attempt that holds the job, and a lost worker's preview expires with its lease.
No torch here: the web reads previews, the worker (runner) makes them.
"""

from __future__ import annotations

import base64
import logging

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)


def preview_key(request_id: int, attempt: int) -> str:
    return f"generation-preview:{request_id}:{attempt}"


def preview_store(*, request_id: int, attempt: int, png: bytes) -> bool:
    """Overwrite the attempt's preview; False when the cache is unreachable (the job
    goes on: a preview is a courtesy)."""
    try:
        cache.set(preview_key(request_id, attempt), png, settings.XRAY_JOB_LEASE_S)
    except SoftTimeLimitExceeded:
        # The job's time limit, raised by its signal wherever the job was: here it
        # must still end the job. The limit is signalled once, so a job that
        # swallowed it would run on to its end.
        raise
    except Exception:  # a cache outage must never fail a job
        logger.warning("storing the preview of request %s failed", request_id)
        return False
    return True


def preview_delete(*, request_id: int, attempt: int) -> None:
    try:
        cache.delete(preview_key(request_id, attempt))
    except Exception:  # it expires with the lease anyway
        logger.warning("deleting the preview of request %s failed", request_id)


def preview_data_uri(request: object) -> str | None:
    """The running request's latest preview as a data: URI, or None (not running,
    no preview yet, or the cache is unreachable)."""
    if getattr(request, "status", None) != "running":
        return None
    try:
        png = cache.get(preview_key(request.pk, request.attempt))
    except Exception:
        return None
    if not png:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
