"""The one job lifecycle every job kind shares: its states, its lease and its owner.

A job kind is a concrete model that inherits ``Job`` and names its Celery task and
owner. The database is the truth about every job: the broker only carries ids.
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class Job(models.Model):
    """Lifecycle fields: claimed by a conditional UPDATE that bumps ``attempt`` and
    sets a lease; every later write names the attempt (fencing).

    ``enqueued_at`` is when the dispatcher last sent the job to the broker (None
    while it waits in the database); ``cancel_requested_at`` is the cancel flag.
    """

    task_name: ClassVar[str]
    # The lookup from this model to the user who owns the job, for fair share.
    owner_lookup: ClassVar[str]
    # Where the kind's attempts store files, swept for orphans; None: no files.
    files_prefix: ClassVar[str | None] = None
    # Within one owner's waiting jobs on a queue, lower ranks go first (an owner's
    # interactive requests before their dataset's chunks); across owners, fair
    # share alone decides.
    dispatch_rank: ClassVar[int] = 0

    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    attempt = models.PositiveIntegerField(
        default=0, help_text="How many times a worker has claimed this job."
    )
    worker = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def cancel_pending(self) -> bool:
        """Cancel was asked for and the worker has not confirmed it yet."""
        return self.cancel_requested_at is not None and not self.is_terminal

    @property
    def run_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @classmethod
    def attempt_prefix(cls, pk: int, attempt: int) -> str | None:
        """The storage prefix an attempt writes its files under, if it writes any."""
        return None

    @classmethod
    def referenced_files(cls) -> list[str]:
        """Storage keys under ``files_prefix`` that rows point to."""
        return []

    @classmethod
    def settle(cls) -> None:
        """After recovery: bring rows that depend on this kind's jobs in line."""

    @classmethod
    def requeue_fields(cls) -> dict:
        """Fields reset when an abandoned job is queued again."""
        return {}


class UserQuota(models.Model):
    """Limits staff set per user; an empty field means the platform's default."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota"
    )
    max_queued_jobs = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Generation requests a user may have queued or running at once.",
    )
    daily_pixel_steps = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Budget per 24 hours, in pixel-steps: steps × width × height × images "
            "summed over the user's requests (512×512 px × 20 steps is 5.2 million)."
        ),
    )
    api_reads_per_minute = models.PositiveIntegerField(
        "API reads per minute",
        null=True,
        blank=True,
        help_text="GET requests per minute, for the user and for each of their tokens.",
    )
    api_writes_per_minute = models.PositiveIntegerField(
        "API writes per minute",
        null=True,
        blank=True,
        help_text="Creates, cancels and reruns per minute, likewise.",
    )

    class Meta:
        verbose_name = "user quota"

    def __str__(self) -> str:
        return f"quota of {self.user}"


class DispatchLock(models.Model):
    """One row per queue; the dispatcher updates it first, which serialises
    dispatchers on PostgreSQL (row lock) and on SQLite (the write lock) alike."""

    queue = models.CharField(max_length=100, unique=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.queue


class JobPermissions(models.Model):
    """Holds no rows: it carries the permissions that are about jobs of any kind."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("cancel_any_job", "Can cancel other users' jobs")]

    def __str__(self) -> str:
        return "job permissions"


class WorkerPresence(models.Model):
    """A worker that said it is alive: its queues and the model versions it can load.

    Workers write this at start and then every XRAY_WORKER_REPORT_S (see
    jobs/presence.py); the web reads it to pick the default model and to refuse a
    model that no live worker can run, instead of queuing jobs that would fail.
    """

    name = models.CharField(max_length=200, unique=True)
    queues = models.JSONField(default=list)
    model_versions = models.JSONField(default=list, help_text="ids it can load")
    seen_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]
        verbose_name = "worker"

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(self.queues)})"
