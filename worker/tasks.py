"""Thin tasks: take an id, hand it to a runner or service. The database is the truth
about jobs; routes are in settings.CELERY_TASK_ROUTES.

Services are imported inside each task: the worker package and the Django apps do not
import each other at module level.
"""

from __future__ import annotations

import logging
import os

from celery.signals import worker_process_init, worker_ready, worker_shutdown
from django.conf import settings

from worker.app import app

logger = logging.getLogger(__name__)

JOB_REQUEST = "worker.requests:JobRequest"


@app.task(name="generation.run", Request=JOB_REQUEST)
def run_generation(request_id: int) -> None:
    """Run one generation request; a duplicate or redelivered message does nothing."""
    from xrayweb.generations.runner import generation_run

    generation_run(request_id=request_id)


@app.task(
    name="imports.run",
    Request=JOB_REQUEST,
    soft_time_limit=settings.XRAY_IMPORT_SOFT_LIMIT_S,
    time_limit=settings.XRAY_IMPORT_SOFT_LIMIT_S + 120,
)
def run_import(run_id: int) -> None:
    """Run one IU X-ray import; the 7,470-image archive can outlast generations'
    limits. A duplicate or redelivered message does nothing."""
    from xrayweb.cases.services import import_run_execute

    import_run_execute(run_id=run_id)


@app.task(
    name="training.run",
    Request=JOB_REQUEST,
    soft_time_limit=settings.XRAY_TRAINING_SOFT_LIMIT_S,
    time_limit=settings.XRAY_TRAINING_SOFT_LIMIT_S + 3600,
)
def run_training(run_id: int) -> None:
    """Train one run; after a lost worker it resumes from its last checkpoint."""
    from xrayweb.training.runner import training_run_execute

    training_run_execute(run_id=run_id)


@app.task(name="evaluation.chunk", Request=JOB_REQUEST)
def run_evaluation_chunk(chunk_id: int) -> None:
    """Score one chunk of an evaluation; the last chunk combines the report."""
    from xrayweb.training.runner import evaluation_chunk_execute

    evaluation_chunk_execute(chunk_id=chunk_id)


@app.task(name="dataset.chunk", Request=JOB_REQUEST)
def run_dataset_chunk(chunk_id: int) -> None:
    """Make one chunk of a dataset's images; the last chunk ends the dataset."""
    from xrayweb.datasets.runner import dataset_chunk_execute

    dataset_chunk_execute(chunk_id=chunk_id)


@app.task(name="dataset_export.run", Request=JOB_REQUEST)
def run_dataset_export(export_id: int) -> None:
    """Build one dataset's ZIP into storage."""
    from xrayweb.datasets.runner import dataset_export_execute

    dataset_export_execute(export_id=export_id)


@app.task(name="dataset_report.run", Request=JOB_REQUEST)
def run_dataset_report(report_id: int) -> None:
    """Compute one dataset's quality and privacy report."""
    from xrayweb.datasets.runner import dataset_report_execute

    dataset_report_execute(report_id=report_id)


@app.task(name="jobs.reconcile")
def reconcile_jobs() -> int:
    """Recover jobs whose worker stopped, re-send lost messages, dispatch."""
    from xrayweb.jobs.maintenance import reconcile

    return reconcile()


@app.task(name="jobs.sweep")
def sweep_orphan_files() -> int:
    """Delete stored job files that no row points to."""
    from xrayweb.jobs.maintenance import orphans_sweep

    return orphans_sweep()


@worker_process_init.connect
def lower_job_priority(**_: object) -> None:
    """Jobs compute at XRAY_WORKER_NICE, so pages on a shared host answer first."""
    raise_niceness_to(settings.XRAY_WORKER_NICE)


def raise_niceness_to(target: int) -> int:
    """Lower this process's priority to nice ``target`` (never raise it: that needs
    privileges); the niceness it runs at afterwards."""
    current = os.nice(0)
    if target > current:
        current = os.nice(target - current)
    return current


@worker_ready.connect
def reconcile_on_start(**_: object) -> None:
    """After a restart or a broker flush, queued jobs in the database still run."""
    from xrayweb.jobs.maintenance import reconcile

    try:
        reconcile()
    except Exception:  # a database outage at start-up must not stop the worker
        logger.exception("reconcile at worker start failed; beat will retry")


_reporter = None


@worker_ready.connect
def report_presence(sender: object, **_: object) -> None:
    """Tell the database this worker is alive, what it consumes and, for the
    generation and training queues, which model versions this host can load."""
    global _reporter
    from xrayweb.generations import availability, services
    from xrayweb.jobs import presence

    queues = sorted(sender.app.amqp.queues.consume_from)
    runs_models = bool({settings.QUEUE_GPU, settings.QUEUE_TRAIN} & set(queues))
    if runs_models:
        try:
            services.base_model_register()
        except Exception:  # the database may be down at start: reported later
            logger.exception("registering this host's models failed")
    versions = availability.loadable_versions if runs_models else list
    _reporter = presence.Reporter(sender.hostname, queues, versions)


@worker_shutdown.connect
def end_presence(**_: object) -> None:
    if _reporter is not None:
        _reporter.stop()
