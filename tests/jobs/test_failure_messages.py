"""A job that fails shows its user a readable sentence; the exception and its
traceback go to the log. A failure caused by what the user entered names the bad
value; any other failure names the job, so that an operator finds the log entry,
and never shows the exception's own text (host paths, library internals)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from generator.errors import InvalidParameterError
from tests.datasets.conftest import create as dataset_create
from tests.generations.test_runner import make_request
from tests.training.conftest import RUN_CONFIG
from xrayweb.cases import services as case_services
from xrayweb.cases.models import ImportRun
from xrayweb.datasets import runner as dataset_runner
from xrayweb.datasets import services as dataset_services
from xrayweb.datasets.models import Dataset, DatasetChunk
from xrayweb.generations import runner as generation_runner
from xrayweb.jobs import lifecycle
from xrayweb.jobs.models import Status
from xrayweb.training import runner as training_runner
from xrayweb.training import services as training_services
from xrayweb.training.models import EvaluationRun

SECRET = "/srv/xray/host-only/path.bin"


class Leaky(RuntimeError):
    """A library error whose text names a host path."""


def leak(*args: object, **kwargs: object):
    raise Leaky(f"cannot read {SECRET}: Input/output error")


@pytest.fixture
def no_broker(monkeypatch):
    monkeypatch.setattr("worker.app.app.send_task", lambda *a, **k: None)


def assert_internal_error(error: str, job: str, caplog, prefix: str = "") -> None:
    """The user reads INTERNAL_ERROR naming ``job``; the log has the traceback."""
    assert error == prefix + lifecycle.INTERNAL_ERROR.format(job=job)
    assert SECRET not in error
    logged = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and job in r.getMessage()
    ]
    assert logged, f"nothing logged for {job}"
    assert logged[0].exc_info[0] is Leaky
    assert SECRET in caplog.text
    assert "Traceback" in caplog.text


def test_a_generation_that_hits_an_unexpected_error_names_the_job(
    alice, tiny_version, no_broker, monkeypatch, caplog
):
    monkeypatch.setattr(generation_runner, "generate", leak)
    request = make_request(alice, tiny_version, steps=2)

    generation_runner.generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert request.status == Status.FAILED
    job = f"generation request {request.pk} attempt 1"
    assert_internal_error(request.error, job, caplog)


def test_a_generation_refused_for_a_bad_value_names_the_value(
    alice, tiny_version, no_broker, monkeypatch, caplog
):
    def refuse(*args: object, **kwargs: object):
        raise InvalidParameterError("steps must be at most 150, got 900")

    monkeypatch.setattr(generation_runner, "generate", refuse)
    request = make_request(alice, tiny_version, steps=2)

    generation_runner.generation_run(request_id=request.pk)

    request.refresh_from_db()
    assert (request.status, request.error) == (
        Status.FAILED,
        "steps must be at most 150, got 900",
    )
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.exc_info[0] for r in warned] == [InvalidParameterError]


def test_a_training_run_that_hits_an_unexpected_error_names_the_job(
    staff, tiny_version, sent, monkeypatch, caplog
):
    monkeypatch.setattr(training_runner, "train", leak)
    run = training_services.training_run_create(
        user=staff, name="gray-lora", base=tiny_version, config=RUN_CONFIG
    )

    training_runner.training_run_execute(run_id=run.pk)

    run.refresh_from_db()
    assert run.status == Status.FAILED
    assert_internal_error(run.error, f"training run {run.pk} attempt 1", caplog)


def test_an_evaluation_chunk_that_hits_an_unexpected_error_names_the_job(
    db, tiny_version, case_with_image, sent, monkeypatch, caplog
):
    case_with_image.split = "test"
    case_with_image.save()
    monkeypatch.setattr(training_runner, "score_cases", leak)
    evaluation = training_services.evaluation_create(
        user=None, model_version=tiny_version, cases=1, chunk_size=1
    )
    chunk = evaluation.chunks.get()

    training_runner.evaluation_chunk_execute(chunk_id=chunk.pk)

    evaluation = EvaluationRun.objects.get(pk=evaluation.pk)
    assert evaluation.status == Status.FAILED
    job = f"evaluation chunk {chunk.pk} attempt 1"
    assert_internal_error(evaluation.error, job, caplog, prefix="Chunk 1: ")


def test_a_dataset_chunk_that_hits_an_unexpected_error_names_the_job(
    alice, tiny_version, sent, monkeypatch, caplog
):
    monkeypatch.setattr(dataset_runner, "generate", leak)
    dataset = dataset_create(alice, tiny_version)
    chunk = dataset.chunks.order_by("index").first()

    dataset_runner.dataset_chunk_execute(chunk_id=chunk.pk)

    chunk = DatasetChunk.objects.get(pk=chunk.pk)
    assert chunk.status == Status.FAILED
    assert_internal_error(chunk.error, f"dataset chunk {chunk.pk} attempt 1", caplog)


@pytest.fixture
def finished_dataset(alice, tiny_version, sent) -> Dataset:
    dataset = dataset_create(alice, tiny_version)
    Dataset.objects.filter(pk=dataset.pk).update(status=Status.SUCCEEDED)
    dataset.refresh_from_db()
    return dataset


def test_a_dataset_export_that_hits_an_unexpected_error_names_the_job(
    alice, finished_dataset, monkeypatch, caplog
):
    monkeypatch.setattr(dataset_runner.export, "zip_write", leak)
    export = dataset_services.dataset_export_create(
        dataset=finished_dataset, user=alice
    )

    dataset_runner.dataset_export_execute(export_id=export.pk)

    export.refresh_from_db()
    assert export.status == Status.FAILED
    assert_internal_error(export.error, f"dataset export {export.pk} attempt 1", caplog)


def test_a_dataset_report_that_hits_an_unexpected_error_names_the_job(
    alice, finished_dataset, monkeypatch, caplog
):
    monkeypatch.setattr(dataset_runner.training_sets, "training_set_of", leak)
    report = dataset_services.dataset_report_create(
        dataset=finished_dataset, user=alice
    )

    dataset_runner.dataset_report_execute(report_id=report.pk)

    report.refresh_from_db()
    assert report.status == Status.FAILED
    assert_internal_error(report.error, f"dataset report {report.pk} attempt 1", caplog)


def test_an_import_that_hits_an_unexpected_error_names_the_job(db, monkeypatch, caplog):
    monkeypatch.setattr(case_services, "import_sources", leak)
    run = case_services.import_run_create(
        user=None, options={"download": True}, enqueue=False
    )

    case_services.import_run_execute(run_id=run.pk)

    run = ImportRun.objects.get(pk=run.pk)
    assert run.status == Status.FAILED
    assert_internal_error(run.error, f"import {run.pk} attempt 1", caplog)


def test_an_import_whose_file_went_away_names_the_option_and_the_path(
    db, tmp_path: Path
):
    reports = tmp_path / "reports.tgz"
    reports.write_bytes(b"")
    run = case_services.import_run_create(
        user=None, options={"reports": str(reports)}, enqueue=False
    )
    reports.unlink()

    case_services.import_run_execute(run_id=run.pk)

    run = ImportRun.objects.get(pk=run.pk)
    assert (run.status, run.error) == (
        Status.FAILED,
        case_services.MISSING_PATH.format(option="reports", path=str(reports)),
    )


def test_no_runner_shows_an_exceptions_own_text_to_users():
    """Every runner hands an unexpected exception to the one lifecycle helper."""
    root = Path(__file__).resolve().parent.parent.parent / "xrayweb"
    runners = [*root.glob("*/runner.py"), root / "cases" / "services.py"]
    offenders = [
        f"{path.name}:{number}"
        for path in runners
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ("stop(str(" in line or "error=str(" in line or "message=exc" in line)
    ]

    assert offenders == []


def test_an_import_item_the_database_refuses_is_reported_by_its_first_line(db, caplog):
    from django.db import DatabaseError

    def refuse() -> None:
        raise DatabaseError(
            'duplicate key value violates unique constraint "case_uid"\n'
            "DETAIL:  Key (uid)=(CXR1) already exists."
        )

    report = case_services.ImportReport()

    saved = case_services.row_save(refuse, "CXR1", report)

    assert not saved
    assert report.skipped == [
        {
            "item": "CXR1",
            "reason": case_services.DATABASE_REFUSED.format(
                error='duplicate key value violates unique constraint "case_uid"'
            ),
        }
    ]
    assert "Key (uid)=(CXR1) already exists" in caplog.text  # the detail: in the log
