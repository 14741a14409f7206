"""Reads: the training data set from imported cases, runs and evaluations to show."""

from __future__ import annotations

from django.db.models import QuerySet

from generator.training import TrainingExample
from xrayweb.cases.models import CaseImage, Split, View
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
        TrainingExample(image.derivative.path, caption_for(image, include_laterals))
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
