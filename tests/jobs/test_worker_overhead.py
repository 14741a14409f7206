"""The cuts in a worker's fixed cost per job (issue 16): commits that need not wait
for the disk, database connections kept across tasks, and the dispatch after each
finish on a thread of the worker process."""

from __future__ import annotations

import logging
import os
import threading

import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from tests.jobs.test_dispatch import job
from worker.app import app
from worker.tasks import run_generation
from xrayweb.generations.models import GenerationRequest
from xrayweb.jobs import dispatch, lifecycle
from xrayweb.jobs.models import Status

needs_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="synchronous_commit is PostgreSQL's"
)
RELAXED = "SET LOCAL synchronous_commit = off"


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_relaxed_commit_skips_the_disk_flush_for_its_own_transaction_only():
    with lifecycle.relaxed_commit():
        inside = synchronous_commit()
    after = synchronous_commit()
    with transaction.atomic(), lifecycle.relaxed_commit():
        # Inside a caller's transaction: that transaction's commit stays durable.
        nested = synchronous_commit()

    assert (inside, after, nested) == ("off", "on", "on")


@needs_postgresql
@pytest.mark.django_db(transaction=True)
def test_claims_and_heartbeats_commit_relaxed_while_the_finish_stays_durable(
    alice, tiny_version
):
    request = job(alice, tiny_version, sent_minutes_ago=0)

    with CaptureQueriesContext(connection) as claiming:
        attempt = lifecycle.claim(GenerationRequest, request.pk, "host:1")
    with CaptureQueriesContext(connection) as beating:
        beat = lifecycle.heartbeat(
            GenerationRequest, request.pk, attempt, progress_step=1
        )
    with CaptureQueriesContext(connection) as finishing:
        done = lifecycle.finish(
            GenerationRequest, request.pk, attempt, Status.SUCCEEDED
        )

    def relaxed(captured: CaptureQueriesContext) -> bool:
        return any(query["sql"] == RELAXED for query in captured.captured_queries)

    # The finish commits on its own; the dispatch that follows it marks the next
    # jobs in a relaxed transaction of its own.
    after_finish = [query["sql"] for query in finishing.captured_queries]
    end = next(
        i
        for i, sql in enumerate(after_finish)
        if sql.startswith("UPDATE") and "'succeeded'" in sql
    )
    assert (attempt, beat.held, done) == (1, True, True)
    assert (relaxed(claiming), relaxed(beating)) == (True, True)
    assert RELAXED not in after_finish[: end + 1]
    assert RELAXED in after_finish[end + 1 :]
    request.refresh_from_db()
    assert (request.status, request.progress_step) == (Status.SUCCEEDED, 1)


@pytest.mark.django_db(transaction=True)
def test_celery_keeps_the_database_connection_from_one_task_to_the_next():
    """Without CELERY_DB_REUSE_MAX, Celery's Django fix-up closes it before and
    after every task, and each task opens a new PostgreSQL connection."""
    fixup = DjangoWorkerFixup(app)
    task = run_generation
    connection.ensure_connection()
    opened = connection.connection

    for _ in range(3):
        fixup.on_task_prerun(sender=task)
        fixup.on_task_postrun(sender=task)

    assert connection.connection is opened


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_thread_sends_a_job_committed_before_it_was_asked(
    alice, tiny_version, sent
):
    waiting = job(alice, tiny_version)
    thread = dispatch.DispatchThread()
    try:
        thread.request(dispatch.queue_of(GenerationRequest))
        assert thread.wait_idle(30)
    finally:
        thread.stop(30)

    assert [args for _, args, _ in sent] == [[waiting.pk]]
    waiting.refresh_from_db()
    assert waiting.enqueued_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_failed_pass_is_logged_and_the_thread_serves_the_next_request(
    alice, tiny_version, sent, monkeypatch, caplog
):
    real_dispatch = dispatch.dispatch
    calls = []

    def fails_once(queue: str) -> int:
        calls.append(queue)
        if len(calls) == 1:
            raise ConnectionError("database gone")
        return real_dispatch(queue)

    monkeypatch.setattr(dispatch, "dispatch", fails_once)
    queue = dispatch.queue_of(GenerationRequest)
    waiting = job(alice, tiny_version)
    thread = dispatch.DispatchThread()
    try:
        with caplog.at_level(logging.ERROR, logger="xrayweb.jobs.dispatch"):
            thread.request(queue)
            assert thread.wait_idle(30)
        thread.request(queue)
        assert thread.wait_idle(30)
    finally:
        thread.stop(30)

    assert f"dispatch of queue {queue} failed" in caplog.text
    assert [args for _, args, _ in sent] == [[waiting.pk]]


@pytest.mark.django_db(transaction=True)
def test_requests_made_while_a_pass_runs_merge_into_one_more_pass(
    alice, tiny_version, sent, monkeypatch
):
    real_dispatch = dispatch.dispatch
    running, release = threading.Event(), threading.Event()
    passes = []

    def slow_dispatch(queue: str) -> int:
        passes.append(queue)
        running.set()
        release.wait(30)
        return real_dispatch(queue)

    monkeypatch.setattr(dispatch, "dispatch", slow_dispatch)
    queue = dispatch.queue_of(GenerationRequest)
    thread = dispatch.DispatchThread()
    try:
        thread.request(queue)
        assert running.wait(30)
        jobs = [job(alice, tiny_version) for _ in range(2)]
        for _ in range(5):  # five finishes while the first pass runs
            thread.request(queue)
        release.set()
        assert thread.wait_idle(30)
    finally:
        thread.stop(30)

    assert passes == [queue, queue]
    assert sorted(args[0] for _, args, _ in sent) == [j.pk for j in jobs]


@pytest.mark.django_db(transaction=True)
def test_stopping_runs_the_passes_already_asked_for(alice, tiny_version, sent):
    waiting = job(alice, tiny_version)
    thread = dispatch.DispatchThread()
    thread.request(dispatch.queue_of(GenerationRequest))
    thread.stop(30)

    assert [args for _, args, _ in sent] == [[waiting.pk]]
    assert not thread._thread.is_alive()


def test_a_forked_process_gets_a_dispatcher_thread_of_its_own(monkeypatch):
    monkeypatch.setattr(dispatch.DispatchThread, "_instance", None)
    parent = dispatch.DispatchThread.of_this_process()
    try:
        assert dispatch.DispatchThread.of_this_process() is parent
        # A forked child inherits the object but not its thread: a new pid.
        monkeypatch.setattr(os, "getpid", lambda: parent.pid + 1)
        child = dispatch.DispatchThread.of_this_process()
        assert child is not parent
        assert child._thread.is_alive()
        child.stop(30)
    finally:
        parent.stop(30)


@pytest.mark.django_db(transaction=True)
def test_outside_a_worker_task_the_dispatch_after_a_commit_runs_inline(
    alice, tiny_version, sent
):
    waiting = job(alice, tiny_version)

    dispatch.dispatch_after_commit(dispatch.queue_of(GenerationRequest))

    assert [args for _, args, _ in sent] == [[waiting.pk]]
