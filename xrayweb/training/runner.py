"""Run one training job or evaluation chunk in a worker (or a management command).

A redelivered message after a worker died claims the run again once its heartbeat is
stale, and training resumes from the newest checkpoint in the run's folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

from generator.errors import GeneratorError
from generator.evaluation import score_cases, summarize
from generator.training import TrainingConfig, TrainingProgress, train
from xrayweb.generations.runner import INTERNAL_ERROR
from xrayweb.training import plots, selectors, services
from xrayweb.training.models import EvaluationChunk, EvaluationRun, TrainingRun

logger = logging.getLogger(__name__)

STOPPED = "Training run {id} is no longer running (cancelled or taken over)."


class RunStopped(Exception):
    """The run left the running state while training: stop without a result."""


def training_run_execute(
    *,
    run_id: int,
    worker: str,
    echo: Callable[[TrainingProgress], None] | None = None,
    stale_after_s: int = services.STALE_AFTER_S,
) -> bool:
    """Claim and train ``run_id``; False when it was not claimable."""
    if not services.training_run_claim(
        run_id=run_id, worker=worker, stale_after_s=stale_after_s
    ):
        logger.info("training run %s not claimed: held elsewhere or ended", run_id)
        return False
    run = TrainingRun.objects.select_related("base").get(pk=run_id)
    try:
        examples = selectors.training_examples(include_laterals=run.include_laterals)
        TrainingRun.objects.filter(pk=run_id).update(examples=len(examples))
        config = TrainingConfig(
            base=run.base.source,
            revision=run.base.revision or None,
            output_dir=run.output_dir,
            **services.config_fields(run.config),
        )
        result = train(config, examples, progress=ProgressWriter(run_id, echo))
        services.training_run_succeed(run_id=run_id, result=result)
    except RunStopped:
        logger.info(STOPPED.format(id=run_id))
    except (GeneratorError, FileNotFoundError, ValueError) as exc:
        services.training_run_fail(run_id=run_id, error=str(exc))
    except Exception as exc:
        logger.exception("training run %s failed", run_id)
        message = INTERNAL_ERROR.format(kind=type(exc).__name__, message=exc)
        services.training_run_fail(run_id=run_id, error=message)
    return True


class ProgressWriter:
    """Per-step callback: progress and heartbeat to the database at most every
    interval; raises RunStopped once the run was cancelled."""

    def __init__(
        self, run_id: int, echo: Callable[[TrainingProgress], None] | None = None
    ) -> None:
        self.run_id = run_id
        self.echo = echo
        self.last_write = 0.0
        self.pending: list[list[float]] = []

    def __call__(self, report: TrainingProgress) -> None:
        if self.echo is not None:
            self.echo(report)
        self.pending.append([report.step, round(report.loss, 6)])
        now = time.monotonic()
        last = report.step >= report.total
        if not last and now - self.last_write < settings.XRAY_PROGRESS_INTERVAL_S:
            return
        self.last_write = now
        points, self.pending = self.pending, []
        if not services.training_run_progress(
            run_id=self.run_id, report=report, points=points
        ):
            raise RunStopped(STOPPED.format(id=self.run_id))


def evaluation_images_dir(evaluation_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "evaluations" / f"evaluation-{evaluation_id}"


def evaluation_chunk_execute(*, chunk_id: int, worker: str) -> bool:
    """Claim and score one chunk; the last chunk to finish combines the report."""
    if not services.evaluation_chunk_claim(chunk_id=chunk_id, worker=worker):
        logger.info("evaluation chunk %s not claimed: taken or ended", chunk_id)
        return False
    from xrayweb.generations.runner import pipeline_for

    chunk = EvaluationChunk.objects.select_related("evaluation__model_version").get(
        pk=chunk_id
    )
    evaluation = chunk.evaluation
    params = {k: v for k, v in evaluation.params.items() if k != "with_fid"}
    try:
        pipe = pipeline_for(evaluation.model_version, 1.0)
        cases = selectors.evaluation_cases(chunk.case_ids)
        images_dir = evaluation_images_dir(evaluation.pk)
        scores = score_cases(pipe, cases, params, images_dir)
    except Exception as exc:
        logger.exception("evaluation chunk %s failed", chunk_id)
        message = INTERNAL_ERROR.format(kind=type(exc).__name__, message=exc)
        services.evaluation_chunk_fail(chunk_id=chunk_id, error=message)
        return True
    scores_json = [score.to_json() for score in scores]
    if services.evaluation_chunk_succeed(chunk_id=chunk_id, scores=scores_json):
        evaluation_combine(evaluation_id=evaluation.pk)
    return True


def evaluation_combine(*, evaluation_id: int) -> None:
    """All chunks' scores into one report with FID and a histogram, stored once."""
    evaluation = EvaluationRun.objects.get(pk=evaluation_id)
    chunks = evaluation.chunks.order_by("index")
    scores = [score for chunk in chunks for score in chunk.scores]
    try:
        references = [
            case.reference for case in selectors.evaluation_cases(evaluation.case_ids)
        ]
        results = summarize(
            scores, references, with_fid=evaluation.params.get("with_fid", True)
        )
        histogram = plots.histogram_png(results["ssim_values"], "SSIM")
    except Exception as exc:
        logger.exception("evaluation %s could not be combined", evaluation_id)
        message = INTERNAL_ERROR.format(kind=type(exc).__name__, message=exc)
        services.evaluation_fail(evaluation_id=evaluation_id, error=message)
        return
    services.evaluation_finish(
        evaluation_id=evaluation_id, results=results, histogram=histogram
    )
