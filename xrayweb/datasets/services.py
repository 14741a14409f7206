"""Synthetic datasets: create (within limits and quotas), run in chunks, cancel,
settle, and export.

Claims, leases, fenced writes and recovery are the one job lifecycle of
xrayweb.jobs; the dispatcher decides when a chunk reaches the broker, after the
owner's own generation requests.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from generator.sampling import MAX_IMAGES, MAX_SEED, GenerationParams
from xrayweb.cases.models import Split
from xrayweb.datasets.models import (
    Dataset,
    DatasetChunk,
    DatasetExport,
    DatasetImage,
    DatasetPrompt,
    DatasetReport,
)
from xrayweb.datasets.sources import Prompt
from xrayweb.generations.models import ModelVersion
from xrayweb.jobs import files, lifecycle, quotas
from xrayweb.jobs.models import Status
from xrayweb.jobs.runtime import Attempt

TOO_MANY_PROMPTS = "The source gives {count} prompts or more; the limit is {limit}."
TOO_MANY_IMAGES = (
    "{prompts} prompts × {n} images is {images} images; the limit is {limit}."
)
EMPTY_NAME = "Give the dataset a name."
NOT_CANCELLABLE = "Dataset {id} is {status}; it can no longer be cancelled."
NOT_EXPORTABLE = "Dataset {id} is {status}; only a finished dataset can be exported."
EXPORT_RUNNING = "An export of dataset {id} is already queued or running."
NOT_REPORTABLE = "Dataset {id} is {status}; only a finished dataset gets a report."
REPORT_RUNNING = "A report of dataset {id} is already queued or running."
BAD_SPLIT = "split must be one of {choices}, got {value!r}"
ACTIVE = (Status.QUEUED, Status.RUNNING)
# Training features for memorization checks: not job files (no attempt owns them).
FEATURES_PREFIX = "memorization-features/"
FEATURES_VERSION = 1  # bump when memorization.prepare changes
# GenerationParams fields a dataset stores; prompt, seed and N are its own.
PARAM_FIELDS = (
    "negative_prompt",
    "steps",
    "guidance_scale",
    "scheduler",
    "width",
    "height",
    "lora_scale",
    "deep_cache_interval",
    "token_merging",
)


def prompt_seed(job_seed: int, index: int) -> int:
    """The seed of prompt ``index``: sha256 of the job seed and the index, so the same
    job makes the same images again, and neighbouring prompts share no noise. Image
    i of the prompt uses this + i (generator.sampling.image_seeds)."""
    digest = hashlib.sha256(f"xrayweb-dataset:{job_seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (MAX_SEED - MAX_IMAGES + 1)


def params_check(*, params: dict, images_per_prompt: int) -> GenerationParams:
    """Validate generation parameters (InvalidParameterError names a bad value)."""
    fields = {name: params[name] for name in PARAM_FIELDS if name in params}
    return GenerationParams(prompt="check", num_images=images_per_prompt, **fields)


@dataclass(frozen=True)
class Preview:
    """What a dataset will cost, shown before it is submitted."""

    prompts: int
    images: int
    pixel_steps: int
    chunks: int

    @property
    def cost_text(self) -> str:
        return quotas.millions(self.pixel_steps)


def dataset_preview(
    *, prompts: list[Prompt], images_per_prompt: int, params: dict
) -> Preview:
    """Check the limits and parameters; the number of images and the cost."""
    checked = params_check(params=params, images_per_prompt=images_per_prompt)
    _limits_check(len(prompts), images_per_prompt)
    images = len(prompts) * images_per_prompt
    cost = quotas.request_cost(
        steps=checked.steps, width=checked.width, height=checked.height, images=images
    )
    size = settings.XRAY_DATASET_CHUNK_PROMPTS
    return Preview(len(prompts), images, cost, -(-len(prompts) // size))


def _limits_check(prompts: int, images_per_prompt: int) -> None:
    limit = settings.XRAY_DATASET_MAX_PROMPTS
    if prompts > limit:
        raise ValueError(TOO_MANY_PROMPTS.format(count=prompts, limit=limit))
    images, image_limit = prompts * images_per_prompt, settings.XRAY_DATASET_MAX_IMAGES
    if images > image_limit:
        raise ValueError(
            TOO_MANY_IMAGES.format(
                prompts=prompts, n=images_per_prompt, images=images, limit=image_limit
            )
        )


def dataset_create(
    *,
    user: AbstractBaseUser,
    name: str,
    model_version: ModelVersion,
    params: dict,
    seed: int,
    images_per_prompt: int,
    prompts: list[Prompt],
    source: str,
    source_description: str = "",
) -> Dataset:
    """Store a dataset, its prompts and its chunks within the limits and the owner's
    quota (ValueError or QuotaExceeded names the problem, and nothing is stored);
    the dispatcher sends its chunks once the transaction commits."""
    if not name.strip():
        raise ValueError(EMPTY_NAME)
    GenerationParams(prompt="check", seed=seed)  # a seed out of range is named
    preview = dataset_preview(
        prompts=prompts, images_per_prompt=images_per_prompt, params=params
    )
    checked = params_check(params=params, images_per_prompt=images_per_prompt)
    stored = {name: getattr(checked, name) for name in PARAM_FIELDS}
    with transaction.atomic():
        # One submit at a time per user, so two cannot spend the same budget.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        quotas.dataset_quota_check(user=user, cost=preview.pixel_steps)
        dataset = Dataset.objects.create(
            name=name.strip(),
            created_by=user,
            model_version=model_version,
            params=stored,
            seed=seed,
            images_per_prompt=images_per_prompt,
            source=source,
            source_description=source_description[:2000],
            prompts_total=len(prompts),
            chunks_total=preview.chunks,
        )
        _prompts_store(dataset, prompts)
        _chunks_store(dataset)
        lifecycle.dispatch_on_commit(DatasetChunk)
    return dataset


def _prompts_store(dataset: Dataset, prompts: list[Prompt]) -> None:
    DatasetPrompt.objects.bulk_create(
        (
            DatasetPrompt(
                dataset=dataset,
                index=index,
                text=prompt.text,
                case=prompt.case,
                labels=prompt.labels,
            )
            for index, prompt in enumerate(prompts)
        ),
        batch_size=1000,
    )


def _chunks_store(dataset: Dataset) -> None:
    size = settings.XRAY_DATASET_CHUNK_PROMPTS
    DatasetChunk.objects.bulk_create(
        DatasetChunk(
            dataset=dataset,
            index=index,
            start=start,
            stop=min(start + size, dataset.prompts_total),
        )
        for index, start in enumerate(range(0, dataset.prompts_total, size))
    )


def dataset_started(*, dataset_id: int) -> None:
    """Its first chunk was claimed: running, and charged from now."""
    Dataset.objects.filter(pk=dataset_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=timezone.now()
    )


@dataclass(frozen=True)
class RenderedImage:
    """One image of a chunk, encoded by the runner."""

    prompt_id: int
    index: int
    seed: int
    png: bytes


def dataset_chunk_succeed(*, attempt: Attempt, images: list[RenderedImage]) -> bool:
    """Store the chunk's PNGs under its attempt's keys, then their rows and the
    chunk's success in one fenced transaction; the last chunk ends the dataset.
    A superseded attempt, or any error, leaves no file behind."""
    prefix = DatasetChunk.attempt_prefix(attempt.pk, attempt.number)
    dataset_id = DatasetChunk.objects.get(pk=attempt.pk).dataset_id
    try:
        rows = [_image_row(prefix, image) for image in images]
        with transaction.atomic():
            DatasetImage.objects.bulk_create(rows)
            if not attempt.succeed(images_done=len(rows)):
                transaction.set_rollback(True)
                files.attempt_delete(prefix)
                return False
            Dataset.objects.filter(pk=dataset_id).update(
                chunks_done=F("chunks_done") + 1
            )
    except BaseException:
        files.attempt_delete(prefix)
        raise
    datasets_settle(dataset_ids=[dataset_id])
    return True


def _image_row(prefix: str, image: RenderedImage) -> DatasetImage:
    key = default_storage.save(
        f"{prefix}{image.prompt_id}_{image.index}.png", ContentFile(image.png)
    )
    return DatasetImage(
        prompt_id=image.prompt_id, index=image.index, seed=image.seed, image=key
    )


def dataset_chunk_stopped(*, attempt: Attempt, error: str = "") -> None:
    """A chunk ended early: cancelled (on request) or failed; its dataset follows."""
    attempt.stop(error)
    dataset_id = DatasetChunk.objects.get(pk=attempt.pk).dataset_id
    datasets_settle(dataset_ids=[dataset_id])


def dataset_cancel(*, dataset_id: int, user: AbstractBaseUser) -> str | None:
    """Cancel a dataset: its queued chunks at once; a running chunk stops at its next
    denoising step and stores nothing. Returns an error message, or None."""
    dataset = Dataset.objects.filter(pk=dataset_id).first()
    if dataset is None or not lifecycle.can_cancel(user, dataset.created_by_id):
        return lifecycle.CANCEL_FORBIDDEN
    now = timezone.now()
    if not Dataset.objects.filter(pk=dataset_id, status__in=ACTIVE).update(
        cancel_requested_at=now
    ):
        return NOT_CANCELLABLE.format(id=dataset_id, status=dataset.status)
    lifecycle.cancel_all(DatasetChunk.objects.filter(dataset_id=dataset_id), now)
    datasets_settle(dataset_ids=[dataset_id])
    return None


def datasets_settle(*, dataset_ids: list[int] | None = None) -> int:
    """Bring unfinished datasets in line with their chunks: succeeded when every
    chunk did, failed when one failed (its queued chunks cancelled), cancelled when
    cancel was asked for and no chunk runs any more. How many datasets ended."""
    datasets = Dataset.objects.filter(status__in=ACTIVE)
    if dataset_ids is not None:
        datasets = datasets.filter(pk__in=dataset_ids)
    return sum(_settle(dataset) for dataset in datasets)


def _settle(dataset: Dataset) -> int:
    chunks = DatasetChunk.objects.filter(dataset=dataset)
    now = timezone.now()
    active = Dataset.objects.filter(pk=dataset.pk, status__in=ACTIVE)
    failed = chunks.filter(status=Status.FAILED).order_by("index").first()
    if failed is not None:
        chunks.filter(status=Status.QUEUED).update(
            status=Status.CANCELLED, finished_at=now
        )
        error = f"Chunk {failed.index + 1}: {failed.error}"[:2000]
        return active.update(status=Status.FAILED, error=error, finished_at=now)
    if chunks.filter(status__in=ACTIVE).exists():
        return 0
    if dataset.cancel_requested_at:
        return active.update(status=Status.CANCELLED, finished_at=now)
    if not chunks.exclude(status=Status.SUCCEEDED).exists():
        return active.update(status=Status.SUCCEEDED, finished_at=now)
    return 0


@dataclass(frozen=True)
class Progress:
    images_done: int
    images_total: int
    eta_s: float | None

    @property
    def percent(self) -> int:
        if not self.images_total:
            return 0
        return round(100 * self.images_done / self.images_total)


def dataset_progress(dataset: Dataset) -> Progress:
    """Images stored plus those the running chunks made so far, and an ETA from the
    time per image since the dataset started."""
    stored = DatasetImage.objects.filter(prompt__dataset=dataset).count()
    running = DatasetChunk.objects.filter(dataset=dataset, status=Status.RUNNING)
    done = stored + (running.aggregate(n=Sum("images_done"))["n"] or 0)
    total = dataset.images_total
    eta = None
    if dataset.status == Status.RUNNING and dataset.started_at and done:
        elapsed = (timezone.now() - dataset.started_at).total_seconds()
        eta = round(elapsed / done * max(total - done, 0), 1)
    return Progress(min(done, total), total, eta)


def dataset_export_create(
    *, dataset: Dataset, user: AbstractBaseUser, dicom: bool = False
) -> DatasetExport:
    """Queue a ZIP export of a finished dataset, with a DICOM file per image when
    ``dicom`` (ValueError names why not)."""
    if dataset.status != Status.SUCCEEDED:
        raise ValueError(NOT_EXPORTABLE.format(id=dataset.pk, status=dataset.status))
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if dataset.exports.filter(status__in=ACTIVE).exists():
            raise ValueError(EXPORT_RUNNING.format(id=dataset.pk))
        export = DatasetExport.objects.create(dataset=dataset, include_dicom=dicom)
        lifecycle.dispatch_on_commit(DatasetExport)
    return export


def export_key(export: DatasetExport, attempt: int) -> str:
    """``exports/<dataset>/<name>.zip``; the name carries the export and attempt, so
    a superseded attempt never overwrites the ZIP that a row names."""
    name = f"dataset-{export.dataset_id}-export-{export.pk}-{attempt}"
    return f"{DatasetExport.files_prefix}{export.dataset_id}/{name}.zip"


def dataset_export_succeed(*, attempt: Attempt, archive: Path) -> bool:
    """Save the finished ZIP into storage and name it on the row (fenced); a
    superseded attempt's copy is deleted again."""
    export = DatasetExport.objects.get(pk=attempt.pk)
    with archive.open("rb") as handle:
        key = default_storage.save(export_key(export, attempt.number), File(handle))
    try:
        done = attempt.succeed(archive=key, size_bytes=archive.stat().st_size)
    except BaseException:
        default_storage.delete(key)
        raise
    if not done:
        default_storage.delete(key)
    return done


def dataset_report_create(
    *, dataset: Dataset, user: AbstractBaseUser, split: str = Split.TEST
) -> DatasetReport:
    """Queue a quality and privacy report of a finished dataset; FID uses the real
    frontal images of ``split`` (ValueError names why not)."""
    if split not in Split.values:
        raise ValueError(BAD_SPLIT.format(choices=", ".join(Split.values), value=split))
    if dataset.status != Status.SUCCEEDED:
        raise ValueError(NOT_REPORTABLE.format(id=dataset.pk, status=dataset.status))
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(pk=dataset.pk).first()
        if dataset.reports.filter(status__in=ACTIVE).exists():
            raise ValueError(REPORT_RUNNING.format(id=dataset.pk))
        report = DatasetReport.objects.create(
            dataset=dataset,
            split=split,
            min_fid_images=settings.XRAY_DATASET_REPORT_MIN_FID_IMAGES,
            threshold_margin=settings.XRAY_DATASET_REPORT_MARGIN,
        )
        lifecycle.dispatch_on_commit(DatasetReport)
    return report


def features_key(*, version: ModelVersion, identity: str, size: tuple) -> str:
    """Where a model version's training features are cached: one file per model
    version, training set identity and image size (features depend on all three)."""
    width, height = size
    return (
        f"{FEATURES_PREFIX}{version.pk}/{identity[:32]}-{width}x{height}-"
        f"crop{FEATURES_VERSION}.npy"
    )


def training_features(*, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The cached training features at ``key``; computed once and stored when
    absent (a second worker computing them meanwhile stores the same rows)."""
    if default_storage.exists(key):
        with default_storage.open(key, "rb") as handle:
            return np.load(io.BytesIO(handle.read()), allow_pickle=False)
    rows = compute()
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    saved = default_storage.save(key, ContentFile(buffer.getvalue()))
    if saved != key:  # another worker got there first: keep one copy
        default_storage.delete(saved)
    return rows


@dataclass(frozen=True)
class PairImage:
    """A flagged pair's training image, encoded by the runner."""

    index: int  # position in the report's flagged list
    png: bytes


def dataset_report_succeed(
    *,
    attempt: Attempt,
    results: dict,
    nearest_rows: list[list],
    columns: Sequence[str],
    pairs: list[PairImage],
) -> bool:
    """Store the flagged pairs' training images and nearest.csv under the attempt's
    keys, then the results (naming them) by the fenced finish; a superseded
    attempt, or any error, leaves no file behind."""
    prefix = DatasetReport.attempt_prefix(attempt.pk, attempt.number)
    try:
        flagged = (results.get("memorization") or {}).get("flagged", [])
        for pair in pairs:
            key = f"{prefix}pairs/{pair.index}-training.png"
            flagged[pair.index]["training_key"] = default_storage.save(
                key, ContentFile(pair.png)
            )
        csv_key = ""
        if nearest_rows:
            csv_key = default_storage.save(
                f"{prefix}nearest.csv", ContentFile(_csv(columns, nearest_rows))
            )
        done = attempt.succeed(results=results, nearest_csv=csv_key, phase="")
    except BaseException:
        files.attempt_delete(prefix)
        raise
    if not done:
        files.attempt_delete(prefix)
    return done


def _csv(columns: Sequence[str], rows: list[list]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")
