"""Thin tasks: take an id, hand it to a service. The database is the truth about jobs.

Services are imported inside each task: the worker package and the Django apps do not
import each other at module level.
"""

from __future__ import annotations

import socket

from celery.signals import worker_ready

from worker.app import app


@app.task(name="generation.run")
def run_generation(request_id: int) -> None:
    """Run one generation request; a duplicate or redelivered message does nothing."""
    from xrayweb.generations.runner import generation_run

    generation_run(request_id=request_id, worker=f"{socket.gethostname()}")


@app.task(name="jobs.reconcile")
def reconcile_jobs() -> int:
    """Re-send jobs whose broker message may be lost; requeue abandoned ones."""
    from django.conf import settings

    return reconcile_all(settings.XRAY_RECONCILE_AFTER_S)


@worker_ready.connect
def reconcile_on_start(**_: object) -> None:
    """After a restart or a Redis flush, queued jobs in the database still run."""
    reconcile_all(0)


def reconcile_all(older_than_s: int) -> int:
    """Every kind of job: generations, training and evaluation, imports."""
    from xrayweb.cases.services import import_runs_reconcile
    from xrayweb.generations.services import generation_requests_reconcile
    from xrayweb.training.services import training_jobs_reconcile

    return (
        generation_requests_reconcile(older_than_s=older_than_s)
        + training_jobs_reconcile(older_than_s=older_than_s)
        + import_runs_reconcile(older_than_s=older_than_s)
    )


IMPORT_SOFT_LIMIT_S = 3 * 3600


@app.task(
    name="imports.run",
    queue="cpu",
    soft_time_limit=IMPORT_SOFT_LIMIT_S,
    time_limit=IMPORT_SOFT_LIMIT_S + 120,
)
def run_import(run_id: int) -> None:
    """Run one IU X-ray import; a duplicate or redelivered message does nothing.

    The 7,470-image archive can outlast the generation jobs' limits. A message
    redelivered past the broker's visibility timeout finds the run claimed and stops.
    """
    from xrayweb.cases.services import import_run_execute

    import_run_execute(run_id=run_id)


# Training runs for hours: the global 30-minute limits do not apply. A killed worker's
# message is redelivered (acks_late) and resumes from the run's last checkpoint.
@app.task(name="training.run", soft_time_limit=6 * 24 * 3600, time_limit=7 * 24 * 3600)
def run_training(run_id: int) -> None:
    """Train one run; a duplicate message while it is alive does nothing."""
    from xrayweb.training.runner import training_run_execute

    training_run_execute(run_id=run_id, worker=socket.gethostname())


@app.task(name="evaluation.chunk")
def run_evaluation_chunk(chunk_id: int) -> None:
    """Score one chunk of an evaluation; the last chunk combines the report."""
    from xrayweb.training.runner import evaluation_chunk_execute

    evaluation_chunk_execute(chunk_id=chunk_id, worker=socket.gethostname())
