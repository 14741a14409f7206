"""Generation requests: create, enqueue, claim, progress, finish, cancel, reconcile.

Every transition is a conditional UPDATE on the status column, so two workers, a
redelivered message or a late cancel can never move a job twice.
"""

from __future__ import annotations

import json
import logging
import secrets
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from generator.loading import is_reachable
from generator.sampling import GenerationParams
from xrayweb.cases.models import Case
from xrayweb.generations.models import (
    GenerationRequest,
    ModelKind,
    ModelVersion,
    Status,
)

logger = logging.getLogger(__name__)

NOT_CANCELLABLE = "Request {id} is {status}; only a queued request can be cancelled."
WORKER_LOST = "The worker running this job stopped before finishing it ({n} attempts)."
MAX_DELIVERIES = 3
GENERATION_TASK = "generation.run"
GENERATION_DEFAULTS = "generation_defaults.json"


def random_seed() -> int:
    return secrets.randbelow(2**32)


def model_version_default() -> ModelVersion:
    """The model a new request starts with.

    SD v1.x from XRAY_BASE_MODEL when it is configured and reachable; else the small
    offline model shipped in models/mini-cxr; else the untrained tiny test model.
    """
    base, revision = settings.XRAY_BASE_MODEL, settings.XRAY_BASE_REVISION
    if base and is_reachable(base, revision):
        return _model_version(f"{base}@{revision}", ModelKind.BASE, base, revision)
    mini = settings.XRAY_MINI_MODEL_DIR
    if (mini / "model_index.json").is_file():
        config = {"defaults": _generation_defaults(mini)}
        return _model_version(mini.name, ModelKind.MINI, str(mini), "", config)
    tiny = str(settings.XRAY_TINY_MODEL_DIR)
    return _model_version("tiny-untrained", ModelKind.TINY, tiny, "")


def _model_version(
    name: str, kind: str, source: str, revision: str, config: dict | None = None
) -> ModelVersion:
    version, _ = ModelVersion.objects.get_or_create(
        name=name,
        defaults={
            "kind": kind,
            "source": source,
            "revision": revision,
            "config": config or {},
        },
    )
    return version


def _generation_defaults(folder: Path) -> dict:
    """Sampling defaults a model folder recommends (generation_defaults.json)."""
    path = folder / GENERATION_DEFAULTS
    return json.loads(path.read_text()) if path.is_file() else {}


def generation_request_create(
    *,
    user: AbstractBaseUser,
    params: GenerationParams,
    model_version: ModelVersion,
    case: Case | None = None,
) -> GenerationRequest:
    """Store a validated request and enqueue it once the transaction commits."""
    request = GenerationRequest.objects.create(
        user=user,
        model_version=model_version,
        case=case,
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        seed=params.seed,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        scheduler=params.scheduler,
        width=params.width,
        height=params.height,
        num_images=params.num_images,
        lora_scale=params.lora_scale,
        progress_total=params.steps,
    )
    transaction.on_commit(lambda: generation_request_enqueue(request_id=request.pk))
    return request


def generation_request_rerun(
    *, request: GenerationRequest, user: AbstractBaseUser
) -> GenerationRequest:
    """A new request with exactly the parameters, model and seed of ``request``."""
    return generation_request_create(
        user=user,
        params=params_of(request),
        model_version=request.model_version,
        case=request.case,
    )


def params_of(request: GenerationRequest) -> GenerationParams:
    return GenerationParams(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        scheduler=request.scheduler,
        width=request.width,
        height=request.height,
        num_images=request.num_images,
        lora_scale=request.lora_scale,
    )


def generation_request_enqueue(*, request_id: int) -> bool:
    """Send the job to the `gpu` queue by task name and note when it was sent.

    With the broker unreachable the job stays queued in the database, unsent, and
    the next reconcile sends it: a user's request is never lost to a broker outage.
    """
    from kombu.exceptions import OperationalError

    from worker.app import app

    try:
        app.send_task(GENERATION_TASK, args=[request_id], queue="gpu")
    except OperationalError:
        logger.warning("broker unreachable; request %s waits for reconcile", request_id)
        return False
    GenerationRequest.objects.filter(pk=request_id).update(enqueued_at=timezone.now())
    return True


def generation_request_claim(*, request_id: int, worker: str) -> bool:
    """Move queued → running. False if another delivery got there first or it ended."""
    claimed = GenerationRequest.objects.filter(
        pk=request_id, status=Status.QUEUED
    ).update(
        status=Status.RUNNING,
        started_at=timezone.now(),
        progress_step=0,
        worker=worker,
        deliveries=F("deliveries") + 1,
    )
    return claimed == 1


def generation_request_progress(*, request_id: int, step: int, total: int) -> None:
    GenerationRequest.objects.filter(pk=request_id, status=Status.RUNNING).update(
        progress_step=step, progress_total=total
    )


def generation_request_fail(*, request_id: int, error: str) -> bool:
    """Move running → failed with a message a user can read."""
    return _finish(request_id, Status.FAILED, error=error[:2000])


def generation_request_cancel(*, request_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel a request that has not started. Returns an error message, or None."""
    cancelled = GenerationRequest.objects.filter(
        pk=request_id, user=user, status=Status.QUEUED
    ).update(status=Status.CANCELLED, finished_at=timezone.now())
    if cancelled:
        return None
    status = (
        GenerationRequest.objects.filter(pk=request_id).values_list("status", flat=True)
    ).first()
    return NOT_CANCELLABLE.format(id=request_id, status=status)


def _finish(request_id: int, status: Status, **fields: object) -> bool:
    finished = GenerationRequest.objects.filter(
        pk=request_id, status=Status.RUNNING
    ).update(status=status, finished_at=timezone.now(), **fields)
    return finished == 1


def generation_requests_reconcile(*, older_than_s: int | None = None) -> int:
    """Re-send queued jobs not sent for ``older_than_s``; recover abandoned runs.

    A lost broker message (Redis restarted or flushed) leaves a job queued in the
    database: it is sent again. A duplicate message is harmless, since claiming is a
    conditional UPDATE. A job left running past the hard time limit lost its worker:
    it is queued again, or failed after MAX_DELIVERIES attempts.
    """
    if older_than_s is None:
        older_than_s = settings.XRAY_RECONCILE_AFTER_S
    now = timezone.now()
    _recover_abandoned(now - timedelta(seconds=settings.XRAY_JOB_HARD_LIMIT_S + 60))
    stale = GenerationRequest.objects.filter(status=Status.QUEUED).filter(
        Q(enqueued_at__isnull=True)
        | Q(enqueued_at__lte=now - timedelta(seconds=older_than_s))
    )
    ids = list(stale.values_list("pk", flat=True))
    for request_id in ids:
        generation_request_enqueue(request_id=request_id)
    if ids:
        logger.info("reconcile re-sent %d queued generation jobs", len(ids))
    return len(ids)


def _recover_abandoned(started_before: object) -> None:
    abandoned = GenerationRequest.objects.filter(
        status=Status.RUNNING, started_at__lt=started_before
    )
    abandoned.filter(deliveries__gte=MAX_DELIVERIES).update(
        status=Status.FAILED,
        finished_at=timezone.now(),
        error=WORKER_LOST.format(n=MAX_DELIVERIES),
    )
    abandoned.filter(deliveries__lt=MAX_DELIVERIES).update(
        status=Status.QUEUED, enqueued_at=None, progress_step=0
    )
