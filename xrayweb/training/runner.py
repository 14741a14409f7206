"""Run one training job in a worker (or a management command): claim, train, register.

A redelivered message after a worker died claims the run again once its heartbeat is
stale, and training resumes from the newest checkpoint in the run's folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings

from generator.errors import GeneratorError
from generator.training import TrainingConfig, TrainingProgress, train
from xrayweb.training import selectors, services
from xrayweb.training.models import TrainingRun

logger = logging.getLogger(__name__)

STOPPED = "Training run {id} is no longer running (cancelled or taken over)."
INTERNAL_ERROR = "The worker hit an unexpected error: {kind}: {message}"


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
            **{**run.config, **_tuples(run.config)},
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


def _tuples(config: dict) -> dict:
    """JSON lists back to the tuples TrainingConfig holds."""
    names = ("target_modules", "validation_prompts")
    return {name: tuple(config[name]) for name in names if name in config}


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
