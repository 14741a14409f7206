"""Training runs (create, progress, succeed, cancel) and chunked evaluations.

Claims, leases, fenced writes and recovery are the one job lifecycle of
xrayweb.jobs; every write a worker makes names its attempt."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from generator.sampling import GenerationParams
from generator.training import TrainingConfig, TrainingProgress, TrainingResult
from xrayweb.cases.models import Case, Split, View
from xrayweb.generations import model_files
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs import lifecycle, permissions
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt
from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun

STAFF_ONLY = "Only staff can start training runs."
NOT_A_BASE = (
    "{name} is a {kind} model; a run trains on a base model (tiny, mini, base)."
)
NAME_TAKEN = "A model version named {name!r} already exists."
NOT_CANCELLABLE = "Evaluation {id} is {status}; it can no longer be cancelled."
HISTORY_POINTS = 2000
BASE_KINDS = (ModelKind.TINY, ModelKind.MINI, ModelKind.BASE)


def training_key(run_id: int) -> str:
    """The storage prefix of a run's checkpoints and sample grids."""
    return f"training/{run_id}/"


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
    operator on the command line, who runs it in-process (``enqueue=False``): the
    run is marked sent so the dispatcher leaves it to that process.
    """
    permissions.require(user, permissions.START_TRAINING, "start training runs")
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
        enqueued_at=None if enqueue else timezone.now(),
    )
    run.files_key = training_key(run.pk)
    run.save(update_fields=["files_key"])
    if enqueue:
        lifecycle.dispatch_on_commit(TrainingRun)
    return run


def config_fields(config: dict) -> dict:
    """A run's JSON config as TrainingConfig arguments: lists back to tuples."""
    names = ("target_modules", "validation_prompts")
    return {**config, **{name: tuple(config[name]) for name in names if name in config}}


def training_run_progress(
    *, attempt: Attempt, report: TrainingProgress, points: list[list[float]]
) -> bool:
    """Store progress and new (step, loss) points, renewing the lease.

    Points from a resumed run replace those its killed predecessor wrote past the
    checkpoint. False: stop (cancel was asked for, or another attempt holds it).
    """
    run = TrainingRun.objects.only("loss_history").get(pk=attempt.pk)
    first = points[0][0] if points else report.step
    kept = [point for point in run.loss_history if point[0] < first]
    history = [*kept, *points]
    return attempt.progress(
        force=True,
        progress_step=report.step,
        progress_total=report.total,
        epoch=report.epoch,
        loss=report.loss,
        eta_s=report.eta_s,
        loss_history=history[-HISTORY_POINTS:],
    )


def training_run_succeed(
    *, attempt: Attempt, result: TrainingResult
) -> ModelVersion | None:
    """Register the trained model version and mark the run succeeded, atomically."""
    run = TrainingRun.objects.select_related("base").get(pk=attempt.pk)
    with transaction.atomic():
        # Inactive until someone with the permission activates it (admin).
        version = ModelVersion.objects.create(
            **_version_fields(run, result), is_active=False
        )
        updated = attempt.succeed(
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
        key, sha256 = model_files.lora_store(result.lora_path, run.name)
        return {
            **fields,
            "kind": ModelKind.LORA,
            "source": run.base.source,
            "revision": run.base.revision,
            "lora_key": key,
            "lora_sha256": sha256,
        }
    prefix, sha256 = model_files.folder_store(result.pipeline_dir, run.name)
    return {
        **fields,
        "kind": ModelKind.MINI,
        "source": prefix,
        "files_key": prefix,
        "files_sha256": sha256,
    }


def training_run_cancel(*, run_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel a queued run, or ask a running one to stop at its next step (its
    last checkpoint stays in its folder). Returns an error message, or None."""
    return lifecycle.cancel(TrainingRun, run_id, user)


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
    permissions.require(user, permissions.START_EVALUATION, "start evaluations")
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
        sent = None if enqueue else timezone.now()  # in-process: not dispatched
        EvaluationChunk.objects.bulk_create(
            EvaluationChunk(
                evaluation=evaluation, index=index, case_ids=ids, enqueued_at=sent
            )
            for index, ids in enumerate(slices)
        )
        if enqueue:
            lifecycle.dispatch_on_commit(EvaluationChunk)
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


def evaluation_started(*, evaluation_id: int) -> None:
    EvaluationRun.objects.filter(pk=evaluation_id, status=Status.QUEUED).update(
        status=Status.RUNNING
    )


def evaluation_chunk_succeed(*, attempt: Attempt, scores: list[dict]) -> bool:
    """Store a chunk's scores and count it done. True if it was the last chunk and
    this call won the right to combine (a conditional UPDATE: exactly one caller)."""
    evaluation_id = EvaluationChunk.objects.get(pk=attempt.pk).evaluation_id
    with transaction.atomic():
        if not attempt.succeed(scores=scores):
            return False
        EvaluationRun.objects.filter(pk=evaluation_id).update(
            chunks_done=F("chunks_done") + 1
        )
    if evaluations_settle(evaluation_ids=[evaluation_id]):
        return False
    combining = EvaluationRun.objects.filter(
        pk=evaluation_id,
        status=Status.RUNNING,
        cancel_requested_at__isnull=True,
        chunks_done=F("chunks_total"),
        finished_at__isnull=True,
    ).update(finished_at=timezone.now())
    return combining == 1


def evaluation_chunk_stopped(*, attempt: Attempt, error: str = "") -> None:
    """A chunk ended early: cancelled (on request) or failed, and its evaluation
    follows (a partial score would mislead)."""
    attempt.stop(error)
    evaluation_id = EvaluationChunk.objects.get(pk=attempt.pk).evaluation_id
    evaluations_settle(evaluation_ids=[evaluation_id])


def evaluation_cancel(*, evaluation_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel an evaluation: its queued chunks at once, a running chunk finishes and
    no further chunk starts. Returns an error message, or None."""
    evaluation = EvaluationRun.objects.filter(pk=evaluation_id).first()
    if evaluation is None or not lifecycle.can_cancel(user, evaluation.created_by_id):
        return lifecycle.CANCEL_FORBIDDEN
    now = timezone.now()
    if not EvaluationRun.objects.filter(pk=evaluation_id, status__in=ACTIVE).update(
        cancel_requested_at=now
    ):
        return NOT_CANCELLABLE.format(id=evaluation_id, status=evaluation.status)
    chunks = EvaluationChunk.objects.filter(evaluation_id=evaluation_id)
    lifecycle.cancel_all(chunks, now)
    evaluations_settle(evaluation_ids=[evaluation_id])
    return None


def evaluations_settle(*, evaluation_ids: list[int] | None = None) -> int:
    """Bring unfinished evaluations in line with their chunks: failed when a chunk
    failed (its queued chunks cancelled), cancelled when cancel was asked for and
    no chunk runs any more. Returns how many evaluations ended."""
    evaluations = EvaluationRun.objects.filter(status__in=ACTIVE)
    if evaluation_ids is not None:
        evaluations = evaluations.filter(pk__in=evaluation_ids)
    ended = 0
    for evaluation in evaluations:
        ended += _settle(evaluation)
    return ended


def _settle(evaluation: EvaluationRun) -> int:
    chunks = EvaluationChunk.objects.filter(evaluation=evaluation)
    now = timezone.now()
    failed = chunks.filter(status=Status.FAILED).order_by("index").first()
    active = EvaluationRun.objects.filter(pk=evaluation.pk, status__in=ACTIVE)
    if failed is not None:
        chunks.filter(status=Status.QUEUED).update(
            status=Status.CANCELLED, finished_at=now
        )
        error = f"Chunk {failed.index + 1}: {failed.error}"[:2000]
        return active.update(status=Status.FAILED, error=error, finished_at=now)
    if evaluation.cancel_requested_at and not chunks.filter(status__in=ACTIVE).exists():
        return active.update(status=Status.CANCELLED, finished_at=now)
    return 0


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
