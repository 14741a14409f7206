"""Training runs (create, enqueue, claim or reclaim after a worker died, progress,
finish, cancel) and chunked evaluations. Every transition is a conditional UPDATE."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from generator.lora import sha256_file
from generator.sampling import GenerationParams
from generator.training import TrainingConfig, TrainingProgress, TrainingResult
from xrayweb.cases.models import Case, Split, View
from xrayweb.generations.models import ModelKind, ModelVersion, Status
from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun

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
    TrainingConfig(base=base.source, output_dir="-", **config_fields(config))
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


def config_fields(config: dict) -> dict:
    """A run's JSON config as TrainingConfig arguments: lists back to tuples."""
    names = ("target_modules", "validation_prompts")
    return {**config, **{name: tuple(config[name]) for name in names if name in config}}


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


EVALUATION_TASK = "evaluation.chunk"
NO_TEST_CASES = "No test-split case has a prompt and a frontal image to score against."
ACTIVE = (Status.QUEUED, Status.RUNNING)
DEFAULT_EVALUATION_PARAMS = {"seed": 0, "steps": 20, "guidance_scale": 7.5}


def evaluation_create(
    *,
    user: AbstractBaseUser | None,
    model_version: ModelVersion,
    cases: int,
    chunk_size: int,
    params: dict | None = None,
    with_fid: bool = True,
    enqueue: bool = True,
) -> EvaluationRun:
    """Pick the first ``cases`` test cases (by uid), split them into chunks, and send
    one job per chunk to the `gpu` queue once the transaction commits."""
    if user is not None and not user.is_staff:
        raise PermissionDenied(STAFF_ONLY)
    if cases < 1 or chunk_size < 1:
        raise ValueError(f"cases and chunk_size must be ≥ 1, got {cases}, {chunk_size}")
    params = {**DEFAULT_EVALUATION_PARAMS, **(params or {})}
    GenerationParams(prompt="check", **params)  # raises, naming a bad value
    case_ids = evaluation_case_ids(limit=cases)
    if not case_ids:
        raise ValueError(NO_TEST_CASES)
    slices = [case_ids[i : i + chunk_size] for i in range(0, len(case_ids), chunk_size)]
    with transaction.atomic():
        evaluation = EvaluationRun.objects.create(
            model_version=model_version,
            created_by=user,
            params={**params, "with_fid": with_fid},
            case_ids=case_ids,
            chunks_total=len(slices),
        )
        EvaluationChunk.objects.bulk_create(
            EvaluationChunk(evaluation=evaluation, index=index, case_ids=ids)
            for index, ids in enumerate(slices)
        )
    if enqueue:
        transaction.on_commit(lambda: evaluation_enqueue(evaluation_id=evaluation.pk))
    return evaluation


def evaluation_case_ids(*, limit: int) -> list[int]:
    """Test-split cases with a prompt and at least one frontal image, by uid."""
    cases = (
        Case.objects.filter(split=Split.TEST, images__view=View.FRONTAL)
        .exclude(prompt="")
        .distinct()
        .order_by("uid")
        .values_list("pk", flat=True)
    )
    return list(cases[:limit])


def evaluation_enqueue(*, evaluation_id: int) -> None:
    from worker.app import app

    chunks = EvaluationChunk.objects.filter(
        evaluation_id=evaluation_id, status=Status.QUEUED
    )
    for chunk_id in chunks.values_list("pk", flat=True):
        app.send_task(EVALUATION_TASK, args=[chunk_id], queue="gpu")


def evaluation_chunk_claim(*, chunk_id: int, worker: str) -> bool:
    """Queued → running for one chunk; its evaluation starts running too."""
    claimed = EvaluationChunk.objects.filter(
        pk=chunk_id, status=Status.QUEUED, evaluation__status__in=ACTIVE
    ).update(status=Status.RUNNING, worker=worker, started_at=timezone.now())
    if claimed:
        EvaluationRun.objects.filter(chunks__pk=chunk_id, status=Status.QUEUED).update(
            status=Status.RUNNING
        )
    return claimed == 1


def evaluation_chunk_succeed(*, chunk_id: int, scores: list[dict]) -> bool:
    """Store a chunk's scores and count it done. True if it was the last chunk and
    this call won the right to combine (a conditional UPDATE: exactly one caller)."""
    with transaction.atomic():
        done = EvaluationChunk.objects.filter(
            pk=chunk_id, status=Status.RUNNING
        ).update(status=Status.SUCCEEDED, scores=scores, finished_at=timezone.now())
        if not done:
            return False
        evaluation_id = EvaluationChunk.objects.get(pk=chunk_id).evaluation_id
        EvaluationRun.objects.filter(pk=evaluation_id).update(
            chunks_done=F("chunks_done") + 1
        )
    combining = EvaluationRun.objects.filter(
        pk=evaluation_id,
        status=Status.RUNNING,
        chunks_done=F("chunks_total"),
        finished_at__isnull=True,
    ).update(finished_at=timezone.now())
    return combining == 1


def evaluation_chunk_fail(*, chunk_id: int, error: str) -> None:
    """A failed chunk fails its evaluation: a partial score would mislead."""
    chunk = EvaluationChunk.objects.get(pk=chunk_id)
    EvaluationChunk.objects.filter(pk=chunk_id, status=Status.RUNNING).update(
        status=Status.FAILED, error=error[:2000], finished_at=timezone.now()
    )
    EvaluationRun.objects.filter(pk=chunk.evaluation_id, status__in=ACTIVE).update(
        status=Status.FAILED,
        error=f"chunk {chunk.index}: {error}"[:2000],
        finished_at=timezone.now(),
    )


def evaluation_finish(*, evaluation_id: int, results: dict, histogram: bytes) -> None:
    """Store the combined report and its histogram; running → succeeded."""
    evaluation = EvaluationRun.objects.get(pk=evaluation_id)
    evaluation.histogram.save(
        f"evaluation-{evaluation_id}-ssim.png", ContentFile(histogram), save=False
    )
    EvaluationRun.objects.filter(pk=evaluation_id, status=Status.RUNNING).update(
        status=Status.SUCCEEDED, results=results, histogram=evaluation.histogram.name
    )


def evaluation_fail(*, evaluation_id: int, error: str) -> None:
    EvaluationRun.objects.filter(pk=evaluation_id, status__in=ACTIVE).update(
        status=Status.FAILED, error=error[:2000], finished_at=timezone.now()
    )


def training_jobs_reconcile(*, older_than_s: int) -> int:
    """Re-send training runs and evaluation chunks whose broker message may be lost.

    Queued runs not sent for ``older_than_s``, and running runs whose heartbeat went
    stale (their worker died), are sent again; the claim decides who runs them, so a
    duplicate is harmless. Returns how many messages were sent.
    """
    now = timezone.now()
    not_sent_lately = Q(enqueued_at__isnull=True) | Q(
        enqueued_at__lte=now - timedelta(seconds=older_than_s)
    )
    abandoned = Q(
        status=Status.RUNNING,
        heartbeat_at__lt=now - timedelta(seconds=STALE_AFTER_S),
        deliveries__lt=MAX_DELIVERIES,
    )
    runs = TrainingRun.objects.filter(not_sent_lately).filter(
        Q(status=Status.QUEUED) | abandoned
    )
    run_ids = list(runs.values_list("pk", flat=True))
    for run_id in run_ids:
        training_run_enqueue(run_id=run_id)
    evaluation_ids = list(
        EvaluationRun.objects.filter(
            status__in=ACTIVE,
            created_at__lte=now - timedelta(seconds=older_than_s),
            chunks__status=Status.QUEUED,
        )
        .distinct()
        .values_list("pk", flat=True)
    )
    for evaluation_id in evaluation_ids:
        evaluation_enqueue(evaluation_id=evaluation_id)
    return len(run_ids) + len(evaluation_ids)
