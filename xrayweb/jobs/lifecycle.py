"""Claim, heartbeat, fenced writes, finish, cancel and recovery for every job kind.

Each transition is a conditional UPDATE, so a redelivered message, a second worker or
a superseded attempt can never move a job twice:

- ``claim`` takes a queued job: attempt + 1, a lease, the worker's name;
- the running attempt renews its lease (``heartbeat``) and names its attempt in every
  write (``fenced``); once recovery has queued the job again, that attempt's writes
  match no row and change nothing;
- ``recover`` queues again a job whose lease ran out, up to a delivery limit, or ends
  it cancelled when cancel was asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from generator.errors import GeneratorError
from xrayweb.jobs import files, permissions
from xrayweb.jobs.models import Job, Status

logger = logging.getLogger(__name__)

WORKER_LOST = "The worker running this job stopped {n} times; it was not retried."
NOT_CANCELLABLE = "{kind} {id} is {status}; it can no longer be cancelled."
CANCEL_FORBIDDEN = "You can cancel only your own jobs."
INTERNAL_ERROR = (
    "The worker hit an unexpected error and stopped this job; nothing you entered "
    "caused it. The details are in the worker's log under {job}."
)
TIME_LIMIT = "The job ran past its {limit} s time limit and was stopped."
CANCEL_PERMISSION = permissions.CANCEL_ANY_JOB


def failure_message(exc: BaseException, *, job: str) -> str:
    """What a user reads about a job that failed with ``exc``; the exception and its
    traceback go to the log under ``job`` (e.g. "generation request 12 attempt 1").

    A GeneratorError's message was written for users and names the bad value, so it
    is shown as it is. Anything else is a fault of the platform whose text may hold
    host paths or library internals: users read INTERNAL_ERROR, which names ``job``
    so that an operator finds the log entry.
    """
    if isinstance(exc, GeneratorError):
        logger.warning("%s failed: %s", job, exc, exc_info=exc)
        return str(exc)
    logger.error("%s failed with an unexpected error", job, exc_info=exc)
    return INTERNAL_ERROR.format(job=job)


def job_label(model: type[Job], pk: int, attempt: int) -> str:
    """How logs and error messages name one attempt of a job."""
    return f"{model._meta.verbose_name} {pk} attempt {attempt}"


def lease() -> timedelta:
    return timedelta(seconds=settings.XRAY_JOB_LEASE_S)


def claim(model: type[Job], pk: int, worker: str) -> int | None:
    """Queued → running for this worker; the new attempt number, or None when the job
    is not queued (another delivery got there first, or it ended).

    A compare-and-swap on the attempt number: read it, then move the row only if
    it is still queued at that attempt. Two statements and no transaction; a claim
    that raced another one (or a recovery) matches no row and returns None.
    """
    claimable = model.objects.filter(
        pk=pk, status=Status.QUEUED, cancel_requested_at__isnull=True
    )
    seen = claimable.values_list("attempt", flat=True).first()
    if seen is None:
        return None
    now = timezone.now()
    claimed = claimable.filter(attempt=seen).update(
        status=Status.RUNNING,
        attempt=seen + 1,
        worker=worker[:200],
        lease_expires_at=now + lease(),
        heartbeat_at=now,
        started_at=now,
        finished_at=None,
        error="",
    )
    return seen + 1 if claimed else None


def fenced(model: type[Job], pk: int, attempt: int) -> QuerySet:
    """The job's row, only while this attempt still holds it."""
    return model.objects.filter(pk=pk, attempt=attempt, status=Status.RUNNING)


@dataclass(frozen=True)
class Beat:
    """What a heartbeat found: whether the attempt still holds the job, and whether
    someone asked to cancel it."""

    held: bool
    cancel_requested: bool

    @property
    def should_stop(self) -> bool:
        return not self.held or self.cancel_requested


def heartbeat(model: type[Job], pk: int, attempt: int, **fields: object) -> Beat:
    """Renew the lease (writing ``fields``, e.g. progress) if this attempt holds it.

    One UPDATE in the common case (held, no cancel asked for); only when it matches
    nothing does a second one tell a cancelled job from a lost one. The cancel flag
    is never cleared while a job runs, so the second answer is the first's reason.
    """
    now = timezone.now()
    rows = fenced(model, pk, attempt)
    renewal = {"lease_expires_at": now + lease(), "heartbeat_at": now, **fields}
    if rows.filter(cancel_requested_at__isnull=True).update(**renewal):
        return Beat(held=True, cancel_requested=False)
    held = rows.update(**renewal) == 1
    return Beat(held=held, cancel_requested=held)


def finish(
    model: type[Job], pk: int, attempt: int, status: Status, **fields: object
) -> bool:
    """Running → ``status`` for this attempt; False when it was superseded. The next
    job of the queue is dispatched once this commits."""
    if "error" in fields:
        fields["error"] = str(fields["error"])[:2000]
    done = fenced(model, pk, attempt).update(
        status=status, finished_at=timezone.now(), lease_expires_at=None, **fields
    )
    if done:
        dispatch_on_commit(model)
    else:
        logger.info("%s %s attempt %s was superseded", model.__name__, pk, attempt)
    return done == 1


def stop(model: type[Job], pk: int, attempt: int, error: str = "") -> bool:
    """End an attempt that stopped early: cancelled if cancel was asked for, else
    failed with ``error``."""
    if fenced(model, pk, attempt).filter(cancel_requested_at__isnull=False).exists():
        return finish(model, pk, attempt, Status.CANCELLED)
    return finish(model, pk, attempt, Status.FAILED, error=error)


def can_cancel(user: AbstractBaseUser, owner_id: int | None) -> bool:
    return owner_id == user.pk or user.has_perm(CANCEL_PERMISSION)


def cancel(model: type[Job], pk: int, user: AbstractBaseUser) -> str | None:
    """Cancel a queued job at once, or flag a running one for its worker to stop.

    Returns an error message, or None. Owners cancel their own jobs; holders of the
    "cancel others' jobs" permission cancel anyone's.
    """
    row = model.objects.filter(pk=pk).values("status", model.owner_lookup).first()
    if row is None or not can_cancel(user, row[model.owner_lookup]):
        return CANCEL_FORBIDDEN
    now = timezone.now()
    if model.objects.filter(pk=pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested_at=now, finished_at=now
    ):
        return None
    if model.objects.filter(pk=pk, status=Status.RUNNING).update(
        cancel_requested_at=Coalesce(F("cancel_requested_at"), Value(now))
    ):
        return None
    status = model.objects.values_list("status", flat=True).get(pk=pk)
    kind = model._meta.verbose_name.capitalize()
    return NOT_CANCELLABLE.format(kind=kind, id=pk, status=status)


def cancel_all(jobs: QuerySet, now: datetime) -> None:
    """Cancel every job of ``jobs`` (the chunks of one parent): queued ones end at
    once, running ones are flagged for their worker to stop at its next step."""
    jobs.filter(status=Status.QUEUED).update(
        status=Status.CANCELLED, cancel_requested_at=now, finished_at=now
    )
    jobs.filter(status=Status.RUNNING).update(cancel_requested_at=now)


def recover(model: type[Job]) -> int:
    """Jobs whose lease ran out lost their worker: queue them again, or end them
    (cancelled when asked for, failed past the delivery limit). Each superseded
    attempt's files are deleted. Returns how many jobs were recovered."""
    now = timezone.now()
    expired = model.objects.filter(status=Status.RUNNING, lease_expires_at__lt=now)
    recovered = 0
    for pk, attempt, cancel_at in expired.values_list(
        "pk", "attempt", "cancel_requested_at"
    ):
        recovered += _recover_one(model, pk, attempt, cancel_at is not None, now)
    return recovered


def _recover_one(
    model: type[Job], pk: int, attempt: int, cancelled: bool, now: object
) -> int:
    rows = fenced(model, pk, attempt).filter(lease_expires_at__lt=now)
    limit = settings.XRAY_JOB_MAX_DELIVERIES
    if cancelled:
        done = rows.update(status=Status.CANCELLED, finished_at=now)
    elif attempt >= limit:
        error = WORKER_LOST.format(n=attempt)
        done = rows.update(status=Status.FAILED, finished_at=now, error=error)
    else:
        done = rows.update(
            status=Status.QUEUED,
            enqueued_at=None,
            lease_expires_at=None,
            worker="",
            **model.requeue_fields(),
        )
    if done:
        logger.warning("%s %s attempt %s lost its worker", model.__name__, pk, attempt)
        files.attempt_delete(model.attempt_prefix(pk, attempt))
    return done


def dispatch_on_commit(model: type[Job]) -> None:
    """Dispatch the model's queue once the current transaction commits; a broker or
    database error there is logged, never raised to the caller that committed."""
    from xrayweb.jobs import dispatch

    queue = dispatch.queue_of(model)
    transaction.on_commit(lambda: dispatch.dispatch(queue), robust=True)


def killed_by_time_limit(*, task_name: str, pk: int, worker: str, limit: float) -> bool:
    """The worker's parent killed the child running ``pk`` past its hard limit: end
    the attempt that child held as failed, naming the limit."""
    from xrayweb.jobs.dispatch import job_models

    model = next(m for m in job_models() if m.task_name == task_name)
    row = model.objects.filter(pk=pk, status=Status.RUNNING, worker=worker)
    attempt = row.values_list("attempt", flat=True).first()
    if attempt is None:
        return False
    if fenced(model, pk, attempt).filter(cancel_requested_at__isnull=False).exists():
        done = finish(model, pk, attempt, Status.CANCELLED)
    else:
        error = TIME_LIMIT.format(limit=f"{limit:g}")
        done = finish(model, pk, attempt, Status.FAILED, error=error)
    if done:
        files.attempt_delete(model.attempt_prefix(pk, attempt))
    return done
