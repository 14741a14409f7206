"""What a job's page shows about its progress: counts, ETA, queue place, duration.

One shape for every job kind (generation, import, training, evaluation), rendered by
templates/_progress.html, so every page reads the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from xrayweb.jobs.models import TERMINAL_STATUSES, Job, Status


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` ``unit``s (a plural noun: "steps", "items", "chunks")."""

    status: str
    status_label: str
    done: int
    total: int
    unit: str
    eta_s: float | None = None
    position: int | None = None
    duration_s: float | None = None

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0

    @property
    def is_queued(self) -> bool:
        return self.status == Status.QUEUED

    @property
    def is_running(self) -> bool:
        return self.status == Status.RUNNING

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def eta_s(
    started_at: datetime | None, done: int, total: int, now: datetime | None = None
) -> float | None:
    """Seconds left at the pace so far: the time per unit, times the units left.
    None before the first unit is done."""
    if started_at is None or done <= 0:
        return None
    elapsed = ((now or timezone.now()) - started_at).total_seconds()
    return round(elapsed / done * max(total - done, 0), 1)


def duration_s(started_at: datetime | None, finished_at: datetime | None) -> float:
    if started_at is None or finished_at is None:
        return None
    return max((finished_at - started_at).total_seconds(), 0.0)


def job_progress(
    job: Job,
    *,
    done: int,
    total: int,
    unit: str,
    eta: float | None = None,
) -> Progress:
    """The progress of a job of any kind; ``eta``: the job's own estimate, if it
    keeps one, else one from the pace so far."""
    from xrayweb.jobs import dispatch

    running = job.status == Status.RUNNING
    if running and eta is None:
        eta = eta_s(job.started_at, done, total)
    return Progress(
        status=job.status,
        status_label=job.get_status_display(),
        done=done,
        total=total,
        unit=unit,
        eta_s=eta if running else None,
        position=dispatch.queue_position(job),
        duration_s=duration_s(job.started_at, job.finished_at),
    )
