"""The database decides what reaches the broker: fair share across users.

Each queue's broker holds at most its worker slots plus one message; every other
queued job waits in the database. The next job sent is the oldest job of the user
whose work was least recently sent, so one user's 500 queued jobs delay another
user's single job by about one job's run time.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import OperationalError, connection, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from xrayweb.jobs.models import DispatchLock, Job, Status

logger = logging.getLogger(__name__)

EPOCH = datetime.min.replace(tzinfo=timezone.get_current_timezone())


def job_models() -> list[type[Job]]:
    """Every concrete job kind installed."""
    return [m for m in apps.get_models() if issubclass(m, Job)]


def queue_of(model: type[Job]) -> str:
    """The queue CELERY_TASK_ROUTES sends the model's task to."""
    for pattern, route in settings.CELERY_TASK_ROUTES.items():
        if fnmatch.fnmatchcase(model.task_name, pattern):
            return route["queue"]
    return settings.CELERY_TASK_DEFAULT_QUEUE


def models_on(queue: str) -> list[type[Job]]:
    return [model for model in job_models() if queue_of(model) == queue]


def queues() -> list[str]:
    return sorted({queue_of(model) for model in job_models()})


def slots(queue: str) -> int:
    """Worker slots serving ``queue`` (XRAY_QUEUE_SLOTS, keyed without the prefix)."""
    name = queue.removeprefix(settings.XRAY_QUEUE_PREFIX)
    return settings.XRAY_QUEUE_SLOTS.get(name, 1)


@dataclass(frozen=True)
class Waiting:
    """A queued job not sent yet."""

    model: type[Job]
    pk: int
    owner: int | None
    created_at: datetime


MAX_PASSES = 100


def dispatch(queue: str) -> int:
    """Send the next jobs of ``queue`` to the broker, fairly; how many were sent.

    A dispatcher that finds another one holding the queue's lock does not wait
    for it: the holder looks again once it lets go, and so sees any job committed
    before the skip. A pass stops when the broker is full (the job that ends next
    dispatches; a pass that filled it does not count again), nothing waits, the
    lock is held elsewhere, or a send failed.
    """
    models = models_on(queue)
    sent = 0
    for _ in range(MAX_PASSES):
        if _free(queue, models) <= 0 or not _any_waiting(models):
            break
        now = timezone.now()
        picked, free = _pick_under_lock(queue, models, now)
        if not picked:  # the lock was held elsewhere, or nothing was left
            break
        sent_now = sum(_send(job.model, job.pk, now) for job in picked)
        sent += sent_now
        if sent_now < len(picked):  # the broker is unreachable: reconcile resends
            break
        if sent_now >= free:  # full: a job committed meanwhile waits for the next
            break
    return sent


def _pick_under_lock(
    queue: str, models: list[type[Job]], now: datetime
) -> tuple[list[Waiting], int]:
    """Under the queue's lock, the next jobs in fair order, marked as sent now,
    and the free places they were picked for; no jobs when another dispatcher
    holds the lock."""
    with transaction.atomic():
        if not _lock(queue, now):
            return [], 0
        free = _free(queue, models)
        picked = fair_order(models, limit=free) if free > 0 else []
        for job in picked:
            job.model.objects.filter(pk=job.pk).update(enqueued_at=now)
    return picked, free


def _free(queue: str, models: list[type[Job]]) -> int:
    """Messages the broker may still take for ``queue``."""
    return slots(queue) + 1 - sum(_sent(m).count() for m in models)


def _any_waiting(models: list[type[Job]]) -> bool:
    waiting = Q(status=Status.QUEUED, enqueued_at__isnull=True)
    return any(model.objects.filter(waiting).exists() for model in models)


def _lock(queue: str, now: datetime) -> bool:
    """Take the queue's lock row for this transaction; False when another
    transaction holds it (PostgreSQL's NOWAIT). SQLite has no row locks: its
    write lock serialises the update instead."""
    rows = DispatchLock.objects.filter(queue=queue)
    if connection.features.has_select_for_update_nowait:
        try:
            with transaction.atomic():  # a savepoint: the refusal aborts only it
                held = rows.select_for_update(nowait=True).values_list("pk")
                if not list(held):
                    DispatchLock.objects.get_or_create(queue=queue)
        except OperationalError:
            return False
    if not rows.update(dispatched_at=now):
        DispatchLock.objects.get_or_create(queue=queue)
        rows.update(dispatched_at=now)
    return True


def _sent(model: type[Job]):
    """Jobs sent to the broker that no worker has claimed yet."""
    return model.objects.filter(status=Status.QUEUED, enqueued_at__isnull=False)


def _send(model: type[Job], pk: int, stamp: datetime) -> bool:
    """Publish the job's id; on a broker error it waits in the database again."""
    from kombu.exceptions import OperationalError

    from worker.app import app

    try:
        app.send_task(model.task_name, args=[pk], queue=queue_of(model))
    except (OperationalError, OSError):
        logger.warning("broker unreachable; %s %s waits", model.__name__, pk)
        model.objects.filter(pk=pk, enqueued_at=stamp).update(enqueued_at=None)
        return False
    return True


def fair_order(
    models: Iterable[type[Job]], limit: int, where: Q | None = None
) -> list[Waiting]:
    """The first ``limit`` waiting jobs (of those matching ``where``) in dispatch
    order: round robin over users, least recently served first, each user's oldest
    job first."""
    models = list(models)
    queues = _waiting_by_owner(models, per_owner=limit, where=where or Q())
    # With one owner waiting the order is theirs alone: no need to ask the database
    # when each owner was last served.
    last_sent = _last_sent(models, list(queues)) if len(queues) > 1 else {}
    picked: list[Waiting] = []
    while queues and len(picked) < limit:
        owner = min(queues, key=lambda o: (last_sent.get(o, EPOCH), queues[o][0].pk))
        job = queues[owner].pop(0)
        picked.append(job)
        last_sent[owner] = timezone.now() + timedelta(microseconds=len(picked))
        if not queues[owner]:
            del queues[owner]
    return picked


def _waiting_by_owner(models: list[type[Job]], per_owner: int, where: Q) -> dict:
    """Each owner's first waiting jobs across the queue's job kinds, lower
    ``dispatch_rank`` first, then oldest: one query per kind, numbering each
    owner's jobs with a window function."""
    by_owner: dict[int | None, list[Waiting]] = {}
    for model in models:
        rank = Window(
            RowNumber(),
            partition_by=[F(model.owner_lookup)],
            order_by=[F("created_at").asc(), F("pk").asc()],
        )
        rows = (
            model.objects.filter(where, status=Status.QUEUED, enqueued_at__isnull=True)
            .annotate(owner=F(model.owner_lookup), rank=rank)
            .filter(rank__lte=per_owner)
            .values_list("pk", "owner", "created_at")
        )
        for pk, owner, created_at in rows:
            by_owner.setdefault(owner, []).append(Waiting(model, pk, owner, created_at))
    for jobs in by_owner.values():
        jobs.sort(key=lambda job: (job.model.dispatch_rank, job.created_at, job.pk))
        del jobs[per_owner:]
    return by_owner


def _last_sent(
    models: list[type[Job]], owners: Iterable[int | None]
) -> dict[int | None, datetime]:
    """When each of ``owners`` last had a job sent to the broker, over the queue's
    kinds: one query per kind, a newest-first index lookup per owner inside it."""
    owners = set(owners)
    users = get_user_model().objects.filter(pk__in=owners - {None})
    last: dict[int | None, datetime] = {}
    for model in models:
        sent = model.objects.filter(enqueued_at__isnull=False).order_by("-enqueued_at")
        newest = sent.filter(**{model.owner_lookup: OuterRef("pk")})
        rows = users.annotate(last=Subquery(newest.values("enqueued_at")[:1]))
        found = list(rows.values_list("pk", "last"))
        if None in owners:  # jobs with no owner (started from the command line)
            unowned = sent.filter(**{f"{model.owner_lookup}__isnull": True})
            found.append((None, unowned.values_list("enqueued_at", flat=True).first()))
        for owner, latest in found:
            if latest is not None:
                last[owner] = max(last.get(owner, EPOCH), latest)
    return last


def resend_lost(queue: str) -> int:
    """After a broker flush or restart, sent jobs have no message any more: when the
    broker holds fewer messages than the database says were sent (and not claimed
    for XRAY_RECONCILE_AFTER_S), those jobs wait in the database again."""
    cutoff = timezone.now() - timedelta(seconds=settings.XRAY_RECONCILE_AFTER_S)
    models = models_on(queue)
    stale = sum(_sent(m).filter(enqueued_at__lte=cutoff).count() for m in models)
    if not stale or broker_message_count(queue) >= stale:
        return 0
    for model in models:
        _sent(model).filter(enqueued_at__lte=cutoff).update(enqueued_at=None)
    logger.warning("broker lost %d messages of queue %s; re-sending", stale, queue)
    return stale


def broker_message_count(queue: str) -> int:
    """Messages waiting in the broker's queue (0 when it does not exist)."""
    from worker.app import app

    with app.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(
                queue=queue, passive=True
            )
        except Exception:  # kombu raises the transport's own "not found" error
            return 0
        return declared.message_count


def queue_position(job: Job) -> int | None:
    """The job's place in dispatch order (1 is next to run), None once running.

    Jobs already sent come first; then each other user contributes as many jobs as
    the rounds before this one, plus one if that user is served earlier in its round.
    The queue-wide figures come from a snapshot at most XRAY_QUEUE_SNAPSHOT_S old
    (``queue_snapshot``); the owner's own jobs ahead are counted fresh, one query
    per job kind on the queue.
    """
    if job.status != Status.QUEUED:
        return None
    model = type(job)
    if job.enqueued_at is not None:
        before = _sent(model).filter(enqueued_at__lt=job.enqueued_at).count()
        return before + 1
    queue = queue_of(model)
    owner = _owner_of(job)
    snapshot = queue_snapshot(queue)
    ahead_of_mine = _ahead_of(job, owner, models_on(queue))
    mine = (snapshot.last_served(owner), owner or 0)
    others = 0
    for other, count in snapshot.waiting.items():
        if other == owner:
            continue
        earlier = (snapshot.last_served(other), other or 0) < mine
        others += min(count, ahead_of_mine + int(earlier))
    return snapshot.sent + others + ahead_of_mine + 1


@dataclass
class QueueSnapshot:
    """A queue's jobs sent and not claimed, waiting jobs per owner, and when each
    owner last had a job sent (``last_sent``, over the owners in ``served_known``)."""

    queue: str
    sent: int
    waiting: dict[int | None, int]
    last_sent: dict[int | None, datetime]
    served_known: set[int | None]
    taken_at: float

    def last_served(self, owner: int | None) -> datetime:
        """When ``owner`` was last served (EPOCH: never), looked up once for an
        owner who had nothing waiting when the snapshot was taken."""
        if owner not in self.served_known:
            found = _last_sent(models_on(self.queue), [owner]).get(owner)
            if found is not None:
                self.last_sent[owner] = found
            self.served_known.add(owner)
        return self.last_sent.get(owner, EPOCH)


_snapshots: dict[str, QueueSnapshot] = {}


def queue_snapshot(queue: str) -> QueueSnapshot:
    """The queue's figures, taken again once XRAY_QUEUE_SNAPSHOT_S have passed.

    Every status poll of a waiting job needs them, and the grouped counts over
    every queued job are the costly part; one snapshot per second per process
    serves all the pages polling in that second, and a position a second old is
    what a page that polls every second shows anyway. 0 takes them every time.
    """
    now = time.monotonic()
    found = _snapshots.get(queue)
    if found is not None and now - found.taken_at < settings.XRAY_QUEUE_SNAPSHOT_S:
        return found
    models = models_on(queue)
    sent, waiting = _queue_counts(models)
    last_sent = _last_sent(models, waiting)
    snapshot = QueueSnapshot(queue, sent, waiting, last_sent, set(waiting), now)
    _snapshots[queue] = snapshot
    return snapshot


def _owner_of(job: Job) -> int | None:
    """The job's owner id: on the row itself when the owner is a field of the job
    (no query), else looked up through the relation (``evaluation__created_by``)."""
    model = type(job)
    if "__" not in model.owner_lookup:
        return getattr(job, f"{model.owner_lookup}_id")
    return model.objects.values_list(model.owner_lookup, flat=True).get(pk=job.pk)


def _queue_counts(models: list[type[Job]]) -> tuple[int, dict[int | None, int]]:
    """Over the queue's kinds, one grouped query each: jobs sent and not claimed,
    and waiting jobs per owner."""
    sent, counts = 0, {}
    for model in models:
        waiting = Q(enqueued_at__isnull=True)
        rows = (
            model.objects.filter(status=Status.QUEUED)
            .order_by()
            .values(model.owner_lookup)
            .annotate(
                sent=Count("pk", filter=~waiting), waiting=Count("pk", filter=waiting)
            )
        )
        for row in rows:
            sent += row["sent"]
            if row["waiting"]:
                owner = row[model.owner_lookup]
                counts[owner] = counts.get(owner, 0) + row["waiting"]
    return sent, counts


def _ahead_of(job: Job, owner: int | None, models: list[type[Job]]) -> int:
    """The owner's waiting jobs that the dispatcher takes before ``job``: one
    count per kind on the queue whose jobs can go first."""
    ahead = 0
    for model in models:
        before = _goes_before(job, model)
        if before is None:
            continue
        if owner is None:
            mine = {f"{model.owner_lookup}__isnull": True}
        else:
            mine = {model.owner_lookup: owner}
        waiting = model.objects.filter(
            status=Status.QUEUED, enqueued_at__isnull=True, **mine
        )
        ahead += waiting.filter(before).count()
    return ahead


def _goes_before(job: Job, model: type[Job]) -> Q | None:
    """Which of one owner's waiting ``model`` jobs the dispatcher takes before
    ``job`` (None: none of them): lower ranks first, then older ones (by
    creation, then id)."""
    rank, mine = model.dispatch_rank, type(job).dispatch_rank
    if rank != mine:
        return Q() if rank < mine else None
    older = Q(created_at__lt=job.created_at)
    if model is type(job):
        return older | Q(created_at=job.created_at, pk__lt=job.pk)
    return older | Q(created_at=job.created_at)
