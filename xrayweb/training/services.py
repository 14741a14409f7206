"""Training runs: create, enqueue, claim (or reclaim after a worker died), progress,
finish, cancel. Every transition is a conditional UPDATE on the status column."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from generator.lora import sha256_file
from generator.training import TrainingConfig, TrainingProgress, TrainingResult
from xrayweb.generations.models import ModelKind, ModelVersion, Status
from xrayweb.training.models import TrainingRun

TRAINING_TASK = "training.run"
STAFF_ONLY = "Only staff can start training runs."
NOT_A_BASE = (
    "{name} is a {kind} model; a run trains on a base model (tiny, mini, base)."
)
NAME_TAKEN = "A model version named {name!r} already exists."
NOT_CANCELLABLE = "Training run {id} is {status}; it can no longer be cancelled."
# A running run whose heartbeat is older than this lost its worker and may be claimed
# again by a redelivered message; progress writes refresh the heartbeat.
STALE_AFTER_S = 300
MAX_DELIVERIES = 5
HISTORY_POINTS = 2000
BASE_KINDS = (ModelKind.TINY, ModelKind.MINI, ModelKind.BASE)


def training_dir(run_id: int) -> Path:
    """Where a run keeps its checkpoints, samples and result."""
    return Path(settings.MEDIA_ROOT) / "training" / f"run-{run_id}"


def training_run_create(
    *,
    user: AbstractBaseUser | None,
    name: str,
    base: ModelVersion,
    config: dict,
    include_laterals: bool = False,
    enqueue: bool = True,
) -> TrainingRun:
    """Validate and store a run for staff, and enqueue it once the transaction commits.

    ``config`` holds TrainingConfig fields other than ``base`` and ``output_dir``;
    an invalid value raises InvalidParameterError naming it. ``user=None`` is an
    operator on the command line, who runs it in-process (``enqueue=False``).
    """
    if user is not None and not user.is_staff:
        raise PermissionDenied(STAFF_ONLY)
    if base.kind not in BASE_KINDS:
        raise ValueError(NOT_A_BASE.format(name=base.name, kind=base.kind))
    if ModelVersion.objects.filter(name=name).exists():
        raise ValueError(NAME_TAKEN.format(name=name))
    TrainingConfig(base=base.source, output_dir="-", **config)
    run = TrainingRun.objects.create(
        name=name,
        created_by=user,
        base=base,
        config=config,
        include_laterals=include_laterals,
    )
    run.output_dir = str(training_dir(run.pk))
    run.save(update_fields=["output_dir"])
    if enqueue:
        transaction.on_commit(lambda: training_run_enqueue(run_id=run.pk))
    return run


def training_run_enqueue(*, run_id: int) -> None:
    """Send the run to the `gpu` queue by task name."""
    from worker.app import app

    TrainingRun.objects.filter(pk=run_id).update(enqueued_at=timezone.now())
    app.send_task(TRAINING_TASK, args=[run_id], queue="gpu")


def training_run_claim(
    *, run_id: int, worker: str, stale_after_s: int = STALE_AFTER_S
) -> bool:
    """Queued → running, or take over a running run whose worker stopped beating.

    False when another worker holds it, it ended, or it was delivered too often.
    """
    now = timezone.now()
    abandoned = Q(
        status=Status.RUNNING,
        heartbeat_at__lt=now - timedelta(seconds=stale_after_s),
        deliveries__lt=MAX_DELIVERIES,
    )
    claimed = (
        TrainingRun.objects.filter(pk=run_id)
        .filter(Q(status=Status.QUEUED) | abandoned)
        .update(
            status=Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker=worker,
            deliveries=F("deliveries") + 1,
        )
    )
    return claimed == 1


def training_run_progress(
    *, run_id: int, report: TrainingProgress, points: list[list[float]]
) -> bool:
    """Store progress and new (step, loss) points, and beat the heart.

    Points from a resumed run replace those its killed predecessor wrote past the
    checkpoint. False if the run is no longer running.
    """
    run = TrainingRun.objects.only("loss_history").get(pk=run_id)
    first = points[0][0] if points else report.step
    kept = [point for point in run.loss_history if point[0] < first]
    history = [*kept, *points]
    updated = TrainingRun.objects.filter(pk=run_id, status=Status.RUNNING).update(
        progress_step=report.step,
        progress_total=report.total,
        epoch=report.epoch,
        loss=report.loss,
        eta_s=report.eta_s,
        loss_history=history[-HISTORY_POINTS:],
        heartbeat_at=timezone.now(),
    )
    return updated == 1


def training_run_succeed(*, run_id: int, result: TrainingResult) -> ModelVersion | None:
    """Register the trained model version and mark the run succeeded, atomically."""
    run = TrainingRun.objects.select_related("base").get(pk=run_id)
    with transaction.atomic():
        version = ModelVersion.objects.create(**_version_fields(run, result))
        updated = TrainingRun.objects.filter(pk=run_id, status=Status.RUNNING).update(
            status=Status.SUCCEEDED,
            finished_at=timezone.now(),
            model_version=version,
            progress_step=result.steps,
            loss_history=[list(point) for point in result.loss_history],
            validation_history=[list(point) for point in result.validation_history],
            resumed_from_step=result.resumed_from,
            eta_s=0,
        )
        if not updated:  # cancelled or taken over meanwhile: register nothing
            transaction.set_rollback(True)
            return None
    return version


def _version_fields(run: TrainingRun, result: TrainingResult) -> dict:
    config = {**run.config, "base": run.base.name, "examples": run.examples}
    fields = {"name": run.name, "config": config, "metrics": result.metrics()}
    if result.lora_path is not None:
        return {
            **fields,
            "kind": ModelKind.LORA,
            "source": run.base.source,
            "revision": run.base.revision,
            "lora_path": str(result.lora_path),
            "lora_sha256": sha256_file(result.lora_path),
        }
    return {**fields, "kind": ModelKind.MINI, "source": str(result.pipeline_dir)}


def training_run_fail(*, run_id: int, error: str) -> bool:
    updated = TrainingRun.objects.filter(pk=run_id, status=Status.RUNNING).update(
        status=Status.FAILED, finished_at=timezone.now(), error=error[:2000]
    )
    return updated == 1


def training_run_cancel(*, run_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel a queued or running run (a running one stops at its next step)."""
    if not user.is_staff:
        raise PermissionDenied(STAFF_ONLY)
    cancelled = TrainingRun.objects.filter(
        pk=run_id, status__in=[Status.QUEUED, Status.RUNNING]
    ).update(status=Status.CANCELLED, finished_at=timezone.now())
    if cancelled:
        return None
    status = TrainingRun.objects.filter(pk=run_id).values_list("status", flat=True)
    return NOT_CANCELLABLE.format(id=run_id, status=status.first())
