"""Reads: the training data set from imported cases, runs and evaluations to show."""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.db.models import Min, QuerySet

from generator.evaluation import EvaluationCase, finding_of
from generator.training import TrainingExample
from xrayweb.cases.models import Case, CaseImage, Split, View
from xrayweb.jobs import dispatch
from xrayweb.jobs.files import opener
from xrayweb.jobs.models import Status
from xrayweb.jobs.progress import Progress, duration_s, eta_s, job_progress
from xrayweb.training.models import EvaluationRun, TrainingRun


def training_examples(*, include_laterals: bool = False) -> list[TrainingExample]:
    """Train-split images with their case's prompt; frontal only unless asked.

    With laterals included, every caption names its view ("frontal view. ..."), so
    the model can tell the two apart and a prompt can ask for either.
    """
    views = [View.FRONTAL, View.LATERAL] if include_laterals else [View.FRONTAL]
    images = (
        CaseImage.objects.filter(case__split=Split.TRAIN, view__in=views)
        .exclude(case__prompt="")
        .exclude(derivative="")
        .select_related("case")
        .order_by("image_id")
    )
    return [
        TrainingExample(
            opener(image.derivative.name), caption_for(image, include_laterals)
        )
        for image in images
    ]


def caption_for(image: CaseImage, name_view: bool) -> str:
    if not name_view:
        return image.case.prompt
    return f"{image.view} view. {image.case.prompt}"


def training_runs() -> QuerySet[TrainingRun]:
    return TrainingRun.objects.select_related("base", "model_version", "created_by")


def evaluations_finished() -> QuerySet[EvaluationRun]:
    return EvaluationRun.objects.filter(status="succeeded").select_related(
        "model_version"
    )


def evaluation_cases(case_ids: list[int]) -> list[EvaluationCase]:
    """The cases to score, in the given order, each with its frontal reference."""
    cases = Case.objects.filter(pk__in=case_ids).prefetch_related("images")
    by_id = {case.pk: case for case in cases}
    return [_evaluation_case(by_id[case_id]) for case_id in case_ids]


def _evaluation_case(case: Case) -> EvaluationCase:
    frontal = case.frontal_image()
    return EvaluationCase(
        case_id=case.pk,
        prompt=case.prompt,
        reference=opener(frontal.derivative.name),
        findings=tuple(sorted({finding_of(term) for term in case.mesh_major})),
    )


def latest_evaluations() -> list[EvaluationRun]:
    """The newest finished evaluation of each model version, best SSIM first."""
    latest: dict[int, EvaluationRun] = {}
    for evaluation in evaluations_finished().order_by("-finished_at"):
        latest.setdefault(evaluation.model_version_id, evaluation)
    return sorted(
        latest.values(), key=lambda e: -(e.results.get("ssim", {}).get("mean") or 0)
    )


def evaluations_pending() -> QuerySet[EvaluationRun]:
    return EvaluationRun.objects.filter(
        status__in=["queued", "running"]
    ).select_related("model_version")


def training_progress(run: TrainingRun) -> Progress:
    """Optimizer steps done, the run's own ETA, queue place or duration."""
    return job_progress(
        run,
        done=run.progress_step,
        total=run.progress_total,
        unit="training steps",
        eta=run.eta_s,
    )


def evaluation_progress(evaluation: EvaluationRun) -> Progress:
    """Chunks done of an evaluation: its ETA from its chunks' pace since the first
    started, the queue place of its next chunk while none runs, and how long it
    took once ended."""
    chunks = evaluation.chunks.all()
    first_start = chunks.aggregate(first=Min("started_at"))["first"]
    waiting = chunks.filter(status=Status.QUEUED).order_by("index").first()
    running = evaluation.status == Status.RUNNING
    return Progress(
        status=evaluation.status,
        status_label=evaluation.get_status_display(),
        done=evaluation.chunks_done,
        total=evaluation.chunks_total,
        unit="chunks",
        eta_s=eta_s(first_start, evaluation.chunks_done, evaluation.chunks_total)
        if running
        else None,
        position=dispatch.queue_position(waiting)
        if waiting is not None and first_start is None
        else None,
        duration_s=duration_s(evaluation.created_at, evaluation.finished_at),
    )


def sample_grids(run: TrainingRun) -> list[str]:
    """File names of the run's per-epoch sample grids, oldest first."""
    if not run.files_key:
        return []
    try:
        _, names = default_storage.listdir(f"{run.files_key}samples/")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith("epoch-") and n.endswith(".png"))
