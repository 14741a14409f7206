"""Run one training job or evaluation chunk in a worker (or a management command).

After a worker died, recovery queues the run again once its lease ran out, and
training resumes from the newest checkpoint in the run's folder.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from generator.errors import ModelNotFoundError
from generator.evaluation import score_cases, summarize
from generator.training import TrainingConfig, TrainingProgress, train
from xrayweb.generations import model_files
from xrayweb.jobs.files import opener as storage_opener
from xrayweb.jobs.lifecycle import TIME_LIMIT, failure_message
from xrayweb.jobs.runtime import Attempt, retrying
from xrayweb.training import files, plots, selectors, services
from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun

logger = logging.getLogger(__name__)

STOPPED = "Training run {id} is no longer running (cancelled or taken over)."


class RunStopped(Exception):
    """The run left the running state while training: stop without a result."""


def training_run_execute(
    *, run_id: int, echo: Callable[[TrainingProgress], None] | None = None
) -> bool:
    """Claim and train ``run_id``; False when it was not claimable."""
    attempt = Attempt.claim(TrainingRun, run_id)
    if attempt is None:
        return False
    with attempt:
        run = TrainingRun.objects.select_related("base").get(pk=run_id)
        try:
            _train(attempt, run, echo)
        except RunStopped:
            logger.info(STOPPED.format(id=run_id))
            attempt.stop()
        except SoftTimeLimitExceeded:
            attempt.stop(TIME_LIMIT.format(limit=settings.XRAY_TRAINING_SOFT_LIMIT_S))
        except Exception as exc:
            attempt.fail(exc)
    return True


def _train(
    attempt: Attempt, run: TrainingRun, echo: Callable[[TrainingProgress], None] | None
) -> None:
    examples = selectors.training_examples(include_laterals=run.include_laterals)
    attempt.fenced().update(examples=len(examples))
    folder = files.work_dir(run.pk)
    files.checkpoint_fetch(run.files_key, folder)  # resume here what died elsewhere
    config = TrainingConfig(
        base=model_files.worker_source(run.base),
        revision=run.base.revision or None,
        output_dir=str(folder),
        **services.config_fields(run.config),
    )
    try:
        result = train(
            config,
            examples,
            progress=ProgressWriter(attempt, echo),
            on_saved=files.StorageMirror(run.files_key, folder),
        )
    except ModelNotFoundError as exc:  # its message names host paths: to the log
        message = model_files.UNAVAILABLE.format(name=run.base.label)
        raise model_files.ModelUnavailable(message) from exc
    retrying(lambda: services.training_run_succeed(attempt=attempt, result=result))


class ProgressWriter:
    """Per-step callback: progress and the lease to the database at most every
    interval; raises RunStopped once cancel was asked for (or the run was taken
    over), so training stops at its next step."""

    def __init__(
        self, attempt: Attempt, echo: Callable[[TrainingProgress], None] | None = None
    ) -> None:
        self.attempt = attempt
        self.echo = echo
        self.last_write = 0.0
        self.pending: list[list[float]] = []

    def __call__(self, report: TrainingProgress) -> None:
        if self.echo is not None:
            self.echo(report)
        self.pending.append([report.step, round(report.loss, 6)])
        if self.attempt.should_stop:
            raise RunStopped(STOPPED.format(id=self.attempt.pk))
        now = time.monotonic()
        last = report.step >= report.total
        if not last and now - self.last_write < settings.XRAY_PROGRESS_INTERVAL_S:
            return
        self.last_write = now
        points, self.pending = self.pending, []
        if not services.training_run_progress(
            attempt=self.attempt, report=report, points=points
        ):
            raise RunStopped(STOPPED.format(id=self.attempt.pk))


def evaluation_chunk_execute(*, chunk_id: int) -> bool:
    """Claim and score one chunk; the last chunk to finish combines the report."""
    attempt = Attempt.claim(EvaluationChunk, chunk_id)
    if attempt is None:
        return False
    from xrayweb.generations.runner import pipeline_for

    chunk = EvaluationChunk.objects.select_related("evaluation__model_version").get(
        pk=chunk_id
    )
    evaluation = chunk.evaluation
    services.evaluation_started(evaluation_id=evaluation.pk)
    params = {k: v for k, v in evaluation.params.items() if k != "with_fid"}
    with attempt:
        try:
            pipe = pipeline_for(evaluation.model_version, 1.0)
            cases = selectors.evaluation_cases(chunk.case_ids)
            with tempfile.TemporaryDirectory() as images_dir:
                scores = score_cases(pipe, cases, params, Path(images_dir))
                scores_json = [
                    {**score.to_json(), "image": _store_image(attempt, score.image)}
                    for score in scores
                ]
        except SoftTimeLimitExceeded:
            error = TIME_LIMIT.format(limit=settings.XRAY_JOB_SOFT_LIMIT_S)
            services.evaluation_chunk_stopped(attempt=attempt, error=error)
            return True
        except Exception as exc:
            error = attempt.failure_message(exc)
            services.evaluation_chunk_stopped(attempt=attempt, error=error)
            return True
        combine = retrying(
            lambda: services.evaluation_chunk_succeed(
                attempt=attempt, scores=scores_json
            )
        )
    if combine:
        evaluation_combine(evaluation_id=evaluation.pk)
    return True


def _store_image(attempt: Attempt, path: str) -> str:
    """A generated image into storage under the attempt's prefix; its key."""
    key = f"{EvaluationChunk.attempt_prefix(attempt.pk, attempt.number)}"
    with open(path, "rb") as handle:
        return default_storage.save(f"{key}{Path(path).name}", File(handle))


def evaluation_combine(*, evaluation_id: int) -> None:
    """All chunks' scores into one report with FID and a histogram, stored once."""
    evaluation = EvaluationRun.objects.get(pk=evaluation_id)
    chunks = evaluation.chunks.order_by("index")
    scores = [score for chunk in chunks for score in chunk.scores]
    try:
        references = [
            case.reference for case in selectors.evaluation_cases(evaluation.case_ids)
        ]
        generated = [storage_opener(score["image"]) for score in scores]
        results = summarize(
            scores,
            references,
            with_fid=evaluation.params.get("with_fid", True),
            generated=generated,
        )
        histogram = plots.histogram_png(results["ssim_values"], "SSIM")
    except Exception as exc:
        job = f"{EvaluationRun._meta.verbose_name} {evaluation_id} (combining)"
        message = failure_message(exc, job=job)
        services.evaluation_fail(evaluation_id=evaluation_id, error=message)
        return
    services.evaluation_finish(
        evaluation_id=evaluation_id, results=results, histogram=histogram
    )
