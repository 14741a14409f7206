"""Run one dataset chunk, export or report inside a worker: claim, work, hand to a
service.

A chunk generates each of its prompts' N images with generator.sampling.generate,
from the prompt's derived seed; its PNGs carry the same provenance text chunks as a
single generation's. An export streams the stored PNGs into a temporary ZIP file.
A report reads the stored PNGs, the real images of a split and the model's training
set (training_sets), computes generator.dataset_report, and hands the figures, the
flagged pairs' training images and nearest.csv to a service.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from generator.dataset_report import (
    NEAREST_COLUMNS,
    ReportImage,
    ReportSettings,
    ReportStopped,
    dataset_report,
)
from generator.errors import GenerationInterrupted
from generator.evaluation import ImageSource, finding_of, open_gray
from generator.sampling import GenerationParams, generate
from xrayweb.cases.models import Case
from xrayweb.datasets import export, services, training_sets
from xrayweb.datasets.models import (
    Dataset,
    DatasetChunk,
    DatasetExport,
    DatasetReport,
)
from xrayweb.generations.runner import _png, pipeline_for, png_provenance
from xrayweb.jobs.files import opener
from xrayweb.jobs.lifecycle import TIME_LIMIT
from xrayweb.jobs.runtime import Attempt, retrying

logger = logging.getLogger(__name__)


def dataset_chunk_execute(*, chunk_id: int) -> bool:
    """Claim and run one chunk; False when it was not claimable."""
    attempt = Attempt.claim(DatasetChunk, chunk_id)
    if attempt is None:
        return False
    chunk = DatasetChunk.objects.select_related("dataset__model_version").get(
        pk=chunk_id
    )
    services.dataset_started(dataset_id=chunk.dataset_id)
    with attempt:
        try:
            images = _generate(attempt, chunk)
        except GenerationInterrupted:
            services.dataset_chunk_stopped(attempt=attempt)  # cancelled or taken over
            return True
        except SoftTimeLimitExceeded:
            error = TIME_LIMIT.format(limit=settings.XRAY_JOB_SOFT_LIMIT_S)
            services.dataset_chunk_stopped(attempt=attempt, error=error)
            return True
        except Exception as exc:
            error = attempt.failure_message(exc)
            services.dataset_chunk_stopped(attempt=attempt, error=error)
            return True
        retrying(lambda: services.dataset_chunk_succeed(attempt=attempt, images=images))
    return True


def _generate(attempt: Attempt, chunk: DatasetChunk) -> list[services.RenderedImage]:
    dataset = chunk.dataset
    pipe = pipeline_for(dataset.model_version, dataset.params["lora_scale"])
    prompts = dataset.prompts.filter(index__gte=chunk.start, index__lt=chunk.stop)
    rendered: list[services.RenderedImage] = []
    for prompt in prompts.order_by("index"):
        params = GenerationParams(
            prompt=prompt.text,
            seed=services.prompt_seed(dataset.seed, prompt.index),
            num_images=dataset.images_per_prompt,
            **dataset.params,
        )
        progress = ProgressWriter(attempt, done=len(rendered))
        result = generate(pipe, params, progress)
        for index, (image, seed) in enumerate(
            zip(result.images, result.seeds, strict=True)
        ):
            png = _png(image, png_metadata(dataset, params, seed))
            rendered.append(services.RenderedImage(prompt.pk, index, seed, png))
    return rendered


class ProgressWriter:
    """Per-step callback: the chunk's images so far (and the lease) to the database
    at most every interval; False stops the pipeline once cancel was asked for."""

    def __init__(self, attempt: Attempt, done: int) -> None:
        self.attempt, self.done = attempt, done

    def __call__(self, step: int, total: int) -> bool:
        return self.attempt.progress(force=step == 1, images_done=self.done)


def png_metadata(dataset: Dataset, params: GenerationParams, seed: int) -> dict:
    """The provenance a single generation's PNG carries, plus the dataset's id."""
    return png_provenance(
        dataset.model_version,
        params,
        seed,
        dataset=dataset.pk,
        dataset_seed=dataset.seed,
    )


def dataset_export_execute(*, export_id: int) -> bool:
    """Claim and build one export's ZIP in a temporary file, then store it."""
    attempt = Attempt.claim(DatasetExport, export_id)
    if attempt is None:
        return False
    row = DatasetExport.objects.select_related("dataset__model_version").get(
        pk=export_id
    )
    with attempt, tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "dataset.zip"
        try:
            export.zip_write(
                row.dataset,
                archive,
                progress=attempt.progress,
                include_dicom=row.include_dicom,
            )
            retrying(
                lambda: services.dataset_export_succeed(
                    attempt=attempt, archive=archive
                )
            )
        except export.ExportStopped:
            attempt.stop()
        except SoftTimeLimitExceeded:
            attempt.stop(TIME_LIMIT.format(limit=settings.XRAY_JOB_SOFT_LIMIT_S))
        except Exception as exc:
            attempt.fail(exc)
    return True


def dataset_report_execute(*, report_id: int) -> bool:
    """Claim and compute one dataset report; False when it was not claimable."""
    attempt = Attempt.claim(DatasetReport, report_id)
    if attempt is None:
        return False
    row = DatasetReport.objects.select_related("dataset__model_version").get(
        pk=report_id
    )
    with attempt:
        try:
            _report(attempt, row)
        except ReportStopped:
            attempt.stop()
        except SoftTimeLimitExceeded:
            attempt.stop(TIME_LIMIT.format(limit=settings.XRAY_JOB_SOFT_LIMIT_S))
        except Exception as exc:
            attempt.fail(exc)
    return True


def _report(attempt: Attempt, row: DatasetReport) -> None:
    dataset = row.dataset
    size = (dataset.params["width"], dataset.params["height"])
    training_set, unknown = training_sets.training_set_of(dataset.model_version)
    cache = None
    if training_set is not None:
        key = services.features_key(
            version=dataset.model_version, identity=training_set.identity, size=size
        )

        def cache(compute: Callable[[], np.ndarray]) -> np.ndarray:
            return services.training_features(key=key, compute=compute)

    generated, image_ids = report_images(dataset)
    report = dataset_report(
        generated=generated,
        real=training_sets.frontal_images(
            [row.split], limit=settings.XRAY_DATASET_REPORT_MAX_REAL
        ),
        training_set=training_set,
        settings=ReportSettings(size, row.min_fid_images, row.threshold_margin),
        training_cache=cache,
        progress=lambda phase: attempt.progress(force=True, phase=phase),
        unknown_training=unknown,
    )
    pairs = [
        services.PairImage(index, _gray_png(training_set.training[train].source))
        for index, (_, train) in enumerate(report.flagged_pairs)
    ]
    flagged = report.results["memorization"].get("flagged", [])
    for entry, (index, _) in zip(flagged, report.flagged_pairs, strict=True):
        entry["image_id"] = image_ids[index]  # the page shows it through its view
    retrying(
        lambda: services.dataset_report_succeed(
            attempt=attempt,
            results=report.results,
            nearest_rows=report.nearest_rows,
            columns=NEAREST_COLUMNS,
            pairs=pairs,
        )
    )


def report_images(dataset: Dataset) -> tuple[list[ReportImage], list[int]]:
    """The dataset's images for its report (with their prompt's index and its
    case's findings), and their DatasetImage ids in the same order."""
    rows = list(export.images_of(dataset))
    images = [
        ReportImage(
            image.savename,
            opener(image.image),
            prompt=image.prompt.index,
            findings=_findings(image.prompt.case),
        )
        for image in rows
    ]
    return images, [image.pk for image in rows]


def _findings(case: Case | None) -> tuple[str, ...]:
    if case is None:
        return ()
    return tuple(sorted({finding_of(term) for term in case.mesh_major}))


def _gray_png(source: ImageSource) -> bytes:
    buffer = io.BytesIO()
    open_gray(source).save(buffer, format="PNG")
    return buffer.getvalue()
