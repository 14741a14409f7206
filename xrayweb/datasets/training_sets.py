"""The images a model version was trained on, and real images it never saw, from
what the project recorded about it; None and the reason where nothing is recorded.

- The shipped mini model (kind MINI): public-cxr (XRAY_PUBLIC_CXR_DIR) with whole
  patients held out as ``generator.mini.split_by_patient`` split them (its default
  seed and fraction, as ``train_mini`` ran), accepted only when the split's counts
  equal those its training_summary.json recorded.
- A model trained on the platform (a succeeded TrainingRun names it): the train
  split's frontal images of imported cases (and laterals when the run included
  them), as ``training.selectors.training_examples`` chose them, accepted only when
  their number equals the run's recorded example count (cases imported since would
  make it a different set); held out: the val and test splits' frontal images.
  For a LoRA, only the fine-tuning set is known, not the base model's.
- Anything else (a Hub base model, the untrained tiny model): unknown.

Used by the report job inside a worker (it imports torch through generator.mini).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.conf import settings

from generator.dataset_report import ReportImage, TrainingSet
from generator.evaluation import finding_of
from xrayweb.cases.models import CaseImage, Split, View
from xrayweb.generations.models import ModelKind, ModelVersion
from xrayweb.jobs.files import opener
from xrayweb.jobs.models import Status

UNKNOWN = (
    "No training set is recorded for model version {name} ({kind}): the memorization "
    "check needs the images a model was trained on and was not run."
)
MINI_MISSING = (
    "The mini model's training data (public-cxr) is not at {path}: set "
    "XRAY_PUBLIC_CXR_DIR to the folder it was trained on."
)
MINI_MISMATCH = (
    "public-cxr at {path} splits into {train} training and {heldout} held-out "
    "images, but the model recorded {recorded_train} and {recorded_heldout}: it is "
    "not the set this model was trained on."
)
CASES_MISMATCH = (
    "Training run {run} trained on {recorded} images; the imported train split now "
    "has {now}, so the set it was trained on can no longer be named."
)
SUMMARY = "training_summary.json"


def training_set_of(version: ModelVersion) -> tuple[TrainingSet | None, str]:
    """The version's training and held-out images, or None and why not."""
    if version.kind == ModelKind.MINI:
        return _mini(version)
    run = version.training_runs.filter(status=Status.SUCCEEDED).first()
    if run is not None:
        return _platform(run)
    return None, UNKNOWN.format(name=version.name, kind=version.get_kind_display())


def _mini(version: ModelVersion) -> tuple[TrainingSet | None, str]:
    from generator.mini import read_records, split_by_patient

    data = Path(settings.XRAY_PUBLIC_CXR_DIR)
    summary_path = Path(version.source) / SUMMARY
    if not summary_path.is_file():
        return None, UNKNOWN.format(name=version.name, kind=version.get_kind_display())
    if not (data / "labels.csv").is_file():
        return None, MINI_MISSING.format(path=data)
    recorded = json.loads(summary_path.read_text())
    split = split_by_patient(read_records(data))
    if (len(split.train), len(split.heldout)) != (
        recorded["train_images"],
        recorded["heldout_images"],
    ):
        return None, MINI_MISMATCH.format(
            path=data,
            train=len(split.train),
            heldout=len(split.heldout),
            recorded_train=recorded["train_images"],
            recorded_heldout=recorded["heldout_images"],
        )
    training = [ReportImage(r.path.name, r.path) for r in split.train]
    digest = hashlib.sha256(b"public-cxr")
    for record in split.train:
        digest.update(record.path.name.encode())
        digest.update(hashlib.sha256(record.path.read_bytes()).digest())
    description = (
        f"public-cxr: {len(split.train)} images the model was trained on; "
        f"{len(split.heldout)} images of "
        f"{recorded.get('heldout_patients', '?')} patients held out "
        "(generator.mini.split_by_patient)"
    )
    heldout = [ReportImage(r.path.name, r.path) for r in split.heldout]
    return TrainingSet(digest.hexdigest(), description, training, heldout), ""


def _platform(run) -> tuple[TrainingSet | None, str]:
    views = [View.FRONTAL, View.LATERAL] if run.include_laterals else [View.FRONTAL]
    train = (
        CaseImage.objects.filter(case__split=Split.TRAIN, view__in=views)
        .exclude(case__prompt="")
        .exclude(derivative="")
        .order_by("image_id")
    )
    count = train.count()
    if count != run.examples:
        return None, CASES_MISMATCH.format(run=run.pk, recorded=run.examples, now=count)
    heldout = frontal_images([Split.VALIDATION, Split.TEST])
    training = [_case_image(image) for image in train.select_related("case")]
    digest = hashlib.sha256(f"cases:{run.include_laterals}".encode())
    for image in train.values_list("image_id", "sha256", "derivative"):
        digest.update("\0".join(image).encode())
    description = (
        f"imported cases of the train split: {count} images of training run "
        f"{run.pk} ({run.name}); held out: {len(heldout)} frontal images of the val "
        "and test splits"
    )
    return TrainingSet(digest.hexdigest(), description, training, heldout), ""


def frontal_images(splits: list[str], limit: int | None = None) -> list[ReportImage]:
    """Frontal images of imported cases of ``splits``, by image id, with findings."""
    images = (
        CaseImage.objects.filter(case__split__in=splits, view=View.FRONTAL)
        .exclude(derivative="")
        .select_related("case")
        .order_by("image_id")
    )
    return [_case_image(image) for image in images[:limit]]


def _case_image(image: CaseImage) -> ReportImage:
    findings = tuple(sorted({finding_of(term) for term in image.case.mesh_major}))
    return ReportImage(image.image_id, opener(image.derivative.name), findings=findings)
