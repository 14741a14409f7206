"""Which workers are alive, and what they said they can do.

Each worker writes its row at start and every XRAY_WORKER_REPORT_S from a thread of
its main process; a row not renewed for LIVE_AFTER_REPORTS intervals is a worker
that stopped. Nothing here knows what the payload means (see generations/
availability.py for model versions).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from xrayweb.jobs.models import WorkerPresence

logger = logging.getLogger(__name__)

LIVE_AFTER_REPORTS = 3  # missed reports before a worker counts as gone


def report(name: str, queues: list[str], model_versions: list[int]) -> None:
    WorkerPresence.objects.update_or_create(
        name=name,
        defaults={
            "queues": sorted(queues),
            "model_versions": sorted(model_versions),
            "seen_at": timezone.now(),
        },
    )


def forget(name: str) -> None:
    """A worker that shuts down cleanly says so at once."""
    WorkerPresence.objects.filter(name=name).delete()


def live(queue: str | None = None) -> list[WorkerPresence]:
    """Workers heard from recently, optionally only those consuming ``queue``
    (filtered here: SQLite has no JSON containment lookup)."""
    window = LIVE_AFTER_REPORTS * settings.XRAY_WORKER_REPORT_S
    workers = WorkerPresence.objects.filter(
        seen_at__gte=timezone.now() - timedelta(seconds=window)
    )
    return [w for w in workers if queue is None or queue in w.queues]


class Reporter:
    """Reports now and then every interval, from a daemon thread of the worker's
    main process; ``stop`` signs off and waits for it (a clean shutdown)."""

    SIGN_OFF_TIMEOUT_S = 10

    def __init__(
        self, name: str, queues: list[str], model_versions: Callable[[], list[int]]
    ) -> None:
        self.name, self.queues, self.model_versions = name, queues, model_versions
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="presence", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.SIGN_OFF_TIMEOUT_S)

    def _loop(self) -> None:
        while True:
            try:
                close_old_connections()
                report(self.name, self.queues, self.model_versions())
            except Exception:  # a database or storage outage: try again next time
                logger.exception("worker %s could not report itself", self.name)
            if self._stop.wait(settings.XRAY_WORKER_REPORT_S):
                break
        try:
            forget(self.name)
        except Exception:
            logger.exception("worker %s could not sign off", self.name)
