"""Faults under real processes: a killed worker, a flushed broker, time limits,
cancel of a running job, fair share, and a database connection dropped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from generator.sampling import GenerationParams
from tests.jobs.conftest import (
    LEASE_S,
    TEST_SETTINGS,
    Platform,
    login,
    wait_until,
)
from xrayweb.generations import services
from xrayweb.generations.models import GenerationImage, GenerationRequest
from xrayweb.jobs import files
from xrayweb.jobs.models import Status

pytestmark = [pytest.mark.slow]

DONE = {Status.SUCCEEDED, Status.FAILED, Status.CANCELLED}
STUCK = Path(__file__).parent / "stuck"
SLOW = Path(__file__).parent / "slow"


def submit(user, version, *, seed: int, steps: int = 40, **params) -> GenerationRequest:
    params = GenerationParams(prompt="Clear lungs.", seed=seed, steps=steps, **params)
    return services.generation_request_create(
        user=user, params=params, model_version=version
    )


def status_of(request: GenerationRequest) -> str:
    return GenerationRequest.objects.values_list("status", flat=True).get(pk=request.pk)


def all_done(requests: list[GenerationRequest]) -> bool:
    return all(status_of(request) in DONE for request in requests)


def stored_keys() -> set[str]:
    return set(files.walk("generations/"))


def assert_each_image_stored_once(requests: list[GenerationRequest]) -> None:
    """One row per requested image, one file per row, and no file without a row."""
    keys = set()
    for request in requests:
        request.refresh_from_db()
        assert request.status == Status.SUCCEEDED, request.error
        images = list(request.images.order_by("index"))
        assert [image.index for image in images] == list(range(request.num_images))
        prefix = GenerationRequest.attempt_prefix(request.pk, request.attempt)
        assert all(image.image.name.startswith(prefix) for image in images)
        keys |= {image.image.name for image in images}
    assert stored_keys() == keys


def test_it_runs_every_job_once_after_the_worker_is_killed_mid_generation(
    platform: Platform, alice, tiny_version
):
    platform.start_worker("control")
    platform.start_beat()
    platform.start_worker("gpu")
    requests = [submit(alice, tiny_version, seed=i, steps=60) for i in range(4)]
    first = requests[0]
    wait_until(
        lambda: GenerationRequest.objects.filter(
            pk=first.pk, status=Status.RUNNING, progress_step__gte=3
        ).exists(),
        90,
        "the first job to be running",
    )

    platform.kill("worker-gpu")
    killed = time.monotonic()
    wait_until(lambda: status_of(first) == Status.QUEUED, 30, "recovery")
    recovered_in = time.monotonic() - killed
    platform.start_worker("gpu")
    wait_until(lambda: all_done(requests), 180, "every job to end")

    # The lease ran out and the next reconcile queued it again.
    assert recovered_in <= LEASE_S + TEST_SETTINGS["XRAY_RECONCILE_INTERVAL_S"] + 1.5
    assert_each_image_stored_once(requests)
    attempts = [r.attempt for r in GenerationRequest.objects.order_by("pk")]
    assert attempts == [2, 1, 1, 1]


def test_it_completes_every_queued_job_after_the_broker_is_flushed(
    platform: Platform, alice, tiny_version
):
    platform.start_worker("control")
    platform.start_beat()
    requests = [submit(alice, tiny_version, seed=i, steps=4) for i in range(5)]
    # The database keeps all five; the broker only slots + 1 of them.
    assert platform.redis().llen(platform.queue("gpu")) == 2
    assert GenerationRequest.objects.filter(enqueued_at__isnull=True).count() == 3

    platform.redis().flushall()
    platform.start_worker("gpu")
    wait_until(lambda: all_done(requests), 120, "every job to end")

    assert_each_image_stored_once(requests)
    assert {r.attempt for r in GenerationRequest.objects.all()} == {1}


def test_it_fails_a_job_past_its_hard_time_limit_naming_the_limit(
    platform: Platform, alice, tiny_version
):
    platform.start_worker("control")
    platform.start_beat()
    # The long job gets stuck, deaf to the soft limit's signal, like a job stuck
    # in native code (tests/jobs/stuck). The short job after it, in a new child
    # that loads the pipeline first, must fit the soft limit.
    limits = {"XRAY_JOB_SOFT_LIMIT_S": "4", "XRAY_JOB_HARD_LIMIT_S": "6"}
    platform.start_worker("gpu", PYTHONPATH=str(STUCK), **limits)
    request = submit(alice, tiny_version, seed=1, steps=150, width=512, height=512)
    after = submit(alice, tiny_version, seed=2, steps=2)

    wait_until(lambda: all_done([request, after]), 120, "both jobs to end")

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == "The job ran past its 6 s time limit and was stopped."
    assert request.attempt == 1
    assert not request.images.exists()
    # The pool replaced the killed child and went on with the next job.
    assert status_of(after) == Status.SUCCEEDED
    assert_each_image_stored_once([after])


def test_it_fails_a_job_past_its_soft_time_limit_naming_the_limit(
    platform: Platform, alice, tiny_version
):
    limits = {"XRAY_JOB_SOFT_LIMIT_S": "2", "XRAY_JOB_HARD_LIMIT_S": "60"}
    # 50 ms more per step (tests/jobs/slow): the job outlasts the limit on any CPU.
    platform.start_worker("gpu", PYTHONPATH=str(SLOW), **limits)
    request = submit(alice, tiny_version, seed=1, steps=150, width=512, height=512)

    wait_until(lambda: all_done([request]), 90, "the job to end")

    request.refresh_from_db()
    assert request.status == Status.FAILED
    assert request.error == "The job ran past its 2 s time limit and was stopped."
    assert stored_keys() == set()


def test_it_stops_a_running_generation_within_two_steps_of_cancel(
    platform: Platform, alice, tiny_version
):
    platform.start_worker("gpu")
    request = submit(alice, tiny_version, seed=1, steps=150)
    running = GenerationRequest.objects.filter(
        pk=request.pk, status=Status.RUNNING, progress_step__gte=5
    )
    wait_until(running.exists, 90, "the job to reach step 5")

    at_cancel = GenerationRequest.objects.get(pk=request.pk).progress_step
    assert services.generation_request_cancel(request_id=request.pk, user=alice) is None
    wait_until(lambda: all_done([request]), 30, "the cancel to be confirmed")

    request.refresh_from_db()
    assert request.status == Status.CANCELLED
    assert request.progress_step - at_cancel <= 2
    assert request.progress_step < request.steps
    assert not GenerationImage.objects.filter(request=request).exists()
    assert stored_keys() == set()


def test_it_starts_a_second_users_job_before_the_first_users_third_ends(
    platform: Platform, alice, bob, tiny_version
):
    alices = [submit(alice, tiny_version, seed=i, steps=8) for i in range(20)]
    bobs = submit(bob, tiny_version, seed=99, steps=8)
    platform.start_worker("gpu")

    wait_until(lambda: all_done([bobs]), 120, "Bob's job to end")

    third = GenerationRequest.objects.get(pk=alices[2].pk)
    bobs.refresh_from_db()
    assert bobs.status == Status.SUCCEEDED
    assert third.finished_at is None or bobs.started_at < third.finished_at
    started_before_bob = GenerationRequest.objects.filter(
        user=alice, started_at__lt=bobs.started_at
    ).count()
    assert started_before_bob <= 2


def test_it_recovers_by_itself_when_the_database_drops_its_connections(
    platform: Platform, alice, tiny_version
):
    platform.start_worker("control")
    platform.start_beat()
    platform.start_worker("gpu")
    url = platform.start_web(workers=2)
    browser = login(url, "alice", "alice-pass-123")
    pages = [f"{url}/history/", f"{url}/", f"{url}/history/?status=queued"]
    assert [browser.get(page, timeout=30).status_code for page in pages] == [200] * 3
    request = submit(alice, tiny_version, seed=1, steps=100)
    running = GenerationRequest.objects.filter(
        pk=request.pk, status=Status.RUNNING, progress_step__gte=3
    )
    wait_until(running.exists, 90, "the job to be running")

    with connection.cursor() as cursor:  # every session of this database, ours too
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with pytest.raises(OperationalError):
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    connection.close()

    # Each gunicorn worker replaces its dropped connection (CONN_HEALTH_CHECKS).
    statuses = [browser.get(page, timeout=30).status_code for page in pages * 4]
    assert statuses == [200] * 12
    later = submit(alice, tiny_version, seed=2, steps=4)
    wait_until(lambda: all_done([request, later]), 120, "both jobs to end")
    assert_each_image_stored_once([request, later])
